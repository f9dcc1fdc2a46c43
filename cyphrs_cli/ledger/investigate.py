"""Read-side queries for incident reconstruction: which certificate was valid at an instant,
a certificate by any handle a responder holds, its renewal chain and history, and the
events of one identity, workflow, issuer or certificate in a window with their hash chain
checked.

Every query is index-backed (migration ``0005_investigation``) so it answers in well under
a second on a ledger of a million certificates; the use cases that shape the answers are in
``cyphrs_cli.service.investigation``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cyphrs_cli.ledger.events import EVENT_COLUMNS, GENESIS_HASH, sha256_hex

#: Extra columns ``list --valid-at`` reads after the register's own (``queries._COLUMNS``):
#: the revocation as recorded (the register hides one after the instant) and when the
#: issuing intermediate's own certificate was revoked.
VALID_AT_COLUMNS = (
    "r.revoked_at AS recorded_revoked_at",
    "r.reason AS recorded_reason",
    "(SELECT ir.revoked_at FROM authorities ia JOIN revocations ir"
    " ON ir.certificate_id = ia.certificate_id WHERE ia.id = c.authority_id)"
    " AS issuer_revoked_at",
)

#: A certificate valid at ``?`` (three times the instant): issued and inside its validity
#: (RFC 5280: both ends inclusive), not revoked by then, and its issuer not revoked by then.
#: ``not_after >= ?`` walks ``certificates_validity`` and tests ``issued_at`` in the index.
VALID_AT_CLAUSE = (
    "c.not_after >= ? AND c.issued_at <= ? AND c.not_before <= ?"
    " AND (r.revoked_at IS NULL OR r.revoked_at > ?)"
    " AND NOT EXISTS (SELECT 1 FROM authorities ia JOIN revocations ir"
    " ON ir.certificate_id = ia.certificate_id WHERE ia.id = c.authority_id"
    " AND ir.revoked_at <= ?)"
)


def valid_at_from(from_clause: str, *, narrowed: bool) -> str:
    """The register's FROM clause for a valid-at query. Without a workflow or SPIFFE ID
    (whose equality indexes are narrower) the certificates are read through
    ``certificates_validity``: SQLite, without statistics (cyphrs never runs ANALYZE),
    would otherwise walk ``certificates_issued_at`` for the ORDER BY -- every certificate
    issued before the instant."""
    if narrowed:
        return from_clause
    return from_clause.replace(
        "FROM certificates c", "FROM certificates c INDEXED BY certificates_validity", 1
    )


def valid_at_args(at: str) -> list[str]:
    return [at] * 5


#: The fields ``valid_at_extras`` adds (also the extra CSV columns of ``list --valid-at``).
VALID_AT_FIELDS = ("valid_at", "revoked_later_at", "revoked_later_reason", "issuer_revoked_at")


def valid_at_extras(recorded: tuple[Any, ...], at: str) -> dict[str, Any]:
    """The point-in-time fields ``list --valid-at`` adds to a register row: what happened
    after the instant (a later revocation, a later revocation of the issuer)."""
    revoked_at, reason, issuer_revoked_at = recorded
    later = revoked_at is not None and revoked_at > at
    return {
        "valid_at": at,
        "revoked_later_at": revoked_at if later else None,
        "revoked_later_reason": reason if later else None,
        "issuer_revoked_at": issuer_revoked_at,
    }


def backfill_sha1(conn: sqlite3.Connection) -> None:
    """Fill ``certificate_sha1`` for rows recorded before migration 0005 (run inside it)."""
    from cyphrs_cli.ledger.records import pem_sha1

    rows = conn.execute(
        "SELECT id, pem FROM certificates WHERE id NOT IN (SELECT certificate_id FROM"
        " certificate_sha1)"
    ).fetchall()
    conn.executemany(
        "INSERT INTO certificate_sha1 (certificate_id, sha1) VALUES (?, ?)",
        [(row[0], pem_sha1(row[1])) for row in rows],
    )


# -- look-ups ----------------------------------------------------------------------------


def ids_by_sha256(conn: sqlite3.Connection, fingerprint_hex: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM certificates WHERE fingerprint = ?", (f"sha256:{fingerprint_hex}",)
        )
    ]


def ids_by_sha1(conn: sqlite3.Connection, fingerprint_hex: str) -> list[int]:
    """Certificates whose DER has this SHA-1, confirmed against each row's own PEM (the
    index table is not covered by ``audit verify``; the PEM's digest is)."""
    from cyphrs_cli.ledger.records import pem_sha1

    rows = conn.execute(
        "SELECT c.id, c.pem FROM certificate_sha1 s JOIN certificates c"
        " ON c.id = s.certificate_id WHERE s.sha1 = ?",
        (fingerprint_hex,),
    )
    return [r[0] for r in rows if pem_sha1(r[1]) == fingerprint_hex]


