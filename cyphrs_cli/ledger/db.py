"""Ledger connections: durable PRAGMAs, ``BEGIN IMMEDIATE`` transactions, migrations.

All SQL that touches the ledger runs through a ``Ledger``; keeping the engine behind this
module is what lets a PostgreSQL ledger replace SQLite later.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.writelock import LockWaiter, WriterLock

if TYPE_CHECKING:
    import threading

BUSY_TIMEOUT_ENV = "CYPHRS_BUSY_TIMEOUT_MS"
DEFAULT_BUSY_TIMEOUT_MS = 30_000
#: Steps a migration's SQL cannot express (hashing PEM), run right after it in the same
#: transaction: migration number -> "module:function" taking the connection.
_AFTER_MIGRATION = {5: "cyphrs_cli.ledger.investigate:backfill_sha1"}


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("cyphrs_cli.ledger").joinpath("migrations")
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _refuse_unusable(path: Path) -> None:
    """Opening an existing ledger must never create one: a missing or empty file means
    the ledger was lost (deleted, truncated), and a fresh schema would hide that."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StorageError(f"ledger {path} is missing", hint="is this a cyphrs CA home?") from None
    except OSError as exc:
        raise StorageError(f"cannot open ledger {path}: {exc}") from exc
    if size == 0:
        raise StorageError(
            f"ledger {path} is empty (0 bytes): it was truncated or wiped",
            hint="restore the ledger from a backup; nothing was changed",
        )


