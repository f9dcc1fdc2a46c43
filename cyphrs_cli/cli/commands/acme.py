"""``acme eab create|list|revoke``: External Account Binding keys for ``cyphrs serve
--acme`` (see ``cyphrs_cli.service.acme_eab``). Nothing here signs: the ledger only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.authority import open_authority
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    pass

EAB_EPILOG = f"""\
Examples:

  cyphrs acme eab create --profile server --dns-pattern '*.svc.acme.internal' --json

  cyphrs acme eab create --dns-pattern api.acme.internal --ip-network 10.20.0.0/16

  cyphrs acme eab list --json

  cyphrs acme eab revoke eab_3f9a0c1d2e4b5a69c0ffee00

An EAB key (kid + HMAC key, shown once) creates exactly one ACME account (certbot
--eab-kid/--eab-hmac-key, lego --eab --kid/--hmac). It binds a profile and a name
policy: DNS names or '*.<domain>' patterns ('*' is exactly one label) and IP networks.
Every order of its account is checked against that policy before any challenge.
Revoking the key stops its account from ordering.

{EXIT_CODE_HELP}"""

acme_app = typer.Typer(
    help="ACME (RFC 8555) for services: External Account Binding keys.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
eab_app = typer.Typer(
    help="External Account Binding keys: who may open an ACME account, for which names.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
acme_app.add_typer(eab_app, name="eab")


def register(app: typer.Typer) -> None:
    app.add_typer(acme_app, name="acme")


@eab_app.command("create", epilog=EAB_EPILOG)
def create(
    profile: Annotated[str, typer.Option("--profile", help="Issuance profile.")] = "server",
    dns_pattern: Annotated[
        list[str] | None,
        typer.Option("--dns-pattern", help="DNS name or '*.domain' allowed (repeatable)."),
    ] = None,
    ip_network: Annotated[
        list[str] | None,
        typer.Option("--ip-network", help="IP network allowed, CIDR (repeatable)."),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="How long the key may create its account [default: no limit]."),
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create an EAB key; its HMAC key is printed once."""
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.acme_eab import EabSpec, create_eab_key

    spec = EabSpec(
        profile=profile,
        dns_patterns=tuple(dns_pattern or ()),
        ip_networks=tuple(ip_network or ()),
        ttl=parse_duration(ttl) if ttl else None,
    )
    with open_authority(home) as ca:
        key = create_eab_key(ca, spec)
    document = {"schema": "cyphrs.acme-eab/v1", "hmac_key": key.hmac_key,
                **key.to_json(utc_now())}
    if render.json_mode():
        render.emit_json(document)
        return
    render.emit_text(f"kid: {key.kid}\nhmac_key: {key.hmac_key}\n")
    render.note(f"EAB key {key.kid} (profile {key.profile}); shown once")


@eab_app.command("list", epilog=EAB_EPILOG)
def list_keys(
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """List EAB keys (never their HMAC keys), newest first."""
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.acme_eab import list_eab_keys

    now = utc_now()
    with open_authority(home) as ca:
        keys = [k.to_json(now) for k in list_eab_keys(ca)]
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.acme-eab-list/v1", "keys": keys})
        return
    console = render.console()
    for k in keys:
        names = ",".join(k["dns_patterns"] + k["ip_networks"])
        console.print(f"{k['kid']}  {k['status']:<8} {k['profile']}  {names}"
                      f"  {k['account'] or ''}")
    if not keys:
        render.note("no EAB keys")


@eab_app.command("revoke", epilog=EAB_EPILOG)
def revoke(
    kid: Annotated[str, typer.Argument(help="The key id (eab_...).")],
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Revoke an EAB key: no new account, and its account can no longer order."""
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.acme_eab import revoke_eab_key

    with open_authority(home) as ca:
        key = revoke_eab_key(ca, kid)
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.acme-eab-revoke/v1", **key.to_json(utc_now())})
        return
    render.console().print(f"Revoked EAB key {key.kid}")
