"""What we issue passes real verifiers: openssl -x509_strict, pkilint, cryptography's verifier.

Parametrised over every profile and key type (P-256, P-384, RSA-3072, Ed25519).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.helpers import Hierarchy, openssl_verify, pkilint_findings

PROFILES = {
    "agent": (
        ["--workflow", "payments-recon", "--permission", "ledger:read"],
        ["sslclient", "sslserver"],
    ),
    "server": (["--dns", "api.acme.internal", "--ip", "127.0.0.1"], ["sslserver"]),
    "client": (["--cn", "ci-deployer"], ["sslclient"]),
}


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _issue(h: Hierarchy, profile: str, out: Path) -> Path:
    args, _ = PROFILES[profile]
    result = h.issue(profile, *args, "--key-type", h.key_type, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    return out


def test_openssl_strict_verify(any_hierarchy: Hierarchy, profile: str, tmp_path: Path) -> None:
    out = _issue(any_hierarchy, profile, tmp_path / "out")
    for purpose in PROFILES[profile][1]:
        proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", purpose)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().endswith(": OK")


def test_openssl_rejects_wrong_purpose(hierarchy: Hierarchy, tmp_path: Path) -> None:
    out = _issue(hierarchy, "client", tmp_path / "out")
    proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", "sslserver")
    assert proc.returncode != 0
    assert "error 26 at 0 depth" in proc.stdout + proc.stderr  # unsuitable purpose


def test_pkilint_clean(any_hierarchy: Hierarchy, profile: str, tmp_path: Path) -> None:
    out = _issue(any_hierarchy, profile, tmp_path / "out")
    h = any_hierarchy
    assert pkilint_findings("lint_pkix_cert", str(out / "cert.pem")) == []
    assert pkilint_findings("lint_pkix_cert", str(h.inter_cert)) == []
    assert pkilint_findings("lint_pkix_cert", str(h.root_cert)) == []
    assert (
        pkilint_findings(
            "lint_pkix_signer_signee_cert_chain", str(h.inter_cert), str(out / "cert.pem")
        )
        == []
    )
    assert (
        pkilint_findings("lint_pkix_signer_signee_cert_chain", str(h.root_cert), str(h.inter_cert))
        == []
    )


def test_pkilint_helper_reports_findings(tmp_path: Path) -> None:
    """Guard the oracle itself: a certificate with a known defect must produce findings."""
    import subprocess

    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    # openssl's default self-signed cert lacks keyUsage on a CA: pkilint must say so.
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            "/CN=x",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=digitalSignature",
        ],
        check=True,
        capture_output=True,
    )
    assert pkilint_findings("lint_pkix_cert", str(crt)) != []


def test_cryptography_client_verifier_sees_one_spiffe_id(
    any_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    out = _issue(any_hierarchy, "agent", tmp_path / "out")
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((out / "chain.pem").read_bytes())
    root = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.datetime.now(datetime.UTC))
        .build_client_verifier()
    )
    if isinstance(leaf.public_key(), ed25519.Ed25519PublicKey):
        # The verifier implements the CA/B-style web PKI algorithm set, without EdDSA.
        with pytest.raises(VerificationError):
            verifier.verify(leaf, [inter])
        return
    verified = verifier.verify(leaf, [inter])
    uris = [
        n.value for n in verified.subjects or [] if isinstance(n, x509.UniformResourceIdentifier)
    ]
    assert len(uris) == 1 and uris[0].startswith("spiffe://acme.internal/agent/payments-recon/")


def _cert_with_uris(path: Path, uris: list[str]) -> Path:
    """A leaf built directly with cryptography (not by cyphrs) carrying the given URI SANs."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Lint Probe CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    ("uris", "bad"),
    [
        (["spiffe://acme.internal/agent/payments/i-1"], 0),
        (["spiffe://acme.internal/a b"], 1),  # space: not a SPIFFE ID, not a URI
        (["spiffe://ACME.internal/agent/x"], 1),  # SPIFFE trust domains are lowercase
        (["spiffe://acme.internal/agent/../x"], 1),  # dot segments are forbidden
        (["http://exa mple/"], 1),  # not SPIFFE at all
        (["spiffe://acme.internal/agent/ok", "spiffe://acme.internal/%41"], 1),
    ],
)
def test_pkilint_helper_reports_bad_uris(tmp_path: Path, uris: list[str], bad: int) -> None:
    """The SPIFFE allowance in tests/helpers.py covers only URIs our parser accepts."""
    cert = _cert_with_uris(tmp_path / "probe.pem", uris)
    findings = pkilint_findings("lint_pkix_cert", str(cert))
    assert findings.count("pkix.invalid_uri_syntax") == bad, findings
