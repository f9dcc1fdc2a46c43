"""``enroll`` and the online form of ``renew`` (``--ca-url``): the agent's side of
``cyphrs serve``. The work is in ``cyphrs_cli.client``; this module parses and renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import ForceOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.client.agent import AgentResult, Credential

TOKEN_ENV = "CYPHRS_TOKEN"  # noqa: S105 -- a variable name, not a secret

ENROLL_EPILOG = f"""\
Examples:

  cyphrs enroll --ca-url https://ca.acme.internal:8443 --root ca.pem \\
      --token-file /run/secrets/cyphrs-token --out-dir /etc/agent

  printf %s "$TOKEN" | cyphrs enroll --ca-url https://ca:8443 --root ca.pem --token - \\
      --out-dir ./agent --json

  CYPHRS_TOKEN=... cyphrs enroll --ca-url https://ca:8443 --root ca.pem --out-dir ./agent

  cyphrs enroll --ca-url https://ca:8443 --root ca.pem --jwt-file "$CI_OIDC_TOKEN_FILE" \\
      --out-dir ./agent

The key is generated here and never sent: only its CSR goes to the CA, with the token (or
the JWT, as a bearer credential). Tokens are never taken from the command line, where
other users see them (ps, /proc, shell history): give --token-file FILE, --token - (read
from standard input) or the CYPHRS_TOKEN environment variable. Only --root is trusted for
the CA's TLS certificate. The files written (key.pem 0600, cert.pem, chain.pem,
fullchain.pem, ca.pem) are the same as 'cyphrs issue --out-dir'.

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("enroll", epilog=ENROLL_EPILOG)(enroll)


CaUrlOption = Annotated[
    str,
    typer.Option("--ca-url", help="The CA's API: https://host[:port].", show_default=False),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=0.1, max=600.0, help="Seconds for connecting and each read."),
]


