"""Adversarial review of the group committer's threads (h-review): a failure in the
commit observer (``cyphrs serve`` passes ``Metrics.observe_commit``, which with a
prometheus multiprocess directory writes to an mmap'd file and can raise ``OSError`` when
that file system is full) must neither leave a committed group's callers waiting nor stop
the thread that records the next groups. Real hierarchy, real SQLite, real asyncio loop.
(Found by review as hangs; fixed in ``GroupCommitter._count_group``, which never raises.)"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import TimeoutError as FutureTimeout

from cyphrs_cli.ca.issuance import SignedLeaf, sign_leaf
from cyphrs_cli.ca.models import IssuedCertificate
from cyphrs_cli.ca.orders import LeafOrder, prepare_request
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.ledger.events import utc_now
from cyphrs_cli.service.authority import Authority


def _signed(authority: Authority, instance: str) -> SignedLeaf:
    profile = authority.profile("agent")
    order = LeafOrder(profile="agent", workflow="review", instance=instance)
    request, _ = prepare_request(order, profile, authority.facts.trust_domain)
    return sign_leaf(authority.ledger, authority.issuer, profile, request, utc_now())


def _status(home: CaHome, serial: str) -> str | None:
    with sqlite3.connect(home.ledger_path) as conn:
        row = conn.execute("SELECT status FROM certificates WHERE serial = ?", (serial,)).fetchone()
    return None if row is None else str(row[0])


class FailsOnce:
    """A commit observer whose first call fails, as a metrics write on a full disk does."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items: int, seconds: float) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device (metrics directory)")


def test_an_observer_error_does_not_stop_the_loops_later_groups(
    authority: Authority, home: CaHome
) -> None:
    committer = authority.start_group_commit()
    observer = FailsOnce()
    committer.set_observer(observer)
    first, second = _signed(authority, "obs-loop-1"), _signed(authority, "obs-loop-2")

    async def main() -> tuple[IssuedCertificate, IssuedCertificate]:
        loop = asyncio.get_running_loop()
        one = committer.submit_here(loop, authority.issuer, first)
        issued_one = await asyncio.wait_for(asyncio.wrap_future(one), 10)
        await asyncio.sleep(0.05)  # the commit thread's end of the first group
        two = committer.submit_here(loop, authority.issuer, second)
        # On main this never resolves: nobody commits the loop's groups any more.
        issued_two = await asyncio.wait_for(asyncio.wrap_future(two), 5)
        return issued_one, issued_two

    issued_one, issued_two = asyncio.run(main())
    assert observer.calls >= 1
    assert _status(home, issued_one.serial) == "valid"
    assert _status(home, issued_two.serial) == "valid"


def test_an_observer_error_does_not_strand_a_committed_group_of_the_writer_thread(
    authority: Authority, home: CaHome
) -> None:
    committer = authority.start_group_commit()
    observer = FailsOnce()
    committer.set_observer(observer)
    first = committer.submit(authority.issuer, _signed(authority, "obs-writer-1"))
    try:
        issued = first.result(timeout=5)
    except FutureTimeout:
        # The certificate IS committed (durable), but its caller never learns it.
        with sqlite3.connect(home.ledger_path) as conn:
            (rows,) = conn.execute(
                "SELECT count(*) FROM certificates WHERE spiffe_id LIKE '%/obs-writer-1'"
            ).fetchone()
        assert rows == 1
        raise
    assert _status(home, issued.serial) == "valid"
    second = committer.submit(authority.issuer, _signed(authority, "obs-writer-2"))
    assert _status(home, second.result(timeout=5).serial) == "valid"
