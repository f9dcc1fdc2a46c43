"""The ledger's writer lock (``ledger.writelock``), attacked with real processes: a
writer waits for the holder and starts as soon as it lets go; a holder that never lets go
gives exit 8 after the busy timeout, not a hang; a holder killed with SIGKILL frees the
lock at once; concurrent writer processes keep one unbroken hash chain."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.db import BUSY_TIMEOUT_ENV, Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event
from cyphrs_cli.ledger.investigate import check_chain
from cyphrs_cli.ledger.writelock import lock_path

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""

WRITE = """
import sys
from pathlib import Path
from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event
with Ledger(Path(sys.argv[1])) as ledger:
    for n in range(int(sys.argv[2])):
        with ledger.transaction() as conn:
            append_event(conn, LedgerEvent(type="test.write", target=f"w:{sys.argv[3]}:{n}"))
"""


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path, create=True).close()
    return path


def _holder(ledger_path: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path(ledger_path)), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def test_lock_file_is_private(ledger_path: Path) -> None:
    with Ledger(ledger_path) as ledger, ledger.transaction() as conn:
        append_event(conn, LedgerEvent(type="test.write", target="x"))
    assert stat.S_IMODE(lock_path(ledger_path).stat().st_mode) == 0o600


def test_writer_waits_for_the_holder_then_commits(ledger_path: Path) -> None:
    holder = _holder(ledger_path, 1.0)
    try:
        started = time.monotonic()
        with Ledger(ledger_path) as ledger, ledger.transaction() as conn:
            waited = time.monotonic() - started
            append_event(conn, LedgerEvent(type="test.write", target="after-wait"))
        assert 0.5 < waited < 10
    finally:
        _stop(holder)


def test_a_holder_that_never_lets_go_gives_exit_8_not_a_hang(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "300")
    holder = _holder(ledger_path, 30.0)
    try:
        with Ledger(ledger_path) as ledger:
            started = time.monotonic()
            with (
                pytest.raises(StorageError, match="locked by another writer") as caught,
                ledger.transaction(),
            ):
                pass
            assert time.monotonic() - started < 5
            assert int(caught.value.exit_code) == 8
            assert not ledger.conn.in_transaction  # nothing half-begun
    finally:
        _stop(holder)


def test_kill_9_of_the_holder_frees_the_lock_at_once(ledger_path: Path) -> None:
    holder = _holder(ledger_path, 60.0)
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        with Ledger(ledger_path) as ledger, ledger.transaction() as conn:
            append_event(conn, LedgerEvent(type="test.write", target="after-kill"))
        assert time.monotonic() - started < 2
    finally:
        _stop(holder)


def test_concurrent_writer_processes_keep_one_chain(ledger_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITE, str(ledger_path), "60", str(n)])
        for n in range(4)
    ]
    try:
        assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=10)
    with Ledger(ledger_path) as ledger:
        (count,) = ledger.conn.execute(
            "SELECT count(*) FROM events WHERE type = 'test.write'"
        ).fetchone()
        assert count == 240
        (last,) = ledger.conn.execute("SELECT max(seq) FROM events").fetchone()
        chain = check_chain(ledger.conn, 1, last)
        assert chain.problems == [] and chain.checked == last
