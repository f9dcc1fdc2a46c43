"""``Authority.renew_online``: renewal over mTLS from a real asyncio event loop, the blocking
``renew_presented`` offloaded to a real thread pool, the group committer recording the
loop's groups. Each test attacks one promise of the fast path: a clean renewal is decided
and signed on the loop and durable on return, its predecessor superseded in the same
transaction; every refusal is exactly ``renew_presented``'s (same class, same rule, same
exit code) and nothing is recorded for it; a certificate raced by concurrent renewals is
renewed once; an RSA CSR, a CA not unlocked yet and an authority without a group
committer take the blocking path; both paths record the same rows and events. Real
hierarchy, real SQLite, real keys."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cyphrs_cli.ca.serials import serial_hex
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import ConflictError, CyphrsError, InvalidInputError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from cyphrs_cli.service.online import start_renewal
from cyphrs_cli.service.requests import IssueResult
from cyphrs_cli.service.tokens import TokenSpec
from tests.enrollment_helpers import audit_problems, count, events, make_csr
from tests.helpers import INTER_PASS


def _agent(ca: Authority, instance: str, *, ttl: str = "1h") -> bytes:
    """A freshly enrolled agent certificate, DER (what the TLS layer hands the server)."""
    token = ca.create_token(TokenSpec(workflow="payments-recon", uses=1)).token
    enrolled = ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token, instance=instance, ttl=ttl))
    pem = enrolled.bundle.certificate.encode()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _rsa_csr() -> bytes:
    key = rsa.generate_private_key(65537, 3072)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class Loop:
    """A fresh event loop whose exception handler records every call, with a real thread
    pool as the offload; counts the hand-offs to the blocking path."""

    def __init__(self) -> None:
        self.unhandled: list[dict[str, Any]] = []
        self.offloaded = 0

    async def offload(self, work: Callable[[], IssueResult]) -> IssueResult:
        self.offloaded += 1
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    def renew(
        self, ca: Authority, attempts: list[tuple[bytes, bytes, timedelta | None]]
    ) -> list[IssueResult | CyphrsError]:
        """Every attempt (presented DER, CSR, TTL) concurrently on one loop."""

        async def one(der: bytes, csr: bytes, ttl: timedelta | None) -> IssueResult | CyphrsError:
            try:
                return await ca.renew_online(der, csr, ttl=ttl, offload=self.offload)
            except CyphrsError as error:
                return error

        async def main() -> list[IssueResult | CyphrsError]:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, context: self.unhandled.append(context))
            with ThreadPoolExecutor(4) as pool:
                self.pool = pool
                return list(await asyncio.gather(*(one(*a) for a in attempts)))

        outcomes = asyncio.run(main())
        assert self.unhandled == []
        return outcomes


def _row(home: CaHome, serial: str) -> sqlite3.Row:
    with sqlite3.connect(home.ledger_path) as conn:
        conn.row_factory = sqlite3.Row
        found: sqlite3.Row | None = conn.execute(
            "SELECT * FROM certificates WHERE serial = ?", (serial,)
        ).fetchone()
    assert found is not None
    return found


def _serial(der: bytes) -> str:
    return serial_hex(x509.load_der_x509_certificate(der).serial_number)


def _recorded(home: CaHome) -> tuple[int, int]:
    """(certificates, events): what a refusal must leave unchanged."""
    return count(home, "SELECT count(*) FROM certificates"), count(
        home, "SELECT count(*) FROM events"
    )


def test_a_clean_renewal_takes_the_fast_path_and_is_durable_on_return(
    ca: Authority, home: CaHome
) -> None:
    committer = ca.start_group_commit()
    der = _agent(ca, "fast")
    old = _row(home, _serial(der))
    groups = committer.stats.groups
    csr, key = make_csr()
    runner = Loop()
    (outcome,) = runner.renew(ca, [(der, csr, None)])
    assert isinstance(outcome, IssueResult), outcome
    assert runner.offloaded == 0  # decided, signed and recorded without a thread hand-off
    assert committer.stats.groups == groups + 1
    issued = outcome.issued
    assert issued.certificate.public_key() == key.public_key()
    assert issued.spiffe_id == old["spiffe_id"] == "spiffe://acme.internal/agent/payments-recon/fast"
    new = _row(home, issued.serial)  # read by another connection: committed
    assert (new["status"], new["replaces_id"], new["profile"]) == ("valid", old["id"], "agent")
    assert _row(home, old["serial"])["status"] == "superseded"
    assert outcome.replaces == old["serial"]
    assert events(home, "certificate.renewed") == 1
    assert audit_problems(home) == []


def test_every_refusal_is_renew_presented_s_and_records_nothing(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    renewed = _agent(ca, "renewed")
    ca.renew_presented(renewed, make_csr()[0])
    revoked = _agent(ca, "revoked")
    ca.revoke_presented(revoked, None)
    valid = _agent(ca, "valid", ttl="1h")
    issuer_cert = ca.issuer.certificate
    assert issuer_cert is not None
    intermediate = issuer_cert.public_bytes(serialization.Encoding.DER)  # in the ledger, a CA
    cases: dict[str, tuple[bytes, bytes, timedelta | None]] = {
        "no certificate": (b"", make_csr()[0], None),
        "unparsable": (b"\x30\x03\x02\x01\x01", make_csr()[0], None),
        "CA certificate": (intermediate, make_csr()[0], None),
        "already renewed": (renewed, make_csr()[0], None),
        "revoked": (revoked, make_csr()[0], None),
        "longer ttl": (valid, make_csr()[0], timedelta(hours=24)),
        "bad CSR": (valid, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", None),
    }
    for name, (der, csr, ttl) in cases.items():
        with pytest.raises(CyphrsError) as blocking:
            ca.renew_presented(der, csr, ttl=ttl)
        before = _recorded(home)
        runner = Loop()
        (online,) = runner.renew(ca, [(der, csr, ttl)])
        assert isinstance(online, CyphrsError), name
        assert type(online) is type(blocking.value), name
        assert online.exit_code == blocking.value.exit_code, name
        assert getattr(online, "rule", None) == getattr(blocking.value, "rule", None), name
        assert runner.offloaded == 0, name  # refused on the loop, nothing handed over
        assert _recorded(home) == before, name
    assert _row(home, _serial(valid))["status"] == "valid"
    assert audit_problems(home) == []


def test_concurrent_renewals_of_one_certificate_renew_it_once(
    ca: Authority, home: CaHome
) -> None:
    """Ten renewals of the same certificate on one loop: one successor, the rest exit 7
    (the transaction finds the predecessor superseded; the blocking path says why)."""
    ca.start_group_commit()
    der = _agent(ca, "raced")
    runner = Loop()
    outcomes = runner.renew(ca, [(der, make_csr()[0], None) for _ in range(10)])
    won = [o for o in outcomes if isinstance(o, IssueResult)]
    lost = [o for o in outcomes if isinstance(o, CyphrsError)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, ConflictError) and o.exit_code == 7 for o in lost), lost
    spiffe = "spiffe://acme.internal/agent/payments-recon/raced"
    assert count(home, "SELECT count(*) FROM certificates WHERE spiffe_id = ?", spiffe) == 2
    assert count(
        home, "SELECT count(*) FROM certificates WHERE spiffe_id = ? AND status = 'valid'", spiffe
    ) == 1
    assert events(home, "certificate.renewed") == 1
    assert audit_problems(home) == []


def test_rsa_csrs_locked_cas_and_no_committer_take_the_blocking_path(home: CaHome) -> None:
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as ca:
        der = _agent(ca, "rsa")
        runner = Loop()
        (outcome,) = runner.renew(ca, [(der, make_csr()[0], None)])  # no committer
        assert isinstance(outcome, IssueResult) and runner.offloaded == 1
        ca.start_group_commit()
        runner = Loop()
        (outcome,) = runner.renew(ca, [(outcome_der(outcome), _rsa_csr(), None)])
        assert isinstance(outcome, IssueResult), outcome
        assert runner.offloaded == 1  # RSA: checked on a worker thread
        assert outcome.issued.certificate.public_key().key_size == 3072  # type: ignore[union-attr]
    # An authority whose CA is not unlocked yet (unlocking runs the passphrase's KDF).
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode(), unlock=False) as ca:
        ca.start_group_commit()
        runner = Loop()
        (outcome,) = runner.renew(ca, [(outcome_der(outcome), make_csr()[0], None)])
        assert isinstance(outcome, IssueResult), outcome
        assert runner.offloaded == 1
    assert events(home, "certificate.renewed") == 3
    assert audit_problems(home) == []


def outcome_der(result: IssueResult) -> bytes:
    return result.issued.certificate.public_bytes(serialization.Encoding.DER)


def test_the_fast_and_blocking_paths_record_the_same_rows_and_events(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    fast_der, slow_der = _agent(ca, "same-a"), _agent(ca, "same-b")
    runner = Loop()
    (fast,) = runner.renew(ca, [(fast_der, make_csr()[0], None)])
    assert isinstance(fast, IssueResult) and runner.offloaded == 0
    slow = ca.renew_presented(slow_der, make_csr()[0])
    differ = {"id", "serial", "fingerprint", "spiffe_id", "not_before", "not_after", "pem",
              "issued_at", "replaces_id", "sans", "subject", "requester"}  # fmt: skip
    fast_row, slow_row = _row(home, fast.issued.serial), _row(home, slow.issued.serial)
    columns = [k for k in fast_row.keys() if k not in differ]  # noqa: SIM118 -- a Row iterates values
    assert {k: fast_row[k] for k in columns} == {k: slow_row[k] for k in columns}
    with sqlite3.connect(home.ledger_path) as conn:
        kinds = [
            (row[0], sorted(json.loads(row[1])))
            for row in conn.execute(
                "SELECT type, details FROM events WHERE target IN (?, ?) ORDER BY seq",
                (f"certificate:{fast.issued.serial}", f"certificate:{slow.issued.serial}"),
            )
        ]
    assert len(kinds) == 2 and kinds[0] == kinds[1], kinds
    assert kinds[0][0] == "certificate.renewed"
    assert audit_problems(home) == []


def test_start_renewal_records_nothing_and_returns_the_predecessor_s_serial(
    ca: Authority, home: CaHome
) -> None:
    ca.start_group_commit()
    der = _agent(ca, "direct")

    async def start() -> tuple[str, str]:
        started = start_renewal(ca, der, make_csr()[0], ttl=None, loop=asyncio.get_running_loop())
        assert started is not None
        future, replaces = started
        assert not future.done()  # written by a later callback of the loop, not here
        assert events(home, "certificate.renewed") == 0
        return (await asyncio.wrap_future(future)).serial, replaces

    serial, replaces = asyncio.run(start())
    assert replaces == _serial(der)
    assert _row(home, serial)["status"] == "valid"
    assert _row(home, replaces)["status"] == "superseded"
    with pytest.raises(InvalidInputError):  # a bad CSR is exit 3 on the loop too

        async def bad() -> None:
            start_renewal(ca, der, b"not a csr", ttl=None, loop=asyncio.get_running_loop())

        asyncio.run(bad())
