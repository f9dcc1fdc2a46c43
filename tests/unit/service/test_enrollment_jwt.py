"""Enrollment by a provisioner's JWT (CI OIDC tokens), on the use-case API: real keys
(RSA, P-256, Ed25519), real signatures by PyJWT, a JWKS from a file and from a real
loopback HTTP server process (``python -m http.server``, killed by its PID). Each test
attacks one promise: only a JWT signed by a known key, for our audience, from the
configured issuer, unexpired, with an allowed algorithm and the required claims enrolls,
once; every refusal names its rule and is recorded; the provisioner is trust state that
an edited ledger row cannot change."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.config.trust import TrustStateMismatch
from cyphrs_cli.errors import ConflictError, CyphrsError, NotFoundError, PolicyDenied, UsageError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from cyphrs_cli.service.provisioners import ProvisionerSpec
from tests.enrollment_helpers import audit_problems, count, events, make_csr
from tests.processes import free_port, stop_process

ISSUER = "https://token.actions.example.com"
AUDIENCE = "https://ca.acme.internal"


class Signer:
    """A private key with its JWK (public) under ``kid``."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kid = kid
        if kind == "RS256":
            self.key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        elif kind == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.alg = kind
        self.jwk = {**jwk, "kid": kid, "alg": kind, "use": "sig"}

    def sign(
        self, claims: dict[str, Any], *, kid: str | None = None, alg: str | None = None
    ) -> str:
        return jwt.encode(
            claims, self.key, algorithm=alg or self.alg, headers={"kid": kid or self.kid}
        )


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "repo:acme/payments:ref:refs/heads/main",
        "repository": "acme/payments",
        "workflow_name": "payments-recon",
        "run_id": f"r{time.time_ns()}",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"jti-{time.time_ns()}",
        **extra,
    }


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg, f"k-{alg.lower()}") for alg in ("RS256", "ES256", "EdDSA")}


def _spec(jwks: dict[str, Any] | None = None, **kw: Any) -> ProvisionerSpec:
    base: dict[str, Any] = {
        "name": "github",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks": jwks,
        "workflow_claim": "workflow_name",
        "permissions": ("ledger:read",),
        "permissions_claim": "scope",
        "instance_claim": "run_id",
        "required_claims": (("repository", "acme/payments"),),
    }
    base.update(kw)
    return ProvisionerSpec(**base)


@pytest.fixture
def provisioned(ca: Authority, signers: dict[str, Signer]) -> Authority:
    ca.set_provisioner(_spec({"keys": [s.jwk for s in signers.values()]}))
    return ca


def _enroll(ca: Authority, token: str, **kw: Any) -> Any:
    return ca.enroll(EnrollRequest(csr_pem=make_csr()[0], jwt=token, **kw))


def _rule(ca: Authority, token: str) -> str:
    with pytest.raises(PolicyDenied) as caught:
        _enroll(ca, token)
    return caught.value.rule


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_valid_jwt_enrolls_once_with_its_mapped_identity(
    provisioned: Authority, home: CaHome, signers: dict[str, Signer], alg: str
) -> None:
    token = signers[alg].sign(claims(scope="ledger:list", run_id="run42"))
    result = _enroll(provisioned, token)
    assert result.issued.spiffe_id == "spiffe://acme.internal/agent/payments-recon/run42"
    requester = provisioned.ledger.conn.execute(
        "SELECT requester, permissions FROM certificates WHERE serial = ?", (result.issued.serial,)
    ).fetchone()
    assert requester[0] == "jwt:github:repo:acme/payments:ref:refs/heads/main"
    assert json.loads(requester[1]) == ["ledger:read", "ledger:list"]
    assert events(home, "jwt.used", f"%{result.issued.serial}%") == 1
    # Replay: the same JWT again, refused and recorded.
    assert _rule(provisioned, token) == "jwt.replay"
    assert events(home, "jwt.refused", '%"rule":"jwt.replay"%') == 1
    assert audit_problems(home) == []


def test_without_jti_the_jwts_hash_makes_it_one_time(
    provisioned: Authority, signers: dict[str, Signer]
) -> None:
    body = claims()
    del body["jti"]
    token = signers["ES256"].sign(body)
    _enroll(provisioned, token)
    assert _rule(provisioned, token) == "jwt.replay"


