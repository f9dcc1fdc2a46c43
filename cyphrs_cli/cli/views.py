"""Plain-data views of core results, shared by every command's --json and human output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyphrs_cli.ca.delivery import PemBundle
    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.service.requests import IssueResult


def refuse_key_on_terminal(*, force: bool) -> None:
    """Refuse to print a generated private key to a terminal (exit 2) unless ``--force``.

    Called before anything is signed, by every path that would put a key on stdout: PEM
    (``--out -``) and JSON (``--json`` without ``--out-dir``) alike -- a key on a screen ends
    up in scroll-back, screen recordings and terminal logs.
    """
    import sys

    from cyphrs_cli.errors import UsageError

    if sys.stdout.isatty() and not force:
        raise UsageError(
            "refusing to print a private key to a terminal",
            hint="redirect stdout, use --out-dir, or add --force",
        )


def issued_view(issued: IssuedCertificate) -> dict[str, Any]:
    from cyphrs_cli.ca.parsing import issued_summary
    from cyphrs_cli.ledger.events import rfc3339

    summary = issued_summary(issued.certificate, issued.claims)
    return {
        "serial": issued.serial,
        "fingerprint": issued.fingerprint,
        "profile": issued.profile,
        "issuer": issued.issuer_name,
        "subject": summary["subject"],
        "sans": summary["sans"],
        "spiffe_id": issued.spiffe_id,
        "agent_claims": summary["agent_claims"],
        "not_before": rfc3339(issued.not_before),
        "not_after": rfc3339(issued.not_after),
        "validity_clamped": issued.clamped,
        "key": summary["key"],
        "ledger_id": issued.record_id,
    }


def pem_view(bundle: PemBundle) -> dict[str, str | None]:
    return {
        "certificate": bundle.certificate,
        "chain": bundle.chain,
        "ca": bundle.root,
        "private_key": bundle.private_key,
    }


def render_issued(
    result: IssueResult,
    *,
    out: str | None,
    command: str,
    headline: str,
) -> None:
    """Show a recorded (and, with --out-dir, written) certificate: PEM on stdout with
    ``--out -``, --json, or a human summary. Issue and renew share it."""
    from cyphrs_cli.cli import render

    issued, bundle = result.issued, result.bundle
    view = issued_view(issued)
    if result.replaces is not None:
        view["replaces"] = result.replaces
    if result.files is not None:
        view["files"] = result.files
    if out == "-":
        render.emit_text(bundle.fullchain + (bundle.private_key or ""))
    elif render.json_mode():
        if result.files is None:
            view["pem"] = pem_view(bundle)
        render.emit_json({"schema": f"cyphrs.{command}/v1", "certificate": view})
    else:
        console = render.console()
        console.print(headline.format(**view))
        for label in ("subject", "spiffe_id", "not_after", "fingerprint"):
            if view[label]:
                console.print(f"  {label.replace('_', ' '):<12}{view[label]}")
        for role, path in view.get("files", {}).items():
            console.print(f"  {role:<12}{path}")
    if issued.clamped:
        render.note("note: validity was shortened to end with the issuer's")
