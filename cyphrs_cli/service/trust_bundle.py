"""The trust bundle use case (``cyphrs trust-bundle``): the home's root certificate(s) as
PEM, for the trust stores of services that verify agents.

A relying party should trust the *root* (the anchor) and learn intermediates from the
chain each agent presents (``fullchain.pem``): then a new intermediate needs no
redeployment. Every root in force is included -- during a root rotation the old and the
new one -- so that agents under either verify.

Each root is read from the ledger and re-checked before it is written: the PEM must parse,
be self-signed, be a CA, and hash to the fingerprint the ledger recorded at creation. An
edited row is refused (exit 8) instead of planting a stranger's root in every trust store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome


@dataclass(frozen=True)
class TrustAnchor:
    """One root certificate of the bundle, with what a reviewer compares out of band."""

    authority: str
    subject: str
    serial: str
    fingerprint_sha256: str
    not_before: str
    not_after: str
    pem: str


def collect_trust_anchors(home: CaHome, *, now: datetime | None = None) -> list[TrustAnchor]:
    """Every root CA of the home that is in force (not revoked, not expired), oldest first.

    Raises:
        CyphrsError: 6 no CA home or no root in force; 8 a root's ledger row does not match
        its certificate (edited PEM, not a self-signed CA).
    """
    from cryptography import x509

    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.errors import NotFoundError, StorageError
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    home.require_initialised()
    moment = rfc3339(now or utc_now())
    with open_ledger(home) as ledger:
        rows = ledger.conn.execute(
            "SELECT a.name, c.serial, c.subject, c.fingerprint, c.not_before, c.not_after,"
            " c.status, c.pem FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
            " WHERE a.role = 'root' ORDER BY a.id"
        ).fetchall()
    anchors = []
    for row in rows:
        if row["status"] == "revoked" or row["not_after"] <= moment:
            continue
        name = str(row["name"])
        try:
            cert = x509.load_pem_x509_certificate(str(row["pem"]).encode())
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise StorageError(f"the ledger's certificate of root {name!r} is unreadable") from exc
        if (
            fingerprint(cert) != row["fingerprint"]
            or cert.issuer != cert.subject
            or not constraints.ca
        ):
            raise StorageError(
                f"the ledger's certificate of root {name!r} does not match its recorded"
                f" fingerprint {row['fingerprint']} (edited ledger?); nothing written",
                hint="cyphrs audit verify",
            )
        anchors.append(
            TrustAnchor(
                authority=name,
                subject=cert.subject.rfc4514_string(),
                serial=str(row["serial"]),
                fingerprint_sha256=str(row["fingerprint"]),
                not_before=str(row["not_before"]),
                not_after=str(row["not_after"]),
                pem=str(row["pem"]).strip() + "\n",
            )
        )
    if not anchors:
        raise NotFoundError(f"no root CA in force in {home.root}")
    return anchors
