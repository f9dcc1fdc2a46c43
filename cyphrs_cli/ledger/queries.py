"""Read-side queries over the ledger: certificate listings and the certificate register.

The effective status of a certificate is derived at read time: ``revoked`` beats
``expired`` beats the stored ``superseded``/``valid``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cyphrs_cli.ledger.events import rfc3339

STATUSES = ("valid", "expired", "revoked", "superseded")

REGISTER_COLUMNS = (
    "issuer",
    "serial",
    "fingerprint",
    "subject",
    "sans",
    "spiffe_id",
    "workflow",
    "permissions",
    "profile",
    "is_ca",
    "key_algorithm",
    "key_bits",
    "signature_algorithm",
    "not_before",
    "not_after",
    "status",
    "revoked_at",
    "revocation_reason",
    "replaces",
    "replaced_by",
    "requester",
    "key_storage",
    "issued_at",
)

# Only the columns the register shows (never ``pem``: a listing of 100k rows would read
# and drop ~100 MB of it), in the order ``_register_tuple`` reads them by position.
_COLUMNS = (
    "a.name AS issuer_name",
    "c.serial",
    "c.fingerprint",
    "c.subject",
    "c.sans",
    "c.spiffe_id",
    "c.workflow",
    "c.permissions",
    "c.profile",
    "c.is_ca",
    "c.key_algorithm",
    "c.signature_algorithm",
    "c.not_before",
    "c.not_after",
    "r.revoked_at AS revoked_at",
    "r.reason AS revocation_reason",
    "prev.serial AS replaces_serial",
    "next.serial AS replaced_by_serial",
    "next.issued_at AS replaced_at",
    "c.requester",
    "c.key_storage",
    "c.issued_at",
)
_FROM = """
FROM certificates c
LEFT JOIN authorities a ON a.id = c.authority_id
LEFT JOIN revocations r ON r.certificate_id = c.id
LEFT JOIN certificates prev ON prev.id = c.replaces_id
LEFT JOIN certificates next ON next.replaces_id = c.id
"""
_SELECT = "SELECT " + ", ".join(_COLUMNS) + _FROM
_NAMES = tuple(column.rsplit(" ", 1)[-1].removeprefix("c.") for column in _COLUMNS)


@dataclass(frozen=True)
class CertificateFilter:
    status: str | None = None
    profile: str | None = None
    issuer: str | None = None
    spiffe_id: str | None = None
    workflow: str | None = None
    san: str | None = None
    issued_after: datetime | None = None
    issued_before: datetime | None = None
    expiring_within: timedelta | None = None
    limit: int | None = None
    # Valid at this instant (``ledger.investigate``): rows are then shown as of it.
    valid_at: datetime | None = None


def _key_bits(algorithm: str) -> int | None:
    if algorithm.startswith("rsa"):
        return int(algorithm[3:])
    return {"p256": 256, "p384": 384, "ed25519": 256}.get(algorithm)


def register_row(row: sqlite3.Row | dict[str, Any], as_of: str) -> dict[str, Any]:
    """One certificate as the register (list --json, audit exports) shows it, as of a time.

    ``row`` holds the columns of ``_SELECT`` by name. Revocations and renewals recorded
    after ``as_of`` are left out, so an export of a past window says what was true at its
    end, whatever happened since.
    """
    return _register_tuple(tuple(row[name] for name in _NAMES), as_of)


def _register_tuple(row: tuple[Any, ...], as_of: str) -> dict[str, Any]:
    """``register_row`` over a plain row of ``_SELECT`` (by position: no per-row name lookup
    on the 100k-row path)."""
    (
        issuer_name,
        serial,
        fingerprint,
        subject,
        sans,
        spiffe_id,
        workflow,
        permissions,
        profile,
        is_ca,
        key_algorithm,
        signature_algorithm,
        not_before,
        not_after,
        revoked_at,
        revocation_reason,
        replaces_serial,
        replaced_by_serial,
        replaced_at,
        requester,
        key_storage,
        issued_at,
    ) = row
    revoked_at = revoked_at if revoked_at and revoked_at <= as_of else None
    replaced = replaced_at is not None and replaced_at <= as_of
    if revoked_at:
        status = "revoked"
    elif not_after < as_of:
        status = "expired"
    elif replaced:
        status = "superseded"
    else:
        status = "valid"
    return {
        "issuer": issuer_name,
        "serial": serial,
        "fingerprint": fingerprint,
        "subject": subject,
        "sans": json.loads(sans),
        "spiffe_id": spiffe_id,
        "workflow": workflow,
        "permissions": json.loads(permissions) if permissions else [],
        "profile": profile,
        "is_ca": bool(is_ca),
        "key_algorithm": key_algorithm,
        "key_bits": _key_bits(key_algorithm),
        "signature_algorithm": signature_algorithm,
        "not_before": not_before,
        "not_after": not_after,
        "status": status,
        "revoked_at": revoked_at,
        "revocation_reason": revocation_reason if revoked_at else None,
        "replaces": replaces_serial,
        "replaced_by": replaced_by_serial if replaced else None,
        "requester": requester,
        # generated | csr | reused for leaves; the key URI for CA certificates.
        "key_storage": key_storage,
        "issued_at": issued_at,
    }


def list_certificates(
    conn: sqlite3.Connection, query: CertificateFilter, now: datetime
) -> list[dict[str, Any]]:
    """Certificates matching ``query``, newest first, as a list (small results)."""
    return list(iter_certificates(conn, query, now))


def iter_certificates(
    conn: sqlite3.Connection, query: CertificateFilter, now: datetime
) -> Iterator[dict[str, Any]]:
    """Certificates matching ``query``, newest first, one at a time straight off the cursor
    (constant memory however many match); every filter is index-backed."""
    now_text = rfc3339(now)
    where: list[str] = []
    args: list[Any] = []
    if query.status == "valid":
        where.append("c.status = 'valid' AND c.not_after >= ?")
        args.append(now_text)
    elif query.status == "superseded":
        where.append("c.status = 'superseded' AND c.not_after >= ?")
        args.append(now_text)
    elif query.status == "revoked":
        where.append("c.status = 'revoked'")
    elif query.status == "expired":
        where.append("c.status != 'revoked' AND c.not_after < ?")
        args.append(now_text)
    for column, value in (
        ("c.profile", query.profile),
        ("a.name", query.issuer),
        ("c.spiffe_id", query.spiffe_id),
        ("c.workflow", query.workflow),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.san is not None:
        # The derived SAN table (migration 0006): one index probe, not a scan of every
        # row's JSON. Names are stored ASCII-lowercased; lower() here matches them.
        where.append("c.id IN (SELECT certificate_id FROM certificate_sans WHERE name = lower(?))")
        args.append(query.san)
    if query.issued_after is not None:
        where.append("c.issued_at >= ?")
        args.append(rfc3339(query.issued_after))
    if query.issued_before is not None:
        where.append("c.issued_at < ?")
        args.append(rfc3339(query.issued_before))
    if query.expiring_within is not None:
        where.append("c.status != 'revoked' AND c.not_after >= ? AND c.not_after <= ?")
        args += [now_text, rfc3339(now + query.expiring_within)]
    select, as_of = _SELECT, now_text
    if query.valid_at is not None:
        from cyphrs_cli.ledger import investigate

        as_of = rfc3339(query.valid_at)
        where.append(investigate.VALID_AT_CLAUSE)
        args += investigate.valid_at_args(as_of)
        select = "SELECT " + ", ".join((*_COLUMNS, *investigate.VALID_AT_COLUMNS))
        select += investigate.valid_at_from(_FROM, narrowed=bool(query.workflow or query.spiffe_id))
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY c.issued_at DESC, c.id DESC"
    if query.limit is not None:
        sql += " LIMIT ?"
        args.append(query.limit)
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: _register_tuple reads by position
    cursor.arraysize = 512
    if query.valid_at is None:
        for row in cursor.execute(sql, args):
            yield _register_tuple(row, now_text)
        return
    width = len(_COLUMNS)
    for row in cursor.execute(sql, args):
        yield {
            **_register_tuple(row[:width], as_of),
            **investigate.valid_at_extras(row[width:], as_of),
        }


def register_in_window(
    conn: sqlite3.Connection, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """Certificates whose validity overlaps the window, oldest first, as of its end."""
    cursor = conn.cursor()
    cursor.row_factory = None
    rows = cursor.execute(
        _SELECT + " WHERE c.issued_at < ? AND c.not_after >= ? ORDER BY c.issued_at, c.id",
        (rfc3339(until), rfc3339(since)),
    )
    return [_register_tuple(row, rfc3339(until)) for row in rows]


def ledger_record(conn: sqlite3.Connection, fingerprint: str) -> dict[str, Any]:
    """What the ledger knows of one exact certificate (matched by fingerprint), with the
    key evidence of the authority it belongs to when it is a CA certificate."""
    row = conn.execute(
        "SELECT c.id, c.status, c.profile, c.issued_at, c.requester, r.revoked_at, r.reason"
        " FROM certificates c LEFT JOIN revocations r ON r.certificate_id = c.id"
        " WHERE c.fingerprint = ?",
        (fingerprint,),
    ).fetchone()
    if row is None:
        return {"recorded": False}
    view: dict[str, Any] = {"recorded": True, **dict(zip(row.keys(), tuple(row), strict=True))}
    authority = conn.execute(
        "SELECT name, role, key_uri, key_storage, key_algorithm, key_generated_in, key_attributes"
        " FROM authorities WHERE certificate_id = ?",
        (row["id"],),
    ).fetchone()
    if authority is not None:
        key = dict(zip(authority.keys(), tuple(authority), strict=True))
        key["key_attributes"] = json.loads(key["key_attributes"])
        view["authority"] = key
    return view
