"""The one-pass ``audit verify`` gives the answers of the step-by-step one.

* ``_body_hash`` (the event body serialised around details serialised once) equals
  ``chain_hash(prev, event_body(row))`` for hostile column values and for every event of
  a real ledger;
* certificate rows paired with their events while both streams advance: rows whose event
  comes later, events for rows that do not exist, two events for one row (the last one
  counts), rows without events -- each reported exactly as before, in id order;
* memory: only the checkpointed hashes are kept, not one per event.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.events import (
    GENESIS_HASH,
    LedgerEvent,
    append_event,
    canonical_json,
    chain_hash,
    event_body,
)
from cyphrs_cli.ledger.records import row_digest
from cyphrs_cli.ledger.verify import LedgerVerification, _body_hash, _Walk, verify_ledger
from tests.unit.ledger.certificate_rows import certificate_row, insert_row

COLUMNS = ("seq", "at", "type", "actor", "host", "outcome", "target", "params_hash")

HOSTILE = [
    'quote " backslash \\ newline \n nul \x00',
    "é ü 漢字 \u2028 \u2029 \U0001f600",
    None,
    0,
    -7,
    2**70,
    1.5,
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("column", ["actor", "at", "host", "outcome", "target", "type"])
def test_body_hash_equals_chain_hash(column: str, value: Any) -> None:
    details = {"b": [1, "x"], "a": {"z": None, "é": 2.5}}
    row = {
        "seq": 12,
        "at": "2026-11-29T10:00:00Z",
        "type": "certificate.issued",
        "actor": "alice",
        "host": "h",
        "outcome": "success",
        "target": "certificate:ab",
        "params_hash": "00" * 32,
        "details": json.dumps(details),
    }
    row[column] = value
    prev = "ab" * 32
    expected = chain_hash(prev, event_body(row))
    as_tuple = tuple(row[c] for c in COLUMNS)
    assert _body_hash(prev, as_tuple, canonical_json(details)) == expected


def _ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3", create=True)


def _issued(conn: sqlite3.Connection, cert_id: int, row: dict[str, Any], digest: str) -> None:
    append_event(
        conn,
        LedgerEvent(
            "certificate.issued",
            details={"certificate_id": cert_id, "serial": row["serial"], "row_digest": digest},
        ),
    )


def test_out_of_order_and_duplicate_events_are_judged_as_before(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        conn = ledger.conn
        conn.execute("BEGIN IMMEDIATE")
        rows = {n: certificate_row(n) for n in range(1, 9)}
        ids = {n: insert_row(conn, rows[n]) for n in rows}
        good = {n: row_digest(rows[n]) for n in rows}
        # 1..3 in order; 5 before 4 (out of order); 6 twice, the last one wrong;
        # 7 twice, the first one wrong (the last one counts: fine); 8 has no event;
        # an event for id 99 whose row does not exist, then id 2 restated correctly.
        for n in (1, 2, 3, 5, 4):
            _issued(conn, ids[n], rows[n], good[n])
        _issued(conn, ids[6], rows[6], good[6])
        _issued(conn, 99, {"serial": "gone"}, "00")
        _issued(conn, ids[7], rows[7], "bad")
        _issued(conn, ids[6], rows[6], "bad")
        _issued(conn, ids[7], rows[7], good[7])
        _issued(conn, ids[2], rows[2], good[2])
        append_event(conn, LedgerEvent("certificate.revoked", details={"certificate_id": 3}))
        append_event(
            conn,
            LedgerEvent(
                "certificate.revoked",
                details={"certificate_id": ids[4], "revoked_at": "2026-02-01T00:00:00Z"},
            ),
        )
        conn.execute("COMMIT")
        report = verify_ledger(conn)
    assert report.events == 13 and report.certificates == 8
    assert report.problems == [
        f"certificate id {ids[6]} (serial {rows[6]['serial']}) does not match its issuance"
        " event seq 9",
        f"certificate id {ids[8]} (serial {rows[8]['serial']}) has no issuance event",
        "certificate id 99 (serial gone) recorded by event seq 7 is missing",
        "event seq 12 (certificate.revoked): malformed details (certificate_id/revoked_at"
        " missing or of the wrong type)",
        f"revocation of certificate id {ids[4]} (serial None) does not match its event",
        f"certificate id {ids[4]} (serial {rows[4]['serial']}) has status 'valid'; its"
        " events say 'revoked'",
    ]


def test_only_checkpointed_hashes_are_kept(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        conn = ledger.conn
        conn.execute("BEGIN IMMEDIATE")
        for i in range(50):
            append_event(conn, LedgerEvent("test.event", details={"i": i}))
        conn.execute("COMMIT")
        walk = _Walk(conn, LedgerVerification(), {7, 31})
        walk.run()
        assert set(walk.hashes) == {7, 31}
        assert walk.kept == []  # no event of a type a later check reads
        stored = dict(conn.execute("SELECT seq, hash FROM events WHERE seq IN (7, 31)").fetchall())
        assert walk.hashes == stored
        head = conn.execute("SELECT hash FROM events WHERE seq = 50").fetchone()[0]
        prev = GENESIS_HASH
        for row in conn.execute("SELECT * FROM events ORDER BY seq"):
            assert chain_hash(prev, event_body(row)) == row["hash"]
            prev = row["hash"]
        assert prev == head
        # An external checkpoint of seq 31 is checked against the kept hash.
        good = verify_ledger(conn, [("given", {"seq": 31, "head_hash": stored[31]})])
        assert good.ok and good.checkpoints == 1
        bad = verify_ledger(conn, [("given", {"seq": 7, "head_hash": stored[31]})])
        assert bad.problems == ["given: event seq 7 no longer has the checkpointed hash"]
