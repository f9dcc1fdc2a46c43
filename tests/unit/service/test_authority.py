"""The use-case API called directly, without the CLI: a real hierarchy (built once through
the CLI), a real SQLite ledger and real encrypted key files, one ``Authority`` per test."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cyphrs_cli.audit.checkpoint import load_anchor
from cyphrs_cli.ca.orders import LeafOrder
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PolicyDenied,
    SecretError,
    UsageError,
)
from cyphrs_cli.ledger.verify import verify_ledger
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.requests import (
    CertificateTarget,
    CrlRequest,
    IssueRequest,
    RenewalCheckRequest,
    RenewRequest,
    RevokeRequest,
)
from tests.enrollment_helpers import audit_problems
from tests.helpers import INTER_PASS, ROOT_PASS, Hierarchy


class Secrets:
    """A SecretProvider that counts how often it is asked (0 means no key was unlocked)."""

    def __init__(self, value: str) -> None:
        self.value, self.asked = value.encode(), 0

    def __call__(self, purpose: str) -> bytes:
        self.asked += 1
        return self.value


@pytest.fixture
def home(fresh_hierarchy: Hierarchy) -> CaHome:
    return CaHome(fresh_hierarchy.home)


@pytest.fixture
def opened(home: CaHome) -> Iterator[Callable[..., Authority]]:
    """Open authorities on the home; every one is closed at the end of the test."""
    made: list[Authority] = []

    def open_(
        issuer: str | None = None, secret: str = INTER_PASS, unlock: bool = True
    ) -> Authority:
        authority = Authority.open(home, issuer=issuer, secrets=Secrets(secret), unlock=unlock)
        made.append(authority)
        return authority

    yield open_
    for authority in made:
        authority.close()


def _agent(workflow: str = "svc", **kw: object) -> LeafOrder:
    return LeafOrder(profile="agent", workflow=workflow, **kw)  # type: ignore[arg-type]


def _count(home: CaHome, sql: str = "SELECT count(*) FROM certificates") -> int:
    with sqlite3.connect(home.ledger_path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_issue_records_then_writes_files(opened: Callable[..., Authority], tmp_path: Path) -> None:
    ca = opened()
    out = tmp_path / "agent"
    result = ca.issue(IssueRequest(_agent("payments", instance="i1"), out_dir=out))
    issued = result.issued
    assert issued.spiffe_id == "spiffe://acme.internal/agent/payments/i1"
    assert result.files is not None and set(result.files) >= {"certificate", "private_key"}
    on_disk = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert on_disk == issued.certificate
    row = ca.ledger.conn.execute(
        "SELECT status, pem FROM certificates WHERE serial = ?", (issued.serial,)
    ).fetchone()
    assert row["status"] == "valid" and row["pem"] == result.bundle.certificate
    assert result.private_key is not None
    assert result.private_key.public_key() == issued.certificate.public_key()


def test_issue_refuses_an_existing_output_before_unlocking(home: CaHome, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "cert.pem").write_text("someone else's")
    secrets = Secrets(INTER_PASS)
    before = _count(home)
    with (
        Authority.open(home, secrets=secrets, unlock=False) as ca,
        pytest.raises(ConflictError),
    ):
        ca.issue(IssueRequest(_agent(), out_dir=out))
    assert secrets.asked == 0 and _count(home) == before
    assert (out / "cert.pem").read_text() == "someone else's"


def test_dry_run_unlocks_nothing_and_records_nothing(home: CaHome) -> None:
    secrets = Secrets("never asked")
    events = _count(home, "SELECT count(*) FROM events")
    with Authority.open(home, secrets=secrets, unlock=False) as ca:
        answer = ca.dry_run(_agent("recon", ttl="2h"))
        assert answer.issuer == "test-inter" and answer.plan.ttl == timedelta(hours=2)
        assert answer.decision.allowed_by and answer.key_type == "p256"
        with pytest.raises(PolicyDenied):
            ca.dry_run(_agent("recon", ttl="30d"))  # above the agent profile's maximum
    assert secrets.asked == 0
    assert _count(home, "SELECT count(*) FROM events") == events


def test_a_refused_issue_is_recorded_and_signs_nothing(opened: Callable[..., Authority]) -> None:
    ca = opened()
    certificates = _count(ca.home)
    with pytest.raises(PolicyDenied):
        ca.issue(IssueRequest(_agent("recon", ttl="30d")))
    assert _count(ca.home) == certificates
    assert _count(ca.home, "SELECT count(*) FROM events WHERE type = 'policy.denied'") == 1


def test_open_with_a_wrong_passphrase_fails_and_is_recorded(home: CaHome) -> None:
    with pytest.raises(SecretError):
        Authority.open(home, secrets=Secrets("wrong"), unlock=True)
    assert _count(home, "SELECT count(*) FROM events WHERE type = 'key.unlock_failed'") == 1


def test_unknown_profile_and_issuer(opened: Callable[..., Authority]) -> None:
    ca = opened(unlock=False)
    with pytest.raises(NotFoundError, match="unknown profile"):
        ca.issue(IssueRequest(LeafOrder(profile="nope", common_name="x")))
    with pytest.raises(NotFoundError):
        opened(issuer="no-such-ca")


def test_renewal_due_decision(opened: Callable[..., Authority]) -> None:
    ca = opened()
    issued = ca.issue(IssueRequest(_agent(ttl="3h"))).issued
    target = CertificateTarget(serial=issued.serial)
    now = ca.check_renewal(RenewalCheckRequest(target))
    assert not now.due and now.status == "valid"
    # Due at 2/3 of the lifetime (notBefore is backdated 60 s; the lifetime is 3 h).
    assert now.due_at == issued.not_before + timedelta(hours=2)
    later = ca.check_renewal(RenewalCheckRequest(target, at=now.due_at))
    early = ca.check_renewal(RenewalCheckRequest(target, at=now.due_at - timedelta(seconds=1)))
    assert later.due and not early.due
    half = ca.check_renewal(RenewalCheckRequest(target, due_fraction=0.5, at=now.due_at))
    assert half.due
    with pytest.raises(UsageError):
        ca.check_renewal(RenewalCheckRequest(target, due_fraction=float("nan")))
    ca.revoke(RevokeRequest(target, "key-compromise"))
    assert ca.check_renewal(RenewalCheckRequest(target)).due  # revoked: due at once


def test_renew_supersedes_and_only_once(opened: Callable[..., Authority], tmp_path: Path) -> None:
    ca = opened()
    first = ca.issue(IssueRequest(_agent("renewing", instance="r1"))).issued
    by_bytes = CertificateTarget(certificate=first.certificate.public_bytes(Encoding.PEM))
    renewed = ca.renew(RenewRequest(by_bytes, reuse_key=True, out_dir=tmp_path / "r"))
    assert renewed.replaces == first.serial and renewed.private_key is None
    assert renewed.issued.spiffe_id == first.spiffe_id
    assert renewed.issued.certificate.public_key() == first.certificate.public_key()
    status = ca.ledger.conn.execute(
        "SELECT status FROM certificates WHERE serial = ?", (first.serial,)
    ).fetchone()[0]
    assert status == "superseded"
    with pytest.raises(ConflictError, match="already renewed"):
        ca.renew(RenewRequest(CertificateTarget(serial=first.serial)))
    with pytest.raises(UsageError):
        ca.renew(RenewRequest(CertificateTarget(serial=first.serial), reuse_key=True, csr_pem=b"x"))
    with pytest.raises(UsageError):
        ca.renew(RenewRequest(CertificateTarget()))


def test_revoke_then_crl_lists_it(opened: Callable[..., Authority]) -> None:
    ca = opened()
    issued = ca.issue(IssueRequest(_agent())).issued
    with pytest.raises(InvalidInputError):
        RevokeRequest(CertificateTarget(serial=issued.serial), "because")
    revocation = ca.revoke(RevokeRequest(CertificateTarget(serial=issued.serial), "superseded"))
    assert revocation.serial == issued.serial and revocation.reason == "superseded"
    with pytest.raises(ConflictError, match="already revoked"):
        ca.revoke(RevokeRequest(CertificateTarget(serial=issued.serial)))
    first = ca.crl(CrlRequest())
    second = ca.crl(CrlRequest(validity=timedelta(hours=2)))
    assert (first.published.number, second.published.number) == (1, 2)
    assert first.published.entries == 1
    # The default validity is decided here: 24 hours for an intermediate.
    span = first.published.next_update - first.published.this_update
    assert span == timedelta(hours=24)
    assert second.published.next_update - second.published.this_update == timedelta(hours=2)
    assert second.path == ca.home.crls_dir / "test-inter.crl.pem"
    stored = x509.load_pem_x509_crl(second.path.read_bytes())
    assert stored.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert stored.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)


def test_root_crl_defaults_to_thirty_days(opened: Callable[..., Authority]) -> None:
    ca = opened(issuer="test-root", secret=ROOT_PASS)
    published = ca.crl(CrlRequest()).published
    assert published.next_update - published.this_update == timedelta(days=30)


def test_checkpoint_verifies_against_the_pinned_root(
    opened: Callable[..., Authority], fresh_hierarchy: Hierarchy
) -> None:
    ca = opened()
    ca.issue(IssueRequest(_agent()))
    document = ca.checkpoint().document
    head = ca.ledger.conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    assert document["seq"] == head - 1  # the checkpoint's own event follows it
    anchor = load_anchor(str(fresh_hierarchy.root_cert), None)
    result = verify_ledger(
        ca.ledger.conn, [("cp", json.loads(json.dumps(document)))], anchor=anchor
    )
    assert result.ok, result.problems
    assert result.to_json()["checkpoint_signatures_verified"]


def test_concurrent_issue_from_threads(opened: Callable[..., Authority]) -> None:
    """N threads x M certificates on ONE Authority: every certificate recorded once, serials
    unique, the hash chain and every table verify."""
    ca = opened()
    threads, each = 6, 8
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            start.wait()
            for m in range(each):
                issued = ca.issue(IssueRequest(_agent(f"w{n}", instance=f"i{m}"))).issued
                with lock:
                    results.append(issued.serial)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert len(results) == len(set(results)) == threads * each
    conn = ca.ledger.conn
    recorded = {
        r[0] for r in conn.execute("SELECT serial FROM certificates WHERE profile = 'agent'")
    }
    assert recorded == set(results)
    issued_events = conn.execute(
        "SELECT count(*) FROM events WHERE type = 'certificate.issued'"
    ).fetchone()[0]
    assert issued_events == threads * each
    assert audit_problems(ca.home) == []


def test_close_ends_every_thread_connection(home: CaHome) -> None:
    ca = Authority.open(home, secrets=Secrets(INTER_PASS), unlock=False)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(ca.ledger))
    thread.start()
    thread.join()
    assert seen[0] is not ca.ledger  # one connection per thread
    ca.close()
    for ledger in (seen[0], ca.ledger):
        with pytest.raises(sqlite3.ProgrammingError):
            ledger.conn.execute("SELECT 1")
    refused: list[BaseException] = []

    def late() -> None:
        try:
            ca.ledger  # noqa: B018
        except UsageError as exc:
            refused.append(exc)

    thread = threading.Thread(target=late)
    thread.start()
    thread.join()
    assert refused and "closed" in str(refused[0])


def test_an_issuer_revoked_while_open_stops_signing(
    opened: Callable[..., Authority], fresh_hierarchy: Hierarchy
) -> None:
    """A long-lived authority (a server) must not keep signing with an intermediate that
    another process revoked after it was opened: the refusal is exit 5, recorded."""
    ca = opened()
    ca.issue(IssueRequest(_agent("before")))
    other = opened(unlock=False)
    intermediate = fresh_hierarchy.inter_cert.read_bytes()
    other.revoke(RevokeRequest(CertificateTarget(certificate=intermediate), "ca-compromise"))
    certificates = _count(ca.home)
    with pytest.raises(PolicyDenied, match="revoked"):
        ca.issue(IssueRequest(_agent("after")))
    assert _count(ca.home) == certificates
    denied = "SELECT count(*) FROM events WHERE type = 'policy.denied'"
    assert _count(ca.home, denied) == 1
