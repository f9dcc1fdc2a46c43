"""An issuance transaction keeps its savepoint journal in memory; other writes and every
read keep SQLite's default (spill to a file), which bounds their memory.

SQLite journals the old content of every page a ``SAVEPOINT`` changes; past 64 KiB it
spills that journal to a temporary file (``etilqs_*``) created for the transaction. Each
group of issuances (one savepoint per item) paid that file's create, unlink and close and
a 4 KiB ``pwrite`` per page. The probe is the process's own descriptor table: SQLite
unlinks the file at once but keeps it open until the transaction ends.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyphrs_cli.ledger.db import Ledger
from tests.helpers import open_descriptors

ROWS = 3000  # about 1 MiB of token pages: far more than the 64 KiB kept in memory


def _temp_files() -> list[str]:
    return list(open_descriptors(lambda target: "etilqs_" in target).values())


def _ledger_with_tokens(path: Path) -> Ledger:
    ledger = Ledger(path, create=True)
    with ledger.transaction() as conn:
        conn.executemany(
            "INSERT INTO tokens (token_id, secret_sha256, profile, workflow, permissions,"
            " uses_allowed, created_at, expires_at) VALUES (?, ?, 'agent', ?, '[]', 5,"
            " '2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z')",
            [(f"tok_{i:08x}", f"{i:064x}", "w" * 200) for i in range(ROWS)],
        )
    return ledger


def _change_every_page_under_a_savepoint(conn: sqlite3.Connection) -> list[str]:
    conn.execute("SAVEPOINT item")
    conn.execute("UPDATE tokens SET uses = uses + 1")
    during = _temp_files()
    conn.execute("RELEASE item")
    return during


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with _ledger_with_tokens(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def test_this_sqlite_spills_a_large_savepoint_journal_to_a_file(ledger: Ledger) -> None:
    """The probe's control: a plain connection on the same file does spill, so the
    assertions below can fail."""
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        spilled = _change_every_page_under_a_savepoint(conn)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    if not spilled:
        pytest.skip("this SQLite build keeps savepoint journals in memory by default")
    assert all("etilqs_" in name for name in spilled)


def test_an_issuance_transaction_keeps_the_savepoint_journal_in_memory(ledger: Ledger) -> None:
    with ledger.transaction(issuance=True) as conn:
        assert _change_every_page_under_a_savepoint(conn) == []
    assert ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()[0] == ROWS
    assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0  # reads: files again


def test_try_begin_and_end_keep_it_in_memory_and_restore_files_after(ledger: Ledger) -> None:
    assert ledger.try_begin()
    assert _change_every_page_under_a_savepoint(ledger.conn) == []
    ledger.end(commit=True)
    assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
    assert ledger.try_begin()
    assert _change_every_page_under_a_savepoint(ledger.conn) == []
    ledger.end(commit=False)  # rolled back: temp storage is files again all the same
    assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
    assert ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()[0] == ROWS


def test_a_connection_that_writes_issuances_only_keeps_them_in_memory_for_good(
    ledger: Ledger,
) -> None:
    """A serving loop's group writer (``write_issuances_only``): no PRAGMA around each
    transaction, and still no journal file, committed or rolled back."""
    ledger.write_issuances_only()
    for commit in (True, False, True):
        assert ledger.try_begin()
        assert _change_every_page_under_a_savepoint(ledger.conn) == []
        ledger.end(commit=commit)
        assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    with ledger.transaction(issuance=True) as conn:
        assert _change_every_page_under_a_savepoint(conn) == []
    assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 2
    assert ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()[0] == 3 * ROWS


def test_any_other_write_keeps_sqlites_default(ledger: Ledger) -> None:
    """A migration or a mass revocation may change every page in one statement: its
    journal must be free to spill to a file rather than fill the memory."""
    with ledger.transaction() as conn:
        assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
        spilled = _change_every_page_under_a_savepoint(conn)
    if not spilled:
        pytest.skip("this SQLite build keeps savepoint journals in memory by default")
    assert ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()[0] == ROWS


def test_a_failed_transaction_restores_files(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.transaction(issuance=True) as conn:
        conn.execute("UPDATE tokens SET uses = uses + 1")
        raise RuntimeError("the caller fails mid-way")
    assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
    assert ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()[0] == 0


def test_a_begin_refused_by_sqlites_own_lock_restores_files(ledger: Ledger) -> None:
    """Another connection holds SQLite's write lock without the lock file (the sqlite3
    shell): ``begin_locked`` reports busy, and the PRAGMA it set is undone."""
    other = sqlite3.connect(ledger.path, isolation_level=None, timeout=0)
    ledger.conn.execute("PRAGMA busy_timeout = 0")
    try:
        other.execute("BEGIN IMMEDIATE")
        assert ledger.try_lock()
        assert not ledger.begin_locked()
        assert ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
    finally:
        other.execute("ROLLBACK")
        other.close()


_GROWTH = """
import os, sys
from pathlib import Path
from cyphrs_cli.ledger.db import Ledger
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
ledger = Ledger(Path(sys.argv[1]))
ledger.conn.execute("SELECT sum(uses) FROM tokens").fetchone()  # pages in the cache
base, peak = rss(), 0
with ledger.transaction(issuance=True) as conn:
    for _ in range(int(sys.argv[2])):
        conn.execute("SAVEPOINT item")
        conn.execute("UPDATE tokens SET uses = (uses + 1) % uses_allowed")
        peak = max(peak, rss() - base)
        conn.execute("RELEASE item")
print(peak)
"""


def test_the_memory_journal_holds_one_savepoint_at_a_time(ledger: Ledger) -> None:
    """A batch writes up to 4,096 items in one transaction, each under its savepoint: the
    journal in memory must be emptied at each RELEASE, not grow with the transaction.
    Here each savepoint after the first journals about 1 MiB (every page of the tokens
    table); 100 of them in one transaction must peak like two do, not at 100 MiB."""
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def growth_kib(savepoints: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _GROWTH, str(ledger.path), str(savepoints)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout)

    # The second savepoint journals the pages the first one changed (about 1 MiB).
    two, hundred = growth_kib(2), growth_kib(100)
    assert two > 256, two  # the journal is in memory, so RSS does grow
    assert hundred < two + 4096, (two, hundred)
