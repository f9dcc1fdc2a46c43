"""``init-root`` and ``create-intermediate``: build the CA hierarchy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import (
    AliasOption,
    ExistingKeyOption,
    HomeOption,
    JsonOption,
    KeyUriOption,
    NoInputOption,
    OrganizationOption,
    PassphraseEnvOption,
    PassphraseFileOption,
    PinEnvOption,
    PinFileOption,
    QuietOption,
)
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.ca.hierarchy import CaCreated
    from cyphrs_cli.config.home import CaHome

INIT_ROOT_EPILOG = f"""\
Examples:

  cyphrs init-root --name "Acme Root CA" --passphrase-file root.pass

  cyphrs init-root --name "Acme Root CA" --key-type rsa4096 --validity 20y --json

{EXIT_CODE_HELP}"""

INTERMEDIATE_EPILOG = f"""\
Examples:

  cyphrs create-intermediate --name "Acme Agents CA" --trust-domain acme.internal
  --passphrase-file inter.pass --root-passphrase-file root.pass

  cyphrs create-intermediate --name "Acme Web CA" --name-constraints --permit-dns acme.internal ...

{EXIT_CODE_HELP}"""


def created_json(created: CaCreated, home: CaHome) -> dict[str, Any]:
    from cyphrs_cli.ledger.events import rfc3339

    issued = created.issued
    return {
        "home": str(home.root),
        "authority": {
            "alias": created.alias,
            "role": created.role,
            "subject": issued.certificate.subject.rfc4514_string(),
            "serial": issued.serial,
            "fingerprint": issued.fingerprint,
            "not_before": rfc3339(issued.not_before),
            "not_after": rfc3339(issued.not_after),
            "validity_clamped": issued.clamped,
            "key_uri": created.key_uri,
            "certificate_path": str(home.resolve(created.cert_path)),
        },
    }


def _render_created(command: str, created: CaCreated, home: CaHome) -> None:
    document = created_json(created, home)
    if render.json_mode():
        render.emit_json({"schema": f"cyphrs.{command}/v1", **document})
        return
    auth = document["authority"]
    out = render.console()
    out.print(f"Created {auth['role']} CA [bold]{auth['alias']}[/bold] in {document['home']}")
    for label in ("subject", "serial", "fingerprint", "not_after", "key_uri", "certificate_path"):
        out.print(f"  {label.replace('_', ' '):<17}{auth[label]}")
    if auth["validity_clamped"]:
        render.note("note: validity was shortened to end with the issuer's")


def register(app: typer.Typer) -> None:
    app.command("init-root", epilog=INIT_ROOT_EPILOG)(init_root)
    app.command("create-intermediate", epilog=INTERMEDIATE_EPILOG)(create_intermediate)


def init_root(
    name: Annotated[str, typer.Option("--name", "-n", help="Root CA common name.")],
    organization: OrganizationOption = None,
    alias: AliasOption = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="p384, p256, rsa3072, rsa4096 or ed25519.")
    ] = "p384",
    key_uri: KeyUriOption = None,
    validity: Annotated[str, typer.Option("--validity", help="Lifetime, e.g. 10y.")] = "10y",
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    existing_key: ExistingKeyOption = False,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create a CA home with a new self-signed root CA (key encrypted, or on a token)."""
    from cyphrs_cli.ca.hierarchy import create_root
    from cyphrs_cli.cli.secrets import secret_provider
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.keystore.base import KeySpec

    ca_home = resolve_home(home)
    created = create_root(
        ca_home,
        common_name=name,
        organization=organization,
        alias=alias,
        key_spec=KeySpec.parse(key_type),
        key_uri=key_uri,
        ttl=parse_duration(validity),
        secrets=secret_provider(
            file=passphrase_file,
            env=passphrase_env,
            flag="--passphrase",
            new=True,
            no_input=no_input,
            pin_file=pin_file,
            pin_env=pin_env,
        ),
        existing_key=existing_key,
    )
    _render_created("init-root", created, ca_home)


def create_intermediate(
    name: Annotated[str, typer.Option("--name", "-n", help="Intermediate CA common name.")],
    organization: OrganizationOption = None,
    alias: AliasOption = None,
    trust_domain: Annotated[
        str | None,
        typer.Option("--trust-domain", help="SPIFFE trust domain this CA issues agent IDs in."),
    ] = None,
    name_constraints: Annotated[
        bool,
        typer.Option(
            "--name-constraints",
            help="Add critical name constraints: URI:<trust-domain> and each --permit-dns.",
        ),
    ] = False,
    permit_dns: Annotated[
        list[str] | None,
        typer.Option("--permit-dns", help="Permitted DNS subtree (with --name-constraints)."),
    ] = None,
    path_length: Annotated[int, typer.Option("--path-length", min=0, max=3)] = 0,
    key_type: Annotated[str, typer.Option("--key-type", help="p256, p384, rsa3072, ...")] = "p256",
    key_uri: KeyUriOption = None,
    validity: Annotated[
        str, typer.Option("--validity", help="Lifetime, clamped to the root's.")
    ] = "5y",
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    existing_key: ExistingKeyOption = False,
    root_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--root-passphrase-file",
            envvar="CYPHRS_ROOT_PASSPHRASE_FILE",
            dir_okay=False,
            help="File holding the root key's passphrase.",
        ),
    ] = None,
    root_passphrase_env: Annotated[
        str | None, typer.Option("--root-passphrase-env", metavar="VAR")
    ] = None,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create an intermediate CA signed by this home's root (pathLen 0 by default)."""
    from cyphrs_cli.ca.hierarchy import create_intermediate as create
    from cyphrs_cli.cli.secrets import secret_provider
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.keystore.base import KeySpec

    ca_home = resolve_home(home)
    created = create(
        ca_home,
        common_name=name,
        organization=organization,
        alias=alias,
        key_spec=KeySpec.parse(key_type),
        key_uri=key_uri,
        ttl=parse_duration(validity),
        trust_domain=trust_domain,
        name_constraints=name_constraints,
        permitted_dns=tuple(permit_dns or ()),
        path_length=path_length,
        ekus=("clientAuth", "serverAuth"),
        secrets=secret_provider(
            file=passphrase_file,
            env=passphrase_env,
            flag="--passphrase",
            new=True,
            no_input=no_input,
            pin_file=pin_file,
            pin_env=pin_env,
        ),
        root_secrets=secret_provider(
            file=root_passphrase_file,
            env=root_passphrase_env,
            flag="--root-passphrase",
            no_input=no_input,
            pin_file=pin_file,
            pin_env=pin_env,
        ),
        existing_key=existing_key,
    )
    _render_created("create-intermediate", created, ca_home)
