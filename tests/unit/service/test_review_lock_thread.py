"""Adversarial review of the committer's lock thread (h-review): an event loop that finds
the ledger's writer lock taken has a thread block on it (``writelock.LockWaiter``) and
hand it over with ``call_soon_threadsafe``. Attacked here: items that arrive after a
busy timeout failed the first ones, a hand-over that lands after ``close`` began, a
hand-over to a loop that stopped without closing. Real hierarchy, real SQLite, real
asyncio loops, real processes holding a real ``flock``; the "busy" loop below is a loop
whose callback runs long (blocked on an event), as a CPU-heavy request makes it. (Found
by review and fixed in ``GroupCommitter``: the re-armed expiry timer failed late items
early; a hand-over after ``close`` began kept the lock while ``close`` joined the writer
thread; a hand-over to a loop that stopped without closing kept the lock until the loop
ran again: the lock thread now takes it back, ``GroupCommitter._watch_handover``.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from cyphrs_cli.ca.models import IssuedCertificate
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.db import BUSY_TIMEOUT_ENV
from cyphrs_cli.service.authority import Authority
from tests.enrollment_helpers import audit_problems
from tests.helpers import INTER_PASS
from tests.unit.service.test_committer_loop import (
    Holder,
    _lock_free,
    _rows,
    _signed,
    stop_a_loop_while_its_group_waits,
    submit_on_a_loop_that_ends,
)


@pytest.fixture
def holders(home: CaHome) -> Iterator[Holder]:
    processes = Holder(home)
    try:
        yield processes
    finally:
        processes.stop()


def _until(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_an_item_arriving_after_a_busy_timeout_waits_a_whole_timeout_of_its_own(
    home: CaHome, holders: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock stays taken past the busy timeout: the first group fails with exit 8 and
    the lock thread goes on waiting. An item submitted later must get a busy timeout of
    its own (``_wait_expired``'s promise); it used to be failed by the re-armed timer,
    which counts from the first failure, after as little as a few milliseconds."""
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "600")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        first, late = _signed(authority, "expired"), _signed(authority, "late")
        holders.hold(30)

        async def main() -> tuple[BaseException | None, BaseException | None, float]:
            loop = asyncio.get_running_loop()
            failed = await asyncio.gather(
                asyncio.wrap_future(committer.submit_here(loop, authority.issuer, first)),
                return_exceptions=True,
            )
            await asyncio.sleep(0.5)  # the lock thread still waits; the timer is re-armed
            submitted = time.monotonic()
            (second,) = await asyncio.gather(
                asyncio.wrap_future(committer.submit_here(loop, authority.issuer, late)),
                return_exceptions=True,
            )
            waited = time.monotonic() - submitted
            one = failed[0] if isinstance(failed[0], BaseException) else None
            two = second if isinstance(second, BaseException) else None
            return one, two, waited

        one, two, waited = asyncio.run(main())
        assert isinstance(one, StorageError) and one.exit_code == 8, one
        assert isinstance(two, StorageError) and two.exit_code == 8, two
        assert waited >= 0.55, f"failed as busy after {waited:.3f} s of a 0.6 s timeout"


