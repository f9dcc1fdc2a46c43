"""``Ledger.defer_commit_sync`` / ``sync_committed``: the serving loop's writer connection
commits without waiting for the disk (``synchronous = NORMAL``) and syncs the WAL file after
the writer lock is released, before anything of the transaction is output.

Attacked here: the default stays ``FULL`` everywhere else; the sync really is a sync of
the WAL file (its own descriptor, closed with the ledger); a failed sync is reported as
exit 8, stays failed, and the connection then refuses to begin anything (a frame the
kernel could not write ends SQLite's recovery there, so nothing after it may be vouched
for); ``close`` on another thread waits for a sync in progress before it closes the
descriptor (a real slow sync, caught inside the kernel's ``fdatasync``); and the group
committer fails a group whose sync failed instead of delivering it,
and writes no later group (``tests/unit/service/test_committer_loop.py``). The interleaving with client output is attacked in
``tests/e2e/test_serve_durable_before_output.py``. Real SQLite files, real descriptors
(the failure is a descriptor closed behind the ledger's back: a real ``EBADF`` from
``fdatasync``, as no disk here fails on demand).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode, StorageError
from cyphrs_cli.ledger.db import Ledger
from tests.helpers import open_descriptors


def wal_descriptors(ledger_path: Path) -> list[int]:
    """This process's descriptors open on ``ledger_path``'s WAL file."""
    wal = str(ledger_path) + "-wal"
    return list(open_descriptors(lambda target: target == wal))


def _write(ledger: Ledger, value: int) -> None:
    assert ledger.try_lock() and ledger.begin_locked()
    ledger.conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
    ledger.end(commit=True)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    opened = Ledger(tmp_path / "l.sqlite3", create=True)
    with opened.transaction() as conn:
        conn.execute("CREATE TABLE t (v INTEGER)")
    return opened


def test_only_a_deferring_connection_commits_without_syncing(ledger: Ledger) -> None:
    assert ledger.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    sqlite_own = wal_descriptors(ledger.path)
    ledger.sync_committed()  # a no-op: its COMMITs sync themselves
    assert wal_descriptors(ledger.path) == sqlite_own
    ledger.defer_commit_sync()
    assert ledger.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    other = Ledger(ledger.path)
    try:
        assert other.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        other.close()
    _write(ledger, 1)
    ledger.sync_committed()
    opened = [fd for fd in wal_descriptors(ledger.path) if fd not in sqlite_own]
    assert len(opened) == 1  # the WAL file itself, on a descriptor of its own
    reader = sqlite3.connect(ledger.path)
    try:
        assert reader.execute("SELECT v FROM t").fetchall() == [(1,)]
    finally:
        reader.close()
    ledger.close()
    assert wal_descriptors(ledger.path) == []


def test_a_failed_sync_is_exit_8_sticky_and_refuses_the_next_transaction(
    ledger: Ledger,
) -> None:
    ledger.defer_commit_sync()
    _write(ledger, 1)
    ledger.sync_committed()
    _write(ledger, 2)
    assert ledger._wal_fd in wal_descriptors(ledger.path)
    os.close(ledger._wal_fd)  # behind the ledger's back: its fdatasync now fails (EBADF)
    with pytest.raises(StorageError) as failed:
        ledger.sync_committed()
    assert failed.value.exit_code == ExitCode.STORAGE
    assert "l.sqlite3-wal failed" in failed.value.message
    with pytest.raises(StorageError):
        ledger.sync_committed()  # stays failed
    assert ledger.try_lock()
    with pytest.raises(StorageError, match="writes nothing more"):
        ledger.begin_locked()
    other = Ledger(ledger.path)  # the writer lock was given back
    try:
        assert other.try_lock()
        other.release_lock()
    finally:
        other.close()
    ledger.close()


def test_a_ledger_behind_a_symbolic_link_syncs_the_wal_sqlite_writes(tmp_path: Path) -> None:
    """The ledger file moved elsewhere and linked into the home (allowed: the home's
    checks follow links). SQLite keeps the WAL beside the link's target; a name built
    from the link would sync another file, here a stale ``-wal`` left beside the link,
    and a certificate would be delivered with its frames unsynced."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    Ledger(store / "l.sqlite3", create=True).close()
    (home / "l.sqlite3").symlink_to(store / "l.sqlite3")
    (home / "l.sqlite3-wal").write_bytes(b"")  # the decoy
    linked = Ledger(home / "l.sqlite3")
    try:
        with linked.transaction() as conn:
            conn.execute("CREATE TABLE t (v INTEGER)")
        linked.defer_commit_sync()
        _write(linked, 1)
        linked.sync_committed()
        assert linked._wal_fd is not None
        synced = os.readlink(f"/proc/self/fd/{linked._wal_fd}")
        assert synced == str((store / "l.sqlite3-wal").resolve())
        assert (home / "l.sqlite3-wal").read_bytes() == b""  # the decoy was never written
    finally:
        linked.close()


