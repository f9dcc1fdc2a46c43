"""WAL checkpoints off the commit path, for a ledger with one busy writer (``cyphrs serve``).

With SQLite's default auto-checkpoint, the COMMIT that takes the WAL past 1000 pages also
copies those pages into the database file and fsyncs it: the requests of that group wait
for it (a latency spike), and the hot pages (index tails, the events table's end) are
copied once per 1000 pages although most of them were rewritten many times meanwhile.

A ``WalCheckpointer`` does that work on its own thread and its own connection instead:
the writer turns its auto-checkpoint off (``PRAGMA wal_autocheckpoint = 0`` on the
writer's connection only) and calls ``committed(items)`` after each transaction; once
``every_items`` items were committed since the last checkpoint, the thread runs a
``PASSIVE`` checkpoint, which copies the frames without blocking the writer, then a
``RESTART`` checkpoint, which takes the writer's lock only to copy the few frames
committed meanwhile and makes the next transaction write the WAL from its start again.
Without that second step a busy writer always outruns the passive checkpoint by a few
frames, SQLite never rewinds the WAL, and the file grows (measured: 12,000 pages after
2,000 enrollments). Should the WAL still hold more than ``limit_pages`` frames (the
restart could not get its locks), a ``TRUNCATE`` checkpoint empties the file. Closing
runs a last ``TRUNCATE`` checkpoint and stops the thread.

The interval adapts to the ledger (``HOLD_TARGET_MS``): the RESTART holds the writers
up for what was committed during the PASSIVE before it, and that work grows with the
ledger, since each enrollment adds a page to each random-keyed index and the bigger the
index the fewer pages two enrollments share. Measured at 4 clients with two serving
processes and 128 items: the p99 latency went from 10 ms at 1,500 certificates to 20 ms
at 21,000. A RESTART that held the writers past the target halves the interval (down to
``MIN_EVERY_ITEMS``); one far under it doubles it again, up to ``every_items``.

A RESTART or TRUNCATE needs a moment with no writer, and then holds the write lock while
it waits for readers of the WAL (a long ``audit export`` or ``list`` in another process,
or just the servers' own brief reads) to finish: the writers wait with it. Two rules
keep that short and sure:
- it takes the ledger's writer lock (``ledger.writelock``) first, rather than SQLite's
  busy handler, which sleeps 1, 2, 5 ... ms between attempts and so loses every race to
  writers that commit back to back (measured: the WAL of a busy server then grew past
  every bound); while it waits for that lock (``wants_writer_lock``), the writers of its
  own process hold back (``service.committer``), so it gets the lock at the next COMMIT;
- the routine RESTART then waits at most ``ROUTINE_WAIT_MS`` for readers; past that
  SQLite answers busy, the checkpoint is counted as ``busy`` and tried again at the next
  one, and the writers go on. Measured with two serving processes at 4 clients: a 50 ms
  wait there stalled the writers often enough to lift the p99 latency from 12 to 18 ms.
  Only once the WAL has grown past ``patient_pages`` (the quick attempts kept losing to
  readers) does a RESTART wait up to ``BLOCKING_WAIT_MS``, and past ``limit_pages`` a
  TRUNCATE does: the WAL stays bounded, and long stalls stay rare.

Durability is unchanged: a checkpoint only copies committed frames from the WAL into the
database file (``synchronous = FULL`` syncs both); a crash at any point leaves every
committed transaction either in the database file or in the WAL, from which SQLite
recovers it on the next open.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.writelock import WriterLock

#: Items (certificates) committed between two PASSIVE checkpoints. One enrollment writes
#: about 35 WAL pages alone and fewer per item in a group, so this is a few thousand pages.
DEFAULT_EVERY_ITEMS = 128
#: Frames past which the WAL is checkpointed with TRUNCATE (about 40 MB of 4 KiB pages).
DEFAULT_LIMIT_PAGES = 10_000
#: With commits pending but no new ones for this long, checkpoint anyway (quiet periods).
IDLE_SECONDS = 1.0
#: The longest a routine RESTART checkpoint waits for locks (and so may hold up writers).
ROUTINE_WAIT_MS = 2
#: WAL frames per item of ``every_items`` past which the RESTART waits up to
#: ``BLOCKING_WAIT_MS``: an enrollment writes 20-35 frames, so this is one to two intervals
#: that the quick attempts failed to rewind (4,096 frames, 16 MB, at the default 128).
PATIENT_FRAMES_PER_ITEM = 32
#: The longest a patient RESTART or a TRUNCATE checkpoint waits for locks.
BLOCKING_WAIT_MS = 50
#: The longest a RESTART or TRUNCATE queues for the ledger's writer lock.
WRITER_LOCK_WAIT = 5.0
#: At close the writer has stopped: the last TRUNCATE may wait for readers longer.
CLOSING_WAIT_MS = 5_000
#: How long a routine RESTART should hold the writers up (ms). Its work is what was
#: committed during the PASSIVE before it, which grows with the ledger: each enrollment
#: adds a page to each random-keyed index (serial, fingerprint, SPIFFE ID, ...), and the
#: bigger the index the fewer of those pages two enrollments share. Past this hold the
#: interval is halved, far under it doubled again (up to ``every_items``).
HOLD_TARGET_MS = 6.0
#: The smallest interval the adaptation goes down to.
MIN_EVERY_ITEMS = 16


@dataclass
class CheckpointStats:
    """What the checkpointer did so far (read by tests)."""

    passive: int = 0  # PASSIVE checkpoints run
    restart: int = 0  # RESTART checkpoints run (one after each PASSIVE)
    truncate: int = 0  # TRUNCATE checkpoints run (WAL over its limit, or closing)
    patient: int = 0  # RESTARTs that waited up to BLOCKING_WAIT_MS (WAL past patient_pages)
    busy: int = 0  # checkpoints that could not complete (a reader or the writer was busy)
    lock_timeouts: int = 0  # of those, RESTART/TRUNCATEs that never got the writer lock
    largest_wal_pages: int = 0  # the most frames a checkpoint found in the WAL
    errors: int = 0  # checkpoints that failed (I/O); the next one tries again
    every_items: int = 0  # the interval now (adapted to the RESTART's hold)
    smallest_every_items: int = 0  # the smallest it has been
    last_hold_ms: float = 0.0  # how long the last RESTART held the writer lock


class WalCheckpointer:
    """The checkpoint thread of one ledger file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        every_items: int = DEFAULT_EVERY_ITEMS,
        limit_pages: int = DEFAULT_LIMIT_PAGES,
        patient_pages: int | None = None,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._every_max = max(1, every_items)
        self._every_items = self._every_max
        self._limit_pages = max(1, limit_pages)
        patient = (
            PATIENT_FRAMES_PER_ITEM * self._every_max if patient_pages is None else patient_pages
        )
        self._patient_pages = max(0, min(patient, self._limit_pages))
        self._idle_seconds = idle_seconds
        # Used by the checkpoint thread only (and by ``close`` after that thread ended).
        # mode=rw: never create a ledger file that is not there.
        self._conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw",
            uri=True,
            isolation_level=None,
            timeout=BLOCKING_WAIT_MS / 1000,
            check_same_thread=False,
        )
        self._conn.execute(f"PRAGMA busy_timeout = {BLOCKING_WAIT_MS}")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._writers = WriterLock(path, timeout=WRITER_LOCK_WAIT)
        self._wants_lock = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0  # items committed since the last checkpoint
        self._wake = threading.Event()
        self._closed = False
        self.stats = CheckpointStats(
            every_items=self._every_items, smallest_every_items=self._every_items
        )
        self._thread = threading.Thread(target=self._run, name="cyphrs-wal-checkpoint", daemon=True)
        self._thread.start()

    @property
    def wants_writer_lock(self) -> bool:
        """A RESTART or TRUNCATE is waiting for the writer lock: this process's writers
        should let it have it before their next transaction."""
        return self._wants_lock.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def committed(self, items: int) -> None:
        """The writer committed a transaction of ``items`` items (cheap: no I/O here)."""
        with self._lock:
            self._pending += items
            due = self._pending >= self._every_items
        if due:
            self._wake.set()

    def close(self) -> None:
        """Checkpoint everything (TRUNCATE), stop the thread, close the connection
        (idempotent). Call it after the writer has stopped writing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        self._conn.close()
        self._writers.close()

    # -- the checkpoint thread ------------------------------------------------------

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(timeout=self._idle_seconds)
            self._wake.clear()
            with self._lock:
                closing, pending = self._closed, self._pending
                if closing or pending >= self._every_items or (pending and not woken):
                    self._pending = 0
                else:
                    continue
            if closing:
                self._checkpoint("TRUNCATE", CLOSING_WAIT_MS)
                return
            self._checkpoint("PASSIVE", ROUTINE_WAIT_MS)
            busy_before = self.stats.busy
            frames = self._checkpoint("RESTART", ROUTINE_WAIT_MS)
            if self.stats.busy == busy_before:
                self._adapt(self.stats.last_hold_ms)
            if self.stats.busy > busy_before and frames > self._patient_pages:
                self.stats.patient += 1  # readers kept the WAL from rewinding: wait longer
                frames = self._checkpoint("RESTART", BLOCKING_WAIT_MS)
            if frames > self._limit_pages:
                self._checkpoint("TRUNCATE", BLOCKING_WAIT_MS)

    def _adapt(self, hold_ms: float) -> None:
        """Halve the interval after a RESTART that held the writers past
        ``HOLD_TARGET_MS``, double it (up to the configured one) after one far under."""
        with self._lock:
            if hold_ms > HOLD_TARGET_MS:
                self._every_items = max(MIN_EVERY_ITEMS, self._every_items // 2)
            elif hold_ms < HOLD_TARGET_MS / 4:
                self._every_items = min(self._every_max, self._every_items * 2)
            self.stats.every_items = self._every_items
            self.stats.smallest_every_items = min(
                self.stats.smallest_every_items, self._every_items
            )

    def _checkpoint(self, mode: str, wait_ms: int) -> int:
        """Run one checkpoint, waiting at most ``wait_ms`` for SQLite's locks (a RESTART or
        TRUNCATE holding the ledger's writer lock meanwhile); the number of frames the WAL
        held (0 on failure)."""
        exclusive = mode != "PASSIVE"
        if exclusive:
            self._wants_lock.set()
            try:
                self._writers.acquire()
            except StorageError:  # writers kept the lock for WRITER_LOCK_WAIT: next time
                self.stats.busy += 1
                self.stats.lock_timeouts += 1
                return 0
            finally:
                self._wants_lock.clear()
        held = time.monotonic()
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
            busy, frames, _copied = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            self.stats.errors += 1
            return 0
        finally:
            if exclusive:
                self._writers.release()
                self.stats.last_hold_ms = (time.monotonic() - held) * 1000
        if mode == "PASSIVE":
            self.stats.passive += 1
        elif mode == "RESTART":
            self.stats.restart += 1
        else:
            self.stats.truncate += 1
        if busy:
            self.stats.busy += 1
        self.stats.largest_wal_pages = max(self.stats.largest_wal_pages, max(frames, 0))
        return int(frames)