#: P-256's group order: (r, n - s) is a second valid ECDSA signature for (r, s).
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    ("alg", "respell"),
    [
        ("RS256", lambda h, p, sig: f"{h}.{p}.{sig}=="),  # padding PyJWT accepts
        ("ES256", lambda h, p, sig: f"{h}.{p}.{sig}=="),
        (
            "ES256",  # the other valid ECDSA signature of the same signing input
            lambda h, p, sig: f"{h}.{p}."
            + _b64(
                _unb64(sig)[:32]
                + (_P256_ORDER - int.from_bytes(_unb64(sig)[32:], "big")).to_bytes(32, "big")
            ),
        ),
    ],
    ids=["rs256-padded", "es256-padded", "es256-n-minus-s"],
)
def test_without_jti_another_spelling_of_the_same_jwt_is_a_replay(
    provisioned: Authority,
    home: CaHome,
    signers: dict[str, Signer],
    alg: str,
    respell: Callable[[str, str, str], str],
) -> None:
    """Without a ``jti`` the JWT is known by what its signature covers (header.payload as
    sent). Keyed by its whole text, the same JWT enrolled again under a second spelling
    that still verifies: padding on the signature, or ECDSA's (r, n - s)."""
    body = claims()
    del body["jti"]
    token = signers[alg].sign(body)
    header, payload, signature = token.split(".")
    other = respell(header, payload, signature)
    assert other != token
    jwt.decode(  # the second spelling does verify
        other,
        signers[alg].key.public_key(),
        algorithms=[alg],
        audience=AUDIENCE,
        options={"verify_exp": False},
    )
    _enroll(provisioned, token)
    assert _rule(provisioned, other) == "jwt.replay"
    assert events(home, "jwt.used", "%") == 1


def test_a_use_recorded_under_the_older_key_is_still_a_replay(
    provisioned: Authority, signers: dict[str, Signer]
) -> None:
    """Uses recorded before the replay key became the signing input's hash were keyed by
    the whole text's: a JWT used then is still refused after the upgrade."""
    body = claims()
    del body["jti"]
    token = signers["ES256"].sign(body)
    conn = provisioned.ledger.conn
    conn.execute(
        "INSERT INTO jwt_uses (provisioner, jti, expires_at, serial, used_at)"
        " VALUES ('github', ?, '2099-01-01T00:00:00Z', 'aa', '2026-01-01T00:00:00Z')",
        ("sha256:" + hashlib.sha256(token.encode()).hexdigest(),),
    )
    assert _rule(provisioned, token) == "jwt.replay"


def test_an_exp_beyond_what_a_date_holds_is_refused_not_a_crash(
    provisioned: Authority, signers: dict[str, Signer]
) -> None:
    for exp in (10**15, 10**30):
        assert _rule(provisioned, signers["ES256"].sign(claims(exp=exp))) == "jwt.claims"


def test_refusals_name_their_rule_and_are_recorded(
    provisioned: Authority, home: CaHome, signers: dict[str, Signer]
) -> None:
    es = signers["ES256"]
    impostor = Signer("ES256", es.kid)  # same kid, another key
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"k-es256"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    alg_none = (header + b"." + payload + b".").decode()
    # HS256 "signed" with the public key as the HMAC secret (the classic confusion).
    public_pem = es.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT","kid":"k-es256"}').rstrip(
        b"="
    )
    mac = hmac.new(public_pem, hs_header + b"." + payload, hashlib.sha256).digest()
    hs256 = (
        hs_header + b"." + payload + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")
    ).decode()
    now = int(time.time())
    cases = {
        "jwt.signature": impostor.sign(claims()),
        "jwt.audience": es.sign(claims(aud="https://other.example")),
        "jwt.expired": es.sign(claims(exp=now - 120, iat=now - 600, nbf=now - 600)),
        "jwt.not-yet-valid": es.sign(claims(nbf=now + 600, iat=now, exp=now + 900)),
        "jwt.unknown-key": es.sign(claims(), kid="k-unknown"),
        "jwt.issuer": es.sign(claims(iss="https://evil.example")),
        "jwt.claims": es.sign(claims(repository="evil/fork")),
        "jwt.malformed": "not.a.jwt",
    }
    for rule, token in cases.items():
        assert _rule(provisioned, token) == rule, rule
        assert events(home, "jwt.refused", f'%"rule":"{rule}"%') == 1, rule
    for token in (alg_none, hs256):
        assert _rule(provisioned, token) == "jwt.algorithm"
    assert events(home, "jwt.refused", '%"rule":"jwt.algorithm"%') == 2
    # A key of one type cannot verify a header claiming another algorithm.
    assert _rule(provisioned, es.sign(claims(), kid="k-rs256")) == "jwt.algorithm"
    # Missing exp / a workflow claim that is not a plain name.
    body = claims()
    del body["exp"]
    assert _rule(provisioned, es.sign(body)) == "jwt.claims"
    assert _rule(provisioned, es.sign(claims(workflow_name="../admin"))) == "jwt.claims"
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'jwt:%'") == 0
    assert count(home, "SELECT count(*) FROM jwt_uses") == 0
    assert audit_problems(home) == []


