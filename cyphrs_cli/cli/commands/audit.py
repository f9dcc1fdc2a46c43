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

  cyphrs audit verify --root-fingerprint sha256:3f1c...

  cyphrs audit verify --root acme-root.pem --checkpoint /safe/cp.json --json

Checkpoint signatures are verified only against a CA pinned from outside the ledger
(--root FILE or --root-fingerprint, the fingerprint init-root printed); without one,
verify says that they were not verified, and --checkpoint is refused (exit 2).

Exit 0: the ledger verifies. Exit 10: it does not; the first problem is named.
Exit 8: the ledger file is missing, empty or has no cyphrs schema.

{EXIT_CODE_HELP}"""

EXPORT_EPILOG = f"""\
Examples:

  cyphrs audit-export --since 2026-10-01 --until 2026-11-01 --out q4-evidence

  cyphrs audit verify-export q4-evidence --root acme-root.pem

  cyphrs audit-export --since 2026-11-29 --out incident --timeline workflow=payments-recon

--timeline adds timelines/N-KIND.json and .csv for the window, listed in the manifest.

audit-export refuses (exit 8) a ledger that does not verify, unless --allow-unverified,
which marks the bundle; verify-export rejects a marked bundle (exit 10). verify-export
needs an anchor (--root or --root-fingerprint), or --trust-bundle-root to accept the
bundle's own root explicitly (exit 2 otherwise). A malformed bundle exits 3.

{EXIT_CODE_HELP}"""

CHECKPOINT_EPILOG = f"""\
Examples:

  cyphrs audit checkpoint --out /var/backups/cyphrs/cp-$(date +%F).json

  cyphrs audit verify --root acme-root.pem --checkpoint /var/backups/cyphrs/cp-2026-11-29.json

Keep checkpoints outside the CA host: a truncated ledger is only detectable against one.

{EXIT_CODE_HELP}"""

EVENTS_EPILOG = f"""\
Examples:

  cyphrs audit events --since 2026-10-01 --type 'policy.*'

  cyphrs audit events --actor renew-bot --target 'certificate:*' --json

Reads the event log (time, actor, host, outcome, target, details) and signs nothing; the
hash chain is checked by 'cyphrs audit verify'. --type may be repeated; --type and
--target take shell patterns (* and ?).

{EXIT_CODE_HELP}"""

audit_app = typer.Typer(
    help="Read, verify and checkpoint the ledger's event log; verify audit bundles.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        dir_okay=False,
        help="This home's root certificate, obtained outside the CA host (the trust anchor).",
    ),
]
RootFingerprintOption = Annotated[
    str | None,
    typer.Option(
        "--root-fingerprint",
        metavar="sha256:HEX",
        help="SHA-256 fingerprint of this home's root, as init-root printed it (trust anchor).",
    ),
]


def _anchor_text(anchor: dict[str, Any] | None) -> str:
    if anchor is None:
        return "none"
    return f"{anchor['fingerprint']} ({anchor['source']})"


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
            help="A checkpoint.json handed out earlier (repeatable; needs an anchor).",
            dir_okay=False,
        ),
    ] = None,
    root: RootOption = None,
    root_fingerprint: RootFingerprintOption = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Walk the hash chain and every table it covers; name the first broken link."""
    from cyphrs_cli.audit.checkpoint import load_anchor
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import InvalidInputError, UsageError
    from cyphrs_cli.service.evidence import verify as verify_home

    anchor = load_anchor(str(root) if root else None, root_fingerprint)
    if checkpoint and anchor is None:
        raise UsageError(
            "--checkpoint needs a trust anchor: a checkpoint proves nothing unless its signer"
            " is pinned",
            hint="add --root ROOT.pem or --root-fingerprint sha256:... (printed by init-root)",
        )
    external = []
    for path in checkpoint or []:
        try:
            external.append((str(path), json.loads(path.read_text())))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            # RecursionError: a deeply nested JSON "bomb" is hostile input, not a bug.
            raise InvalidInputError(f"{path}: not a readable checkpoint ({exc})") from exc
    result = verify_home(resolve_home(home), external, anchor=anchor).to_json()
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.audit-verify/v1", **result})
    elif result["ok"]:
        render.console().print(
            f"Ledger verified: {result['events_checked']} events, "
            f"{result['certificates_checked']} certificates, "
            f"{result['authorities_checked']} authorities, {result['crls_checked']} CRLs, "
            f"{result['checkpoints_checked']} checkpoint(s); head seq {result['head']['seq']}"
        )
        if result["checkpoint_signatures_verified"]:
            render.console().print(
                f"Checkpoint signatures verified against {_anchor_text(result['anchor'])}"
            )
        else:
            render.note(
                "warning: checkpoint signatures were NOT verified (no trust anchor); pass"
                " --root or --root-fingerprint"
            )
    _fail_unless_ok(result, "ledger verification")


