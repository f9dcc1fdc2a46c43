"""Who a presented client certificate is (``service.online``), attacked with certificates
the TLS layer would accept (docs/threat-model.md, "Adversarial review of the online CA"): a leaf whose issuing CA has been
revoked still chains to the root (the server's TLS layer checks no CRL), so the ledger
must refuse it for administration, renewal and self-revocation alike. And a renewal over
mTLS must not outlive what its predecessor was granted (a token's max TTL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import PolicyDenied
from cyphrs_cli.service.authority import Authority
from tests.helpers import build_hierarchy, cli
from tests.serve_clients import new_csr


def _der(cert_dir: Path) -> bytes:
    pem = (cert_dir / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_a_leaf_under_a_revoked_intermediate_authenticates_nothing(tmp_path: Path) -> None:
    ca = build_hierarchy(tmp_path / "ca")
    admin = tmp_path / "admin"
    agent = tmp_path / "agent"
    assert ca.issue("admin", "--cn", "ops-eve", "--out-dir", str(admin)).exit_code == 0
    done = ca.issue("agent", "--workflow", "w", "--out-dir", str(agent))
    assert done.exit_code == 0, done.stderr
    secret = ca.inter_pass.read_bytes().strip()
    with Authority.open(CaHome(ca.home), secrets=lambda _: secret, unlock=False) as authority:
        assert "ops-eve" in authority.admin_identity(_der(admin))  # valid while the CA is
    done = cli("revoke", str(ca.inter_cert), "--home", str(ca.home))
    assert done.exit_code == 0, (done.stdout, done.stderr)
    _, csr = new_csr()
    with Authority.open(CaHome(ca.home), secrets=lambda _: secret, unlock=False) as authority:
        for attempt in (
            lambda: authority.admin_identity(_der(admin)),
            lambda: authority.revoke_presented(_der(agent), None),
            lambda: authority.renew_presented(_der(agent), csr),
        ):
            with pytest.raises(PolicyDenied) as caught:
                attempt()
            assert caught.value.rule == "mtls.issuer-revoked"


def test_online_renewal_cannot_outgrow_the_token_s_max_ttl(tmp_path: Path) -> None:
    """A token with max TTL 10m issues a 10-minute certificate; its holder must not turn
    it into a 24-hour one by asking the renewal for the profile's maximum."""
    from datetime import timedelta

    from cyphrs_cli.service.enrollment import EnrollRequest
    from cyphrs_cli.service.tokens import TokenSpec
    from tests.enrollment_helpers import make_csr

    ca = build_hierarchy(tmp_path / "ca")
    secret = ca.inter_pass.read_bytes().strip()
    with Authority.open(CaHome(ca.home), secrets=lambda _: secret) as authority:
        token = authority.create_token(
            TokenSpec(workflow="short-lived", max_ttl=timedelta(minutes=10))
        ).token
        enrolled = authority.enroll(EnrollRequest(csr_pem=make_csr()[0], token=token, ttl="10m"))
        der = x509.load_pem_x509_certificate(enrolled.bundle.certificate.encode()).public_bytes(
            Encoding.DER
        )
        with pytest.raises(PolicyDenied) as caught:
            authority.renew_presented(der, make_csr()[0], ttl=timedelta(hours=24))
        assert caught.value.rule == "renew.ttl"
        renewed = authority.renew_presented(der, make_csr()[0])
        issued = renewed.issued
        assert issued.not_after - issued.not_before <= timedelta(minutes=11)


def test_only_an_admin_profile_certificate_administers(tmp_path: Path) -> None:
    """The threat model says only the admin profile administers: a valid, recorded agent,
    server or client certificate of the same CA, and the CA certificate itself, are all
    refused by ``admin_identity`` (the ledger decides, whatever TLS accepted)."""
    ca = build_hierarchy(tmp_path / "ca")
    made = {
        "agent": ("agent", "--workflow", "w"),
        "server": ("server", "--dns", "api.acme.internal"),
        "client": ("client", "--cn", "svc-bob"),
        "admin": ("admin", "--cn", "ops-eve"),
    }
    for name, args in made.items():
        done = ca.issue(*args, "--out-dir", str(tmp_path / name))
        assert done.exit_code == 0, (name, done.stderr)
    inter = x509.load_pem_x509_certificate(ca.inter_cert.read_bytes()).public_bytes(Encoding.DER)
    secret = ca.inter_pass.read_bytes().strip()
    with Authority.open(CaHome(ca.home), secrets=lambda _: secret, unlock=False) as authority:
        assert "ops-eve" in authority.admin_identity(_der(tmp_path / "admin"))
        for der in (*(_der(tmp_path / n) for n in ("agent", "server", "client")), inter):
            with pytest.raises(PolicyDenied):
                authority.admin_identity(der)
