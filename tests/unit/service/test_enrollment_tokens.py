"""Enrollment by one-time token, called on the use-case API: a real hierarchy, a real
SQLite ledger, real keys and CSRs. Each test attacks one promise: the secret is never
stored, the token's binding (not the CSR) decides the identity, every refusal names its
rule and is recorded, and a token can never pay for two certificates -- not even under
20 concurrent replays from threads of one Authority, nor from several processes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from cryptography import x509

from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, AgentClaims, decode_agent_claims
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import (
    ConflictError,
    CyphrsError,
    InvalidInputError,
    NotFoundError,
    PolicyDenied,
    UsageError,
)
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from cyphrs_cli.service.tokens import TokenSpec
from tests.enrollment_helpers import audit_problems, count, events, make_csr, run_replayers


def _claims(cert: x509.Certificate) -> AgentClaims:
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(AGENT_CLAIMS_OID))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return decode_agent_claims(ext.value.value)


def _token(ca: Authority, **kw: object) -> str:
    spec = TokenSpec(**{"workflow": "payments-recon", "permissions": ("ledger:read",), **kw})  # type: ignore[arg-type]
    return ca.create_token(spec).token


def _refused(ca: Authority, request: EnrollRequest) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as caught:
        ca.enroll(request)
    return caught.value


def test_token_is_256_bits_shown_once_and_stored_hashed(ca: Authority, home: CaHome) -> None:
    created = ca.create_token(TokenSpec(workflow="payments-recon", requester="alice"))
    token = created.token
    assert token.startswith("cyphrs_tok_") and len(token) == len("cyphrs_tok_") + 43
    assert created.token not in repr(created)
    body = token.removeprefix("cyphrs_tok_")
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # The secret is nowhere in the ledger files (database, WAL), only its SHA-256.
    for path in home.root.glob("ledger.sqlite3*"):
        assert body.encode() not in path.read_bytes()
    import hashlib

    digest = hashlib.sha256(token.encode()).hexdigest()
    assert count(home, "SELECT count(*) FROM tokens WHERE secret_sha256 = ?", digest) == 1
    assert events(home, "token.created", f"%{created.token_id}%") == 1
    assert ca.create_token(TokenSpec(workflow="w")).token != token


def test_enroll_issues_the_tokens_identity_for_the_csr_key(ca: Authority, home: CaHome) -> None:
    token = _token(ca, max_ttl=timedelta(hours=1))
    csr, key = make_csr(common_name="ignored-subject")
    result = ca.enroll(EnrollRequest(csr_pem=csr, token=token, instance="i-1"))
    cert = result.issued.certificate
    assert result.private_key is None
    assert cert.public_key() == key.public_key()
    assert result.issued.spiffe_id == "spiffe://acme.internal/agent/payments-recon/i-1"
    assert cert.subject == x509.Name([])  # the CSR's subject is ignored
    claims = _claims(cert)
    assert claims.workflow == "payments-recon"
    assert claims.permissions == ("ledger:read",)
    # TTL: the profile default (4h) capped by the token's max (1h).
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=1, seconds=-1)
    serial = result.issued.serial
    assert events(home, "token.used", f'%"serial":"{serial}"%') == 1
    assert count(home, "SELECT uses FROM tokens") == 1
    row_requester = ca.ledger.conn.execute(
        "SELECT requester FROM certificates WHERE serial = ?", (serial,)
    ).fetchone()[0]
    assert row_requester.startswith("token:tok_")
    assert audit_problems(home) == []


def test_a_used_token_is_refused_and_recorded(ca: Authority, home: CaHome) -> None:
    token = _token(ca)
    ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token))
    before = count(home, "SELECT count(*) FROM certificates")
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token))
    assert refused.rule == "token.used" and refused.exit_code == 5
    assert count(home, "SELECT count(*) FROM certificates") == before
    assert events(home, "token.refused", '%"rule":"token.used"%') == 1
    assert audit_problems(home) == []


@pytest.mark.parametrize(
    "token",
    ["cyphrs_tok_" + "A" * 43, "cyphrs_tok_short", "", "x" * 5000, "cyphrs_tok_" + "é" * 43],
)
def test_unknown_or_malformed_tokens_are_refused_and_recorded(
    ca: Authority, home: CaHome, token: str
) -> None:
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token))
    assert refused.rule == "token.unknown"
    assert events(home, "token.refused", '%"rule":"token.unknown"%') == 1
    # The presented string is never written to the ledger.
    if len(token) > 20:
        assert count(home, "SELECT count(*) FROM events WHERE details LIKE ?", f"%{token}%") == 0


def test_an_expired_token_is_refused_with_rule_token_expired(ca: Authority, home: CaHome) -> None:
    token = _token(ca, ttl=timedelta(seconds=1))
    time.sleep(2.1)
    assert _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token)).rule == "token.expired"
    assert events(home, "token.refused", '%"rule":"token.expired"%') == 1
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'") == 0
    assert [t.status(t.expires_at) for t in ca.list_tokens(include_inactive=True)] == ["expired"]
    assert ca.list_tokens() == []


def test_a_revoked_token_is_refused(ca: Authority, home: CaHome) -> None:
    created = ca.create_token(TokenSpec(workflow="w", uses=5))
    revoked = ca.revoke_token(created.token_id)
    assert revoked.revoked_at is not None
    with pytest.raises(ConflictError):
        ca.revoke_token(created.token_id)
    with pytest.raises(NotFoundError):
        ca.revoke_token("tok_0000000000000000")
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=created.token))
    assert refused.rule == "token.revoked"
    assert events(home, "token.revoked") == 1
    assert events(home, "token.refused", '%"rule":"token.revoked"%') == 1


def test_another_trust_domain_is_refused(ca: Authority, home: CaHome) -> None:
    token = _token(ca, trust_domain="other.example")
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token))
    assert refused.rule == "token.trust_domain"
    csr = make_csr(x509.UniformResourceIdentifier("spiffe://other.example/agent/payments-recon/i"))
    refused = _refused(ca, EnrollRequest(csr_pem=csr[0], token=_token(ca)))
    assert refused.rule == "token.trust_domain"
    assert events(home, "token.refused", '%"rule":"token.trust_domain"%') == 2


def test_ttl_over_the_tokens_max_is_refused(ca: Authority, home: CaHome) -> None:
    token = _token(ca, max_ttl=timedelta(hours=1))
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token, ttl="2h"))
    assert refused.rule == "token.ttl"
    # Refusals spend nothing: the token still works within its bound.
    result = ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token, ttl="30m"))
    lifetime = result.issued.not_after - result.issued.not_before
    assert lifetime == timedelta(minutes=30, seconds=-1)


def test_a_profile_denial_is_recorded_twice_and_spends_nothing(ca: Authority, home: CaHome) -> None:
    token = _token(ca)  # no token max: the profile (agent, 24h max) bounds it
    refused = _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token, ttl="48h"))
    assert refused.rule.startswith("agent.")
    assert events(home, "policy.denied", f'%"rule":"{refused.rule}"%') == 1
    assert events(home, "token.refused", f'%"rule":"{refused.rule}"%') == 1
    assert count(home, "SELECT uses FROM tokens") == 0


@pytest.mark.parametrize(
    ("sans", "extra", "rule"),
    [
        ((x509.DNSName("evil.example"),), {}, "token.names"),
        (
            (
                x509.UniformResourceIdentifier("spiffe://acme.internal/agent/payments-recon/a"),
                x509.DNSName("x.example"),
            ),
            {},
            "token.names",
        ),
        ((x509.UniformResourceIdentifier("https://example.com/"),), {}, "token.names"),
        (
            (x509.UniformResourceIdentifier("spiffe://acme.internal/agent/admin/a"),),
            {},
            "token.workflow",
        ),
        ((), {"workflow": "admin"}, "token.workflow"),
        ((), {"permissions": ("ledger:write",)}, "token.permission"),
        (
            (x509.UniformResourceIdentifier("spiffe://acme.internal/agent/payments-recon/a"),),
            {"instance": "b"},
            "token.names",
        ),
    ],
)
def test_the_csr_and_request_cannot_widen_the_grant(
    ca: Authority,
    home: CaHome,
    sans: tuple[x509.GeneralName, ...],
    extra: dict[str, object],
    rule: str,
) -> None:
    token = _token(ca)
    request = EnrollRequest(csr_pem=make_csr(*sans)[0], token=token, **extra)  # type: ignore[arg-type]
    assert _refused(ca, request).rule == rule
    assert events(home, "token.refused", f'%"rule":"{rule}"%') == 1
    assert count(home, "SELECT uses FROM tokens") == 0


def test_the_request_may_narrow_the_grant(ca: Authority) -> None:
    token = _token(ca, permissions=("ledger:read", "ledger:list"))
    csr, _ = make_csr(
        x509.UniformResourceIdentifier("spiffe://acme.internal/agent/payments-recon/n1")
    )
    result = ca.enroll(
        EnrollRequest(
            csr_pem=csr, token=token, workflow="payments-recon", permissions=("ledger:list",)
        )
    )
    assert result.issued.spiffe_id == "spiffe://acme.internal/agent/payments-recon/n1"
    claims = _claims(result.issued.certificate)
    assert claims.permissions == ("ledger:list",)


def test_a_csr_whose_signature_fails_is_bad_input(ca: Authority, home: CaHome) -> None:
    from cryptography.hazmat.primitives import serialization

    pem, _ = make_csr()
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    token = _token(ca)
    with pytest.raises(InvalidInputError):
        ca.enroll(EnrollRequest(csr_pem=bytes(der), token=token))
    assert count(home, "SELECT uses FROM tokens") == 0


def test_exactly_one_credential(ca: Authority) -> None:
    with pytest.raises(UsageError):
        ca.enroll(EnrollRequest(csr_pem=make_csr()[0]))
    with pytest.raises(UsageError):
        ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token="a", jwt="b"))


def test_a_multi_use_token_pays_for_exactly_its_uses(ca: Authority, home: CaHome) -> None:
    token = _token(ca, uses=3)
    serials = [
        ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token)).issued.serial for _ in range(3)
    ]
    assert len(set(serials)) == 3
    assert _refused(ca, EnrollRequest(csr_pem=make_csr()[0], token=token)).rule == "token.used"
    assert events(home, "token.used") == 3
    (info,) = ca.list_tokens(include_inactive=True)
    assert (info.uses, info.uses_allowed, info.status(info.created_at)) == (3, 3, "used")


def test_token_create_refuses_what_could_never_issue(ca: Authority, home: CaHome) -> None:
    before = count(home, "SELECT count(*) FROM events")
    with pytest.raises(UsageError):
        ca.create_token(TokenSpec(workflow="w", uses=0))
    # Not a whole-number int: the row's INTEGER column and the event would differ.
    for not_an_int in (1.0, True, "1"):
        with pytest.raises(UsageError):
            ca.create_token(TokenSpec(workflow="w", uses=not_an_int))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ca.create_token(TokenSpec(workflow="w", ttl=timedelta(days=31)))
    with pytest.raises(UsageError):
        ca.create_token(TokenSpec())  # no workflow
    with pytest.raises(NotFoundError):
        ca.create_token(TokenSpec(workflow="w", profile="nope"))
    with pytest.raises(PolicyDenied):
        ca.create_token(TokenSpec(workflow="w", max_ttl=timedelta(days=2)))  # agent max 24h
    with pytest.raises(InvalidInputError):
        ca.create_token(TokenSpec(workflow="bad/name"))
    assert count(home, "SELECT count(*) FROM events") == before
    assert count(home, "SELECT count(*) FROM tokens") == 0


def test_twenty_concurrent_replays_from_threads_issue_exactly_once(
    ca: Authority, home: CaHome
) -> None:
    token = _token(ca)
    csrs = [make_csr()[0] for _ in range(20)]
    ca.issuer  # noqa: B018 -- unlock before the race so every thread races on the token
    barrier = threading.Barrier(20)
    outcomes: list[object] = [None] * 20

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = ca.enroll(
                EnrollRequest(csr_pem=csrs[index], token=token)
            ).issued.serial
        except CyphrsError as error:
            outcomes[index] = error

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    issued = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, PolicyDenied)]
    assert len(issued) == 1, outcomes
    assert len(refused) == 19 and {r.rule for r in refused} == {"token.used"}
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'") == 1
    assert events(home, "token.used") == 1
    assert events(home, "token.refused", '%"rule":"token.used"%') == 19
    assert count(home, "SELECT uses FROM tokens") == 1
    assert audit_problems(home) == []


_REPLAYER = """
import json, sys, threading
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from tests.enrollment_helpers import make_csr

