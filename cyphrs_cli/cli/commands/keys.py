"""``keys list``: key objects on a PKCS#11 token and which CA of this home uses each."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import (
    HomeOption,
    JsonOption,
    NoInputOption,
    PinEnvOption,
    PinFileOption,
    QuietOption,
)
from cyphrs_cli.errors import EXIT_CODE_HELP

KEYS_EPILOG = f"""\
Examples:

  cyphrs keys list --token-uri "pkcs11:token=cyphrs?module-path=/usr/lib/softhsm/libsofthsm2.so"
  --pin-file pin.txt

  cyphrs keys list --token-uri "pkcs11:token=cyphrs" --pin-env HSM_PIN --json

{EXIT_CODE_HELP}"""

keys_app = typer.Typer(
    help="Inspect CA keys held in PKCS#11 tokens.", no_args_is_help=True, rich_markup_mode=None
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("list", epilog=KEYS_EPILOG)
def list_keys(
    token_uri: Annotated[
        str, typer.Option("--token-uri", help="pkcs11:token=LABEL[?module-path=...] (no object=).")
    ],
    home: HomeOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """List private keys on a token with their security attributes and the CA using each."""
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.keystore.pkcs11 import Pkcs11Uri, list_token_keys

    token = Pkcs11Uri.parse(token_uri, need_object=False)
    secrets = ca_key_secrets(None, None, pin_file, pin_env, no_input)
    keys = list_token_keys(token_uri, secrets)
    ca_home = resolve_home(home)
    users: dict[str, list[str]] = {}
    if ca_home.is_initialised():
        for entry in load_config(ca_home).authorities.values():
            if entry.key_uri.startswith("pkcs11:"):
                ref = Pkcs11Uri.parse(entry.key_uri)
                if ref.token == token.token:
                    users.setdefault(ref.object, []).append(entry.name)
    for key in keys:
        key["used_by"] = users.get(key["label"], [])
    document: dict[str, Any] = {"schema": "cyphrs.keys-list/v1", "token": token.token, "keys": keys}
    if render.json_mode():
        render.emit_json(document)
        return
    console = render.console()
    console.print(f"Token {token.token}: {len(keys)} private key(s)", style="bold")
    for key in keys:
        flags = ", ".join(name.lower() for name, on in key["attributes"].items() if on)
        used = ", ".join(key["used_by"]) or "no CA of this home"
        console.print(f"  {key['label']:<24} {key['algorithm']:<8} {flags}  ({used})")
