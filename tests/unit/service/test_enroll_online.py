"""``Authority.enroll_online``: enrollment from a real asyncio event loop, the blocking
path offloaded to a real thread pool, the group committer recording the loop's groups.
Each test attacks one promise of the fast path: a clean token redemption is decided and
signed on the loop and recorded durably before it returns; every refusal is the blocking
``enroll``'s (same class, same rule) and recorded exactly once; a replayed single-use token
pays for exactly one certificate; an instance is issued once; JWTs, PKCS#11 keys and an
authority without a group committer take the blocking path; a cancelled caller leaves the
loop, the committer and the ledger consistent. Real hierarchy, real SQLite, real keys."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from cyphrs_cli.ca.models import IssuedCertificate
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import (
    ConflictError,
    CyphrsError,
    InvalidInputError,
    PolicyDenied,
    StorageError,
)
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest, start_enrollment
from cyphrs_cli.service.requests import IssueResult
from cyphrs_cli.service.tokens import TokenSpec
from tests.enrollment_helpers import audit_problems, count, events, make_csr, run_replayers
from tests.helpers import cli

T = TypeVar("T")


def _token(ca: Authority, **kw: Any) -> str:
    spec = TokenSpec(**{"workflow": "payments-recon", "permissions": ("ledger:read",), **kw})
    return ca.create_token(spec).token


def _request(token: str | None, **kw: Any) -> EnrollRequest:
    return EnrollRequest(csr_pem=make_csr()[0], token=token, **kw)


def _token_uses(home: CaHome) -> list[int]:
    with sqlite3.connect(home.ledger_path) as conn:
        return [int(r[0]) for r in conn.execute("SELECT uses FROM tokens ORDER BY rowid")]


def _status(home: CaHome, serial: str) -> str | None:
    with sqlite3.connect(home.ledger_path) as conn:
        row = conn.execute("SELECT status FROM certificates WHERE serial = ?", (serial,)).fetchone()
    return None if row is None else str(row[0])


def _token_certificates(home: CaHome) -> int:
    return count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'")


class Loop:
    """Runs a coroutine on a fresh event loop whose exception handler records every call
    (a callback or future that went wrong unseen), with a real thread pool as offload."""

    def __init__(self) -> None:
        self.unhandled: list[dict[str, Any]] = []
        self.offloaded = 0

    def run(self, make: Callable[[Loop], Coroutine[Any, Any, T]]) -> T:
        async def main() -> T:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, context: self.unhandled.append(context))
            with ThreadPoolExecutor(4) as pool:
                self.pool = pool
                return await make(self)

        return asyncio.run(main())

    async def offload(self, work: Callable[[], IssueResult]) -> IssueResult:
        self.offloaded += 1
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    async def enroll(self, ca: Authority, request: EnrollRequest) -> IssueResult:
        return await ca.enroll_online(request, offload=self.offload)


def _online(ca: Authority, request: EnrollRequest) -> tuple[IssueResult | CyphrsError, Loop]:
    runner = Loop()

    async def one(loop: Loop) -> IssueResult | CyphrsError:
        try:
            return await loop.enroll(ca, request)
        except CyphrsError as error:
            return error

    outcome = runner.run(one)
    assert runner.unhandled == []
    return outcome, runner


def _started(ca: Authority, request: EnrollRequest) -> Future[IssuedCertificate] | None:
    """``start_enrollment`` on a running loop, its future awaited (if any)."""

    async def start() -> Future[IssuedCertificate] | None:
        started = start_enrollment(ca, request, asyncio.get_running_loop())
        if started is not None:
            await asyncio.wrap_future(started)
        return started

    return asyncio.run(start())


def test_a_clean_token_enrollment_takes_the_fast_path_and_is_durable_on_return(
    ca: Authority, home: CaHome
) -> None:
    committer = ca.start_group_commit()
    token = _token(ca, uses=2, max_ttl=timedelta(hours=1))
    # The fast path itself: a future, recorded by the loop's own group.
    started = _started(ca, _request(token, instance="direct"))
    assert isinstance(started, Future)
    assert _status(home, started.result().serial) == "valid"
    assert _token_uses(home) == [1]
    groups = committer.stats.groups
    csr, key = make_csr()
    outcome, runner = _online(ca, EnrollRequest(csr_pem=csr, token=token, instance="online"))
    assert isinstance(outcome, IssueResult), outcome
    assert runner.offloaded == 0  # no thread hand-off
    assert committer.stats.groups == groups + 1  # recorded by the group committer
    issued = outcome.issued
    assert issued.certificate.public_key() == key.public_key()
    assert issued.spiffe_id == "spiffe://acme.internal/agent/payments-recon/online"
    assert _status(home, issued.serial) == "valid"  # read by another connection
    assert _token_uses(home) == [2]
    assert events(home, "token.used") == 2
    assert events(home, "token.refused") == 0
    assert cli("audit", "verify", "--home", str(home.root)).exit_code == 0


def _refusal_cases(ca: Authority) -> dict[str, tuple[EnrollRequest, str]]:
    used = _token(ca)
    ca.enroll(_request(used))
    revoked = ca.create_token(TokenSpec(workflow="payments-recon", uses=3))
    ca.revoke_token(revoked.token_id)
    capped = _token(ca, max_ttl=timedelta(hours=1))
    return {
        "unknown": (_request("cyphrs_tok_" + "A" * 43), "token.unknown"),
        "used": (_request(used), "token.used"),
        "revoked": (_request(revoked.token), "token.revoked"),
        "workflow": (_request(_token(ca), workflow="admin"), "token.workflow"),
        "permission": (_request(_token(ca), permissions=("ledger:write",)), "token.permission"),
        "ttl": (_request(capped, ttl="2h"), "token.ttl"),
    }


def test_every_refusal_is_the_blocking_one_and_recorded_exactly_once(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    expired, created = _token(ca, ttl=timedelta(seconds=1)), time.monotonic()
    cases = _refusal_cases(ca)
    time.sleep(max(0.0, 2.1 - (time.monotonic() - created)))  # its one second has passed
    cases["expired"] = (_request(expired), "token.expired")
    certificates = _token_certificates(home)
    uses = _token_uses(home)
    for name, (request, rule) in cases.items():
        refusals = events(home, "token.refused")
        # The fast path declines without recording anything ...
        assert _started(ca, request) is None, name
        assert events(home, "token.refused") == refusals, name
        # ... and enroll_online refuses, recorded once, as the blocking path would.
        online, _ = _online(ca, request)
        assert isinstance(online, PolicyDenied), (name, online)
        assert (online.rule, online.exit_code) == (rule, 5), name
        assert events(home, "token.refused") == refusals + 1, name
        assert events(home, "token.refused", f'%"rule":"{rule}"%') >= 1, name
        with pytest.raises(CyphrsError) as blocking:
            ca.enroll(request)
        assert type(blocking.value) is type(online), name
        assert getattr(blocking.value, "rule", None) == rule, name
        assert events(home, "token.refused") == refusals + 2, name
    assert events(home, "policy.denied") == 0
    assert _token_certificates(home) == certificates  # nothing issued
    assert _token_uses(home) == uses  # nothing spent
    assert audit_problems(home) == []


def test_a_profile_denial_is_recorded_as_one_policy_denied_and_one_token_refused(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    token = _token(ca)  # no token max: the agent profile's 24 h bounds it
    request = _request(token, ttl="48h")
    assert _started(ca, request) is None
    assert events(home, "policy.denied") == 0
    online, _ = _online(ca, request)
    assert isinstance(online, PolicyDenied) and online.rule.startswith("agent."), online
    assert events(home, "policy.denied") == 1
    assert events(home, "policy.denied", f'%"rule":"{online.rule}"%') == 1
    assert events(home, "token.refused") == 1
    assert events(home, "token.refused", f'%"rule":"{online.rule}"%') == 1
    assert _token_uses(home) == [0]
    with pytest.raises(PolicyDenied) as blocking:
        ca.enroll(request)
    assert blocking.value.rule == online.rule
    assert audit_problems(home) == []


def test_twenty_concurrent_replays_on_one_loop_issue_exactly_once(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    token = _token(ca)
    requests = [_request(token) for _ in range(20)]

    async def race(loop: Loop) -> list[IssueResult | BaseException]:
        return list(
            await asyncio.gather(*(loop.enroll(ca, r) for r in requests), return_exceptions=True)
        )

    runner = Loop()
    outcomes = runner.run(race)
    assert runner.unhandled == []
    # All 20 were signed on the loop and queued; the 19 the spending hook refused went
    # to the blocking path, which refused and recorded them.
    assert runner.offloaded == 19
    issued = [o for o in outcomes if isinstance(o, IssueResult)]
    refused = [o for o in outcomes if isinstance(o, PolicyDenied)]
    assert len(issued) == 1, outcomes
    assert len(refused) == 19 and {r.rule for r in refused} == {"token.used"}, outcomes
    assert _status(home, issued[0].issued.serial) == "valid"
    assert _token_certificates(home) == 1
    assert _token_uses(home) == [1]
    assert events(home, "token.used") == 1
    assert events(home, "token.refused") == 19
    assert events(home, "token.refused", '%"rule":"token.used"%') == 19
    assert audit_problems(home) == []


@pytest.mark.parametrize("how", ["request", "csr"])
def test_one_instance_twice_at_once_is_issued_once_and_the_other_conflicts(
    ca: Authority, home: CaHome, how: str
) -> None:
    ca.start_group_commit()
    spiffe = "spiffe://acme.internal/agent/payments-recon/twin"
    tokens = [_token(ca), _token(ca)]
    if how == "request":
        requests = [_request(t, instance="twin") for t in tokens]
    else:
        uri = x509.UniformResourceIdentifier(spiffe)
        requests = [EnrollRequest(csr_pem=make_csr(uri)[0], token=t) for t in tokens]

    async def race(loop: Loop) -> list[IssueResult | BaseException]:
        return list(
            await asyncio.gather(*(loop.enroll(ca, r) for r in requests), return_exceptions=True)
        )

    runner = Loop()
    outcomes = runner.run(race)
    assert runner.unhandled == []
    issued = [o for o in outcomes if isinstance(o, IssueResult)]
    conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(issued) == 1 and len(conflicts) == 1, outcomes
    assert conflicts[0].exit_code == 7
    assert runner.offloaded == 1  # both signed on the loop; the loser decided again
    assert issued[0].issued.spiffe_id == spiffe
    assert count(home, "SELECT count(*) FROM certificates WHERE spiffe_id = ?", spiffe) == 1
    assert sorted(_token_uses(home)) == [0, 1]  # the loser's token is not spent
    assert events(home, "token.used") == 1
    assert events(home, "token.refused") == 0  # a conflict is not a credential refusal
    assert audit_problems(home) == []


def test_a_jwt_takes_the_blocking_path(ca: Authority, home: CaHome) -> None:
    from tests.unit.service.test_enrollment_jwt import Signer, _spec, claims

    ca.start_group_commit()
    signer = Signer("ES256", "k-online")
    ca.set_provisioner(_spec({"keys": [signer.jwk]}))
    request = EnrollRequest(csr_pem=make_csr()[0], jwt=signer.sign(claims()))
    assert _started(ca, request) is None
    before = count(home, "SELECT count(*) FROM certificates")
    outcome, runner = _online(ca, request)
    assert isinstance(outcome, IssueResult), outcome
    assert runner.offloaded == 1
    assert _status(home, outcome.issued.serial) == "valid"
    assert count(home, "SELECT count(*) FROM certificates") == before + 1
    # The same JWT again: refused by the blocking path, recorded once.
    again, _ = _online(ca, request)
    assert isinstance(again, PolicyDenied), again
    assert events(home, "jwt.refused") == 1
    assert audit_problems(home) == []


def test_without_a_group_committer_the_blocking_path_issues(ca: Authority, home: CaHome) -> None:
    assert ca.group_committer is None
    token = _token(ca)
    request = _request(token)
    assert _started(ca, request) is None
    assert _token_uses(home) == [0]
    outcome, runner = _online(ca, request)
    assert isinstance(outcome, IssueResult), outcome
    assert runner.offloaded == 1
    assert _status(home, outcome.issued.serial) == "valid"
    assert _token_uses(home) == [1]
    assert audit_problems(home) == []


def test_a_cancelled_caller_leaves_the_loop_the_committer_and_the_ledger_consistent(
    ca: Authority, home: CaHome
) -> None:
    committer = ca.start_group_commit()
    token = _token(ca, uses=5)
    csr, key = make_csr()

    async def cancelled(loop: Loop) -> tuple[bool, IssueResult]:
        task = asyncio.ensure_future(loop.enroll(ca, EnrollRequest(csr_pem=csr, token=token)))
        await asyncio.sleep(0)  # the task ran up to its first await: the item is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A following enrollment on the same loop goes through.
        await asyncio.sleep(0.05)
        after = await loop.enroll(ca, _request(token, instance="after-cancel"))
        return task.cancelled(), after

    runner = Loop()
    was_cancelled, after = runner.run(cancelled)
    assert was_cancelled
    assert runner.unhandled == []  # no exception escaped into the loop
    assert _status(home, after.issued.serial) == "valid"
    # The cancelled item's outcome was still decided and recorded consistently: its
    # certificate exists (valid) or not, and the token paid exactly for what exists.
    with sqlite3.connect(home.ledger_path) as conn:
        rows = conn.execute("SELECT serial, status, pem FROM certificates").fetchall()
    mine = [
        (serial, status)
        for serial, status, pem in rows
        if x509.load_pem_x509_certificate(
            pem.encode() if isinstance(pem, str) else pem
        ).public_key()
        == key.public_key()
    ]
    assert all(status == "valid" for _, status in mine) and len(mine) <= 1, mine
    # Here the item was queued before the cancel: a waiter that gives up cannot take it
    # back, so it is recorded (and its token use paid), though nobody receives it.
    assert len(mine) == 1
    assert _token_uses(home) == [_token_certificates(home)] == [1 + len(mine)]
    assert committer.stats.items == 1 + len(mine)
    assert audit_problems(home) == []


def test_a_cancelled_waiter_does_not_cancel_the_committers_future(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    token = _token(ca)

    async def main() -> Future[IssuedCertificate]:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        started = start_enrollment(ca, _request(token), loop)
        assert started is not None
        waiter = asyncio.wrap_future(started)
        waiter.cancel()  # the client went away before the group was recorded
        await asyncio.sleep(0.05)
        assert handled == []
        return started

    started = asyncio.run(main())
    assert not started.cancelled()
    issued = started.result(timeout=5)  # the writer set the outcome regardless
    assert _status(home, issued.serial) == "valid"
    assert _token_uses(home) == [1]
    assert audit_problems(home) == []


@pytest.mark.parametrize(("change", "rule"), [("revoke", "token.revoked"), ("spend", "token.used")])
def test_a_token_changed_between_the_loops_check_and_its_commit_is_refused_once(
    ca: Authority, home: CaHome, change: str, rule: str
) -> None:
    """The fast path checked the token and signed; before the loop records its group the
    token is revoked, or spent by another enrollment: the spending hook refuses under the
    write lock, the blocking path decides again and records the refusal, once."""
    committer = ca.start_group_commit()
    created = ca.create_token(TokenSpec(workflow="payments-recon"))

    async def race(loop: Loop) -> IssueResult | CyphrsError:
        async def enroll() -> IssueResult | CyphrsError:
            try:
                return await loop.enroll(ca, _request(created.token))
            except CyphrsError as error:
                return error

        task = asyncio.ensure_future(enroll())
        await asyncio.sleep(0)  # the task checked, signed and queued its item
        assert committer.stats.items == 0 and _token_uses(home) == [0]
        if change == "revoke":
            ca.revoke_token(created.token_id)
        else:  # another enrollment (the blocking path) spends the one use first
            ca.enroll(_request(created.token, instance="first"))
        return await task

    runner = Loop()
    outcome = runner.run(race)
    assert runner.unhandled == []
    assert isinstance(outcome, PolicyDenied) and outcome.rule == rule, outcome
    assert runner.offloaded == 1  # the hook's refusal sent it to the blocking path
    assert events(home, "token.refused") == 1
    assert events(home, "token.refused", f'%"rule":"{rule}"%') == 1
    expected = 1 if change == "spend" else 0
    assert _token_certificates(home) == expected
    assert _token_uses(home) == [expected]
    assert audit_problems(home) == []


def test_a_bad_csr_is_bad_input_recording_and_spending_nothing(ca: Authority, home: CaHome) -> None:
    ca.start_group_commit()
    token = _token(ca)
    before = count(home, "SELECT count(*) FROM events")
    outcome, runner = _online(ca, EnrollRequest(csr_pem=b"-----BEGIN NOT A CSR-----", token=token))
    assert isinstance(outcome, InvalidInputError) and outcome.exit_code == 3, outcome
    assert runner.offloaded == 0
    assert count(home, "SELECT count(*) FROM events") == before
    assert _token_uses(home) == [0]


def test_a_ledger_locked_past_the_busy_timeout_is_exit_8_with_nothing_recorded(
    home: CaHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import INTER_PASS
    from tests.unit.service.test_committer_loop import Holder

    monkeypatch.setenv("CYPHRS_BUSY_TIMEOUT_MS", "300")
    holder = Holder(home)
    try:
        with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as ca:
            ca.start_group_commit()
            token = _token(ca)
            before = count(home, "SELECT count(*) FROM events")
            held = holder.hold(2.0)
            outcome, runner = _online(ca, _request(token))
            assert isinstance(outcome, StorageError) and outcome.exit_code == 8, outcome
            assert runner.offloaded == 0  # a storage failure is not retried on a thread
            assert count(home, "SELECT count(*) FROM events") == before
            assert _token_uses(home) == [0] and _token_certificates(home) == 0
            held.kill()
            held.wait(timeout=30)
            retried, _ = _online(ca, _request(token))  # the client's retry then succeeds
            assert isinstance(retried, IssueResult), retried
            assert _token_uses(home) == [1]
    finally:
        holder.stop()
    assert audit_problems(home) == []


_LOOP_REPLAYER = """
import asyncio, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from tests.enrollment_helpers import make_csr