def test_ttl_over_the_provisioners_max_is_refused(
    ca: Authority, signers: dict[str, Signer]
) -> None:
    from datetime import timedelta

    ca.set_provisioner(_spec({"keys": [signers["ES256"].jwk]}, max_ttl=timedelta(hours=1)))
    with pytest.raises(PolicyDenied) as caught:
        _enroll(ca, signers["ES256"].sign(claims()), ttl="2h")
    assert caught.value.rule == "jwt.ttl"


@pytest.mark.parametrize("instance_claim", ["run_id", None])
def test_ten_concurrent_replays_of_one_jwt_issue_once(
    ca: Authority, home: CaHome, signers: dict[str, Signer], instance_claim: str | None
) -> None:
    """With ``run_id`` every racer names one instance; without, each gets a random one and
    only the ``jti`` recorded in the issuance's transaction stops the losers."""
    provisioned = ca
    ca.set_provisioner(_spec({"keys": [signers["EdDSA"].jwk]}, instance_claim=instance_claim))
    token = signers["EdDSA"].sign(claims())
    provisioned.issuer  # noqa: B018
    barrier = threading.Barrier(10)
    outcomes: list[object] = []
    lock = threading.Lock()

    def attempt() -> None:
        csr = make_csr()[0]
        barrier.wait()
        try:
            outcome: object = provisioned.enroll(
                EnrollRequest(csr_pem=csr, jwt=token)
            ).issued.serial
        except CyphrsError as error:
            outcome = error
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len([o for o in outcomes if isinstance(o, str)]) == 1, outcomes
    refused = [o for o in outcomes if isinstance(o, PolicyDenied)]
    # Losers refused either by the early look-up or under the write lock: same rule.
    assert len(refused) == 9 and {r.rule for r in refused} == {"jwt.replay"}
    # All ten name one instance (run_id): a loser that meets the winner's certificate
    # (a conflict) is still told, and recorded, that the JWT was replayed.
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'jwt:%'") == 1
    assert audit_problems(home) == []


def test_an_edited_provisioner_row_verifies_nothing(
    provisioned: Authority, home: CaHome, signers: dict[str, Signer]
) -> None:
    with sqlite3.connect(home.ledger_path) as conn:
        config = json.loads(conn.execute("SELECT config FROM provisioners").fetchone()[0])
        config["required_claims"] = {}
        conn.execute("UPDATE provisioners SET config = ?", (json.dumps(config),))
    with pytest.raises(TrustStateMismatch):
        _enroll(provisioned, signers["ES256"].sign(claims(repository="evil/fork")))
    with pytest.raises(TrustStateMismatch):
        provisioned.list_provisioners()


