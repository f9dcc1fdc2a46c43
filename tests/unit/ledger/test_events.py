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
    # The newest migration's number (each branch that adds one must not re-run it).
    assert version == _migrations()[-1][0]


def test_rfc3339_is_the_utc_second_in_four_digit_years() -> None:
    """Every stored time is ``rfc3339``'s text (hand-formatted, not ``strftime``): the
    same as ``strftime`` for the instant in UTC, seconds truncated, from any offset, and
    four-digit years also below 1000 (where glibc's ``%Y`` does not pad)."""
    from datetime import UTC, datetime, timedelta, timezone

    from cyphrs_cli.ledger.events import rfc3339

    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    start = datetime(1999, 12, 31, 23, 59, 58, 999_999, tzinfo=UTC)
    for step in range(0, 400_000, 997):
        moment = start + timedelta(seconds=step * 3.7)
        for zone in zones:
            local = moment.astimezone(zone)
            assert rfc3339(local) == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rfc3339(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    assert rfc3339(datetime(999, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0999-02-03T04:05:06Z"
    assert rfc3339(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == (
        "9999-12-31T23:59:59Z"
    )
    east = datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(east) == "2025-12-31T23:30:00Z"


def test_canonical_json_is_json_dumps_with_its_options() -> None:
    """``canonical_json`` reuses one encoder; its output must stay byte for byte what
    ``json.dumps(sort_keys, compact separators, ensure_ascii=False)`` gives, or every hash
    in existing ledgers would stop verifying."""
    import json

    values = [
        {"z": [1, 2.5, None, True], "a": {"y": "\u00e9\u4e2d\U0001f600", "b": "\n\t\"\\"}},
        ["\x00\x1f\x7f", {"": ""}, -0.0, 10**30, "\u2028\u2029"],
        {"nested": {"k": [{"b": 1, "a": 2}]}, "A": "B", "a": "b"},
        "plain",
        12,
    ]
    for value in values:
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(value) == expected.encode()
        assert canonical_json(value) == canonical_json(value)  # no state between calls