home, go = sys.argv[1], sys.argv[2]
token = sys.stdin.readline().strip()
passphrase = sys.stdin.readline().strip()
out = []
with Authority.open(CaHome(Path(home)), secrets=lambda p: passphrase.encode()) as ca:
    ca.start_group_commit()
    ca.issuer
    csrs = [make_csr()[0] for _ in range(5)]
    print("ready", flush=True)
    deadline = time.time() + 30
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.005)

    async def main():
        loop = asyncio.get_running_loop()
        unhandled = []
        loop.set_exception_handler(lambda _l, c: unhandled.append(repr(c)))
        with ThreadPoolExecutor(4) as pool:
            async def offload(work):
                return await loop.run_in_executor(pool, work)
            async def one(csr):
                try:
                    result = await ca.enroll_online(EnrollRequest(csr_pem=csr, token=token), offload=offload)
                    out.append(["issued", result.issued.serial])
                except CyphrsError as e:
                    out.append(["refused", getattr(e, "rule", e.slug)])
            await asyncio.gather(*(one(c) for c in csrs))
        out.append(["unhandled", unhandled])

    asyncio.run(main())
print(json.dumps(out))
"""


def test_concurrent_replays_from_event_loops_of_several_processes_issue_exactly_once(
    ca: Authority, home: CaHome, tmp_path: Path
) -> None:
    """``cyphrs serve`` runs one event loop per worker process: three of them, five
    enrollments each, one single-use token, all on the fast path at the same moment."""
    token = _token(ca)
    results = run_replayers(_LOOP_REPLAYER, home, token, 3, tmp_path / "go")
    assert [r[1] for r in results if r[0] == "unhandled"] == [[], [], []]
    outcomes = [r for r in results if r[0] != "unhandled"]
    assert len(outcomes) == 15
    assert len([r for r in outcomes if r[0] == "issued"]) == 1, outcomes
    assert sorted({r[1] for r in outcomes if r[0] == "refused"}) == ["token.used"], outcomes
    assert _token_certificates(home) == 1
    assert _token_uses(home) == [1]
    assert events(home, "token.used") == 1
    assert events(home, "token.refused") == 14
    assert audit_problems(home) == []


def test_the_fast_path_records_what_the_blocking_path_records(ca: Authority, home: CaHome) -> None:
    """Same request, one through the event loop's fast path, one through the blocking
    ``enroll``: the same certificate row (but its serial, key and times) and the same
    events with the same detail keys, in the same order."""
    ca.start_group_commit()
    token = _token(ca, uses=2, max_ttl=timedelta(hours=1))
    fast, runner = _online(ca, _request(token, instance="same", ttl="30m"))
    assert isinstance(fast, IssueResult) and runner.offloaded == 0, fast
    blocking = ca.enroll(_request(token, instance="same-b", ttl="30m"))
    compared = (
        "issuer_ski, authority_id, subject, workflow, permissions, profile, key_algorithm,"
        " signature_algorithm, is_ca, replaces_id, requester, key_storage"
    )

    def row(serial: str) -> tuple[Any, ...]:
        with sqlite3.connect(home.ledger_path) as conn:
            found = conn.execute(
                f"SELECT {compared} FROM certificates WHERE serial = ?",  # noqa: S608
                (serial,),
            ).fetchone()
        assert found is not None
        return tuple(found)

    def recorded(serial: str) -> list[tuple[str, list[str]]]:
        import json

        with sqlite3.connect(home.ledger_path) as conn:
            rows = conn.execute(
                "SELECT type, details FROM events WHERE details LIKE ? ORDER BY seq",
                (f'%"serial":"{serial}"%',),
            ).fetchall()
        return [(kind, sorted(json.loads(details))) for kind, details in rows]

    assert row(fast.issued.serial) == row(blocking.issued.serial)
    fast_events = recorded(fast.issued.serial)
    assert fast_events == recorded(blocking.issued.serial)
    assert len(fast_events) == 2 and fast_events[-1][0] == "token.used", fast_events
    lifetime = fast.issued.not_after - fast.issued.not_before
    assert lifetime == blocking.issued.not_after - blocking.issued.not_before
    assert audit_problems(home) == []


def test_a_replay_loser_cancelled_while_its_item_waits_is_still_recorded_as_refused(
    ca: Authority, home: CaHome
) -> None:
    """Two enrollments with one single-use token pass the loop's check together; the
    loser's caller goes away (its task cancelled) before the group commits. The hook
    refuses the loser in the transaction; the replay attempt must still be recorded, once,
    as the blocking ``enroll`` running on its thread would have recorded it."""
    ca.start_group_commit()
    token = _token(ca)

    async def race(loop: Loop) -> None:
        winner = asyncio.ensure_future(loop.enroll(ca, _request(token)))
        loser = asyncio.ensure_future(loop.enroll(ca, _request(token)))
        await asyncio.sleep(0)  # both checked, signed and queued in one group
        loser.cancel()
        await winner
        with pytest.raises(asyncio.CancelledError):
            await loser
        await asyncio.sleep(0.2)

    runner = Loop()
    runner.run(race)
    assert runner.unhandled == []
    assert _token_certificates(home) == 1
    assert _token_uses(home) == [1]
    assert audit_problems(home) == []
    assert events(home, "token.refused", '%"rule":"token.used"%') == 1


_CRASHER = """
import asyncio, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from tests.enrollment_helpers import make_csr

