"""Migration 0012 (fewer index writes per certificate): a ledger that predates it upgrades,
loses only the three prefix-redundant indexes, still passes ``audit verify``, and the
queries those indexes served still search an index (never a full scan)."""

from __future__ import annotations

import sqlite3

from cyphrs_cli.ledger.db import Ledger
from tests.helpers import Hierarchy, cli

DROPPED = {
    "certificates_not_after": "CREATE INDEX certificates_not_after ON certificates (not_after)",
    "certificates_workflow": "CREATE INDEX certificates_workflow ON certificates (workflow)",
    "events_target": "CREATE INDEX events_target ON events (target)",
}


def _indexes(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _plan(conn: sqlite3.Connection, sql: str, *args: object) -> str:
    return " | ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_a_ledger_from_before_0012_upgrades_and_still_verifies(
    fresh_hierarchy: Hierarchy,
) -> None:
    home = fresh_hierarchy.home
    issued = cli("issue", "agent", "--home", str(home), "--workflow", "lean", "--instance", "i1",
                 "--passphrase-file", str(fresh_hierarchy.inter_pass), "--json")  # fmt: skip
    assert issued.exit_code == 0, issued.stderr
    path = home / "ledger.sqlite3"
    # The ledger as migration 11 left it: the three indexes present, version 11.
    with sqlite3.connect(path) as conn:
        for create in DROPPED.values():
            conn.execute(create)
        conn.execute("PRAGMA user_version = 11")
        assert set(DROPPED) <= _indexes(conn)
    with Ledger(path) as ledger:
        (version,) = ledger.conn.execute("PRAGMA user_version").fetchone()
        left = _indexes(ledger.conn)
    assert version >= 12
    assert not set(DROPPED) & left
    # What replaces each of them is still there.
    assert {"certificates_validity", "certificates_workflow_issued", "events_target_at"} <= left
    verify = cli("audit", "verify", "--home", str(home))
    assert verify.exit_code == 0, verify.stderr


def test_the_queries_of_the_dropped_indexes_still_search_an_index(
    fresh_hierarchy: Hierarchy,
) -> None:
    with Ledger(fresh_hierarchy.home / "ledger.sqlite3") as ledger:
        conn = ledger.conn
        by_target = _plan(conn, "SELECT seq FROM events WHERE target = ?", "certificate:01")
        by_workflow = _plan(
            conn, "SELECT id FROM certificates WHERE workflow = ? ORDER BY issued_at", "w"
        )
        expiring = _plan(
            conn, "SELECT id FROM certificates WHERE not_after >= ? AND not_after < ?", "a", "b"
        )
        requested = _plan(
            conn,
            "SELECT details FROM events WHERE +type = 'authority.requested' AND target = ?"
            " ORDER BY seq DESC",
            "authority:x",
        )
    assert "USING COVERING INDEX events_target_at (target=?)" in by_target
    assert "INDEX certificates_workflow_issued (workflow=?)" in by_workflow
    assert "USING COVERING INDEX certificates_validity (not_after>? AND not_after<?)" in expiring
    assert "USING INDEX events_target_at (target=?)" in requested