def ids_by_serial(conn: sqlite3.Connection, serial: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM certificates WHERE serial = ?", (serial,))]


def ids_by_serial_prefix(conn: sqlite3.Connection, prefix: str, limit: int) -> list[int]:
    """Up to ``limit`` certificates whose hex serial starts with ``prefix`` (a range scan
    of ``certificates_serial``: hex digits sort below ``~``)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM certificates WHERE serial >= ? AND serial < ? ORDER BY serial LIMIT ?",
            (prefix, prefix + "~", limit),
        )
    ]


def ids_by_spiffe_id(conn: sqlite3.Connection, spiffe_id: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM certificates WHERE spiffe_id = ? ORDER BY issued_at, id", (spiffe_id,)
        )
    ]


def ids_of_workflow(conn: sqlite3.Connection, workflow: str, until: str | None) -> list[int]:
    """A workflow's certificates issued before ``until`` (``certificates_workflow_issued``):
    none of them has an event from before it was issued."""
    sql, args = "SELECT id FROM certificates WHERE workflow = ?", [workflow]
    if until is not None:
        sql += " AND issued_at < ?"
        args.append(until)
    return [r[0] for r in conn.execute(sql + " ORDER BY issued_at, id", args)]


def authority_certificate_serials(
    conn: sqlite3.Connection, authority_ids: Iterable[int]
) -> list[str]:
    """The serials of these CAs' own certificates (to show an issuer's revocation)."""
    serials = []
    for authority_id in sorted(set(authority_ids)):
        row = conn.execute(
            "SELECT c.serial FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
            " WHERE a.id = ?",
            (authority_id,),
        ).fetchone()
        if row is not None:
            serials.append(row[0])
    return serials


def trust_domains(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT trust_domain FROM authorities WHERE trust_domain IS NOT NULL"
    )
    return sorted(r[0] for r in rows)


def fingerprints_of_serial(conn: sqlite3.Connection, serial: str) -> list[str]:
    """Fingerprints recorded for ``serial`` (to tell a forged or foreign certificate that
    reuses one of our serials from one we never saw)."""
    rows = conn.execute("SELECT fingerprint FROM certificates WHERE serial = ?", (serial,))
    return [r[0] for r in rows]


def certificate_row(conn: sqlite3.Connection, certificate_id: int) -> dict[str, Any]:
    """One certificate's register columns by name, plus its ledger id, authority id, its
    revocation as recorded and its issuer's revocation."""
    from cyphrs_cli.ledger.queries import _COLUMNS, _FROM

    columns = (*_COLUMNS, "c.id AS id", "c.authority_id AS authority_id", *VALID_AT_COLUMNS)
    row = conn.execute(
        "SELECT " + ", ".join(columns) + _FROM + " WHERE c.id = ?", (certificate_id,)
    ).fetchone()
    assert row is not None
    return dict(zip(row.keys(), tuple(row), strict=True))


def renewal_chain(conn: sqlite3.Connection, certificate_id: int, cap: int = 10_000) -> list[int]:
    """The ids of the renewal chain through ``certificate_id``, oldest first (``replaces``
    links back, ``replaced_by`` forward; at most ``cap`` links each way)."""
    back: list[int] = []
    current: int | None = certificate_id
    while current is not None and len(back) < cap:
        found = conn.execute("SELECT replaces_id FROM certificates WHERE id = ?", (current,))
        row = found.fetchone()
        current = row[0] if row is not None else None
        if current is not None:
            back.append(current)
    forward: list[int] = []
    current = certificate_id
    while len(forward) < cap:
        row = conn.execute(
            "SELECT id FROM certificates WHERE replaces_id = ? ORDER BY id LIMIT 1", (current,)
        ).fetchone()
        if row is None:
            break
        current = row[0]
        forward.append(current)
    return [*reversed(back), certificate_id, *forward]


def chain_summaries(conn: sqlite3.Connection, ids: list[int]) -> list[dict[str, Any]]:
    marks = ",".join("?" for _ in ids)
    sql = (
        "SELECT c.id, c.serial, c.issued_at, c.not_after, c.status, r.revoked_at"  # noqa: S608
        " FROM certificates c LEFT JOIN revocations r ON r.certificate_id = c.id"
        f" WHERE c.id IN ({marks})"
    )
    by_id = {r[0]: r for r in conn.execute(sql, ids)}
    return [
        {
            "serial": by_id[i][1],
            "issued_at": by_id[i][2],
            "not_after": by_id[i][3],
            "stored_status": by_id[i][4],
            "revoked_at": by_id[i][5],
        }
        for i in ids
        if i in by_id
    ]


# -- events ------------------------------------------------------------------------------

