"""Adversarial review of the fast path's single CSR parse (h-review): a CSR that parses but
whose key cannot be loaded (``public_key()`` raises: an unknown algorithm), or loads but
cannot verify (an X25519 key), must be refused as bad input (exit 3) by the blocking path,
recording and spending nothing, exactly as ``enroll`` refuses it; the fast path must
neither crash on it nor check it on the loop. Real hierarchy, real SQLite, a real asyncio
loop and thread pool (``enroll_online``), real CSRs whose key OID is edited."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from tests.enrollment_helpers import count
from tests.unit.service.test_enroll_online import _online, _token, _token_uses

ED25519_OID = bytes.fromhex("06032b6570")  # 1.3.101.112


def _csr_with_key_oid(oid: bytes) -> bytes:
    """An Ed25519 CSR (DER) whose SubjectPublicKeyInfo names ``oid`` instead; the
    signature algorithm (the second occurrence) still says Ed25519."""
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
        .sign(key, None)
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(ED25519_OID) == 2
    return der.replace(ED25519_OID, oid, 1)


@pytest.mark.parametrize(
    "oid",
    [bytes.fromhex("06032b6572"), bytes.fromhex("06032b656e")],  # unassigned; X25519
    ids=["unknown-key-algorithm", "x25519-key"],
)
def test_a_csr_whose_key_cannot_verify_is_exit_3_on_the_blocking_path(
    ca: Authority, home: CaHome, oid: bytes
) -> None:
    ca.start_group_commit()
    token = _token(ca)
    before = count(home, "SELECT count(*) FROM events")
    outcome, runner = _online(ca, EnrollRequest(csr_pem=_csr_with_key_oid(oid), token=token))
    assert isinstance(outcome, InvalidInputError) and outcome.exit_code == 3, outcome
    assert runner.offloaded == 1  # the loop did not check it: the blocking path refused it
    assert count(home, "SELECT count(*) FROM events") == before
    assert count(home, "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'") == 0
    assert _token_uses(home) == [0]
