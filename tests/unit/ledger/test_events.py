"""The hash chain on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cyphrs_cli.ledger.db import Ledger, _migrations
from cyphrs_cli.ledger.events import GENESIS_HASH, LedgerEvent, append_event, canonical_json
from cyphrs_cli.ledger.verify import verify_ledger


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3", create=True) as ledger:
        for i in range(5):
            with ledger.transaction() as conn:
                append_event(conn, LedgerEvent(type="test", target=f"t{i}", details={"i": i}))
        rows = ledger.conn.execute(
            "SELECT seq, prev_hash, hash FROM events ORDER BY seq"
        ).fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0][1] == GENESIS_HASH and all(rows[i][1] == rows[i - 1][2] for i in range(1, 5))
        assert verify_ledger(ledger.conn).ok
    conn = sqlite3.connect(tmp_path / "l.sqlite3")
    conn.execute("UPDATE events SET target = 'x' WHERE seq = 2")
    conn.commit()
    conn.close()
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        report = verify_ledger(ledger.conn)
    assert report.problems[0] == "event seq 2: hash does not match its content"


def test_rollback_leaves_no_event(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3", create=True) as ledger:
        try:
            with ledger.transaction() as conn:
                append_event(conn, LedgerEvent(type="test"))
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert ledger.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.sqlite3", create=True).close()
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        version = ledger.conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == max(number for number, _ in _migrations())
