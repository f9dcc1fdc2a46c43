"""The ledger's writer lock: one ``flock`` on ``<ledger>-lock`` taken before ``BEGIN
IMMEDIATE`` and released after ``COMMIT`` or ``ROLLBACK``.

SQLite already serialises writers, but a writer that finds the lock taken is parked by
SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between attempts. With
several ``cyphrs serve`` worker processes committing groups of ~2 ms back to back, those
sleeps were idle CPU and tail latency. Waiting on this lock instead polls every 0.1 to 1 ms,
so the next writer starts within a fraction of a millisecond of the previous COMMIT. An
event loop, which must not sleep, has a thread block on the lock for it instead
(``LockWaiter``): the kernel wakes that thread the moment the holder lets go.

The kernel drops a ``flock`` when its process dies (kill -9 included): a crashed writer never
leaves the ledger locked. The lock is advisory: a writer that does not take it (an old
cyphrs, the ``sqlite3`` shell) is still serialised by SQLite itself, only less promptly.
Locks are per open file, so two ``Ledger`` objects in one process exclude each other too,
exactly as their two SQLite connections would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from cyphrs_cli.errors import StorageError

#: Suffix of the lock file next to the ledger, like SQLite's ``-wal`` and ``-shm``.
LOCK_SUFFIX = "-lock"
_FIRST_POLL = 0.0001
_MAX_POLL = 0.001


def lock_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + LOCK_SUFFIX)


class WriterLock:
    """The writer lock of one ledger file, held by one ``Ledger`` (one open file)."""

    def __init__(self, ledger_path: Path, *, timeout: float) -> None:
        self._ledger_path = ledger_path
        self._path = lock_path(ledger_path)
        self._timeout = timeout
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StorageError(
                    f"cannot open the ledger's writer lock {self._path}: {exc.strerror}"
                ) from exc
            if os.geteuid() == 0:
                self._give_to_ledger_owner(self._fd)
        return self._fd

    def _give_to_ledger_owner(self, fd: int) -> None:
        """Root writing to another account's ledger (``sudo cyphrs revoke``) would leave a
        lock file that account cannot open (0600, root's): every later write of its server
        would fail. SQLite gives its ``-wal`` and ``-shm`` to the ledger's owner in the same
        case; so does this."""
        with contextlib.suppress(OSError):
            owner = os.stat(self._ledger_path)
            os.fchown(fd, owner.st_uid, owner.st_gid)

    def acquire(self) -> None:
        """Take the lock, waiting at most the ledger's busy timeout.

        Raises:
            StorageError: the lock file cannot be opened, or another writer held the lock
                for the whole timeout (exit 8, like SQLite's own "database is locked").
        """
        fd = self._open()
        deadline = time.monotonic() + self._timeout
        pause = _FIRST_POLL
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"the ledger is locked by another writer for over {self._timeout:g} s",
                        hint="another cyphrs process is writing; retry, or raise"
                        " CYPHRS_BUSY_TIMEOUT_MS",
                    ) from None
                time.sleep(pause)
                pause = min(_MAX_POLL, pause * 2)
            except OSError as exc:
                raise StorageError(f"cannot lock {self._path}: {exc.strerror}") from exc

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting: whether it was taken.

        Raises:
            StorageError: the lock file cannot be opened or locked.
        """
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot lock {self._path}: {exc.strerror}") from exc
        return True

    def waiter(self) -> LockWaiter:
        """A ``LockWaiter`` that takes this lock for another thread (``Ledger.lock_waiter``).

        Raises:
            StorageError: the lock file cannot be opened, or its descriptor duplicated
                (out of descriptors: EMFILE).
        """
        fd = self._open()
        try:
            duplicate = os.dup(fd)  # not inheritable, as os.dup makes it
        except OSError as exc:
            raise StorageError(f"cannot wait for {self._path}: {exc.strerror}") from exc
        return LockWaiter(duplicate, self._path)

    @property
    def timeout(self) -> float:
        return self._timeout

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LockWaiter:
    """One wait for a ``WriterLock``, with no deadline, run by a thread that waits on behalf
    of an event loop. It holds a duplicate of the lock file's descriptor, made on the
    caller's thread: a ``flock`` belongs to the open file, so what ``wait`` takes is that
    ``WriterLock``'s lock; and if the ``WriterLock`` is closed meanwhile, closing the
    duplicate releases whatever was taken, so the lock is never left held by nobody and a
    reused descriptor number is never locked by mistake. ``wait`` or ``close`` closes the
    duplicate; each is called once."""

    def __init__(self, duplicate: int, path: Path) -> None:
        self._fd = duplicate
        self._path = path

    def wait(self) -> None:
        """Block until the lock is taken (the kernel wakes this thread when the holder lets
        go), then close the duplicate; the ``WriterLock`` keeps the lock.

        Raises:
            StorageError: the lock could not be taken (nothing is held).
        """
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(f"cannot lock {self._path}: {exc.strerror}") from exc
        finally:
            self.close()

    def close(self) -> None:
        """Give up a wait that never ran."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
