"""``audit verify``, ``audit checkpoint``, ``audit verify-export`` and ``audit-export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import (
    ForceOption,
    HomeOption,
    IssuerOption,
    JsonOption,
    NoInputOption,
    PassphraseEnvOption,
    PassphraseFileOption,
    PinEnvOption,
    PinFileOption,
    QuietOption,
)
from cyphrs_cli.errors import EXIT_CODE_HELP

VERIFY_EPILOG = f"""\
Examples:

  cyphrs audit verify

  cyphrs audit verify --checkpoint bundle/checkpoint.json --json

Exit 0: the ledger verifies. Exit 10: it does not; the first problem is named.

{EXIT_CODE_HELP}"""

EXPORT_EPILOG = f"""\
Examples:

  cyphrs audit-export --since 2026-10-01 --until 2026-11-01 --out q4-evidence

  cyphrs audit verify-export q4-evidence --root acme-root.pem

{EXIT_CODE_HELP}"""

CHECKPOINT_EPILOG = f"""\
Examples:

  cyphrs audit checkpoint --out /var/backups/cyphrs/cp-$(date +%F).json

  cyphrs audit verify --checkpoint /var/backups/cyphrs/cp-2026-11-29.json

Keep checkpoints outside the CA host: a truncated ledger is only detectable against one.

{EXIT_CODE_HELP}"""

audit_app = typer.Typer(
    help="Verify the ledger and audit bundles; sign checkpoints.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
    app.command("audit-export", epilog=EXPORT_EPILOG)(audit_export)


def _fail_unless_ok(result: dict[str, Any], what: str) -> None:
    from cyphrs_cli.errors import CheckNotMet

    if not result["ok"]:
        problems = result["problems"]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckNotMet(f"{what} failed: {problems[0]}{more}")


@audit_app.command("verify", epilog=VERIFY_EPILOG)
def verify(
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint.json handed out earlier (repeatable).",
            dir_okay=False,
        ),
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Walk the hash chain and the records it covers; name the first broken link."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import InvalidInputError
    from cyphrs_cli.ledger.verify import verify_ledger

    external = []
    for path in checkpoint or []:
        try:
            external.append((str(path), json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"{path}: not a readable checkpoint ({exc})") from exc
    ca_home = resolve_home(home)
    ca_home.require_initialised()
    with open_ledger(ca_home) as ledger:
        result = verify_ledger(ledger.conn, external).to_json()
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.audit-verify/v1", **result})
    elif result["ok"]:
        render.console().print(
            f"Ledger verified: {result['events_checked']} events, "
            f"{result['certificates_checked']} certificates, "
            f"{result['checkpoints_checked']} checkpoint(s); head seq {result['head']['seq']}"
        )
    _fail_unless_ok(result, "ledger verification")


@audit_app.command("checkpoint", epilog=CHECKPOINT_EPILOG)
def checkpoint(
    out: Annotated[
        Path | None, typer.Option("--out", dir_okay=False, help="Also write it here.")
    ] = None,
    issuer: IssuerOption = None,
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    force: ForceOption = False,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Sign the ledger's current head (seq, hash, time) with a CA key and print it."""
    from cyphrs_cli.audit.checkpoint import create_checkpoint
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, refuse_existing

    if out is not None:
        refuse_existing([out], force=force)
    ca_home = resolve_home(home)
    config = load_config(ca_home)
    with open_ledger(ca_home) as ledger:
        signer = load_issuer(
            ca_home,
            config,
            ledger,
            issuer,
            ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input),
        )
        document = create_checkpoint(ledger, signer)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if out is not None:
        atomic_write(out, text.encode(), mode=PUBLIC_FILE)
    render.emit_text(text)


@audit_app.command("verify-export", epilog=EXPORT_EPILOG)
def verify_export(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz archive.")],
    root: Annotated[
        Path | None, typer.Option("--root", dir_okay=False, help="Root certificate you trust.")
    ] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Check an export bundle offline: file hashes, signatures, event chain, counts."""
    import tempfile

    from cyphrs_cli.audit.export import extract_archive
    from cyphrs_cli.audit.verify_export import verify_bundle
    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.errors import NotFoundError
    from cyphrs_cli.fsutil import read_input

    # A missing or unreadable --root is the user's (exit 6 / 8), not a bug; never stdin.
    anchor = None
    if root is not None:
        anchor = load_certificates(read_input(str(root.absolute())), source=str(root))[0]
    if bundle.is_file():
        with tempfile.TemporaryDirectory() as scratch:
            result = verify_bundle(extract_archive(bundle, Path(scratch)), anchor)
    elif bundle.is_dir():
        result = verify_bundle(bundle, anchor)
    else:
        raise NotFoundError(f"{bundle} is neither a bundle directory nor an archive")
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.audit-verify-export/v1", **result})
    elif result["ok"]:
        render.console().print(
            f"Bundle verified: {result['files_checked']} files, {result['events_checked']} events,"
            f" window {result['window']['since']} to {result['window']['until']}"
        )
    _fail_unless_ok(result, "bundle verification")


def audit_export(
    out: Annotated[
        Path, typer.Option("--out", file_okay=False, help="Bundle directory to create.")
    ],
    since: Annotated[str, typer.Option("--since", help="Window start (RFC 3339 or date).")],
    until: Annotated[str | None, typer.Option("--until", help="Window end [default: now].")] = None,
    issuer: Annotated[
        str | None,
        typer.Option("--sign-with", help="CA whose key signs the bundle [default issuer]."),
    ] = None,
    archive: Annotated[
        bool, typer.Option("--archive", help="Also write OUT.tar.gz (reproducible) next to OUT.")
    ] = False,
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    force: ForceOption = False,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Export evidence for a time window: registers, events, CRLs, HTML report, signed manifest."""
    from datetime import timedelta

    from cyphrs_cli.audit.export import export_bundle
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.times import parse_time

    # Times are kept to the second and the window's end is exclusive: the default end is
    # the next second, so everything recorded so far is in.
    window = (parse_time(since), parse_time(until) if until else utc_now() + timedelta(seconds=1))
    ca_home = resolve_home(home)
    config = load_config(ca_home)
    with open_ledger(ca_home) as ledger:
        signer = load_issuer(
            ca_home,
            config,
            ledger,
            issuer,
            ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input),
        )
        result = export_bundle(ledger, signer, out, *window, force=force)
    archive_info = None
    if archive:
        from cyphrs_cli.audit.export import write_archive

        archive_path = out.with_name(out.name + ".tar.gz")
        archive_info = {"path": str(archive_path), "sha256": write_archive(out, archive_path)}
    summary = {
        "directory": str(result.directory),
        "archive": archive_info,
        "window": result.manifest["window"],
        "counts": result.manifest["counts"],
        "ledger_verified": result.manifest["ledger_verified"],
        "checkpoint": {
            "seq": result.checkpoint["seq"],
            "head_hash": result.checkpoint["head_hash"],
        },
    }
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.audit-export/v1", **summary})
        return
    counts = summary["counts"]
    render.console().print(
        f"Exported {counts['certificates']} certificates and {counts['events']} events to"
        f" {summary['directory']} (open report.html)"
    )
    if not summary["ledger_verified"]:
        render.note("warning: the ledger did not verify; see report.html")
