"""``Ledger.writer_turn``: the writer lock taken without waiting and held across the
``transaction`` blocks inside it. Attacked with a second ``Ledger`` on the same file and
with real processes probing (or holding) the ``flock`` on ``<ledger>-lock``: the lock is
really held between two transactions of one turn, released when the turn ends (also on an
error), and a turn that finds the lock taken yields False at once and writes nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.db import BUSY_TIMEOUT_ENV, Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event
from cyphrs_cli.ledger.writelock import lock_path

PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path, create=True).close()
    return path


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[Ledger]:
    with Ledger(ledger_path) as opened:
        yield opened


def _probe(ledger_path: Path) -> str:
    """Another process tries ``flock(LOCK_EX | LOCK_NB)`` on the lock file (and exits,
    letting go of it if it got it)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(lock_path(ledger_path))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def holder(ledger_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the writer lock for 30 s (killed by its PID at the end)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path(ledger_path)), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def _events(ledger_path: Path, target: str = "%") -> int:
    with sqlite3.connect(ledger_path) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM events WHERE type = 'test.turn' AND target LIKE ?", (target,)
            ).fetchone()[0]
        )


def _write(ledger: Ledger, target: str) -> None:
    with ledger.transaction() as conn:
        append_event(conn, LedgerEvent(type="test.turn", target=target))


def test_a_free_lock_is_taken_and_held_across_transactions_until_the_turn_ends(
    ledger: Ledger, ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _probe(ledger_path) == "free"
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "200")
    with Ledger(ledger_path) as other:  # another open file in this process
        with ledger.writer_turn() as ours:
            assert ours is True
            assert _probe(ledger_path) == "busy"
            with other.writer_turn() as theirs:
                assert theirs is False
            with ledger.writer_turn() as nested:  # a turn inside a turn takes nothing more
                assert nested is False
            _write(ledger, "t:first")
            # Between the two transactions the lock stays ours: another process and
            # another Ledger still cannot take it.
            assert _probe(ledger_path) == "busy"
            with other.writer_turn() as theirs:
                assert theirs is False
            started = time.monotonic()
            with pytest.raises(StorageError) as caught:
                _write(other, "t:other")
            assert caught.value.exit_code == 8
            assert time.monotonic() - started >= 0.15  # it waited its busy timeout
            _write(ledger, "t:second")
            assert _probe(ledger_path) == "busy"
        assert _probe(ledger_path) == "free"
        with other.writer_turn() as theirs:
            assert theirs is True
            _write(other, "t:other-turn")
    assert _events(ledger_path, "t:first") == 1
    assert _events(ledger_path, "t:second") == 1
    assert _events(ledger_path, "t:other") == 0
    assert _events(ledger_path, "t:other-turn") == 1


def test_the_turn_lets_go_when_its_block_raises(ledger: Ledger, ledger_path: Path) -> None:
    with pytest.raises(RuntimeError), ledger.writer_turn() as ours:
        assert ours
        _write(ledger, "t:kept")
        raise RuntimeError("boom")
    assert _probe(ledger_path) == "free"
    assert _events(ledger_path, "t:kept") == 1  # its committed transaction stays
    with ledger.writer_turn() as ours:  # and the same Ledger takes the lock again
        assert ours
    _write(ledger, "t:after")  # a plain transaction takes and releases it as before
    assert _probe(ledger_path) == "free"


def test_a_failed_transaction_inside_a_turn_keeps_the_lock_for_the_turn(
    ledger: Ledger, ledger_path: Path
) -> None:
    with ledger.writer_turn() as ours:
        assert ours
        with pytest.raises(RuntimeError), ledger.transaction() as conn:
            append_event(conn, LedgerEvent(type="test.turn", target="t:rolled-back"))
            raise RuntimeError("undo")
        assert _probe(ledger_path) == "busy"  # the rollback did not release the turn's lock
        _write(ledger, "t:after-rollback")
    assert _probe(ledger_path) == "free"
    assert _events(ledger_path, "t:rolled-back") == 0
    assert _events(ledger_path, "t:after-rollback") == 1


def test_a_turn_yields_false_at_once_and_writes_nothing_while_another_process_holds_it(
    ledger: Ledger, ledger_path: Path, holder: subprocess.Popen[str]
) -> None:
    before = _events(ledger_path)
    started = time.monotonic()
    with ledger.writer_turn() as ours:
        assert ours is False
    assert time.monotonic() - started < 0.5  # no waiting on the lock
    assert _events(ledger_path) == before
    assert _probe(ledger_path) == "busy"  # the holder still has it: we took nothing
    holder.kill()  # the kernel drops a dead process's flock
    holder.wait(timeout=30)
    with ledger.writer_turn() as ours:
        assert ours is True
        _write(ledger, "t:after-holder")
    assert _events(ledger_path, "t:after-holder") == 1