def test_a_lock_handed_over_after_close_began_is_given_back_to_the_other_writers(
    home: CaHome, holders: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock thread takes the lock for a loop that is busy; ``close`` begins (from the
    server's main thread) while a worker thread's item waits for the writer thread; then
    the loop runs the hand-over. It must give the lock back: ``close`` joins the writer
    thread before it closes the loop's ledger, so a lock kept until then makes the
    writer thread wait the whole busy timeout and fail the worker's item with exit 8."""
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "3000")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        on_loop, threaded = _signed(authority, "loop-item"), _signed(authority, "thread-item")
        held = holders.hold(30)
        waiting, go_on = threading.Event(), threading.Event()
        futures: list[Future[IssuedCertificate]] = []

        def serve() -> None:
            async def main() -> None:
                loop = asyncio.get_running_loop()
                futures.append(committer.submit_here(loop, authority.issuer, on_loop))
                await asyncio.sleep(0.1)  # found the lock taken: the lock thread waits
                waiting.set()
                go_on.wait(30)  # a long callback: the loop is busy
                await asyncio.sleep(0.2)  # now the hand-over (``_locked_here``) runs

            asyncio.run(main())

        loop_thread = threading.Thread(target=serve)
        loop_thread.start()
        closer = threading.Thread(target=committer.close)
        try:
            assert waiting.wait(30)
            held.kill()  # the kernel wakes the lock thread: it takes the lock for the loop
            held.wait(timeout=30)
            _until(lambda: not _lock_free(home))
            worker = committer.submit(authority.issuer, threaded)  # writer thread waits
            closer.start()
            _until(lambda: committer._closed)
            handed = time.monotonic()
        finally:
            go_on.set()
            loop_thread.join(timeout=30)
        closer.join(timeout=30)
        issued = worker.result(timeout=0)  # exit 8 here when the lock was kept
        assert time.monotonic() - handed < 2.0
        assert futures[0].result(timeout=0).serial in _rows(home)
        assert _rows(home)[issued.serial] == "valid"
        assert _lock_free(home)
    assert audit_problems(home) == []


def test_a_loop_stopped_while_its_group_waits_does_not_keep_the_writer_lock(
    home: CaHome, holders: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "1000")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        threaded = _signed(authority, "worker")
        loop, future = stop_a_loop_while_its_group_waits(authority, holders, "stopped-loop")
        try:
            # The lock thread takes the lock for the stopped loop within milliseconds and,
            # finding it stopped, gives it back: leave it that time before another writer.
            time.sleep(0.2)
            outcome: list[object] = []
            try:
                outcome.append(committer.submit(authority.issuer, threaded).result(timeout=30))
            except StorageError as error:
                outcome.append(error)
            assert isinstance(outcome[0], IssuedCertificate), outcome  # exit 8: lock kept
        finally:
            loop.close()
        committer.close()
        assert future.done()


def test_a_lock_taken_for_a_loop_that_closed_meanwhile_is_given_back_at_once(
    home: CaHome, holders: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop ends (``asyncio.run`` closes it) while the lock thread waits for it: when
    the holder lets go, the hand-over finds the loop closed and gives the lock back, so
    the writer thread records a worker's item at once, long before ``close``."""
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "3000")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        on_loop, threaded = _signed(authority, "closed-loop"), _signed(authority, "after")
        held = holders.hold(30)

        orphan = submit_on_a_loop_that_ends(authority, on_loop)
        held.kill()
        held.wait(timeout=30)
        started = time.monotonic()
        issued = committer.submit(authority.issuer, threaded).result(timeout=30)
        assert time.monotonic() - started < 1.5
        assert _rows(home)[issued.serial] == "valid"
        _until(lambda: _lock_free(home))
        assert not orphan.done()  # nothing runs the closed loop's group: ``close`` does
        committer.close()
        assert _rows(home)[orphan.result(timeout=0).serial] == "valid"
    assert audit_problems(home) == []


def test_two_loops_waiting_on_the_one_lock_thread_both_write_when_the_holder_lets_go(
    authority: Authority, home: CaHome, holders: Holder
) -> None:
    """Two loops of one process find the lock taken by another process: their waits queue
    on the one lock thread (one after the other, each on its own ledger's descriptor);
    when the holder lets go, both groups are written, and the lock is left free."""
    committer = authority.start_group_commit()
    signed = {n: [_signed(authority, f"pair{n}-{m}") for m in range(2)] for n in range(2)}
    held = holders.hold(30)
    both_waiting = threading.Barrier(3)
    outcomes: dict[int, list[IssuedCertificate] | BaseException] = {}

    def serve(n: int) -> None:
        async def main() -> list[IssuedCertificate]:
            loop = asyncio.get_running_loop()
            futures = [committer.submit_here(loop, authority.issuer, one) for one in signed[n]]
            await asyncio.sleep(0.1)
            assert not any(f.done() for f in futures)
            await loop.run_in_executor(None, both_waiting.wait, 30)
            return list(
                await asyncio.wait_for(
                    asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), 30
                )
            )

        try:
            outcomes[n] = asyncio.run(main())
        except BaseException as error:  # reported by the assertion below
            outcomes[n] = error

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    both_waiting.wait(30)
    held.kill()
    held.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes.values()) and len(outcomes) == 2, outcomes
    rows = _rows(home)
    issued = [i for o in outcomes.values() if isinstance(o, list) for i in o]
    assert sorted(rows[i.serial] for i in issued) == ["valid"] * 4
    assert _lock_free(home)
    assert audit_problems(home) == []