home, go = sys.argv[1], sys.argv[2]
token = sys.stdin.readline().strip()
passphrase = sys.stdin.readline().strip()
out = []
with Authority.open(CaHome(__import__("pathlib").Path(home)), secrets=lambda p: passphrase.encode()) as ca:
    csrs = [make_csr()[0] for _ in range(5)]
    print("ready", flush=True)
    import os, time
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.01)
    def one(csr):
        try:
            out.append(["issued", ca.enroll(EnrollRequest(csr_pem=csr, token=token)).issued.serial])
        except CyphrsError as e:
            out.append(["refused", getattr(e, "rule", e.slug)])
    threads = [threading.Thread(target=one, args=(c,)) for c in csrs]
    [t.start() for t in threads]
    [t.join() for t in threads]
print(json.dumps(out))
"""


def test_concurrent_replays_from_several_processes_issue_exactly_once(
    ca: Authority, home: CaHome, tmp_path: object
) -> None:
    from pathlib import Path

    token = _token(ca)
    results = run_replayers(_REPLAYER, home, token, 4, Path(str(tmp_path)) / "go")
    assert len(results) == 20
    assert [r for r in results if r[0] == "issued"].__len__() == 1, results
    assert sorted({r[1] for r in results if r[0] == "refused"}) == ["token.used"]
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'") == 1
    assert events(home, "token.used") == 1
    assert events(home, "token.refused", '%"rule":"token.used"%') == 19
    assert audit_problems(home) == []


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("UPDATE tokens SET uses = 0", "use(s) but 1 token.used"),
        ("UPDATE tokens SET uses_allowed = 5", "does not match its token.created"),
        ("UPDATE tokens SET workflow = 'admin'", "does not match its token.created"),
        ("UPDATE tokens SET expires_at = '2099-01-01T00:00:00Z'", "does not match"),
        ("UPDATE tokens SET revoked_at = '2026-01-01T00:00:00Z'", "revocation differs"),
        ("DELETE FROM tokens", "is missing"),
    ],
)
def test_audit_verify_catches_edited_token_rows(
    ca: Authority, home: CaHome, edit: str, problem: str
) -> None:
    """Resetting a token's use counter would make it replayable: the chain says otherwise."""
    import sqlite3

    token = _token(ca, uses=1)
    ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token))
    assert audit_problems(home) == []
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute(edit)
    problems = audit_problems(home)
    assert any(problem in p for p in problems), problems


def test_one_token_twice_in_one_group_commit_pays_once(ca: Authority, home: CaHome) -> None:
    """The server's group committer puts concurrent enrollments into one transaction: two
    uses of a one-use token in the same group still buy one certificate."""
    from cyphrs_cli.ca.issuance import issue_leaves
    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.service.enrollment import _leaf_request, token_grant
    from cyphrs_cli.service.tokens import CredentialRefused

    token = _token(ca)
    entries, hooks = [], []
    for _ in range(3):
        grant = token_grant(ca, token)  # the early check passes for every one
        request = EnrollRequest(csr_pem=make_csr()[0], token=token)
        from cyphrs_cli.ca.parsing import load_csr

        profile, leaf = _leaf_request(ca, grant, request, load_csr(request.csr_pem, source="CSR"))
        entries.append((profile, leaf))
        hooks.append(grant.spend)
    results = issue_leaves(ca.ledger, ca.issuer, entries, after_record=hooks)
    assert isinstance(results[0], IssuedCertificate)
    assert all(isinstance(r, CredentialRefused) and r.rule == "token.used" for r in results[1:])
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'") == 1
    assert events(home, "token.used") == 1
    assert audit_problems(home) == []
