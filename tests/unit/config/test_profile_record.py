"""``profile_record``: what the ledger says of one profile, read on every issuance.

It reads only the last ``profile.set``/``profile.removed`` event of that profile, where it
used to decode every profile text ever recorded. Attacked here: it agrees with the full
scan (``recorded_profiles``) over a long random history of sets and removals; refused
requests, which anyone can add as ``policy.denied`` events under the same target, neither
change its answer nor lengthen its walk (the query stays on the ``type`` index, also after
``ANALYZE``); and when
the last event under a profile's target names another profile in its details (an edited
row), the details decide, as the full scan decides. Real SQLite ledger files, events appended through the ledger's
own ``append_event``.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyphrs_cli.config.trust import (
    PROFILE_REMOVED_EVENT,
    PROFILE_SET_EVENT,
    profile_record,
    recorded_profiles,
)
from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event

NAMES = ("agent", "server", "ci-runner", "payments")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3", create=True) as opened:
        yield opened


def _set(conn: sqlite3.Connection, name: str, sha: str, *, target: str | None = None) -> None:
    append_event(
        conn,
        LedgerEvent(
            type=PROFILE_SET_EVENT,
            target=target or f"profile:{name}",
            details={"name": name, "sha256": sha, "overrides_builtin": False, "text": "x"},
        ),
    )


def _remove(conn: sqlite3.Connection, name: str) -> None:
    append_event(
        conn,
        LedgerEvent(type=PROFILE_REMOVED_EVENT, target=f"profile:{name}", details={"name": name}),
    )


def _by_scan(conn: sqlite3.Connection, name: str) -> str | None:
    import json

    row = recorded_profiles(conn).get(name)
    return None if row is None else str(json.loads(row["details"])["sha256"])


def _sha(conn: sqlite3.Connection, name: str) -> str | None:
    record = profile_record(conn, name)
    return None if record is None else str(record["sha256"])


def test_it_agrees_with_the_full_scan_over_a_random_history(ledger: Ledger) -> None:
    rng = random.Random(20261207)
    with ledger.transaction() as conn:
        for step in range(400):
            name = rng.choice(NAMES)
            if rng.random() < 0.3:
                _remove(conn, name)
            else:
                _set(conn, name, f"{step:064x}")
            if step % 20 == 0:
                for each in (*NAMES, "never-recorded"):
                    assert _sha(conn, each) == _by_scan(conn, each), (step, each)
        for each in (*NAMES, "never-recorded"):
            assert _sha(conn, each) == _by_scan(conn, each), each


def test_the_answer_carries_when_and_by_whom(ledger: Ledger) -> None:
    with ledger.transaction() as conn:
        _set(conn, "agent", "a" * 64)
        _set(conn, "agent", "b" * 64)
        record = profile_record(conn, "agent")
    assert record is not None
    assert record["sha256"] == "b" * 64 and record["seq"] == 2
    assert record["recorded_at"].endswith("Z") and record["recorded_by"]


def test_refused_requests_under_the_same_target_change_nothing(ledger: Ledger) -> None:
    with ledger.transaction() as conn:
        _set(conn, "agent", "a" * 64)
        for n in range(300):
            append_event(
                conn,
                LedgerEvent(
                    type="policy.denied",
                    target="profile:agent",
                    outcome="denied",
                    details={"rule": "agent.ttl", "n": n},
                ),
            )
        assert _sha(conn, "agent") == "a" * 64
    # With statistics (an operator's ANALYZE) SQLite would rather scan the table: the
    # query names its index. Every statement profile_record runs is traced.
    ledger.conn.execute("ANALYZE")
    traced: list[str] = []
    ledger.conn.set_trace_callback(traced.append)
    try:
        assert _sha(ledger.conn, "agent") == "a" * 64
    finally:
        ledger.conn.set_trace_callback(None)
    (query,) = [sql for sql in traced if "FROM events" in sql]
    plan = " ".join(str(row[-1]) for row in ledger.conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "events_type" in plan and "SCAN" not in plan, plan


def test_an_edited_target_is_decided_by_the_details(ledger: Ledger) -> None:
    """The last event under ``profile:agent`` names ``server`` in its details: for
    ``agent`` the scan by details decides, as it always did. For ``server`` that row is not
    found, as if it had been deleted; either edit breaks the hash chain, which ``audit
    verify`` reports (a deleted row was never caught here either)."""
    with ledger.transaction() as conn:
        _set(conn, "agent", "a" * 64)
        _set(conn, "server", "c" * 64, target="profile:agent")
        assert _sha(conn, "agent") == _by_scan(conn, "agent") == "a" * 64
        assert _sha(conn, "server") is None
