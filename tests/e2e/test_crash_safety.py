"""No certificate ever leaves the CA without its ledger record (real processes, real kills)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.helpers import Hierarchy, run_cyphrs


def _issue_args(h: Hierarchy, out: Path) -> list[str]:
    return [
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--out-dir",
        str(out),
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    ]


def test_crash_between_signing_and_recording_outputs_nothing(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h, out = fresh_hierarchy, tmp_path / "out"
    before = h.ledger_rows()
    proc = run_cyphrs(*_issue_args(h, out), env={"CYPHRS_TEST_FAULT": "after-sign"})
    assert proc.returncode == 86
    assert proc.stdout == b""
    assert not out.exists()
    assert h.ledger_rows() == before


def test_crash_after_recording_leaves_a_known_undelivered_certificate(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h, out = fresh_hierarchy, tmp_path / "out"
    before = h.ledger_rows()
    proc = run_cyphrs(*_issue_args(h, out), env={"CYPHRS_TEST_FAULT": "after-record"})
    assert proc.returncode == 86
    assert not out.exists()
    assert h.ledger_rows() == before + 1  # recorded, never delivered: visible and harmless


def test_ledger_write_failure_outputs_nothing(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """Another process holds the write lock: we time out, exit 8, and write no files."""
    h, out = fresh_hierarchy, tmp_path / "out"
    blocker = sqlite3.connect(h.home / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        proc = run_cyphrs(*_issue_args(h, out), env={"CYPHRS_BUSY_TIMEOUT_MS": "200"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.decode().startswith("cyphrs: error: ")
    assert b"Traceback" not in proc.stderr
    assert proc.stdout == b""
    assert not out.exists()
    assert h.ledger_rows() == 2  # root + intermediate only


def test_ledger_is_in_wal_mode_and_migrated(fresh_hierarchy: Hierarchy) -> None:
    conn = sqlite3.connect(fresh_hierarchy.home / "ledger.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    finally:
        conn.close()
