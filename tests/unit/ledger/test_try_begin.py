"""``Ledger.try_begin`` / ``Ledger.end``: the transaction an event loop begins without ever
waiting (``service.committer.submit_here``). Attacked with real processes and real SQLite
connections: a lock file held by another process, SQLite's own lock held by a writer that
skips the lock file (the ``sqlite3`` shell), a COMMIT ended on another thread, a
rollback. Every case checks what was recorded and that the lock is free afterwards."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event
from cyphrs_cli.ledger.writelock import lock_path
from tests.unit.ledger.test_writelock import HOLD

PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("taken")
else:
    print("free")
"""


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path, create=True).close()
    return path


def _lock_seen_from_another_process(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(lock_path(path))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def _events(path: Path, kind: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]
        )


def test_a_lock_held_by_another_process_is_reported_at_once_and_nothing_begins(
    ledger_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path(ledger_path)), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with Ledger(ledger_path) as ledger:
            started = time.monotonic()
            assert ledger.try_begin() is False
            assert time.monotonic() - started < 0.5  # no waiting, no busy timeout
            assert not ledger.conn.in_transaction
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with Ledger(ledger_path) as ledger:  # the holder died: free again
        assert ledger.try_begin() is True
        ledger.end(commit=False)


def test_sqlites_own_lock_held_by_a_writer_skipping_the_lock_file_counts_as_taken(
    ledger_path: Path,
) -> None:
    shell = sqlite3.connect(ledger_path, isolation_level=None)  # like the sqlite3 shell
    shell.execute("BEGIN IMMEDIATE")
    try:
        with Ledger(ledger_path) as ledger:
            ledger.conn.execute("PRAGMA busy_timeout = 0")
            started = time.monotonic()
            assert ledger.try_begin() is False
            assert time.monotonic() - started < 0.5
            assert not ledger.conn.in_transaction
            # The lock file was let go: another process can write meanwhile.
            assert _lock_seen_from_another_process(ledger_path) == "free"
            shell.execute("ROLLBACK")
            assert ledger.try_begin() is True
            ledger.end(commit=False)
    finally:
        if shell.in_transaction:
            shell.execute("ROLLBACK")
        shell.close()


def test_the_lock_is_held_until_end_which_may_run_on_another_thread(ledger_path: Path) -> None:
    with Ledger(ledger_path, shared=True) as ledger:
        assert ledger.try_begin() is True
        append_event(ledger.conn, LedgerEvent(type="test.loop", target="t:1"))
        assert _lock_seen_from_another_process(ledger_path) == "taken"
        assert _events(ledger_path, "test.loop") == 0  # not committed: invisible to others
        ended: list[BaseException | None] = []

        def commit() -> None:
            try:
                ledger.end(commit=True)
                ended.append(None)
            except BaseException as error:  # reported by the assertion below
                ended.append(error)

        thread = threading.Thread(target=commit)
        thread.start()
        thread.join(timeout=30)
        assert ended == [None]
        assert _lock_seen_from_another_process(ledger_path) == "free"
        assert _events(ledger_path, "test.loop") == 1


def test_end_without_commit_rolls_back_and_frees_the_lock(ledger_path: Path) -> None:
    with Ledger(ledger_path) as ledger:
        assert ledger.try_begin() is True
        append_event(ledger.conn, LedgerEvent(type="test.undone", target="t:2"))
        ledger.end(commit=False)
        assert not ledger.conn.in_transaction
    assert _events(ledger_path, "test.undone") == 0
    assert _lock_seen_from_another_process(ledger_path) == "free"


def test_a_second_try_begin_by_another_ledger_of_the_same_process_is_refused(
    ledger_path: Path,
) -> None:
    """Locks are per open file: two ``Ledger`` objects of one process exclude each other,
    as two processes do (the loop's writer and the writer thread of one server)."""
    with Ledger(ledger_path) as first, Ledger(ledger_path) as second:
        assert first.try_begin() is True
        try:
            assert second.try_begin() is False
        finally:
            first.end(commit=False)
        assert second.try_begin() is True
        second.end(commit=False)
    fd = os.open(lock_path(ledger_path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody kept it
    finally:
        os.close(fd)


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path(path)), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _wait_on_thread(wait: Callable[[], None]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            wait()
            outcome.append("taken")
        except BaseException as error:  # reported by the caller's assertion
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_lock_waiter_takes_the_lock_for_its_ledger_when_the_holder_lets_go(
    ledger_path: Path,
) -> None:
    """The waiter blocks on another thread (no deadline, no polling) until the other
    process's lock is gone; then the LEDGER holds the lock: another process finds it
    taken, and ``begin_locked`` writes without taking it again."""
    holder = _hold(ledger_path, 30)
    try:
        with Ledger(ledger_path, shared=True) as ledger:
            assert ledger.try_lock() is False
            thread, outcome = _wait_on_thread(ledger.lock_waiter().wait)
            thread.join(timeout=0.3)
            assert thread.is_alive() and outcome == []  # still waiting for the holder
            holder.kill()
            holder.wait(timeout=30)
            thread.join(timeout=30)
            assert outcome == ["taken"]
            assert _lock_seen_from_another_process(ledger_path) == "taken"
            assert ledger.begin_locked() is True
            append_event(ledger.conn, LedgerEvent(type="test.waited", target="t:3"))
            ledger.end(commit=True)
            assert _lock_seen_from_another_process(ledger_path) == "free"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
    assert _events(ledger_path, "test.waited") == 1


def test_a_ledger_closed_while_its_waiter_waits_never_leaves_the_lock_held(
    ledger_path: Path,
) -> None:
    """The ledger closes (server shutdown) while its waiter is still blocked: when the
    holder lets go, the waiter's lock goes with its duplicate descriptor, so nobody is
    left holding it, and no other file is locked through a reused descriptor number."""
    holder = _hold(ledger_path, 30)
    try:
        ledger = Ledger(ledger_path, shared=True)
        thread, outcome = _wait_on_thread(ledger.lock_waiter().wait)
        thread.join(timeout=0.2)
        assert thread.is_alive()
        ledger.close()
        reused = os.open(ledger_path.with_name("other"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            holder.kill()
            holder.wait(timeout=30)
            thread.join(timeout=30)
            assert outcome == ["taken"]
            assert _lock_seen_from_another_process(ledger_path) == "free"
            fcntl.flock(reused, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never locked by the waiter
        finally:
            os.close(reused)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)


def test_a_lock_waiter_given_up_before_it_ran_holds_nothing(ledger_path: Path) -> None:
    with Ledger(ledger_path) as ledger:
        assert ledger.try_lock() is True  # opens the lock file
        ledger.release_lock()
        before = len(os.listdir("/proc/self/fd"))
        waiter = ledger.lock_waiter()
        assert len(os.listdir("/proc/self/fd")) == before + 1
        waiter.close()
        waiter.close()  # idempotent
        assert len(os.listdir("/proc/self/fd")) == before
        assert _lock_seen_from_another_process(ledger_path) == "free"
        assert ledger.try_begin() is True
        ledger.end(commit=False)
