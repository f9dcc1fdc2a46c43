"""Rows of the ledger's ``authorities`` and ``certificates`` tables.

Each certificate row's immutable columns are summarised by ``row_digest``; the ``issued``
event carries that digest, so ``audit verify`` can detect an edited certificate row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from typing import Any

from cyphrs_cli.ledger.events import canonical_json, sha256_hex

CERT_IMMUTABLE_COLUMNS = (
    "serial",
    "issuer_ski",
    "authority_id",
    "fingerprint",
    "subject",
    "sans",
    "spiffe_id",
    "workflow",
    "permissions",
    "profile",
    "key_algorithm",
    "signature_algorithm",
    "is_ca",
    "not_before",
    "not_after",
    "replaces_id",
    "requester",
    "key_storage",
    "issued_at",
    "pem",
)


@dataclass(frozen=True)
class CertificateRow:
    serial: str
    issuer_ski: str
    authority_id: int | None
    fingerprint: str
    subject: str
    sans: str  # JSON list
    spiffe_id: str | None
    workflow: str | None
    permissions: str | None  # JSON list
    profile: str
    key_algorithm: str
    signature_algorithm: str
    is_ca: int
    not_before: str
    not_after: str
    replaces_id: int | None
    requester: str | None
    key_storage: str | None
    issued_at: str
    pem: str


def row_digest(row: CertificateRow | sqlite3.Row | dict[str, Any]) -> str:
    values = (
        _as_dict(row)
        if isinstance(row, CertificateRow)
        else {k: row[k] for k in CERT_IMMUTABLE_COLUMNS}
    )
    return sha256_hex(canonical_json({k: values[k] for k in CERT_IMMUTABLE_COLUMNS}))


def insert_certificate(
    conn: sqlite3.Connection, row: CertificateRow, *, sha1: str | None = None
) -> int:
    """Insert ``row`` and its SHA-1 row; ``sha1``: the DER's SHA-1 (hex) when the caller
    has it (an issuance computes it outside the transaction), else taken from the PEM."""
    columns = ", ".join(CERT_IMMUTABLE_COLUMNS)
    marks = ", ".join("?" for _ in CERT_IMMUTABLE_COLUMNS)
    values = _as_dict(row)
    cursor = conn.execute(
        f"INSERT INTO certificates ({columns}) VALUES ({marks})",  # noqa: S608 - fixed names
        [values[c] for c in CERT_IMMUTABLE_COLUMNS],
    )
    assert cursor.lastrowid is not None
    conn.execute(
        "INSERT INTO certificate_sha1 (certificate_id, sha1) VALUES (?, ?)",
        (cursor.lastrowid, sha1 if sha1 is not None else pem_sha1(row.pem)),
    )
    return cursor.lastrowid


def pem_sha1(pem: str) -> str:
    """SHA-1 of the DER inside one PEM certificate (what older logs print as fingerprint)."""
    import base64
    import hashlib

    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.sha1(base64.b64decode(body), usedforsecurity=False).hexdigest()


def insert_authority(
    conn: sqlite3.Connection,
    *,
    name: str,
    role: str,
    parent_id: int | None,
    ski: str,
    subject: str,
    key_uri: str,
    key_storage: str,
    key_algorithm: str,
    key_generated_in: str,
    key_attributes: dict[str, bool],
    trust_domain: str | None,
    created_at: str,
) -> int:
    cursor = conn.execute(
        "INSERT INTO authorities (name, role, parent_id, ski, subject, key_uri, key_storage,"
        " key_algorithm, key_generated_in, key_attributes, trust_domain, created_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            name,
            role,
            parent_id,
            ski,
            subject,
            key_uri,
            key_storage,
            key_algorithm,
            key_generated_in,
            json.dumps(key_attributes, sort_keys=True),
            trust_domain,
            created_at,
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def authority_by_name(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM authorities WHERE name = ?", (name,)
    ).fetchone()
    return row


def certificates_by_serial(conn: sqlite3.Connection, serial: str) -> list[sqlite3.Row]:
    return list(conn.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)))


def certificates_by_serial_prefix(
    conn: sqlite3.Connection, prefix: str, limit: int = 2
) -> list[sqlite3.Row]:
    """Certificates whose serial starts with ``prefix`` (hex digits only), at most ``limit``."""
    return list(
        conn.execute(
            "SELECT * FROM certificates WHERE substr(serial, 1, ?) = ? ORDER BY id LIMIT ?",
            (len(prefix), prefix, limit),
        )
    )


def find_certificate(
    conn: sqlite3.Connection,
    *,
    serial: str | None = None,
    fingerprint: str | None = None,
    prefix: str | None = None,
) -> sqlite3.Row:
    """Exactly one certificate by serial (ledger hex form) or by SHA-256 fingerprint.

    With ``prefix`` (hex digits, see ``serials.serial_prefix``), a serial that matches
    nothing whole may match the start of exactly one serial; several matches are a
    conflict (exit 7), never a guess."""
    from cyphrs_cli.errors import ConflictError, NotFoundError

    if fingerprint is not None:
        rows = list(
            conn.execute("SELECT * FROM certificates WHERE fingerprint = ?", (fingerprint,))
        )
        label = "that certificate"
    else:
        rows = certificates_by_serial(conn, serial or "")
        label = f"serial {serial}"
        if not rows and prefix is not None:
            rows = certificates_by_serial_prefix(conn, prefix)
            if len(rows) > 1:
                raise ConflictError(
                    f"serial prefix {prefix} matches several certificates",
                    hint="give more digits of the serial (cyphrs list shows them in full"
                    " when piped or with --wide)",
                )
    if not rows:
        raise NotFoundError(f"no certificate with {label} in the ledger")
    if len(rows) > 1:
        raise ConflictError(
            f"{label} matches {len(rows)} certificates from different issuers",
            hint="pass the certificate file instead of the serial",
        )
    row: sqlite3.Row = rows[0]
    return row


def authority_digest(row: sqlite3.Row | dict[str, Any]) -> str:
    """SHA-256 of an ``authorities`` row as stored (every column, ``id`` included).

    The event that creates or changes an authority carries this digest, so an edited key
    URI, key attributes, trust domain or certificate id is detectable. NULL columns are
    left out: a migration that adds a nullable column keeps every earlier digest valid,
    while giving such a column a value later still changes the digest.
    """
    if isinstance(row, sqlite3.Row):
        values = dict(zip(row.keys(), tuple(row), strict=True))
    else:
        values = dict(row)
    return sha256_hex(canonical_json({k: v for k, v in values.items() if v is not None}))


def authority_row_digest(conn: sqlite3.Connection, authority_id: int) -> str:
    """The digest of authority ``authority_id`` as it stands in this transaction."""
    row = conn.execute("SELECT * FROM authorities WHERE id = ?", (authority_id,)).fetchone()
    assert row is not None
    return authority_digest(row)


def _as_dict(row: CertificateRow) -> dict[str, Any]:
    """``dataclasses.asdict`` without its deep copy: every field is a str, int or None
    (the deep copy was a tenth of a batch item's CPU time)."""
    return {f.name: getattr(row, f.name) for f in fields(row)}
