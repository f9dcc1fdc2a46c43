"""``config check``, ``config claims-oid`` and ``config public-url``: the CA home's trust
state, compared and changed.

Trust facts live in the ledger; these commands show where the home's files differ from it
and change the per-home trust settings that are not part of a CA (the claims OID, the
public URL that AIA and CRL distribution points name) as recorded events rather than
text edits.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

CONFIG_EPILOG = f"""\
Examples:

  cyphrs config check

  cyphrs audit verify && cyphrs config restore

  cyphrs config claims-oid

  cyphrs config claims-oid 1.3.6.1.4.1.99999.1.1

  cyphrs config public-url https://ca.acme.internal:8443

config.toml, certs/*.pem and profiles/*.toml are caches of the ledger; 'config check' exits
8 and names every file that differs; 'config restore' rewrites them from the ledger (run
'cyphrs audit verify' first: restore trusts the ledger) and records that it did. The
claims OID is recorded in the ledger (home.claims_oid_set) and copied to config.toml.
The public URL (home.public_url_set; 'public-url --clear' removes it) makes every
certificate signed afterwards carry AIA (OCSP URL/ocsp, caIssuers URL/v1/ca/ISSUER.der)
and a CRL distribution point (URL/v1/crl/ISSUER.crl), where 'cyphrs serve' answers.

{EXIT_CODE_HELP}"""

config_app = typer.Typer(
    help="The CA home's trust state: check the files against the ledger, set the claims OID.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("check", epilog=CONFIG_EPILOG)
def check(
    home: HomeOption = None, json_output: JsonOption = False, quiet: QuietOption = False
) -> None:
    """Compare config.toml, certs/ and profiles/ with the ledger; exit 8 if any differs."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.config.trust import TrustStateMismatch, check_trust_state

    ca_home = resolve_home(home)
    config = load_config(ca_home)
    with open_ledger(ca_home) as ledger:
        problems = check_trust_state(ca_home, config, ledger.conn)
    if render.json_mode():
        render.emit_json(
            {"schema": "cyphrs.config-check/v1", "ok": not problems, "problems": problems}
        )
    elif not problems:
        render.console().print("The CA home's files match the ledger.")
    if problems:
        if not render.json_mode():
            for problem in problems[1:]:
                render.console(stderr=True).print(f"  also: {problem}")
        raise TrustStateMismatch(
            problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )


@config_app.command("restore", epilog=CONFIG_EPILOG)
def restore(
    home: HomeOption = None, json_output: JsonOption = False, quiet: QuietOption = False
) -> None:
    """Rewrite config.toml's trust fields, certs/ and recorded profiles from the ledger."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.trust import restore_home_files

    ca_home = resolve_home(home)
    ca_home.require_initialised()
    changes = restore_home_files(ca_home)
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.config-restore/v1", "rewritten": changes})
        return
    console = render.console()
    if not changes:
        console.print("Nothing to restore: the CA home's files match the ledger.")
    for change in changes:
        console.print(f"restored {change}")


@config_app.command("claims-oid", epilog=CONFIG_EPILOG)
def claims_oid(
    oid: Annotated[
        str | None, typer.Argument(help="New OID (dotted); omit to show the recorded one.")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show or change (recorded in the ledger) the OID of the agent-claims extension."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.trust import DEFAULT_CLAIMS_OID, recorded_claims_oid, set_claims_oid

    ca_home = resolve_home(home)
    ca_home.require_initialised()
    changed = False
    if oid is not None:
        changed = set_claims_oid(ca_home, oid)
    with open_ledger(ca_home) as ledger:
        current = recorded_claims_oid(ledger.conn)
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.config-claims-oid/v1",
                "oid": current,
                "default": current == DEFAULT_CLAIMS_OID,
                "changed": changed,
            }
        )
        return
    suffix = " (the provisional default)" if current == DEFAULT_CLAIMS_OID else ""
    render.console().print(
        ("Recorded claims OID " if changed else "Claims OID ") + current + suffix
    )


@config_app.command("public-url", epilog=CONFIG_EPILOG)
def public_url(
    url: Annotated[
        str | None,
        typer.Argument(help="http(s) URL where 'cyphrs serve' is reachable; omit to show it."),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the public URL (recorded).")
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show or change (recorded in the ledger) the URL that AIA and CRL DP name."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.trust import recorded_public_url, set_public_url
    from cyphrs_cli.errors import UsageError

    if clear and url is not None:
        raise UsageError("give a URL or --clear, not both")
    ca_home = resolve_home(home)
    ca_home.require_initialised()
    changed = False
    if url is not None or clear:
        changed = set_public_url(ca_home, None if clear else url)
    with open_ledger(ca_home) as ledger:
        current = recorded_public_url(ledger.conn)
    if render.json_mode():
        render.emit_json(
            {"schema": "cyphrs.config-public-url/v1", "url": current, "changed": changed}
        )
        return
    if current is None:
        render.console().print("Public URL cleared" if changed else "No public URL is set")
    else:
        render.console().print(("Recorded public URL " if changed else "Public URL ") + current)
