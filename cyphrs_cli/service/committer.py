"""Group commit for a serving ``Authority``: many concurrent leaf issuances, one transaction.

``cyphrs serve`` handles requests on many threads (and on its event loop). Were each to
record its certificate itself, every certificate would pay its own ``BEGIN IMMEDIATE`` ...
``COMMIT`` (one fsync of the WAL with ``synchronous=FULL``) and the writers would queue on
SQLite's lock. The ``GroupCommitter`` owns one writer thread instead. A caller decides and
signs in its own thread (``ca.issuance.sign_leaf``: policy, plan, signature, self-check),
then puts the signed, unrecorded leaf on a queue and waits on its future; the writer takes
everything queued (up to ``max_items``, waiting at most ``max_wait`` for more after the
first, and only while other callers are on their way: see ``expecting``), and hands it to
``ca.issuance.record_signed`` as one group per issuing CA: one transaction, one fsync.
Each future is resolved with its own result only after that transaction committed, so
"recorded before output" holds per item; an item's refusal (a conflict, its
``after_record`` hook) is that item's alone, while a failure of the transaction itself
fails every item of the group and records none of them. The writer does only the
transaction: signing in the callers keeps the one serial step of the process short.

Under no load a group holds one item and costs what a direct call costs; under load the
queue fills while the previous group commits, so groups grow with the load without a
timer adding latency.

An event loop (the server's enrollment fast path) submits with ``submit_here`` instead:
its items form a group per turn of the loop, written by the loop itself and committed by
a commit thread, which syncs the WAL after the writer lock is released, and the loop never
waits on a lock or an fsync (see ``submit_here``).

The writer's connection does not checkpoint the WAL inside its COMMITs (SQLite's
auto-checkpoint is off on it): a ``ledger.checkpoint.WalCheckpointer`` owned by the
committer does that on its own thread, told after each group how many items it
committed, and is stopped (after a last checkpoint) when the committer closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cyphrs_cli.errors import CyphrsError, StorageError

if TYPE_CHECKING:
    from cyphrs_cli.ca.issuance import AfterRecord, SignedLeaf
    from cyphrs_cli.ca.models import IssuedCertificate, Issuer
    from cyphrs_cli.ledger.checkpoint import WalCheckpointer
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.service.authority import Authority

#: Called after every group transaction: (items in the group, seconds the group took).
CommitObserver = Callable[[int, float], None]

DEFAULT_MAX_ITEMS = 64
DEFAULT_MAX_WAIT = 0.001


@dataclass
class _Item:
    issuer: Issuer  # the CA that signed it (and whose chain its record names)
    signed: SignedLeaf
    after_record: AfterRecord | None
    result: Future[IssuedCertificate] = field(default_factory=Future)


#: Pauses between an event loop's attempts at the ledger when a thread cannot wait for
#: it (SQLite's own lock taken, a checkpoint first in line; see ``submit_here``). Not
#: below a millisecond: asyncio's selector rounds shorter timeouts up to one, and uvloop's
#: timers round them down to zero (a spinning loop).
_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.004
#: How long the writer thread sleeps while a checkpoint waits for the writer lock.
_CHECKPOINT_YIELD = 0.0003


@dataclass
class _LoopGroup:
    """The items one event loop has waiting for its next transaction."""

    items: list[_Item] = field(default_factory=list)
    scheduled: bool = False  # a ``_record_here`` call is pending on the loop
    committing: bool = False  # its previous group's COMMIT is running on the commit thread
    committed: bool = False  # that COMMIT has ended (the loop may not have heard yet)
    waiting: bool = False  # the lock thread waits for the writer lock for this group
    expiry: asyncio.TimerHandle | None = None  # fails the group if that wait times out
    ledger: Ledger | None = None  # the connection this loop writes with (its own lock file)
    since: float | None = None  # when the loop first found the writer lock taken
    pause: float = _FIRST_PAUSE

    def take(self) -> list[_Item]:
        """Every waiting item; the group starts over (nothing scheduled, no wait)."""
        items, self.items = self.items, []
        self.scheduled, self.since, self.pause = False, None, _FIRST_PAUSE
        return items

    def waited(self) -> float:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        return now - self.since

    def next_pause(self) -> float:
        pause, self.pause = self.pause, min(_MAX_PAUSE, self.pause * 2)
        return pause


#: How often the lock thread checks that a loop it handed the writer lock to still runs
#: (``GroupCommitter._watch_handovers``).
_HANDOVER_CHECK = 0.05


@dataclass
class _Handover:
    """One hand-over of the writer lock from the lock thread to a loop (its fields are
    read and written under the committer's lock)."""

    loop: asyncio.AbstractEventLoop
    group: _LoopGroup
    taken: bool = False  # the loop has it (``_locked_here`` ran)
    revoked: bool = False  # the lock thread took it back (the loop had stopped)


@dataclass
class CommitStats:
    """What the committer did so far (read by tests and the metrics endpoint)."""

    groups: int = 0  # transactions (writer thread: one per issuing CA per batch; loop: one)
    items: int = 0
    observer_errors: int = 0  # observer calls that raised (ignored: the group was committed)


class GroupCommitter:
    """The writer thread of one ``Authority``; see the module docstring."""

    def __init__(
        self,
        authority: Authority,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_wait: float = DEFAULT_MAX_WAIT,
        observer: CommitObserver | None = None,
        checkpoint_items: int | None = None,
    ) -> None:
        """``checkpoint_items``: items between two background WAL checkpoints (default
        ``ledger.checkpoint.DEFAULT_EVERY_ITEMS``); 0 keeps SQLite's auto-checkpoint in
        the writer's COMMITs instead."""
        from cyphrs_cli.ledger.checkpoint import DEFAULT_EVERY_ITEMS, WalCheckpointer

        self._authority = authority
        self._max_items = max(1, max_items)
        self._max_wait = max(0.0, max_wait)
        self._observer = observer
        # None is the stop mark put by ``close``.
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # Callers inside ``expecting`` that have not submitted yet, and which thread is one.
        self._expected = 0
        self._caller = threading.local()
        # Items queued by event loops for the groups they record themselves (``submit_here``).
        self._here: dict[asyncio.AbstractEventLoop, _LoopGroup] = {}
        self._commits: _JobThread | None = None
        self._waits: _JobThread | None = None  # waits for the writer lock for event loops
        self._handovers: list[_Handover] = []  # locks handed to loops, not taken yet
        self.stats = CommitStats()
        every = DEFAULT_EVERY_ITEMS if checkpoint_items is None else checkpoint_items
        self.checkpointer: WalCheckpointer | None = (
            WalCheckpointer(authority.home.ledger_path, every_items=every) if every > 0 else None
        )
        # Every thread of this committer records events, and an event's actor is a context
        # variable (``cyphrs --actor``): threads start with an empty context, so each runs
        # in a copy of the one this committer was made in, and so do the loop callbacks its
        # threads schedule (``call_soon_threadsafe`` copies the calling thread's context).
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=self._context.copy().run,
            args=(self._run,),
            name="cyphrs-group-commit",
            daemon=True,
        )
        self._thread.start()

    def set_observer(self, observer: CommitObserver | None) -> None:
        self._observer = observer

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a use case that will probably ``submit`` one item (an enrollment while it
        checks its CSR and credential): the writer waits up to ``max_wait`` after a group's
        first item only while such callers are on their way, so a lone request is never
        delayed for company that is not coming, and concurrent ones still share a commit
        (PostgreSQL's ``commit_delay`` with ``commit_siblings``, in effect)."""
        with self._lock:
            self._expected += 1
        self._caller.expected = True
        try:
            yield
        finally:
            if getattr(self._caller, "expected", False):
                self._caller.expected = False
                with self._lock:
                    self._expected -= 1

    def submit(
        self, issuer: Issuer, signed: SignedLeaf, *, after_record: AfterRecord | None = None
    ) -> Future[IssuedCertificate]:
        """Queue one signed leaf of ``issuer`` for recording; its future resolves after its
        group committed: to its certificate, or to its own error.

        The future's error is the item's refusal (a conflict, its hook's ``CyphrsError``),
        or 8 when the group's transaction failed or the committer was closed before the
        item was taken; 8 is also raised here at once when the committer is closed.
        """
        if threading.current_thread() is self._thread:  # pragma: no cover - a hook re-entering
            raise CyphrsError("commit_leaf called from inside a group commit")
        item = _Item(issuer, signed, after_record)
        # Running from now on: a waiter that gives up (an asyncio task cancelled with
        # ``wrap_future``) cannot cancel it, so the writer always sets its outcome.
        item.result.set_running_or_notify_cancel()
        arrived = getattr(self._caller, "expected", False)
        self._caller.expected = False
        with self._lock:
            if arrived:  # no longer on its way: here (counted off with the put, atomically)
                self._expected -= 1
            if self._closed:
                raise StorageError("the group committer is closed (the server is shutting down)")
            self._queue.put(item)
        return item.result

    def submit_here(
        self,
        loop: asyncio.AbstractEventLoop,
        issuer: Issuer,
        signed: SignedLeaf,
        *,
        after_record: AfterRecord | None = None,
    ) -> Future[IssuedCertificate]:
        """Like ``submit``, for a caller on ``loop``'s thread, which must never block: the
        item joins the group that ``loop`` writes itself, once the callbacks now ready
        have run (every request prepared in this turn of the loop shares it). The future
        resolves after that group's COMMIT, exactly as ``submit``'s. Must be called on
        ``loop``'s thread.

        How a loop group is written (``_record_here``): the loop takes the ledger's
        writer lock only if it is free and writes the group's rows and events in one
        transaction on a connection of its own; a commit thread runs the COMMIT, which
        releases the lock, then syncs the WAL (outside the lock: see
        ``Ledger.defer_commit_sync``) and resolves the futures, while the loop goes on
        preparing requests, which form the next group. While another writer holds the
        lock, a lock thread blocks on it for the loop and hands it over the moment it is
        free (``_wait_for_lock``), and what arrives meanwhile joins the waiting group:
        contention grows the groups instead of idling the core. (Polling from the loop
        instead was late or costly: asyncio's selector rounds a 0.05 ms timer up to 1 ms;
        uvloop rounds it down to 0, a spinning loop.) Why not the writer thread: each
        SQLite statement releases the GIL, and a writer thread then waits for the busy
        loop to hand it back (up to the 5 ms switch interval) a dozen times per item; the
        commit thread needs it once per group.

        Raises:
            StorageError: the committer is closed (the server is shutting down).
        """
        item = _Item(issuer, signed, after_record)
        item.result.set_running_or_notify_cancel()
        with self._lock:  # ``close`` drains under it: nothing is added after that
            if self._closed:
                raise StorageError("the group committer is closed (the server is shutting down)")
            group = self._here.get(loop)
            if group is None:  # a loop not seen before: forget the closed ones first
                self._forget_closed_loops()
                group = self._here[loop] = _LoopGroup()
            group.items.append(item)
        if group.waiting and group.since is None:  # the first item since a busy timeout
            group.since = time.monotonic()  # waits a whole one of its own (``_wait_expired``)
        if not (group.scheduled or group.committing or group.waiting):
            group.scheduled = True
            loop.call_soon(self._record_here, loop)
        return item.result

    def _record_here(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write ``loop``'s waiting group and hand its COMMIT to the commit thread if the
        writer lock is free; else have the lock thread wait for it (``_wait_for_lock``),
        or, when only SQLite's own lock or a waiting checkpoint is in the way, try again
        soon. Runs on the loop."""
        group = self._here[loop]
        group.scheduled = False
        if group.committing or group.waiting or not group.items:
            return  # the running commit, or the lock thread, schedules the next attempt
        try:
            ledger = self._loop_writer(group)
            if self._checkpoint_waiting():
                self._try_later(loop, group, ledger)
            elif not ledger.try_lock():
                self._wait_for_lock(loop, group, ledger)
            elif ledger.begin_locked():
                self._write_group(loop, group, ledger)
            else:  # SQLite's own lock: a writer that skips the lock file
                self._try_later(loop, group, ledger)
        except BaseException as error:  # a loop callback must not leave its futures waiting
            _fail(group.take(), error)

    def _forget_closed_loops(self) -> None:
        """Close the writer connection of every loop that is closed and left nothing
        behind (no items, no COMMIT running, no wait for the lock), and forget its group:
        a caller that runs ``asyncio.run`` again and again (a library user, a test) would
        otherwise keep one connection and two lock-file descriptors per loop until the
        committer closes. Under ``self._lock``, as the hand-overs release locks."""
        for loop, group in list(self._here.items()):
            busy = group.items or group.waiting or (group.committing and not group.committed)
            if loop.is_closed() and not busy:
                if group.ledger is not None:
                    group.ledger.close()
                del self._here[loop]

    def _try_later(
        self, loop: asyncio.AbstractEventLoop, group: _LoopGroup, ledger: Ledger
    ) -> None:
        """Call ``_record_here`` again after a pause, or fail the group (exit 8) once it
        has waited the ledger's busy timeout."""
        waited = group.waited()
        if waited >= ledger.busy_timeout:
            raise _busy(waited)
        group.scheduled = True
        loop.call_later(group.next_pause(), self._record_here, loop)

    def _wait_for_lock(
        self, loop: asyncio.AbstractEventLoop, group: _LoopGroup, ledger: Ledger
    ) -> None:
        """Another writer holds the lock: the lock thread blocks on it for this loop and
        hands it over (``_locked_here``) the moment it is free, while the loop goes on
        preparing requests, which join the waiting group. A timer fails the group with
        exit 8 once it has waited the busy timeout (``_wait_expired``)."""
        waiter = ledger.lock_waiter()

        def job() -> None:
            try:
                waiter.wait()
                taken = True
            except Exception:  # the loop falls back to trying again (and says why there)
                taken = False
            handover = _Handover(loop, group)
            with self._lock:  # watched before the loop can take it (``_watch_handovers``)
                if taken:
                    self._handovers.append(handover)
            try:
                loop.call_soon_threadsafe(self._locked_here, loop, taken, handover)
            except RuntimeError:  # the loop is closed: the lock was taken for nobody
                with self._lock:
                    handover.taken = True  # nothing to watch
                self._release_abandoned(group, taken)

        if not self._lock_thread().put(job):
            waiter.close()
            raise StorageError("the group committer is closed (the server is shutting down)")
        group.waiting = True
        remaining = max(0.0, ledger.busy_timeout - group.waited())
        group.expiry = loop.call_later(remaining, self._wait_expired, loop)

    def _watch_handovers(self) -> bool:
        """On the lock thread, between its jobs and every ``_HANDOVER_CHECK`` seconds while
        a hand-over is pending: a loop that was handed the writer lock and is not running
        any more (stopped without closing: its owner may run it again later, or never)
        would hold the lock for every process meanwhile. Take such a hand-over back and
        release the lock; ``_locked_here``, if it ever runs, then starts over. Whether any
        hand-over is still pending. Costs the serving loop nothing: the loop only marks
        its hand-over taken (no thread is woken)."""
        with self._lock:
            pending = []
            for handover in self._handovers:
                if handover.taken:
                    continue
                if handover.loop.is_running():
                    pending.append(handover)  # busy with a callback: it will get to it
                    continue
                handover.revoked = True
                if handover.group.ledger is not None:
                    with contextlib.suppress(CyphrsError, OSError):
                        handover.group.ledger.release_lock()
            self._handovers = pending
            return bool(pending)

    def _locked_here(
        self, loop: asyncio.AbstractEventLoop, taken: bool, handover: _Handover
    ) -> None:
        """On the loop: the lock thread took the writer lock for this loop's group (or
        failed to, ``taken`` False). Write the group, or give the lock back if nothing
        waits any more (the wait timed out) or the committer closed meanwhile. A hand-over
        taken back meanwhile (the loop had stopped: ``_watch_handovers``) starts over."""
        group = self._here[loop]
        group.waiting = False
        if group.expiry is not None:
            group.expiry.cancel()
            group.expiry = None
        with self._lock:
            handover.taken = True
            if handover.revoked and not self._closed:
                if group.items and not group.scheduled:
                    group.scheduled = True
                    loop.call_soon(self._record_here, loop)
                return
            if self._closed:
                # ``close`` joins the writer thread before it closes this ledger: give the
                # lock back now, or that thread waits for it (a closed ledger: a no-op).
                if taken and group.ledger is not None:
                    with contextlib.suppress(CyphrsError, OSError):
                        group.ledger.release_lock()
                return
            ledger = group.ledger
        if ledger is None:
            return
        try:
            if not taken:
                self._try_later(loop, group, ledger)
            elif not group.items:
                ledger.release_lock()
            elif ledger.begin_locked():
                self._write_group(loop, group, ledger)
            else:
                self._try_later(loop, group, ledger)
        except BaseException as error:
            _fail(group.take(), error)

    def _wait_expired(self, loop: asyncio.AbstractEventLoop) -> None:
        """The group waited the busy timeout for the lock: fail it with exit 8. The lock
        thread goes on waiting (a ``flock`` cannot be given up): items that arrive
        meanwhile get a busy timeout of their own, and when the lock comes it is written
        with them or given back."""
        group = self._here[loop]
        if not group.waiting or group.ledger is None:
            return
        timeout = group.ledger.busy_timeout
        later = timeout
        if group.items:  # ``since``: when the first of them arrived (``submit_here``)
            waited = group.waited()
            if waited >= timeout:
                _fail(group.take(), _busy(waited))
            else:
                later = timeout - waited
        group.expiry = loop.call_later(later, self._wait_expired, loop)

    def _release_abandoned(self, group: _LoopGroup, taken: bool) -> None:
        """On the lock thread, when the loop it took the lock for is closed: give the lock
        back (a no-op once ``close`` closed the loop's ledger, which released it). Under
        ``self._lock``, as ``close`` closes that ledger, so its descriptor is not closed
        (and its number reused) in between."""
        with self._lock:
            group.waiting = False
            if taken and group.ledger is not None:
                with contextlib.suppress(CyphrsError, OSError):
                    group.ledger.release_lock()

    def _write_group(
        self, loop: asyncio.AbstractEventLoop, group: _LoopGroup, ledger: Ledger
    ) -> None:
        """In the transaction just begun on ``ledger``: write every waiting item, then
        queue the COMMIT on the commit thread. A failure rolls back (lock released) and
        fails the items written so far with the same error."""
        batch = group.take()
        started = time.perf_counter()
        try:
            try:
                results = self._record_items(ledger.conn, batch)
                commits = self._commit_thread()
            except BaseException:
                ledger.end(commit=False)
                raise
        except BaseException as error:
            _fail(batch, error)
            return
        group.committing, group.committed = True, False
        job = functools.partial(self._commit_here, loop, ledger, batch, results, started)
        if not commits.put(job):  # closed meanwhile (another thread): commit here
            job()

    def _record_items(
        self, conn: sqlite3.Connection, batch: list[_Item]
    ) -> list[IssuedCertificate | CyphrsError]:
        """Every item of a loop group, issuer by issuer, in the one open transaction."""
        from cyphrs_cli.ca.issuance import record_in_transaction

        by_issuer: dict[str, list[int]] = {}
        for position, item in enumerate(batch):
            by_issuer.setdefault(item.issuer.name, []).append(position)
        results: list[IssuedCertificate | CyphrsError | None] = [None] * len(batch)
        for positions in by_issuer.values():
            recorded = record_in_transaction(
                conn,
                batch[positions[0]].issuer,
                [(batch[p].signed, batch[p].after_record) for p in positions],
            )
            for position, result in zip(positions, recorded, strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    def _commit_here(
        self,
        loop: asyncio.AbstractEventLoop,
        ledger: Ledger,
        batch: list[_Item],
        results: list[IssuedCertificate | CyphrsError],
        started: float,
    ) -> None:
        """On the commit thread: COMMIT a loop group (the lock is released with it), then
        resolve its futures, then let the loop start its next group."""
        from cyphrs_cli.ca.issuance import fault_point

        try:
            try:
                ledger.end(commit=True)
                # Durable before any caller hears of it; the writer lock is free already.
                ledger.sync_committed()
                fault_point("after-record", seq=range(1, len(batch) + 1))
            except BaseException as error:
                # The COMMIT failed (nothing of the group recorded), or its sync did (the
                # rows may be there, but are not known to be durable): no caller gets its
                # certificate either way, and the connection begins nothing more.
                self._commit_ended(loop)
                failure = _as_failure(error)
                for item in batch:
                    item.result.set_exception(failure)
                return
            self._commit_ended(loop)
            self._count_group(len(batch), time.perf_counter() - started)  # never raises
            _settle(batch, results)
        finally:
            with contextlib.suppress(RuntimeError):  # a closed loop: ``close`` drains it
                loop.call_soon_threadsafe(self._committed_here, loop)

    def _commit_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the commit thread, before the futures resolve: the loop's group has no
        COMMIT running any more, even if the loop closes before ``_committed_here`` runs
        (its callers got their results and ``asyncio.run`` returned): then
        ``_forget_closed_loops`` may close its connection."""
        with self._lock:
            group = self._here.get(loop)
            if group is not None:
                group.committed = True

    def _committed_here(self, loop: asyncio.AbstractEventLoop) -> None:
        group = self._here[loop]
        group.committing = False
        if group.items and not group.scheduled:
            group.scheduled = True
            loop.call_soon(self._record_here, loop)

    def _loop_writer(self, group: _LoopGroup) -> Ledger:
        """The connection a loop writes its groups with: its own, so the loop's reads (on
        the loop thread's connection) go on while a COMMIT runs, and one per loop, so two
        loops exclude each other on the writer lock like two processes."""
        if group.ledger is None:
            from cyphrs_cli.ca.hierarchy import open_ledger

            ledger = open_ledger(self._authority.home, shared=True)
            try:
                # Never wait inside SQLite on the loop: a BEGIN that finds SQLite's lock
                # taken (a writer that skips the lock file) is retried like a taken lock.
                ledger.conn.execute("PRAGMA busy_timeout = 0")
                # The COMMIT thread syncs the WAL after the writer lock is released
                # (``_commit_here``): the lock is held for the writes, not the disk's flush.
                ledger.defer_commit_sync()
                ledger.write_issuances_only()  # groups of issuances, nothing else
                if self.checkpointer is not None:
                    ledger.conn.execute("PRAGMA wal_autocheckpoint = 0")
            except BaseException:
                ledger.close()
                raise
            group.ledger = ledger
        return group.ledger

    def _commit_thread(self) -> _JobThread:
        with self._lock:
            if self._commits is None:
                self._commits = _JobThread("cyphrs-loop-commit", context=self._context.copy())
            return self._commits

    def _lock_thread(self) -> _JobThread:
        with self._lock:
            if self._waits is None:
                self._waits = _JobThread(
                    "cyphrs-loop-lock", idle=self._watch_handovers, context=self._context.copy()
                )
            return self._waits

    def sync_failure(self) -> str | None:
        """Why an event loop's writer connection can no longer make its commits durable
        (``Ledger.sync_committed`` failed), if one cannot: it issues nothing more, and
        the server must not say it is ready."""
        with self._lock:
            for group in self._here.values():
                if group.ledger is not None and group.ledger.sync_failure is not None:
                    return group.ledger.sync_failure
        return None

    def _checkpoint_waiting(self) -> bool:
        """The checkpoint thread waits for the writer lock (see ``ledger.checkpoint``):
        this process's writers hold back so it gets the lock before their next group."""
        return self.checkpointer is not None and self.checkpointer.wants_writer_lock

    def _count_group(self, items: int, seconds: float) -> None:
        """Count a committed group, tell the observer (metrics) and the checkpointer. Never
        raises: the group is on disk, its callers must get their results, and a writer
        or commit thread that died here would leave every later caller waiting forever
        (an observer writing metrics to a full file system raises ``OSError``)."""
        with self._lock:  # the writer thread and the commit thread both count
            self.stats.groups += 1
            self.stats.items += items
        try:
            if self._observer is not None:
                self._observer(items, seconds)
        except Exception:  # metrics must not fail a committed group: counted, not raised
            with self._lock:
                self.stats.observer_errors += 1
        if self.checkpointer is not None:
            self.checkpointer.committed(items)

    def _drain_here(self) -> None:
        """At close, after the commit thread stopped: record what event loops left
        waiting, waiting for the lock as any writer does (the loops have stopped)."""
        with self._lock:
            batches = [group.take() for group in self._here.values()]
        for batch in batches:
            if batch:
                self._commit(batch)

    def close(self) -> None:
        """Commit what is queued, stop the writer thread, then checkpoint the WAL and stop
        the checkpoint thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if self._commits is not None:
            self._commits.stop()
        if self._waits is not None:
            # Not joined: a wait for a lock another process holds ends when it lets go.
            self._waits.stop(join=False)
        # Closed before the drain: a lock the lock thread took for a loop that will not
        # run again is released with the loop's ledger, so the drain can take it. Under
        # ``self._lock``: the hand-overs release the lock under it (``_locked_here``).
        with self._lock:
            for group in self._here.values():
                if group.ledger is not None:
                    group.ledger.close()
        self._drain_here()
        if self.checkpointer is not None:
            self.checkpointer.close()

    # -- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        # This thread's connection is the ledger's busy writer: its COMMITs no longer copy
        # the WAL into the database file; the checkpoint thread does. Should the connection
        # fail here, the first group meets (and reports) the same failure.
        if self.checkpointer is not None:
            with contextlib.suppress(CyphrsError, sqlite3.Error):
                self._authority.ledger.conn.execute("PRAGMA wal_autocheckpoint = 0")
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_items:
                with self._lock:
                    coming = self._expected
                if not coming and self._queue.empty():
                    break  # nobody else is on the way: commit now, do not wait for company
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            while self._checkpoint_waiting():  # let it have the writer lock first
                time.sleep(_CHECKPOINT_YIELD)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        by_issuer: dict[str, list[_Item]] = {}
        for item in batch:
            by_issuer.setdefault(item.issuer.name, []).append(item)
        for items in by_issuer.values():
            started = time.perf_counter()
            try:
                results = self._record(items)
            except BaseException as error:  # the group's transaction failed: nothing recorded
                failure = _as_failure(error)
                for item in items:
                    item.result.set_exception(failure)
                continue
            self._count_group(len(items), time.perf_counter() - started)
            _settle(items, results)

    def _record(self, items: list[_Item]) -> list[IssuedCertificate | CyphrsError]:
        from cyphrs_cli.ca.issuance import fault_point, record_signed

        results = record_signed(
            self._authority.ledger,
            items[0].issuer,
            [(item.signed, item.after_record) for item in items],
        )
        fault_point("after-record", seq=range(1, len(items) + 1))
        return results


class _JobThread:
    """A thread that runs queued jobs one at a time, in order: event loops' COMMITs (the
    commit thread), or their waits for the writer lock (the lock thread). A queue and a
    thread rather than a ``ThreadPoolExecutor``: its ``submit`` (a future, a work item, a
    semaphore) cost 4 % of the serving process's GIL time, measured."""

    def __init__(
        self,
        name: str,
        *,
        idle: Callable[[], bool] | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        """``idle``: called between jobs, and every ``_HANDOVER_CHECK`` seconds for as
        long as it returns True (it has something to watch). ``context``: the context the
        thread runs in (see ``GroupCommitter.__init__``); an empty one by default."""
        self._idle = idle
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        run = context.run if context is not None else contextvars.Context().run
        self._thread = threading.Thread(target=run, args=(self._run,), name=name, daemon=True)
        self._thread.start()

    def put(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (not queued) once ``stop`` was called: run it yourself."""
        with self._lock:
            if self._stopped:
                return False
            self._jobs.put(job)
            return True

    def stop(self, *, join: bool = True) -> None:
        """Run what is queued, then end the thread (waiting for that unless ``join`` is
        False); later ``put`` calls are refused."""
        with self._lock:
            self._stopped = True
            self._jobs.put(None)
        if join:
            self._thread.join()

    def _run(self) -> None:
        while True:
            if self._idle is not None and self._idle():
                try:
                    job = self._jobs.get(timeout=_HANDOVER_CHECK)
                except queue.Empty:
                    continue
            else:
                job = self._jobs.get()
            if job is None:
                return
            job()  # each job settles its own outcome (``_commit_here``: in a finally)


def _settle(items: list[_Item], results: list[IssuedCertificate | CyphrsError]) -> None:
    """Give each item of a committed group its own outcome."""
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException):
            item.result.set_exception(result)
        else:
            item.result.set_result(result)


def _fail(items: list[_Item], error: BaseException) -> None:
    """Fail every item not settled yet with ``error`` (see ``_as_failure``)."""
    failure = _as_failure(error)
    for item in items:
        if not item.result.done():
            item.result.set_exception(failure)


def _busy(waited: float) -> StorageError:
    """Exit 8: another writer held the ledger for the whole busy timeout."""
    return StorageError(
        f"the ledger is locked by another writer for over {waited:.0f} s",
        hint="another cyphrs process is writing; retry, or raise CYPHRS_BUSY_TIMEOUT_MS",
    )


def _as_failure(error: BaseException) -> CyphrsError:
    """What the callers of a failed group get: its ``CyphrsError``, or a bug wrapped."""
    if isinstance(error, CyphrsError):
        return error
    wrapped = CyphrsError(f"internal error in group commit: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