#: The expression of index ``events_spiffe_at``, spelled exactly as the index spells it.
_SPIFFE_EXPR = "(CASE WHEN json_valid(details) THEN json_extract(details, '$.spiffe_id') END)"
_ISSUER_EXPR = "(CASE WHEN json_valid(details) THEN json_extract(details, '$.issuer') END)"


def event_view(row: tuple[Any, ...]) -> dict[str, Any]:
    """An event as the timeline and ``find`` show it: every stored field, details parsed
    (kept as text when they are not JSON: a damaged row is shown, not hidden)."""
    seq, at, type_, actor, host, outcome, target, params_hash, details, prev_hash, digest = row
    try:
        parsed: Any = json.loads(details)
    except (TypeError, ValueError):
        parsed = details
    return {
        "seq": seq,
        "at": at,
        "type": type_,
        "actor": actor,
        "host": host,
        "outcome": outcome,
        "target": target,
        "details": parsed,
        "params_hash": params_hash,
        "prev_hash": prev_hash,
        "hash": digest,
    }


def _window(since: str | None, until: str | None) -> tuple[str, list[str]]:
    sql, args = "", []
    if since is not None:
        sql += " AND at >= ?"
        args.append(since)
    if until is not None:
        sql += " AND at < ?"
        args.append(until)
    return sql, args


def events_of_targets(
    conn: sqlite3.Connection, targets: Iterable[str], since: str | None, until: str | None
) -> list[tuple[Any, ...]]:
    """Events whose target is one of ``targets``, in the window (``events_target_at``)."""
    window, window_args = _window(since, until)
    found: list[tuple[Any, ...]] = []
    cursor = conn.cursor()
    cursor.row_factory = None
    for target in dict.fromkeys(targets):
        found += cursor.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE target = ?{window}",  # noqa: S608
            [target, *window_args],
        ).fetchall()
    return found


def events_naming_spiffe_ids(
    conn: sqlite3.Connection,
    spiffe_id: str | None,
    prefixes: list[str],
    since: str | None,
    until: str | None,
) -> list[tuple[Any, ...]]:
    """Events whose details name ``spiffe_id`` exactly, or a SPIFFE ID under one of the
    ``prefixes`` (a workflow's instances), in the window (``events_spiffe_at``)."""
    window, window_args = _window(since, until)
    cursor = conn.cursor()
    cursor.row_factory = None
    found: list[tuple[Any, ...]] = []
    if spiffe_id is not None:
        found += cursor.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {_SPIFFE_EXPR} = ?{window}",  # noqa: S608
            [spiffe_id, *window_args],
        ).fetchall()
    for prefix in prefixes:
        # '/' + 1 is '0': every ID under "<prefix>/" sorts in [prefix/, prefix0).
        found += cursor.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {_SPIFFE_EXPR} >= ?"  # noqa: S608
            f" AND {_SPIFFE_EXPR} < ?{window}",
            [prefix + "/", prefix + "0", *window_args],
        ).fetchall()
    return found


def events_of_issuer(
    conn: sqlite3.Connection, name: str, authority_id: int, since: str | None, until: str | None
) -> list[tuple[Any, ...]]:
    """Events about one CA in the window: those targeting it, naming it as issuer, or
    targeting a certificate it signed (a scan of the window's events by ``events_at``)."""
    window, window_args = _window(since, until)
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1{window} AND ("  # noqa: S608
        f" target = ? OR {_ISSUER_EXPR} = ? OR (target >= 'certificate:' AND"
        " target < 'certificate;' AND EXISTS (SELECT 1 FROM certificates c"
        " WHERE c.serial = substr(events.target, 13) AND +c.authority_id = ?)))",
        [*window_args, f"authority:{name}", name, authority_id],
    ).fetchall()


@dataclass
class ChainCheck:
    """The hash chain checked over a contiguous range of ``seq`` (``scope`` "range": every
    event between ``first_seq`` and ``last_seq``, so a deleted or rewritten row inside it
    shows), or only around the events shown (``scope`` "events": each one's content and
    its links to the events before and after it) when the range is too long to walk."""

    first_seq: int | None = None
    last_seq: int | None = None
    checked: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    scope: str = "range"

    @property
    def verified(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checked": self.checked,
            "scope": self.scope,
            "problems": self.problems,
        }


def seq_bounds(conn: sqlite3.Connection, since: str | None, until: str | None) -> tuple[int, int]:
    """The first and last ``seq`` of the events inside the window (``events_at``)."""
    window, args = _window(since, until)
    row = conn.execute(
        f"SELECT min(seq), max(seq) FROM events WHERE 1 = 1{window}",  # noqa: S608
        args,
    ).fetchone()
    return (row[0], row[1]) if row[0] is not None else (0, -1)