def test_provisioner_configuration_is_checked_and_recorded(
    ca: Authority, home: CaHome, signers: dict[str, Signer]
) -> None:
    jwks = {"keys": [signers["ES256"].jwk]}
    for bad in (
        {"algorithms": ("HS256",)},
        {"algorithms": ("none",)},
        {"algorithms": ()},
        {"jwks": None, "jwks_url": "http://jwks.example/keys"},
        {"jwks_url": "https://x/keys"},  # both
        {"workflow": "fixed"},  # workflow and workflow_claim
        {"audience": ""},
    ):
        with pytest.raises((UsageError, CyphrsError)):
            ca.set_provisioner(_spec(**{"jwks": jwks, **bad}))
    with pytest.raises(CyphrsError):
        ca.set_provisioner(_spec({"keys": [{"kty": "nope"}]}))
    assert count(home, "SELECT count(*) FROM provisioners") == 0
    assert ca.set_provisioner(_spec(jwks)) is True
    assert ca.set_provisioner(_spec(jwks)) is False  # unchanged: no event
    with pytest.raises(ConflictError):
        ca.set_provisioner(_spec(jwks, audience="other"))
    assert ca.set_provisioner(_spec(jwks, audience="other"), replace=True) is True
    with pytest.raises(ConflictError):  # same issuer and audience under another name
        ca.set_provisioner(_spec(jwks, name="gh2", audience="other"))
    assert [p.audience for p in ca.list_provisioners()] == ["other"]
    assert events(home, "provisioner.set") == 2
    ca.remove_provisioner("github")
    with pytest.raises(NotFoundError):
        ca.remove_provisioner("github")
    assert events(home, "provisioner.removed") == 1
    # Removed: its JWTs are refused.
    assert _rule(ca, signers["ES256"].sign(claims(aud="other"))) == "jwt.issuer"
    assert audit_problems(home) == []


# -- a JWKS served over HTTP by a real server process -------------------------------------


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """``python -m http.server`` on 127.0.0.1 serving ``jwks.json``; stopped by PID."""
    root = tmp_path / "www"
    root.mkdir()

    def publish(document: dict[str, Any]) -> None:
        (root / "jwks.json").write_text(json.dumps(document))

    publish({"keys": []})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url, publish
    finally:
        stop_process(proc)


def test_a_jwks_url_is_fetched_and_checked(
    ca: Authority, home: CaHome, signers: dict[str, Signer], jwks_server: tuple[str, Any]
) -> None:
    url, publish = jwks_server
    publish({"keys": [signers["RS256"].jwk, signers["EdDSA"].jwk]})
    ca.set_provisioner(_spec(None, jwks_url=url))
    for alg in ("RS256", "EdDSA"):
        assert _enroll(ca, signers[alg].sign(claims())).issued.serial
    impostor = Signer("RS256", "k-rs256")
    assert _rule(ca, impostor.sign(claims())) == "jwt.signature"
    assert _rule(ca, signers["ES256"].sign(claims())) == "jwt.unknown-key"  # not published
    assert _rule(ca, signers["RS256"].sign(claims(aud="x"))) == "jwt.audience"
    assert events(home, "jwt.used") == 2
    assert audit_problems(home) == []


def test_an_unreachable_jwks_url_refuses(ca: Authority, signers: dict[str, Signer]) -> None:
    ca.set_provisioner(_spec(None, jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json"))
    assert _rule(ca, signers["RS256"].sign(claims())) == "jwt.jwks-unavailable"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("DELETE FROM jwt_uses", "is missing: replayable"),
        ("UPDATE jwt_uses SET serial = '00'", "no matching jwt.used"),
        ("UPDATE provisioners SET config_sha256 = 'x'", "does not match its event"),
        ("DELETE FROM provisioners", "is missing"),
    ],
)
def test_audit_verify_catches_edited_jwt_rows(
    provisioned: Authority, home: CaHome, signers: dict[str, Signer], edit: str, problem: str
) -> None:
    _enroll(provisioned, signers["ES256"].sign(claims()))
    assert audit_problems(home) == []
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute(edit)
    problems = audit_problems(home)
    assert any(problem in p for p in problems), problems


def test_without_pyjwt_provisioners_say_what_to_install(
    ca: Authority, monkeypatch: pytest.MonkeyPatch, signers: dict[str, Signer]
) -> None:
    token = signers["ES256"].sign(claims())
    monkeypatch.setitem(sys.modules, "jwt", None)  # as if the server extra were missing
    with pytest.raises(UsageError, match="PyJWT") as caught:
        ca.set_provisioner(_spec({"keys": [signers["ES256"].jwk]}))
    assert caught.value.hint is not None and "cyphrs[server]" in caught.value.hint
    with pytest.raises(UsageError, match="PyJWT"):
        _enroll(ca, token)