def test_a_loop_group_that_cannot_wait_for_the_lock_fails_with_exit_8_not_1(
    authority: Authority, home: CaHome, holders: Holder
) -> None:
    """Out of descriptors while another process holds the lock: the lock thread cannot be
    given a duplicate to wait on. The waiting items fail as a storage failure (exit 8),
    not as an internal bug (exit 1), and nothing is recorded."""
    from cyphrs_cli.errors import CyphrsError
    from tests.unit.ledger.test_review_lock_waiter import _no_descriptor_left

    committer = authority.start_group_commit()
    first, starved = _signed(authority, "opens-the-ledger"), _signed(authority, "emfile")

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        await asyncio.wrap_future(committer.submit_here(loop, authority.issuer, first))
        holders.hold(30)
        with _no_descriptor_left():
            future = committer.submit_here(loop, authority.issuer, starved)
            (outcome,) = await asyncio.gather(asyncio.wrap_future(future), return_exceptions=True)
        return outcome if isinstance(outcome, BaseException) else None

    outcome = asyncio.run(main())
    assert isinstance(outcome, CyphrsError), outcome
    assert outcome.exit_code == 8, outcome
    assert starved.row.serial not in _rows(home)


def _lock_descriptors(home: CaHome) -> int:
    """Descriptors of this process open on the ledger's lock file."""
    from cyphrs_cli.ledger.writelock import lock_path
    from tests.helpers import open_descriptors

    target = str(lock_path(home.ledger_path))
    return len(open_descriptors(lambda opened: opened == target))


def test_closing_while_the_lock_thread_waits_leaves_no_descriptor_of_the_lock_file(
    home: CaHome, holders: Holder
) -> None:
    """``close`` does not join the lock thread, which still waits on its duplicate for a
    loop that ended; once the holder lets go, that descriptor is closed too: nothing of
    this process stays open on (or holds) the lock file."""
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        signed = _signed(authority, "fd")
        held = holders.hold(30)

        future = submit_on_a_loop_that_ends(authority, signed)
        assert _lock_descriptors(home) >= 2  # the loop's ledger's, and the waiter's duplicate
        letting_go = threading.Timer(0.3, held.kill)
        letting_go.start()
        try:
            committer.close()  # its drain waits for the lock like any writer
        finally:
            letting_go.join()
        assert _rows(home)[future.result(timeout=0).serial] == "valid"
    _until(lambda: _lock_descriptors(home) == 0)
    assert _lock_free(home)


def test_a_lock_taken_for_a_closed_loop_while_close_runs_is_given_back(
    home: CaHome, holders: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server shutdown: the loop has ended (closed) with a group waiting for the lock, a
    worker thread's item waits for the writer thread, and ``close`` has begun (it joins
    the writer thread). When the holder lets go, the lock thread takes the lock for the
    closed loop (a blocked ``flock`` beats the writer's polling) and must give it back:
    kept until ``close`` closes the loop's ledger, it made the writer thread wait the
    whole busy timeout and fail the worker's item with exit 8."""
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "3000")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        on_loop, threaded = _signed(authority, "ended-loop"), _signed(authority, "worker")
        held = holders.hold(30)

        orphan = submit_on_a_loop_that_ends(authority, on_loop)  # the loop is closed
        worker = committer.submit(authority.issuer, threaded)  # the writer thread polls
        closer = threading.Thread(target=committer.close)
        closer.start()
        try:
            _until(lambda: committer._closed)
            let_go = time.monotonic()
            held.kill()
            held.wait(timeout=30)
        finally:
            closer.join(timeout=30)
        issued = worker.result(timeout=0)  # exit 8 here when the lock was kept
        assert time.monotonic() - let_go < 2.0
        assert _rows(home)[issued.serial] == "valid"
        assert _rows(home)[orphan.result(timeout=0).serial] == "valid"
    assert _lock_free(home)
