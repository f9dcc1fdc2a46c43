"""Revocation and CRLs.

A revocation is one ledger transaction (status, revocations row, event). A CRL's number is
allocated and committed *before* signing, so numbers only ever go up, even across crashes;
the signed CRL is recorded before it is written anywhere. ``crl`` holds the home lock
from allocation to the last file written, so the files in ``crls/`` never go backwards.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.errors import ConflictError, InvalidInputError, UsageError
from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, sha256_hex, utc_now

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography import x509

    from cyphrs_cli.ca.models import Issuer
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.db import Ledger

#: RFC 5280 reason codes by CLI name. ``unspecified`` is never emitted (omit the reason).
REASONS = (
    "key-compromise",
    "ca-compromise",
    "affiliation-changed",
    "superseded",
    "cessation-of-operation",
    "privilege-withdrawn",
    "aa-compromise",
)


def normalise_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    cleaned = reason.strip().lower().replace("_", "-")
    if cleaned == "unspecified":
        return None
    if cleaned not in REASONS:
        raise InvalidInputError(
            f"unknown revocation reason {reason!r}", hint=f"choose one of {', '.join(REASONS)}"
        )
    return cleaned


@dataclass(frozen=True)
class Revocation:
    certificate_id: int
    serial: str
    revoked_at: datetime
    reason: str | None
    was_ca: bool


def revoke_certificate(ledger: Ledger, row: sqlite3.Row, reason: str | None) -> Revocation:
    """Mark a certificate revoked; a second revocation is a conflict (exit 7)."""
    if row["is_ca"] and row["profile"] == "root":
        raise UsageError("a root CA cannot be revoked by a CRL it signs itself; retire it instead")
    reason = normalise_reason(reason)
    now = utc_now()
    with ledger.transaction() as conn:
        current = conn.execute(
            "SELECT status FROM certificates WHERE id = ?", (row["id"],)
        ).fetchone()
        if current["status"] == "revoked":
            raise ConflictError(f"certificate {row['serial']} is already revoked")
        conn.execute("UPDATE certificates SET status = 'revoked' WHERE id = ?", (row["id"],))
        conn.execute(
            "INSERT INTO revocations (certificate_id, revoked_at, reason) VALUES (?, ?, ?)",
            (row["id"], rfc3339(now), reason),
        )
        append_event(
            conn,
            LedgerEvent(
                type="certificate.revoked",
                target=f"certificate:{row['serial']}",
                details={
                    "certificate_id": row["id"],
                    "serial": row["serial"],
                    "reason": reason,
                    "revoked_at": rfc3339(now),
                    "was": current["status"],
                },
            ),
        )
    return Revocation(row["id"], row["serial"], now, reason, bool(row["is_ca"]))


@dataclass(frozen=True)
class PublishedCrl:
    authority: str
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    crl: x509.CertificateRevocationList


def reason_flag(reason: str) -> x509.ReasonFlags:
    """The RFC 5280 reason flag of a ledger reason name (CRL entries, OCSP responses)."""
    from cryptography import x509

    flag: x509.ReasonFlags = getattr(x509.ReasonFlags, reason.replace("-", "_"))
    return flag


def publish_crl(ledger: Ledger, issuer: Issuer, validity: timedelta) -> PublishedCrl:
    """Build, sign, self-check and record the issuer's next CRL."""
    from cryptography import x509

    from cyphrs_cli.ca.extensions import authority_key_identifier
    from cyphrs_cli.ca.issuance import fault_point, signature_hash

    assert issuer.certificate is not None and issuer.authority_id is not None
    now = utc_now()
    next_update = min(now + validity, issuer.certificate.not_valid_after_utc)
    if next_update <= now:
        raise UsageError(f"issuer {issuer.name!r} has expired; it can no longer publish CRLs")

    with ledger.transaction() as conn:
        (last,) = conn.execute(
            "SELECT coalesce(max(number), 0) FROM crls WHERE authority_id = ?",
            (issuer.authority_id,),
        ).fetchone()
        number = int(last) + 1
        crl_id = conn.execute(
            "INSERT INTO crls (authority_id, number, this_update, next_update) VALUES (?,?,?,?)",
            (issuer.authority_id, number, rfc3339(now), rfc3339(next_update)),
        ).lastrowid
        entries = list(
            conn.execute(
                "SELECT c.serial, r.revoked_at, r.reason FROM certificates c"
                " JOIN revocations r ON r.certificate_id = c.id"
                " WHERE c.authority_id = ? AND c.not_after >= ? ORDER BY c.serial",
                (issuer.authority_id, rfc3339(now)),
            )
        )

    fault_point("crl-after-allocate")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(
            authority_key_identifier(issuer.certificate),
            critical=False,
        )
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry["serial"], 16))
            .revocation_date(datetime.fromisoformat(entry["revoked_at"].replace("Z", "+00:00")))
        )
        if entry["reason"]:
            revoked = revoked.add_extension(
                x509.CRLReason(reason_flag(entry["reason"])), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(issuer.signer, signature_hash(issuer.signer))  # type: ignore[arg-type]
    if not crl.is_signature_valid(issuer.certificate.public_key()):  # type: ignore[arg-type]
        raise ConflictError("self-check failed: the new CRL does not verify; nothing published")

    from cryptography.hazmat.primitives import serialization

    pem = crl.public_bytes(serialization.Encoding.PEM).decode()
    with ledger.transaction() as conn:
        conn.execute("UPDATE crls SET pem = ? WHERE id = ?", (pem, crl_id))
        append_event(
            conn,
            LedgerEvent(
                type="crl.published",
                target=f"authority:{issuer.name}",
                details={
                    "authority": issuer.name,
                    "number": number,
                    "this_update": rfc3339(now),
                    "next_update": rfc3339(next_update),
                    # The CRL itself is stored; the event pins its content without
                    # growing with every revocation ever made.
                    "entries": len(entries),
                    "sha256": sha256_hex(crl.public_bytes(serialization.Encoding.DER)),
                },
            ),
        )
    return PublishedCrl(issuer.name, number, now, next_update, len(entries), crl)


def store_crl(home: CaHome, published: PublishedCrl, issuer_cert: x509.Certificate) -> Path:
    """Keep the recorded CRL in the home as ``crls/ALIAS.crl`` (DER, for distribution
    points) and ``crls/ALIAS.crl.pem``; returns the PEM path.

    The caller holds the home lock across ``publish_crl`` and this call, so publications
    are written in number order. As a second line of defence, a file in place that is a
    CRL of this issuer (its signature verifies against ``issuer_cert``) with a higher
    number, or the same number and other content, is never replaced (exit 7): a published
    CRL never goes backwards, even if a ledger was restored from an older copy. A file
    that is not this issuer's CRL (unreadable, or signed by another key) cannot pin the
    number and is replaced.
    """
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, ensure_private_dir

    ensure_private_dir(home.crls_dir)
    base = home.crls_dir / f"{published.authority}.crl"
    pem_path = base.with_name(base.name + ".pem")
    outputs = (
        (base, published.crl.public_bytes(serialization.Encoding.DER)),
        (pem_path, published.crl.public_bytes(serialization.Encoding.PEM)),
    )
    for path, data in outputs:
        in_place = _number_in_place(path, issuer_cert)
        if in_place is not None and in_place >= published.number and path.read_bytes() != data:
            raise ConflictError(
                f"CRL #{published.number} of {published.authority!r} is recorded, but {path}"
                f" already holds CRL #{in_place} of this issuer; left in place",
                hint="the ledger is older than the published CRLs: run 'cyphrs audit verify'",
            )
    for path, data in outputs:
        atomic_write(path, data, mode=PUBLIC_FILE)
    return pem_path


def _number_in_place(path: Path, issuer_cert: x509.Certificate) -> int | None:
    """The CRL number of the file at ``path`` if it is a genuine CRL of this issuer."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
        if crl.issuer != issuer_cert.subject:
            return None
        if not crl.is_signature_valid(issuer_cert.public_key()):  # type: ignore[arg-type]
            return None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return None
    return int(number)
