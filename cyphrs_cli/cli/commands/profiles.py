"""``profiles list`` and ``profiles show``: the issuance profiles this CA home offers."""

from __future__ import annotations

from typing import Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.completion import complete_profiles
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

PROFILES_EPILOG = f"""\
Examples:

  cyphrs profiles list

  cyphrs profiles show agent --json

Add or override profiles with TOML files in <home>/profiles/NAME.toml (see README).

{EXIT_CODE_HELP}"""

profiles_app = typer.Typer(
    help="Issuance profiles: built-in and the CA home's own.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list", epilog=PROFILES_EPILOG)
def list_profiles(
    home: HomeOption = None, json_output: JsonOption = False, quiet: QuietOption = False
) -> None:
    """List profiles with their TTL bounds and where each is defined."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import format_duration
    from cyphrs_cli.profiles.model import load_profiles

    profiles = load_profiles(resolve_home(home).profiles_dir)
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.profiles-list/v1",
                "profiles": [p.to_json() for _, p in sorted(profiles.items())],
            }
        )
        return
    console = render.console()
    for name, p in sorted(profiles.items()):
        console.print(
            f"{name:<12} {format_duration(p.default_ttl):>6} (max {format_duration(p.max_ttl)})"
            f"  {', '.join(p.extended_key_usage):<22} {p.description}"
            + ("" if p.source == "builtin" else f"  [{p.source}]")
        )


@profiles_app.command("show", epilog=PROFILES_EPILOG)
def show_profile(
    name: Annotated[str, typer.Argument(autocompletion=complete_profiles)],
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show every rule of one profile."""
    import json

    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.profiles.model import get_profile

    profile = get_profile(resolve_home(home).profiles_dir, name)
    document = {"schema": "cyphrs.profile-show/v1", "profile": profile.to_json()}
    if render.json_mode():
        render.emit_json(document)
        return
    render.emit_text(json.dumps(profile.to_json(), indent=2) + "\n")
