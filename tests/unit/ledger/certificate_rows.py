"""Synthetic certificate rows for ledger tests: every immutable column set, written with a
plain INSERT (no signature, no side tables), so a test controls exactly what is stored."""

from __future__ import annotations

import sqlite3
from typing import Any

from cyphrs_cli.ledger.records import CERT_IMMUTABLE_COLUMNS


def certificate_row(n: int, **columns: Any) -> dict[str, Any]:
    """Row number ``n`` (serial and fingerprint derived from it), with ``columns`` set over
    the defaults; columns not named stay NULL."""
    row: dict[str, Any] = dict.fromkeys(CERT_IMMUTABLE_COLUMNS)
    row.update(
        serial=f"{n:040x}",
        issuer_ski="00",
        fingerprint=f"sha256:{n:064x}",
        subject=f"CN=c{n}",
        sans="[]",
        profile="agent",
        key_algorithm="p256",
        signature_algorithm="ecdsa-with-SHA256",
        is_ca=0,
        not_before="2026-01-01T00:00:00Z",
        not_after="2036-01-01T00:00:00Z",
        issued_at="2026-01-01T00:00:00Z",
        pem="-----BEGIN CERTIFICATE-----",
    )
    row.update(columns)
    return row


def insert_row(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
    """INSERT ``row`` into ``certificates``; its id."""
    cursor = conn.execute(
        f"INSERT INTO certificates ({', '.join(CERT_IMMUTABLE_COLUMNS)})"  # noqa: S608
        f" VALUES ({', '.join('?' for _ in CERT_IMMUTABLE_COLUMNS)})",
        [row[c] for c in CERT_IMMUTABLE_COLUMNS],
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid
