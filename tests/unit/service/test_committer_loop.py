"""``GroupCommitter.submit_here``: an event loop records its own groups. Items submitted in
one turn of the loop share one transaction; while another PROCESS holds the ledger's
writer lock the loop never sleeps (its other callbacks keep running) and items submitted
meanwhile join the waiting group; after the busy timeout the waiting items fail with exit
8 and nothing is recorded; ``close`` records what is waiting. Also ``sign_leaf``'s
``record_denials`` switch. Real hierarchy, real SQLite, real asyncio loop, real processes
holding a real ``flock``."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from cyphrs_cli.ca.issuance import SignedLeaf, sign_leaf
from cyphrs_cli.ca.models import IssuedCertificate, LeafRequest
from cyphrs_cli.ca.orders import LeafOrder, prepare_request
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import ExitCode, PolicyDenied, StorageError
from cyphrs_cli.ledger.db import BUSY_TIMEOUT_ENV
from cyphrs_cli.ledger.events import utc_now
from cyphrs_cli.ledger.writelock import lock_path
from cyphrs_cli.service.authority import Authority
from tests.enrollment_helpers import audit_problems, count, events
from tests.helpers import INTER_PASS, open_descriptors

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


class Holder:
    """Processes holding the ledger's writer lock; every one killed by its PID at the end."""

    def __init__(self, home: CaHome) -> None:
        self.path = lock_path(home.ledger_path)
        self.processes: list[subprocess.Popen[str]] = []

    def hold(self, seconds: float) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(self.path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def holder(home: CaHome) -> Iterator[Holder]:
    processes = Holder(home)
    try:
        yield processes
    finally:
        processes.stop()


def _leaf(authority: Authority, instance: str, *, ttl: str | None = None) -> LeafRequest:
    profile = authority.profile("agent")
    order = LeafOrder(profile="agent", workflow="loop", instance=instance, ttl=ttl)
    request, _ = prepare_request(order, profile, authority.facts.trust_domain)
    return request


def _signed(authority: Authority, instance: str) -> SignedLeaf:
    return sign_leaf(
        authority.ledger, authority.issuer, authority.profile("agent"), _leaf(authority, instance),
        utc_now(),
    )  # fmt: skip


def _rows(home: CaHome) -> dict[str, str]:
    with sqlite3.connect(home.ledger_path) as conn:
        return dict(conn.execute("SELECT serial, status FROM certificates").fetchall())


def _certificates(home: CaHome) -> int:
    return count(home, "SELECT count(*) FROM certificates WHERE workflow = 'loop'")


async def _all(futures: list[Future[IssuedCertificate]]) -> list[IssuedCertificate]:
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))


def test_items_of_one_loop_turn_commit_in_one_group(authority: Authority, home: CaHome) -> None:
    committer = authority.start_group_commit()
    signed = [_signed(authority, f"turn{n}") for n in range(3)]
    groups, items = committer.stats.groups, committer.stats.items

    async def main() -> list[IssuedCertificate]:
        loop = asyncio.get_running_loop()
        futures = [committer.submit_here(loop, authority.issuer, one) for one in signed]
        assert not any(f.done() for f in futures)  # recorded by a later callback, not here
        return await _all(futures)

    issued = asyncio.run(main())
    assert (committer.stats.groups, committer.stats.items) == (groups + 1, items + 3)
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 3
    assert audit_problems(home) == []


def test_a_locked_ledger_does_not_stall_the_loop_and_late_items_join_the_group(
    authority: Authority, home: CaHome, holder: Holder
) -> None:
    committer = authority.start_group_commit()
    signed = [_signed(authority, f"wait{n}") for n in range(3)]
    groups, items = committer.stats.groups, committer.stats.items
    before = _certificates(home)
    holder.hold(0.5)

    async def main() -> tuple[list[IssuedCertificate], list[int], float]:
        loop = asyncio.get_running_loop()
        ticks = [0]
        seen: list[int] = []

        def tick() -> None:
            ticks[0] += 1
            loop.call_later(0.01, tick)

        loop.call_soon(tick)
        started = time.monotonic()
        first = committer.submit_here(loop, authority.issuer, signed[0])
        await asyncio.sleep(0.15)
        assert not first.done()  # the other process still holds the lock
        seen.append(ticks[0])
        assert _certificates(home) == before
        late = [committer.submit_here(loop, authority.issuer, one) for one in signed[1:]]
        await asyncio.sleep(0.1)
        seen.append(ticks[0])
        issued = await _all([first, *late])
        return issued, seen, time.monotonic() - started

    issued, seen, elapsed = asyncio.run(main())
    # The loop kept running its other callbacks while the group waited for the lock.
    assert seen[0] >= 5 and seen[1] >= seen[0] + 4, seen
    assert elapsed >= 0.3, elapsed  # recorded only once the holder let go
    assert (committer.stats.groups, committer.stats.items) == (groups + 1, items + 3)
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 3
    assert audit_problems(home) == []


def test_a_lock_held_past_the_busy_timeout_fails_the_waiting_items_with_exit_8(
    home: CaHome, holder: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "300")
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as authority:
        committer = authority.start_group_commit()
        signed = [_signed(authority, f"timeout{n}") for n in range(2)]
        after = _signed(authority, "after-timeout")
        before = _certificates(home)
        held = holder.hold(2.0)

        async def main() -> tuple[list[BaseException | IssuedCertificate], float]:
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            futures = [committer.submit_here(loop, authority.issuer, one) for one in signed]
            outcomes = await asyncio.gather(
                *(asyncio.wrap_future(f) for f in futures), return_exceptions=True
            )
            return list(outcomes), time.monotonic() - started

        outcomes, elapsed = asyncio.run(main())
        assert all(isinstance(o, StorageError) and o.exit_code == 8 for o in outcomes), outcomes
        assert 0.25 <= elapsed < 1.5, elapsed
        assert _certificates(home) == before
        held.kill()  # the kernel drops the flock of a killed process
        held.wait(timeout=30)

        async def again() -> list[IssuedCertificate]:
            loop = asyncio.get_running_loop()
            return await _all([committer.submit_here(loop, authority.issuer, after)])

        (issued,) = asyncio.run(again())  # the committer still works after the failure
        assert _rows(home)[issued.serial] == "valid"
        assert _certificates(home) == before + 1
    assert audit_problems(home) == []


def test_close_records_the_items_a_loop_left_waiting(authority: Authority, home: CaHome) -> None:
    committer = authority.start_group_commit()
    signed = [_signed(authority, f"close{n}") for n in range(2)]
    groups = committer.stats.groups

    async def main() -> list[Future[IssuedCertificate]]:
        loop = asyncio.get_running_loop()
        futures = [committer.submit_here(loop, authority.issuer, one) for one in signed]
        committer.close()  # before the loop's own recording callback has run
        assert all(f.done() for f in futures)
        await asyncio.sleep(0.01)  # the loop's callback then finds nothing left to record
        return futures

    futures = asyncio.run(main())
    issued = [f.result(timeout=0) for f in futures]
    assert committer.stats.groups == groups + 1
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 2
    with pytest.raises(StorageError):
        asyncio.run(_submit_after_close(authority))
    assert audit_problems(home) == []


async def _submit_after_close(authority: Authority) -> None:
    committer = authority.group_committer
    assert committer is not None
    committer.submit_here(asyncio.get_running_loop(), authority.issuer, _signed(authority, "late"))