def _content_problem(row: tuple[Any, ...], prev_hash: str, digest: str, details: Any) -> str | None:
    """Why this event's stored content does not match its hash, or None.

    Details are stored in their canonical form (``append_event``), so their stored bytes are
    tried first; only a mismatch pays for parsing and re-serialising them (which also
    tells "not JSON" apart from "edited").
    """
    from cyphrs_cli.ledger.verify import _body_hash

    stored = details.encode() if isinstance(details, str) else b""
    if sha256_hex(stored) == row[7] and _body_hash(prev_hash, row, stored) == digest:
        return None
    try:
        canonical = json.dumps(
            json.loads(details), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (TypeError, ValueError, RecursionError):
        return "details are not JSON (edited?)"
    if sha256_hex(canonical) != row[7]:
        return "details do not match params_hash (edited)"
    if _body_hash(prev_hash, row, canonical) != digest:
        return "content does not match its hash (edited)"
    return None


def check_events(conn: sqlite3.Connection, seqs: list[int], first: int, last: int) -> ChainCheck:
    """Each event of ``seqs``: its content against its hash, its ``prev_hash`` against the
    previous event's hash, and the next event's ``prev_hash`` against its hash. Deleting
    or re-chaining an event shown is caught; an edit between two shown events that are far
    apart is not (that is ``check_chain``'s, or ``audit verify``'s, job)."""
    check = ChainCheck(first, last, scope="events")
    cursor = conn.cursor()
    cursor.row_factory = None
    for seq in seqs:
        rows = {
            row[0]: row
            for row in cursor.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq >= ? AND seq <= ?",  # noqa: S608
                (seq - 1, seq + 1),
            )
        }
        row = rows.get(seq)
        if row is None:
            check.problems.append({"seq": seq, "problem": "event is missing (deleted?)"})
            continue
        check.checked += 1
        before = rows.get(seq - 1)
        expected_prev = GENESIS_HASH if seq == 1 else before[10] if before else None
        if expected_prev is None:
            check.problems.append({"seq": seq - 1, "problem": "event is missing (deleted?)"})
        elif row[9] != expected_prev:
            check.problems.append(
                {"seq": seq, "problem": f"prev_hash does not link to event {seq - 1}"}
            )
        problem = _content_problem(row, row[9], row[10], row[8])
        if problem is not None:
            check.problems.append({"seq": seq, "problem": problem})
        after = rows.get(seq + 1)
        if after is not None and after[9] != row[10]:
            check.problems.append(
                {"seq": seq + 1, "problem": f"prev_hash does not link to event {seq}"}
            )
    unique = {(p["seq"], p["problem"]): p for p in check.problems}
    check.problems = sorted(unique.values(), key=lambda p: (p["seq"], p["problem"]))
    return check


def check_chain(conn: sqlite3.Connection, first: int, last: int) -> ChainCheck:
    """Recompute every event's hash in [first, last] and check each link, including the
    link into ``first`` from the event before it and out of ``last`` to the event after.

    Problems name the ``seq``: a row whose content no longer matches its hash (edited), a
    ``prev_hash`` that is not the previous row's hash (rewritten or re-chained), a missing
    ``seq`` (deleted).
    """
    check = ChainCheck(first, last)
    if last < first:
        return check
    before = conn.execute("SELECT hash FROM events WHERE seq = ?", (first - 1,)).fetchone()
    expected_prev: str | None = (
        GENESIS_HASH if first == 1 else before[0] if before is not None else None
    )
    if expected_prev is None:
        check.problems.append({"seq": first - 1, "problem": "event is missing (deleted?)"})
    cursor = conn.cursor()
    cursor.row_factory = None
    expected_seq = first
    for row in cursor.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq",  # noqa: S608
        (first, last + 1),
    ):
        seq, prev_hash, digest, details = row[0], row[9], row[10], row[8]
        if seq > last:  # the event after the range: only its link back is checked
            if prev_hash != expected_prev:
                check.problems.append(
                    {"seq": seq, "problem": f"prev_hash does not link to event {seq - 1}"}
                )
            break
        while expected_seq < seq:
            check.problems.append({"seq": expected_seq, "problem": "event is missing (deleted?)"})
            expected_seq += 1
        check.checked += 1
        if expected_prev is not None and prev_hash != expected_prev:
            check.problems.append(
                {"seq": seq, "problem": f"prev_hash does not link to event {seq - 1}"}
            )
        problem = _content_problem(row, prev_hash, digest, details)
        if problem is not None:
            check.problems.append({"seq": seq, "problem": problem})
        expected_prev = digest
        expected_seq = seq + 1
    while expected_seq <= last:
        check.problems.append({"seq": expected_seq, "problem": "event is missing (deleted?)"})
        expected_seq += 1
    return check