def test_a_closed_ledger_vouches_for_nothing(ledger: Ledger) -> None:
    ledger.defer_commit_sync()
    _write(ledger, 1)
    ledger.close()
    with pytest.raises(StorageError, match="is closed"):
        ledger.sync_committed()


#: ``fdatasync``'s number in ``/proc/<pid>/task/<tid>/syscall`` (the first field while a
#: thread is blocked in a system call).
_FDATASYNC = {"x86_64": 75, "aarch64": 83}.get(os.uname().machine)


def _in_fdatasync(thread_id: int) -> bool:
    try:
        fields = Path(f"/proc/self/task/{thread_id}/syscall").read_text().split()
    except OSError:  # the thread has ended
        return False
    return bool(fields) and fields[0] == str(_FDATASYNC)


class _Syncer(threading.Thread):
    """``sync_committed`` on a thread of its own; ``outcome`` is None or what it raised."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.native: int | None = None
        self.outcome: list[BaseException | None] = []
        self.running = threading.Event()

    def run(self) -> None:
        self.native = threading.get_native_id()
        self.running.set()
        try:
            self.ledger.sync_committed()
        except BaseException as error:  # the test's assertion reports it
            self.outcome.append(error)
        else:
            self.outcome.append(None)

    def caught_in_kernel(self) -> bool:
        """Started, and seen inside ``fdatasync`` before it returned."""
        self.start()
        self.running.wait(10)
        assert self.native is not None
        deadline = time.monotonic() + 10
        while self.is_alive() and time.monotonic() < deadline:
            if _in_fdatasync(self.native):
                return True
            time.sleep(0.0002)
        return False


def _unsynced_megabytes(ledger: Ledger, megabytes: int) -> None:
    """Commit ``megabytes`` of WAL frames that nothing has synced (dirty in the page cache)."""
    assert ledger.try_lock() and ledger.begin_locked()
    ledger.conn.execute("DELETE FROM big")
    for _ in range(megabytes):
        ledger.conn.execute("INSERT INTO big (b) VALUES (randomblob(1048576))")
    ledger.end(commit=True)


@pytest.mark.skipif(_FDATASYNC is None, reason="fdatasync's number on this machine unknown")
def test_close_waits_for_a_sync_in_progress_before_closing_its_descriptor(
    ledger: Ledger,
) -> None:
    """The commit thread syncs while another thread may close the ledger (a stopping
    server). Were the WAL descriptor closed during the ``fdatasync``, its number could be
    taken by the next file the process opens, and a sync would vouch for the wrong file,
    or fail. A real slow sync (tens of megabytes of unsynced WAL) is caught inside the
    kernel's ``fdatasync`` through ``/proc``; ``close`` must not return while it is still
    there, and the sync must succeed. Without the lock ``close`` takes, it fails."""
    with ledger.transaction() as conn:
        conn.execute("CREATE TABLE big (b BLOB)")
    ledger.defer_commit_sync()
    # As on the serving loop's writer: no checkpoint inside a COMMIT (it would sync the
    # WAL first, leaving nothing for the sync to do).
    ledger.conn.execute("PRAGMA wal_autocheckpoint = 0")
    ledger.sync_committed()  # opens its descriptor
    # Another connection stays open, as the server's others do: the last connection to
    # close checkpoints the WAL, which would make ``close`` itself wait for the disk.
    other = sqlite3.connect(ledger.path)
    caught: _Syncer | None = None
    try:
        other.execute("SELECT count(*) FROM big").fetchone()
        for megabytes in (64, 128, 256):
            _unsynced_megabytes(ledger, megabytes)
            syncer = _Syncer(ledger)
            if syncer.caught_in_kernel():
                caught = syncer
                break
            syncer.join(60)  # synced before it could be seen: more next time
        if caught is None:
            pytest.skip("every sync ended before it could be caught in the kernel")
        ledger.close()
        assert caught.native is not None
        still_syncing = _in_fdatasync(caught.native)
        caught.join(60)
    finally:
        other.close()
    assert not still_syncing, "close returned while fdatasync ran on its descriptor"
    assert caught.outcome == [None]
    assert wal_descriptors(ledger.path) == []