def test_close_waits_for_the_lock_and_records_the_waiting_items(
    authority: Authority, home: CaHome, holder: Holder
) -> None:
    committer = authority.start_group_commit()
    signed = [_signed(authority, f"drain{n}") for n in range(2)]
    holder.hold(0.4)

    async def main() -> list[Future[IssuedCertificate]]:
        loop = asyncio.get_running_loop()
        futures = [committer.submit_here(loop, authority.issuer, one) for one in signed]
        await asyncio.sleep(0.05)  # the loop found the lock taken and is retrying
        assert not any(f.done() for f in futures)
        committer.close()  # waits for the lock as any writer does, then records
        return futures

    futures = asyncio.run(main())
    issued = [f.result(timeout=0) for f in futures]
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 2
    assert audit_problems(home) == []


def test_sign_leaf_records_a_denial_once_or_not_at_all(authority: Authority, home: CaHome) -> None:
    profile = authority.profile("agent")
    too_long = _leaf(authority, "denied", ttl="48h")  # the agent profile allows 24h at most
    before = events(home, "policy.denied")
    with pytest.raises(PolicyDenied) as quiet:
        sign_leaf(
            authority.ledger, authority.issuer, profile, too_long, utc_now(), record_denials=False
        )
    assert quiet.value.exit_code == 5
    assert events(home, "policy.denied") == before
    with pytest.raises(PolicyDenied) as loud:
        sign_leaf(authority.ledger, authority.issuer, profile, too_long, utc_now())
    assert loud.value.rule == quiet.value.rule
    assert events(home, "policy.denied") == before + 1
    assert events(home, "policy.denied", f'%"rule":"{loud.value.rule}"%') == 1
    assert _certificates(home) == 0
    assert audit_problems(home) == []


def test_items_of_a_loop_that_ended_while_waiting_are_recorded_at_close(
    authority: Authority, home: CaHome, holder: Holder
) -> None:
    """The server's loop stops (shutdown) while its group waits for the lock: nothing
    will run the retry any more; ``close`` records the items and resolves their futures."""
    committer = authority.start_group_commit()
    signed = _signed(authority, "orphan")
    holder.hold(0.3)

    future = submit_on_a_loop_that_ends(authority, signed, wait=0.02)
    assert not future.done()
    committer.close()
    issued = future.result(timeout=0)
    assert _rows(home)[issued.serial] == "valid"
    assert audit_problems(home) == []


def test_two_event_loops_in_two_threads_record_their_own_groups(
    authority: Authority, home: CaHome
) -> None:
    """Two loops of one process contend for the writer lock through their own ledger
    connections (one flock each): neither blocks, every item is recorded exactly once."""
    import threading

    committer = authority.start_group_commit()
    items = committer.stats.items
    outcomes: dict[int, list[IssuedCertificate] | BaseException] = {}

    def serve(n: int) -> None:
        try:
            signed = [_signed(authority, f"loop{n}-{m}") for m in range(10)]

            async def main() -> list[IssuedCertificate]:
                loop = asyncio.get_running_loop()
                futures: list[Future[IssuedCertificate]] = []
                for one in signed:
                    futures.append(committer.submit_here(loop, authority.issuer, one))
                    await asyncio.sleep(0)  # one item per turn: many small groups
                return await _all(futures)

            outcomes[n] = asyncio.run(main())
        except BaseException as error:
            outcomes[n] = error

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes.values()) and len(outcomes) == 2, outcomes
    issued = [i for o in outcomes.values() if isinstance(o, list) for i in o]
    assert len({i.serial for i in issued}) == 20, outcomes
    assert committer.stats.items == items + 20
    rows = _rows(home)
    assert all(rows[i.serial] == "valid" for i in issued)
    assert _certificates(home) == 20
    assert audit_problems(home) == []