def enroll(
    ca_url: CaUrlOption,
    root: Annotated[
        Path,
        typer.Option(
            "--root", dir_okay=False, help="The CA's root certificate (PEM): the only trust."
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", file_okay=False, help="Where the files go.")
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="-",
            help=f"'-' reads the one-time token from stdin (or set {TOKEN_ENV}).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", dir_okay=False, help="File holding the one-time token."),
    ] = None,
    jwt_file: Annotated[
        str | None,
        typer.Option(
            "--jwt-file", help="File (or -) holding a JWT for a provisioner, instead of a token."
        ),
    ] = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="p256, p384, rsa3072, rsa4096, ed25519.")
    ] = "p256",
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="Lifetime to ask for [default: the token's or profile's]."),
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Agent instance name [default: random].")
    ] = None,
    timeout: TimeoutOption = 15.0,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Get a certificate from 'cyphrs serve' with a one-time token or a JWT (key made here)."""
    from cyphrs_cli.client.agent import EnrollRequest
    from cyphrs_cli.client.agent import enroll as enroll_agent
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.fsutil import read_input

    credential = _credential(token, token_file, jwt_file)
    if ttl is not None:
        parse_duration(ttl)  # a bad duration is refused here, before the token is spent
    request = EnrollRequest(
        ca_url=ca_url,
        root_pem=read_input(str(root)),
        out_dir=out_dir,
        credential=credential,
        key_type=key_type,
        ttl=ttl,
        instance=instance,
        force=force,
        timeout=timeout,
    )
    render_agent_result(enroll_agent(request), command="enroll", headline="Enrolled")


def _credential(token: str | None, token_file: Path | None, jwt_file: str | None) -> Credential:
    """Exactly one credential, never from argv (see the epilog)."""
    import os

    from cyphrs_cli.client.agent import Credential
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input

    if token is not None and token != "-":  # noqa: S105
        raise UsageError(
            "--token takes only '-' (read from standard input)",
            hint=f"a token on the command line is visible to other users; use --token -,"
            f" --token-file or {TOKEN_ENV}",
        )
    env_token = os.environ.get(TOKEN_ENV) or None  # a flag beats the environment
    if len([s for s in (token, token_file, jwt_file) if s is not None]) > 1:
        raise UsageError("give one of --token -, --token-file and --jwt-file")
    if jwt_file is not None:
        return Credential(jwt=_secret_text(read_input(jwt_file), "the JWT"))
    if token == "-":  # noqa: S105
        return Credential(token=_secret_text(read_input("-"), "the token"))
    if token_file is not None:
        return Credential(token=_secret_text(read_input(str(token_file)), "the token"))
    if env_token:
        return Credential(token=_secret_text(env_token.encode(), "the token"))
    raise UsageError(f"give the token: --token-file FILE, --token - or {TOKEN_ENV}")


def _secret_text(data: bytes, what: str) -> str:
    """One line of printable ASCII, surrounding white space removed."""
    from cyphrs_cli.errors import InvalidInputError

    text = data.strip()
    if not text or len(text) > 16384 or not all(0x21 <= c <= 0x7E for c in text):
        raise InvalidInputError(f"{what} must be one line of printable ASCII")
    return text.decode("ascii")


def result_view(result: AgentResult) -> dict[str, Any]:
    issued = result.issued
    return {
        "serial": issued.serial,
        "spiffe_id": issued.spiffe_id,
        "not_before": f"{issued.not_before:%Y-%m-%dT%H:%M:%SZ}",
        "not_after": f"{issued.not_after:%Y-%m-%dT%H:%M:%SZ}",
        "fingerprint": issued.fingerprint,
        "replaces": issued.replaces,
        "files": result.files,
    }


def render_agent_result(
    result: AgentResult, *, command: str, headline: str, one_line: bool = False
) -> None:
    """``--json``: the ``cyphrs.<command>/v1`` document (one line in daemon mode); else
    a short human summary on stdout."""
    import json
    import sys

    view = result_view(result)
    if render.json_mode():
        document = {"schema": f"cyphrs.{command}/v1", **view}
        if one_line:
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
        else:
            render.emit_json(document)
        return
    console = render.console()
    console.print(f"{headline} {view['spiffe_id'] or view['serial']} (serial {view['serial']})")
    console.print(f"  {'not after':<12}{view['not_after']}")
    if view["replaces"]:
        console.print(f"  {'replaces':<12}{view['replaces']}")
    for role, path in view["files"].items():
        console.print(f"  {role:<12}{path}")


def daemon_line(stamp: str, message: str) -> str:
    """One line of the renewal daemon's log. The message may carry a CA's problem text:
    escaped like every printed field, so it cannot forge lines or drive the terminal."""
    from cyphrs_cli.safe_text import terminal_safe

    return f"{stamp} cyphrs renew: {terminal_safe(message)}\n"


def renew_online(
    *,
    ca_url: str,
    source: str | None,
    root: Path | None,
    ttl: str | None,
    key_type: str | None,
    daemon: bool,
    exec_command: str | None,
    signal_spec: str | None,
    pid_file: Path | None,
    due_fraction: float,
    jitter: float,
    timeout: float,
) -> None:
    """``cyphrs renew --ca-url URL DIR [--daemon ...]`` (called by ``lifecycle.renew``)."""
    import contextlib
    import signal
    import sys
    import threading
    from datetime import UTC, datetime

    from cyphrs_cli.client.agent import (
        DaemonSettings,
        ReloadHooks,
        RenewRequest,
        renew_once,
        run_daemon,
    )
    from cyphrs_cli.client.files import AgentDir
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input

    if source is None or source == "-":
        raise UsageError("name the agent's directory (or its cert.pem) with --ca-url")
    if ttl is not None:
        parse_duration(ttl)
    if key_type is not None:  # refused now (exit 3), not at a daemon's first renewal
        from cyphrs_cli.keystore.base import KeySpec

        KeySpec.parse(key_type)
    hooks = ReloadHooks(exec_command, signal_spec, pid_file)
    hooks.check()
    if not daemon and (exec_command or signal_spec or pid_file):
        raise UsageError("--exec, --signal and --pid-file need --daemon")
    if not 0 <= jitter < 0.5:
        raise UsageError("--jitter must be a number from 0 to 0.5")
    request = RenewRequest(
        ca_url=ca_url,
        directory=AgentDir.of(Path(source)),
        root_pem=read_input(str(root)) if root is not None else None,
        ttl=ttl,
        key_type=key_type,
        timeout=timeout,
    )
    if not daemon:
        render_agent_result(renew_once(request), command="agent-renew", headline="Renewed")
        return

    def report(message: str, result: Any) -> None:
        # A closed stdout or stderr (a restarted journald) must not end a daemon whose
        # renewal already happened: its lines are lost, the daemon goes on.
        with contextlib.suppress(OSError, ValueError):
            if result is not None:
                render_agent_result(
                    result, command="agent-renew", headline="Renewed", one_line=True
                )
        if not render.quiet():
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(daemon_line(stamp, message))
                sys.stderr.flush()

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        run_daemon(
            request,
            hooks,
            stop,
            settings=DaemonSettings(fraction=due_fraction, jitter=jitter),
            report=report,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    report("stopped", None)
