"""Plain-data views of core results, shared by every command's --json and human output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyphrs_cli.ca.models import IssuedCertificate


def issued_view(issued: IssuedCertificate) -> dict[str, Any]:
    from cyphrs_cli.ca.parsing import certificate_summary
    from cyphrs_cli.ledger.events import rfc3339

    summary = certificate_summary(issued.certificate)
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