token = sys.stdin.readline().strip()
passphrase = sys.stdin.readline().strip()
with Authority.open(CaHome(Path(sys.argv[1])), secrets=lambda p: passphrase.encode()) as ca:
    ca.start_group_commit()

    async def main():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as pool:
            async def offload(work):
                return await loop.run_in_executor(pool, work)
            request = EnrollRequest(csr_pem=make_csr()[0], token=token)
            result = await ca.enroll_online(request, offload=offload)
            print(result.issued.serial, flush=True)

    asyncio.run(main())
"""


@pytest.mark.parametrize(("fault", "recorded"), [("after-sign", False), ("after-record", True)])
def test_a_server_killed_on_the_fast_path_leaves_the_certificate_and_its_token_use_together(
    ca: Authority, home: CaHome, fault: str, recorded: bool
) -> None:
    """The process dies (exit 86) right after the loop signed, or right after its group
    committed: either nothing is recorded and the token is unspent, or both the
    certificate and the token's use are; no certificate is ever output unrecorded."""
    import os
    import subprocess
    import sys

    from cyphrs_cli.ca.issuance import FAULT_ENV
    from tests.helpers import INTER_PASS

    token = _token(ca)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, str(home.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[3]),
        env={**os.environ, FAULT_ENV: fault},
    )
    try:
        stdout, stderr = proc.communicate(f"{token}\n{INTER_PASS}\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 86, stderr
    assert stdout == ""  # nothing was output
    assert _token_certificates(home) == int(recorded)
    assert _token_uses(home) == [int(recorded)]
    assert events(home, "token.used") == int(recorded)
    assert audit_problems(home) == []
    # The token (if unspent) still works for the next attempt.
    if not recorded:
        outcome, _ = _online(ca, _request(token))
        assert isinstance(outcome, IssueResult), outcome
