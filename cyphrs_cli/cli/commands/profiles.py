"""``profiles list``, ``show``, ``set`` and ``remove``: the issuance profiles of a CA home.

A home profile signs nothing until its text is recorded in the ledger (``profiles set``,
a hash-chained ``profile.set`` event); see ``cyphrs_cli.config.trust``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.completion import complete_profiles
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome

PROFILES_EPILOG = f"""\
Examples:

  cyphrs profiles list

  cyphrs profiles show agent --json

  cyphrs profiles set payments.toml

  cyphrs profiles set agent.toml --override-builtin

  cyphrs profiles remove payments

'profiles set FILE' validates FILE, records its SHA-256 (and text) in the ledger and installs
it as <home>/profiles/NAME.toml. Nothing is signed (exit 8) while a profile file differs
from the text last recorded. Replacing a built-in needs --override-builtin.

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

    ca_home = resolve_home(home)
    if ca_home.is_initialised():
        ca_home.require_initialised()  # refuses a home others can write
    profiles = load_profiles(ca_home.profiles_dir)
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

    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.profiles.model import get_profile

    ca_home = resolve_home(home)
    profile = get_profile(ca_home.profiles_dir, name)
    record = _ledger_record(ca_home, name)
    recorded = None
    if record is not None:
        recorded = {
            "sha256": record["sha256"],
            "overrides_builtin": record["overrides_builtin"],
            "recorded_at": record["recorded_at"],
            "recorded_by": record["recorded_by"],
            "event_seq": record["seq"],
        }
    matches = recorded["sha256"] == profile.sha256 if recorded else profile.source == "builtin"
    document = {
        "schema": "cyphrs.profile-show/v1",
        "profile": profile.to_json(),
        "ledger": {"recorded": recorded, "matches": matches},
    }
    if render.json_mode():
        render.emit_json(document)
        return
    lines = [
        f"sha256            {profile.sha256}",
        f"source            {profile.source}",
        f"overrides builtin {'yes' if profile.overrides_builtin else 'no'}",
    ]
    if recorded is not None:
        lines.append(
            f"recorded          {recorded['recorded_at']} by {recorded['recorded_by']}"
            f" (event {recorded['event_seq']}){'' if matches else ' - FILE DIFFERS'}"
        )
    elif profile.source != "builtin":
        lines.append("recorded          no - run 'cyphrs profiles set' before issuing with it")
    out = render.console()  # escapes control characters: profile text is someone's input
    for line in [*_profile_lines(profile.to_json()), *lines]:
        out.print(line)


def _profile_lines(rules: dict[str, Any]) -> list[str]:
    """Every rule of a profile as aligned text (the --json document has the same facts)."""
    from datetime import timedelta

    from cyphrs_cli.durations import format_duration

    def joined(values: list[str]) -> str:
        return ", ".join(values) if values else "(any)"

    def ttl(key: str) -> str:
        return format_duration(timedelta(seconds=rules[key]))

    names = rules["names"]
    lines = [
        f"profile           {rules['name']}",
        f"description       {rules['description']}",
        f"ttl               default {ttl('default_ttl_seconds')}, min {ttl('min_ttl_seconds')},"
        f" max {ttl('max_ttl_seconds')}",
        f"key types         {joined(rules['key_types'])}",
        f"key usage         {', '.join(rules['key_usage'])}",
        f"extended usage    {', '.join(rules['extended_key_usage'])}",
        f"issuers           {joined(rules['issuers'])}",
        f"names             spiffe {names['spiffe']}, dns {names['dns']}, ip {names['ip']}",
    ]
    for key in ("require_one_of", "dns_patterns", "ip_ranges", "trust_domains",
                "spiffe_path_patterns"):  # fmt: skip
        if names[key]:
            lines.append(f"  {key.replace('_', ' '):<16}{', '.join(names[key])}")
    if names["require_common_name"]:
        lines.append("  common name     required")
    if rules["workflows"]:
        lines.append("workflows         only these, with their permission allow-lists:")
        for workflow, rule in rules["workflows"].items():
            allowed = ", ".join(rule["permissions"]) or "(no permissions)"
            lines.append(f"  {workflow:<16}{allowed}")
            if rule["requesters"]:
                lines.append(f"  {'':<16}requesters: {', '.join(rule['requesters'])}")
    else:
        lines.append("workflows         (any workflow, any permission)")
    return lines


def _ledger_record(ca_home: CaHome, name: str) -> dict[str, Any] | None:
    if not ca_home.is_initialised():
        return None
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.trust import profile_record

    ca_home.require_initialised()
    with open_ledger(ca_home) as ledger:
        return profile_record(ledger.conn, name)


@profiles_app.command("set", epilog=PROFILES_EPILOG)
def set_profile(
    file: Annotated[Path, typer.Argument(help="Profile TOML file.", dir_okay=False)],
    name: Annotated[
        str | None, typer.Option("--name", help="Profile name [default: the file's stem].")
    ] = None,
    override_builtin: Annotated[
        bool,
        typer.Option("--override-builtin", help="Allow replacing a built-in profile."),
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Record a profile's text in the ledger and install it in the CA home."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.trust import record_profile

    ca_home = resolve_home(home)
    ca_home.require_initialised()
    profile, changed = record_profile(
        ca_home, file, name=name or file.stem, override_builtin=override_builtin
    )
    document = {
        "schema": "cyphrs.profiles-set/v1",
        "name": profile.name,
        "sha256": profile.sha256,
        "overrides_builtin": profile.overrides_builtin,
        "changed": changed,
    }
    if render.json_mode():
        render.emit_json(document)
        return
    verb = "Recorded" if changed else "Already recorded:"
    render.console().print(
        f"{verb} profile {profile.name} (sha256 {profile.sha256[:16]}…"
        + (", overrides the built-in)" if profile.overrides_builtin else ")")
    )


@profiles_app.command("remove", epilog=PROFILES_EPILOG)
def remove_profile(
    name: Annotated[str, typer.Argument(autocompletion=complete_profiles)],
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Record that a home profile is withdrawn and delete its file (a built-in it replaced
    applies again)."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.trust import remove_recorded_profile

    ca_home = resolve_home(home)
    ca_home.require_initialised()
    remove_recorded_profile(ca_home, name)
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.profiles-remove/v1", "name": name})
        return
    render.console().print(f"Removed profile {name}")
