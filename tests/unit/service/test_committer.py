"""``service.committer.GroupCommitter`` behind ``Authority.commit_leaf``: concurrent callers
share transactions, each gets its own result only after the commit, one item's refusal is
its own, a failed transaction fails (and records) nothing of its group, close drains.
Real hierarchy, real SQLite ledger, real threads."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from cyphrs_cli.ca.models import IssuedCertificate, LeafRequest
from cyphrs_cli.ca.orders import LeafOrder, prepare_request
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import CyphrsError, PolicyDenied, StorageError
from cyphrs_cli.service.authority import Authority
from tests.helpers import cli


def _leaf(authority: Authority, instance: str) -> LeafRequest:
    profile = authority.profile("agent")
    order = LeafOrder(profile="agent", workflow="grp", instance=instance)
    request, _ = prepare_request(order, profile, authority.facts.trust_domain)
    return request


def _rows(home: CaHome) -> dict[str, str]:
    with sqlite3.connect(home.ledger_path) as conn:
        return dict(conn.execute("SELECT serial, status FROM certificates").fetchall())


def _run_concurrently(
    authority: Authority, hooks: list[object], prefix: str = "i"
) -> list[IssuedCertificate | BaseException]:
    profile = authority.profile("agent")
    requests = [_leaf(authority, f"{prefix}{n}") for n in range(len(hooks))]
    barrier = threading.Barrier(len(hooks))
    results: list[IssuedCertificate | BaseException] = [RuntimeError("not run")] * len(hooks)

    def one(n: int) -> None:
        barrier.wait(timeout=20)
        try:
            results[n] = authority.commit_leaf(profile, requests[n], after_record=hooks[n])  # type: ignore[arg-type]
        except BaseException as error:
            results[n] = error

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(hooks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_callers_share_transactions_and_see_only_committed_results(
    authority: Authority, home: CaHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed: list[int] = []
    committer = authority.start_group_commit(observer=lambda items, seconds: observed.append(items))
    # 20 ms per group after its commit: callers (who sign in their own threads) queue
    # behind the writer as under real load.
    monkeypatch.setenv("CYPHRS_TEST_DELAY", "after-record=0.02")
    committed_at_return: list[bool] = []

    def check_recorded(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        committed_at_return.append(conn.in_transaction)  # runs inside the group transaction

    results = _run_concurrently(authority, [check_recorded] * 12)
    issued = [r for r in results if isinstance(r, IssuedCertificate)]
    assert len(issued) == 12 and len({i.serial for i in issued}) == 12
    rows = _rows(home)
    assert all(rows[i.serial] == "valid" for i in issued)  # durable when the caller returned
    assert committed_at_return == [True] * 12
    assert committer.stats.items == 12 and sum(observed) == 12
    assert committer.stats.groups < 12, committer.stats
    assert max(observed) > 1


def test_a_refused_item_is_its_own_and_a_failed_transaction_records_nothing(
    authority: Authority, home: CaHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority.start_group_commit()
    monkeypatch.setenv("CYPHRS_TEST_DELAY", "after-sign=0.02")

    def refuse(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        raise PolicyDenied("no", rule="test.refused")

    before = len(_rows(home))
    results = _run_concurrently(authority, [None, refuse, None, refuse, None, None])
    refused = [r for r in results if isinstance(r, PolicyDenied)]
    assert len(refused) == 2 and all(r.rule == "test.refused" for r in refused)
    assert len(_rows(home)) == before + 4

    def crash(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        raise RuntimeError("bug in a hook")

    before = len(_rows(home))
    results = _run_concurrently(authority, [crash], "crash")
    assert isinstance(results[0], CyphrsError) and "bug in a hook" in str(results[0])
    assert len(_rows(home)) == before  # the group's transaction was rolled back
    # The writer thread survived: the next item commits.
    assert isinstance(_run_concurrently(authority, [None], "after")[0], IssuedCertificate)
    assert cli("audit", "verify", "--home", str(home.root)).exit_code == 0


def test_close_drains_then_refuses(authority: Authority, home: CaHome) -> None:
    committer = authority.start_group_commit()
    profile = authority.profile("agent")
    issued = authority.commit_leaf(profile, _leaf(authority, "before-close"))
    committer.close()
    committer.close()  # idempotent
    assert _rows(home)[issued.serial] == "valid"
    with pytest.raises(StorageError):
        authority.commit_leaf(profile, _leaf(authority, "after-close"))


def test_a_lone_caller_is_not_kept_waiting_for_company(authority: Authority) -> None:
    """max_wait 2 s, one caller inside ``expecting``: nobody else is on the way, so its
    item commits at once instead of after the 2 s the writer would wait for more."""
    committer = authority.start_group_commit(max_wait=2.0)
    profile = authority.profile("agent")
    timings = []
    for n in range(3):
        started = time.monotonic()
        with committer.expecting():
            authority.commit_leaf(profile, _leaf(authority, f"lone{n}"))
        timings.append(time.monotonic() - started)
    assert max(timings) < 1.0, timings
    assert committer.stats.groups == 3


def test_the_writer_waits_for_a_caller_that_is_on_its_way(authority: Authority) -> None:
    """A second caller inside ``expecting`` but still preparing when the first submits:
    the writer waits (up to max_wait) and both items share one transaction."""
    committer = authority.start_group_commit(max_wait=5.0)
    profile = authority.profile("agent")
    second_inside, first_submitted = threading.Event(), threading.Event()
    results: list[object] = []

    def second() -> None:
        with committer.expecting():
            second_inside.set()
            first_submitted.wait(timeout=10)
            time.sleep(0.3)  # still preparing after the first item was queued
            results.append(authority.commit_leaf(profile, _leaf(authority, "late")))

    thread = threading.Thread(target=second)
    thread.start()
    assert second_inside.wait(timeout=10)
    timer = threading.Timer(0.1, first_submitted.set)
    timer.start()
    results.append(authority.commit_leaf(profile, _leaf(authority, "early")))
    thread.join(timeout=30)
    timer.cancel()
    assert len(results) == 2 and all(isinstance(r, IssuedCertificate) for r in results)
    assert committer.stats.groups == 1 and committer.stats.items == 2


def test_a_caller_that_never_submits_stops_being_expected(authority: Authority) -> None:
    """A refusal before submitting (bad CSR, spent token) leaves ``expecting`` without an
    item; later lone callers are not kept waiting for it."""
    committer = authority.start_group_commit(max_wait=2.0)
    with pytest.raises(RuntimeError), committer.expecting():
        raise RuntimeError("refused before submitting")
    started = time.monotonic()
    with committer.expecting():
        authority.commit_leaf(authority.profile("agent"), _leaf(authority, "after"))
    assert time.monotonic() - started < 1.0
