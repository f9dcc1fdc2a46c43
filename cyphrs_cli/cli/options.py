"""Option definitions shared by commands: each flag is defined once, here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.completion import complete_authorities


def _root_home(ctx: typer.Context, value: str | None) -> str | None:
    """``cyphrs --home X cmd``: X unless the command's own --home was given (it beats the
    root flag, which beats CYPHRS_HOME). Read from this invocation's context, not os.environ."""
    from typer._click.core import ParameterSource

    root_home = render.output(ctx).home
    if root_home and ctx.get_parameter_source("home") is not ParameterSource.COMMANDLINE:
        return root_home
    return value


HomeOption = Annotated[
    str | None,
    typer.Option(
        "--home",
        envvar="CYPHRS_HOME",
        callback=_root_home,
        help="CA home directory [default: platform data dir].",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Machine-readable output (stable, versioned schema).",
        callback=render.set_json_mode,
        is_eager=True,
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress or remarks on stderr.", callback=render.set_quiet
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
NoInputOption = Annotated[
    bool,
    typer.Option(
        "--no-input",
        envvar="CYPHRS_NO_INPUT",
        help="Never prompt, even on a terminal (also implied by CI=true).",
    ),
]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        envvar="CYPHRS_PASSPHRASE_FILE",
        help="File holding the passphrase of the CA key used (new key for init commands).",
        dir_okay=False,
    ),
]
PassphraseEnvOption = Annotated[
    str | None,
    typer.Option(
        "--passphrase-env",
        metavar="VAR",
        help="Name of an environment variable holding that passphrase.",
    ),
]
KeyUriOption = Annotated[
    str | None,
    typer.Option(
        "--key-uri",
        help="Where the new key lives: file:PATH (default keys/ALIAS.key.pem) or pkcs11:...",
    ),
]
OrganizationOption = Annotated[
    str | None, typer.Option("--organization", "-o", help="Subject O= attribute.")
]
AliasOption = Annotated[
    str | None,
    typer.Option(
        "--alias", help="Short handle for --issuer and file names [default: from --name]."
    ),
]
IssuerOption = Annotated[
    str | None,
    typer.Option(
        "--issuer",
        envvar="CYPHRS_ISSUER",
        help="CA (alias) to sign with [default: the home's default intermediate].",
        autocompletion=complete_authorities,
    ),
]
PinFileOption = Annotated[
    Path | None,
    typer.Option(
        "--pin-file",
        envvar="CYPHRS_PIN_FILE",
        dir_okay=False,
        help="File holding the PKCS#11 user PIN (when the key URI has no pin-source).",
    ),
]
PinEnvOption = Annotated[
    str | None,
    typer.Option("--pin-env", metavar="VAR", help="Environment variable holding the token PIN."),
]
ExistingKeyOption = Annotated[
    bool,
    typer.Option(
        "--existing-key",
        help="Use the key pair already on the token at --key-uri instead of generating one.",
    ),
]