class Ledger:
    """One open ledger file. Use as a context manager; writes go through ``transaction``."""

    def __init__(self, path: Path, *, create: bool = False, shared: bool = False) -> None:
        """Open (or with ``create``, lay down) the ledger at ``path``.

        ``shared`` lets a thread other than the opening one *close* the connection (an
        ``Authority`` opens one connection per thread and closes them all at the end);
        it must still be used by one thread at a time.
        """
        if not create:
            _refuse_unusable(path)
        self.path = path
        if create and not path.exists():
            # SQLite creates the file (and later -wal/-shm, which copy its mode) with the
            # umask's mode; the ledger is private to the CA operator.
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise StorageError(f"cannot create ledger {path}: {exc.strerror}") from exc
        timeout_ms = int(os.environ.get(BUSY_TIMEOUT_ENV, DEFAULT_BUSY_TIMEOUT_MS))
        self._writer_lock = WriterLock(path, timeout=timeout_ms / 1000)
        self._journal_in_memory = False  # temp_store MEMORY set for the open transaction
        self._issuance_only = False  # temp_store MEMORY for good (``write_issuances_only``)
        # Set by ``defer_commit_sync`` (the WAL is then made durable by ``sync_committed``,
        # outside the writer lock, instead of inside each COMMIT): the lock is held while
        # the WAL descriptor is synced or closed, so a ``close`` on another thread never
        # frees its number for reuse during an ``fdatasync``. None: COMMITs sync
        # themselves. Made there (``threading`` is not imported at CLI start-up).
        self._sync_lock: threading.Lock | None = None
        self._wal_fd: int | None = None
        self._wal_path: str | None = None
        self._sync_failed: str | None = None  # sticky: see ``sync_committed``
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the transaction
            # boundaries are exactly the ones written in the code.
            self.conn = sqlite3.connect(
                path,
                isolation_level=None,
                timeout=timeout_ms / 1000,
                check_same_thread=not shared,
            )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if not create:
                self._refuse_schemaless()
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open ledger {path}: {exc}") from exc

    def _refuse_schemaless(self) -> None:
        """A file with no cyphrs schema is not a ledger we may turn into one: only the
        commands that create a CA home (``create=True``) lay down a fresh schema."""
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            self.conn.close()
            raise StorageError(
                f"ledger {self.path} has no cyphrs schema: it was wiped or replaced",
                hint="restore the ledger from a backup; nothing was changed",
            )

    def _migrate(self) -> None:
        (current,) = self.conn.execute("PRAGMA user_version").fetchone()
        pending = [(n, sql) for n, sql in _migrations() if n > current]
        if not pending:
            return
        with self.transaction() as conn:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            for number, sql in pending:
                if number <= current:
                    continue
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                if number in _AFTER_MIGRATION:
                    import importlib

                    module, function = _AFTER_MIGRATION[number].split(":")
                    getattr(importlib.import_module(module), function)(conn)
                conn.execute(f"PRAGMA user_version = {number}")

    @property
    def busy_timeout(self) -> float:
        """Seconds a writer waits for the writer lock before giving up (exit 8)."""
        return self._writer_lock.timeout

    def try_begin(self) -> bool:
        """Begin a write transaction only if no other writer holds the writer lock: take
        the lock without waiting (False, nothing begun, when it is taken), then begin an
        issuance transaction (``begin_locked``). End it with ``end``, which may run on
        another thread (one at a time). For an event loop, which must neither sleep on
        the lock nor wait for the COMMIT's fsync (``service.committer``); everything else
        uses ``transaction``.

        Raises:
            StorageError: the lock file cannot be locked, or BEGIN fails (lock released).
        """
        return self.try_lock() and self.begin_locked()

    def try_lock(self) -> bool:
        """Take the writer lock if it is free, without waiting: whether it was taken.
        ``begin_locked`` then begins the transaction (or ``release_lock`` gives it up).

        Raises:
            StorageError: the lock file cannot be opened or locked.
        """
        return self._writer_lock.try_acquire()

    def lock_waiter(self) -> LockWaiter:
        """A call that blocks, with no deadline, until this ledger holds the writer lock,
        for a thread that waits on behalf of an event loop (``service.committer``): the
        kernel wakes it the moment the holder lets go, where polling from the loop wakes
        up to a millisecond late or spins. The caller enforces the busy timeout; see
        ``writelock.LockWaiter`` for what happens when the ledger is closed meanwhile.

        Raises:
            StorageError: the lock file cannot be opened, or its descriptor duplicated.
        """
        return self._writer_lock.waiter()

    def release_lock(self) -> None:
        """Give up the writer lock taken by ``try_lock`` or a ``lock_waiter``, no
        transaction begun."""
        self._writer_lock.release()

    def begin_locked(self) -> bool:
        """``BEGIN IMMEDIATE`` of an issuance transaction (see ``transaction``) while
        this ledger holds the writer lock; False (lock released, nothing begun) when
        SQLite's own lock is taken.

        Raises:
            StorageError: BEGIN fails, or a sync of this connection's commits failed
                (``sync_committed``); the lock is released.
        """
        if self._sync_failed is not None:
            self._writer_lock.release()
            raise StorageError(self._sync_failed)
        try:
            self._begin_immediate(issuance=True)
        except sqlite3.OperationalError as exc:
            self._writer_lock.release()
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                # A writer that does not take the lock file (the sqlite3 shell, an old
                # cyphrs) holds SQLite's own lock: busy like the lock file, not broken.
                # Waits here are SQLite's busy timeout; set it to 0 to never wait. Any
                # extended busy code counts (BUSY_RECOVERY, BUSY_SNAPSHOT ...).
                return False
            raise StorageError(f"ledger {self.path} is not writable: {exc}") from exc
        except sqlite3.Error as exc:
            self._writer_lock.release()
            raise StorageError(f"ledger {self.path} is not writable: {exc}") from exc
        except BaseException:
            self._writer_lock.release()
            raise
        return True

    def end(self, *, commit: bool) -> None:
        """COMMIT (or ROLLBACK) the transaction ``try_begin`` began, then release the
        writer lock.

        Raises:
            StorageError: the COMMIT failed (the transaction was rolled back, nothing of it
                recorded), in one line naming the cause (disk full, I/O error).
        """
        try:
            if not commit:
                self._rollback()
                return
            with self._undone_on_error():
                self.conn.execute("COMMIT")
        finally:
            self._after_write()
            self._writer_lock.release()

    @contextmanager
    def transaction(self, *, issuance: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement.

        The writer lock (``writelock``) is taken first, so writers of several processes
        queue on it instead of on SQLite's sleeping busy handler. ``issuance``: the
        transaction records issued certificates, each under its own savepoint (see
        ``_begin_immediate``)."""
        self._writer_lock.acquire()
        try:
            try:
                self._begin_immediate(issuance=issuance)
            except sqlite3.Error as exc:
                raise StorageError(f"ledger {self.path} is not writable: {exc}") from exc
            with self._undone_on_error():
                yield self.conn
                self.conn.execute("COMMIT")
        finally:
            self._after_write()
            self._writer_lock.release()

    def _begin_immediate(self, *, issuance: bool) -> None:
        """``BEGIN IMMEDIATE``; for an issuance transaction, with its savepoint and
        statement journals kept in memory.

        SQLite keeps the first 64 KiB of such a journal (the old content of every page a
        savepoint or statement changes) in memory and spills the rest to a temporary file
        it creates for the transaction. One issuance's savepoint
        (``issuance.record_in_transaction``) spilled whenever one connection wrote
        transaction after transaction (one serving process, a batch; never, measured,
        with two processes taking turns), so each such transaction paid a file's create,
        unlink and close and a 4 KiB ``pwrite`` per page (``docs/design-notes.md``,
        "Savepoint journals in memory for issuance transactions"). An issuance bounds
        what one savepoint changes (one certificate, its events, its credential), and
        SQLite empties the journal at each RELEASE; other writes do not bound it (a
        migration's UPDATE of every row would hold the whole ledger in memory), so they
        keep SQLite's default. SQLite reads ``temp_store`` at BEGIN; ``_after_write``
        sets it back, as with it in memory a read's sorter never spills either (``audit
        verify`` sorts millions of rows)."""
        if issuance and not self._issuance_only:
            self.conn.execute("PRAGMA temp_store = MEMORY")
            self._journal_in_memory = True
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._after_write()
            raise

    def write_issuances_only(self) -> None:
        """This connection will write nothing but issuance transactions and read nothing
        large (a serving loop's group writer): its savepoint journals stay in memory for
        its whole life, instead of ``temp_store`` set before and reset after each
        transaction (``_begin_immediate``). Those two statements cost about 50 µs of CPU
        per group, measured, on the path every online enrollment takes."""
        self.conn.execute("PRAGMA temp_store = MEMORY")
        self._issuance_only = True

    def defer_commit_sync(self) -> None:
        """From now on this connection's COMMITs do not wait for the disk; the caller
        makes them durable with ``sync_committed`` once the writer lock is released, and
        outputs nothing of a transaction before that returned.

        Why: with ``synchronous = FULL`` SQLite syncs the WAL inside COMMIT, so the
        writer lock, which every serving process queues on, is held for the disk's
        flush too (about 0.5-0.7 ms of the 1.7 ms a group held it, measured). With
        ``NORMAL`` a COMMIT in WAL mode writes its frames and returns; SQLite still
        syncs the WAL before any checkpoint copies it into the database. An
        ``fdatasync`` of the WAL file after the COMMIT makes that transaction durable,
        and every one committed before it, by any connection: the same guarantee as
        ``FULL``, at the moment the caller needs it.

        The WAL is opened here, before this connection commits anything: a descriptor
        opened after a failed write-back would not be told of it. Its name comes from
        SQLite (``PRAGMA database_list``), which resolves a symbolic link to the ledger:
        the WAL lives beside the link's target, and a name built from ``self.path``
        would sync another file (or none).

        Raises:
            StorageError: the WAL file cannot be opened (nothing changed).
        """
        (_, _, database), *_ = self.conn.execute("PRAGMA database_list").fetchall()
        wal = f"{database}-wal"
        try:
            descriptor = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open the ledger's WAL {wal}: {exc.strerror}") from exc
        try:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            os.close(descriptor)
            raise
        import threading

        self._sync_lock = threading.Lock()
        self._wal_fd, self._wal_path = descriptor, wal

    @property
    def sync_failure(self) -> str | None:
        """Why this connection's commits can no longer be made durable, if a sync failed
        (``sync_committed``): then it begins nothing more."""
        return self._sync_failed

    def sync_committed(self) -> None:
        """Make every transaction committed so far durable (``defer_commit_sync``): an
        ``fdatasync`` of the WAL file. A no-op on a connection that syncs in its COMMITs.

        A failed sync is sticky: after it, this connection neither vouches for nor begins
        anything again (``begin_locked`` refuses), because the kernel may have dropped
        the pages it could not write and reports that once, and a WAL frame lost in the
        middle ends SQLite's recovery there (frame checksums are cumulative), taking
        later transactions with it.

        Raises:
            StorageError: the sync failed, now or earlier (exit 8).
        """
        if self._sync_lock is None:
            return
        # The same file as SQLite's own descriptor: SQLite deletes the WAL only when its
        # last connection closes, and this one is open.
        with self._sync_lock:
            if self._sync_failed is not None:
                raise StorageError(self._sync_failed)
            if self._wal_fd is None:
                raise StorageError(f"ledger {self.path} is closed: nothing was made durable")
            try:
                os.fdatasync(self._wal_fd)
            except OSError as exc:
                self._sync_failed = (
                    f"ledger write not made durable: syncing {self._wal_path} failed"
                    f" ({exc.strerror}); this connection writes nothing more (restart the"
                    " server)"
                )
                with contextlib.suppress(OSError):
                    os.close(self._wal_fd)
                self._wal_fd = None
                raise StorageError(self._sync_failed) from exc

    def _after_write(self) -> None:
        """Temporary storage back to files once an issuance transaction is over."""
        if self._journal_in_memory and not self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA temp_store = DEFAULT")
                self._journal_in_memory = False

    @contextmanager
    def _undone_on_error(self) -> Iterator[None]:
        """Roll the open transaction back if the block fails; an SQLite failure becomes
        one ``StorageError`` line naming its cause (disk full, I/O error)."""
        try:
            yield
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(_write_failure(self.path, exc)) from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Undo the open transaction, never hiding the error that made us undo it.

        After a failed COMMIT (disk full, I/O error) SQLite may already have rolled back, so
        a ROLLBACK would itself fail ("no transaction is active") and replace the real cause.
        """
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()
        self._writer_lock.close()
        if self._sync_lock is not None:
            with self._sync_lock:
                if self._wal_fd is not None:
                    os.close(self._wal_fd)
                    self._wal_fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_failure(path: Path, exc: sqlite3.Error) -> str:
    """One line naming the condition: disk full and I/O errors in words, then SQLite's text."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL" or "disk is full" in str(exc):
        return (
            f"ledger write failed: the disk holding {path} is full (nothing was recorded;"
            " free some space and retry)"
        )
    if name.startswith("SQLITE_IOERR"):
        return f"ledger write failed: I/O error on {path} ({exc}); nothing was recorded"
    return f"ledger write failed: {exc}"