def test_a_group_whose_commit_thread_stopped_meanwhile_is_committed_on_the_loop(
    authority: Authority, home: CaHome
) -> None:
    """``close`` stops the commit thread first; a loop that takes the writer lock just then
    must not hand its open transaction to a thread that will never run it (the lock and
    the futures would stay taken): the refused job runs on the loop itself."""
    committer = authority.start_group_commit()
    first, second = _signed(authority, "before-stop"), _signed(authority, "after-stop")

    async def main() -> list[IssuedCertificate]:
        loop = asyncio.get_running_loop()
        issued = await _all([committer.submit_here(loop, authority.issuer, first)])
        commits = committer._commits  # the commit thread the first group started
        assert commits is not None
        commits.stop()  # as ``close`` does, while this loop still runs
        issued += await asyncio.wait_for(
            _all([committer.submit_here(loop, authority.issuer, second)]), 10
        )
        return issued

    issued = asyncio.run(main())
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid", "valid"]
    assert _lock_free(home)
    assert audit_problems(home) == []


def _lock_free(home: CaHome) -> bool:
    import fcntl
    import os

    fd = os.open(lock_path(home.ledger_path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_loop_waiting_for_the_lock_does_not_poll_it_and_writes_once_it_is_free(
    authority: Authority, home: CaHome, holder: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process holds the lock, a thread blocks on it for the loop (the
    kernel wakes it when the holder lets go): the loop tries the lock once, not every
    fraction of a millisecond (polling from a loop either rounds up to a whole
    millisecond, asyncio, or spins, uvloop), and the group is written when it is free."""
    from cyphrs_cli.ledger.db import Ledger

    attempts = [0]
    try_lock = Ledger.try_lock

    def counted(self: Ledger) -> bool:
        attempts[0] += 1
        return try_lock(self)

    monkeypatch.setattr(Ledger, "try_lock", counted)
    committer = authority.start_group_commit()
    signed = [_signed(authority, f"nopoll{n}") for n in range(2)]
    held = holder.hold(30)

    async def main() -> list[IssuedCertificate]:
        loop = asyncio.get_running_loop()
        futures = [committer.submit_here(loop, authority.issuer, one) for one in signed]
        await asyncio.sleep(0.3)
        assert not any(f.done() for f in futures)
        assert attempts[0] == 1, attempts  # one try, then the lock thread waits
        held.kill()  # the kernel drops its flock: the lock thread takes it for the loop
        return await _all(futures)

    issued = asyncio.run(main())
    assert attempts[0] == 1, attempts
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 2
    assert audit_problems(home) == []


def submit_on_a_loop_that_ends(
    authority: Authority, signed: SignedLeaf, *, wait: float = 0.1
) -> Future[IssuedCertificate]:
    """Submit ``signed`` on a fresh loop while another process holds the writer lock, let
    the loop find it taken (``wait`` seconds), and end: ``asyncio.run`` closes the loop
    without awaiting the item, so nothing runs that loop's group any more."""
    committer = authority.group_committer
    assert committer is not None

    async def main() -> Future[IssuedCertificate]:
        future = committer.submit_here(asyncio.get_running_loop(), authority.issuer, signed)
        await asyncio.sleep(wait)  # found the lock taken: the lock thread waits
        return future

    return asyncio.run(main())


def stop_a_loop_while_its_group_waits(
    authority: Authority, holder: Holder, instance: str
) -> tuple[asyncio.AbstractEventLoop, Future[IssuedCertificate]]:
    """A new loop submits an item while another process holds the writer lock, then stops
    (not closed) with the item waiting; then the holder dies, so the lock thread takes
    the lock for a loop that does not run. The caller closes the loop."""
    committer = authority.group_committer
    assert committer is not None
    signed = _signed(authority, instance)
    held = holder.hold(30)
    loop = asyncio.new_event_loop()
    try:

        async def submit() -> Future[IssuedCertificate]:
            future = committer.submit_here(loop, authority.issuer, signed)
            await asyncio.sleep(0.1)  # found the lock taken: the lock thread waits
            return future

        future = loop.run_until_complete(submit())  # the loop stops, not closed
        held.kill()
        held.wait(timeout=30)
    except BaseException:
        loop.close()
        raise
    return loop, future


def test_a_hand_over_taken_back_from_a_stopped_loop_is_written_when_the_loop_runs_again(
    authority: Authority, home: CaHome, holder: Holder
) -> None:
    """The loop stops (not closed) while its group waits for the lock; when the holder
    lets go, the lock thread hands the lock over, sees the loop is not running and takes
    it back (others may write meanwhile); run again, the loop starts over and writes."""
    committer = authority.start_group_commit()
    threaded = _signed(authority, "between")
    loop, future = stop_a_loop_while_its_group_waits(authority, holder, "resumed")
    try:
        # Another writer gets the lock while the loop is stopped: it was taken back.
        between = committer.submit(authority.issuer, threaded).result(timeout=10)
        assert not future.done()
        # Run again while another process holds the lock: the loop must not write under
        # the taken-back hand-over; it waits for the lock like any writer.
        again = holder.hold(30)
        loop.run_until_complete(asyncio.sleep(0.2))
        assert not future.done()
        again.kill()
        again.wait(timeout=30)
        issued = loop.run_until_complete(asyncio.wrap_future(future, loop=loop))
    finally:
        loop.close()
    rows = _rows(home)
    assert rows[issued.serial] == "valid" and rows[between.serial] == "valid"
    assert _lock_free(home)
    assert audit_problems(home) == []


def test_loops_run_one_after_another_do_not_keep_a_connection_each(
    authority: Authority, home: CaHome
) -> None:
    """A caller that runs ``asyncio.run`` again and again (each run a new loop with a
    group and a writer connection of its own): the connections of closed loops are closed
    when the next loop arrives, so descriptors do not grow with the number of runs."""
    import os

    committer = authority.start_group_commit()

    async def one(instance: str) -> list[IssuedCertificate]:
        loop = asyncio.get_running_loop()
        return await _all([committer.submit_here(loop, authority.issuer, _signed(authority, instance))])  # fmt: skip

    def ledger_descriptors() -> int:
        """Open descriptors on this home's ledger files (other tests' threads may open
        and close descriptors of their own meanwhile: not counted)."""
        found = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            found += target.startswith(str(home.ledger_path))
        return found

    asyncio.run(one("runs-warm"))
    before = ledger_descriptors()
    issued = [asyncio.run(one(f"runs{n}"))[0] for n in range(8)]
    assert ledger_descriptors() <= before, "a connection per loop was kept"
    rows = _rows(home)
    assert [rows[i.serial] for i in issued] == ["valid"] * 8
    assert _lock_free(home)
    assert audit_problems(home) == []


def test_a_group_whose_sync_failed_is_not_delivered_and_no_later_group_is_written(
    authority: Authority, home: CaHome
) -> None:
    """The loop's writer connection syncs the WAL after the writer lock is released
    (``Ledger.defer_commit_sync``). Its sync failing (a real ``EBADF``: the descriptor
    closed behind its back, as no disk here fails on demand): the group's callers get
    exit 8, not their certificates, and the next group is refused before it writes."""
    committer = authority.start_group_commit()
    first = _signed(authority, "synced")
    failing = [_signed(authority, f"unsynced{n}") for n in range(2)]
    later = _signed(authority, "after")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        issued = await _all([committer.submit_here(loop, authority.issuer, first)])
        assert issued[0].serial
        writer = next(iter(committer._here.values())).ledger  # the loop's writer connection
        assert writer is not None
        assert open_descriptors(lambda target: target.endswith("-wal")).get(writer._wal_fd)
        os.close(writer._wal_fd)
        for group in (failing, [later]):  # one after the other
            futures = [committer.submit_here(loop, authority.issuer, one) for one in group]
            with pytest.raises(StorageError) as failed:
                await _all(futures)
            assert failed.value.exit_code == ExitCode.STORAGE

    written = _certificates(home)
    assert authority.readiness()["ledger"] == "ok"
    asyncio.run(main())
    # The failed group was committed (visible, never delivered); the later one not written.
    assert _certificates(home) == written + 3
    assert authority.readiness()["ledger"].startswith("unavailable: ledger write not made")