@audit_app.command("events", epilog=EVENTS_EPILOG)
def audit_events(
    since: Annotated[
        str | None, typer.Option("--since", help="From this time (RFC 3339 or date).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Before this time (RFC 3339 or date).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only events whose actor (who ran it) is this.")
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--type", help="Event type or pattern, e.g. policy.denied, 'key.*'."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Target or pattern, e.g. 'certificate:0a1b*'."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the newest N matches.")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Read the event log (who, when, where, outcome) with filters; signs nothing."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.ledger.event_log import EventFilter
    from cyphrs_cli.service.records import read_events
    from cyphrs_cli.times import parse_time

    where = EventFilter(
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        actor=actor,
        types=tuple(event_type or ()),
        target=target,
        limit=limit,
    )
    events = read_events(resolve_home(home), where)
    if render.json_mode():
        render.emit_json(
            {"schema": "cyphrs.audit-events/v1", "events": events, "count": len(events)}
        )
        return
    out = render.console()
    headers = ("seq", "at", "type", "actor", "host", "outcome", "target")
    rows = [[str(e[h] if e[h] is not None else "-") for h in headers] for e in events]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out.print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        out.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    render.note(f"{len(events)} event(s)")


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
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, refuse_existing
    from cyphrs_cli.service.authority import Authority

    if out is not None:
        refuse_existing([out], force=force)
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)
    with Authority.open(resolve_home(home), issuer=issuer, secrets=secrets) as ca:
        document = ca.checkpoint().document
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if out is not None:
        atomic_write(out, text.encode(), mode=PUBLIC_FILE)
    render.emit_text(text)


@audit_app.command("verify-export", epilog=EXPORT_EPILOG)
def verify_export(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz archive.")],
    root: RootOption = None,
    root_fingerprint: RootFingerprintOption = None,
    trust_bundle_root: Annotated[
        bool,
        typer.Option(
            "--trust-bundle-root",
            help="No anchor: accept the root inside the bundle (proves self-consistency only).",
        ),
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Check an export bundle offline: file hashes, signatures, event chain, counts."""
    import tempfile

    from cyphrs_cli.audit.checkpoint import load_anchor
    from cyphrs_cli.audit.export import extract_archive
    from cyphrs_cli.audit.verify_export import verify_bundle
    from cyphrs_cli.errors import NotFoundError, UsageError

    anchor = load_anchor(str(root) if root else None, root_fingerprint)
    if anchor is not None and trust_bundle_root:
        raise UsageError("--trust-bundle-root contradicts --root / --root-fingerprint")
    if anchor is None and not trust_bundle_root:
        raise UsageError(
            "verify-export needs a trust anchor: the bundle's own root proves nothing",
            hint="pass --root ROOT.pem or --root-fingerprint sha256:..., or --trust-bundle-root",
        )
    if bundle.is_file():
        with tempfile.TemporaryDirectory() as scratch:
            unpacked = extract_archive(bundle, Path(scratch))
            result = verify_bundle(unpacked, anchor, trust_bundle_root=trust_bundle_root)
    elif bundle.is_dir():
        result = verify_bundle(bundle, anchor, trust_bundle_root=trust_bundle_root)
    else:
        raise NotFoundError(f"{bundle} is neither a bundle directory nor an archive")
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.audit-verify-export/v1", **result})
    elif result["ok"]:
        render.console().print(
            f"Bundle verified: {result['files_checked']} files, {result['events_checked']} events,"
            f" window {result['window']['since']} to {result['window']['until']}"
        )
        render.console().print(f"Trust anchor: {_anchor_text(result['anchor'])}")
        if trust_bundle_root:
            render.note(
                "warning: anchored only in the bundle's own root; this proves the bundle is"
                " self-consistent, not that it comes from your CA"
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
    allow_unverified: Annotated[
        bool,
        typer.Option(
            "--allow-unverified",
            help="Export a ledger that does not verify (forensics); the bundle is marked and"
            " verify-export rejects it.",
        ),
    ] = False,
    timeline: Annotated[
        list[str] | None,
        typer.Option(
            "--timeline",
            metavar="KIND=VALUE",
            help="Add the window's timeline of spiffe-id=ID, workflow=NAME, issuer=ALIAS or"
            " serial=HEX to the bundle (repeatable).",
        ),
    ] = None,
    root: RootOption = None,
    root_fingerprint: RootFingerprintOption = None,
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
    from cyphrs_cli.audit.checkpoint import load_anchor
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.investigation import TimelineScope
    from cyphrs_cli.service.requests import ExportRequest
    from cyphrs_cli.times import parse_time

    request = ExportRequest(
        out,
        parse_time(since),
        parse_time(until) if until else None,
        force=force,
        allow_unverified=allow_unverified,
        anchor=load_anchor(str(root) if root else None, root_fingerprint),
        archive=archive,
        timelines=tuple(TimelineScope.parse(text) for text in timeline or ()),
    )
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)
    with Authority.open(resolve_home(home), issuer=issuer, secrets=secrets) as ca:
        exported = ca.export(request)
    result = exported.result
    archive_info = None
    if exported.archive_path is not None:
        archive_info = {"path": str(exported.archive_path), "sha256": exported.archive_sha256}
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
        render.note(
            "warning: the ledger did not verify; the bundle is marked (ledger_verified: false)"
            " and verify-export rejects it; see report.html"
        )
