"""Issue 8, class 11: name constraints that real verifiers accept.

Three independent verifiers judge every chain: OpenSSL (``openssl verify``), GnuTLS
(``certtool --verify-chain``) and pyca/cryptography's ``x509.verification`` verifier. Each
verdict is asserted as a fact, so a verifier that changes its mind fails this file and
docs/name-constraints.md must be updated with it.

- certificates cyphrs issues under a name-constrained intermediate verify everywhere they
  can (cryptography refuses a URI SAN under a URI subtree: a documented limitation);
- names outside the constraints are refused by cyphrs before signing (exit 5, the rule
  named, a ``policy.denied`` event, no certificate row);
- the same violations forged outside cyphrs (signed with the intermediate's key) are
  refused by the verifiers, which shows the pre-signing check refuses exactly what they do.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.helpers import INTER_PASS, ROOT_PASS, Hierarchy, build_hierarchy, cli

# No skip: scripts/test installs openssl and certtool (gnutls-bin); a missing oracle fails.
IP_CA = "ip-ca"


@dataclass(frozen=True)
class Pki:
    hierarchy: Hierarchy
    base: Path

    @property
    def home(self) -> Path:
        return self.hierarchy.home

    def ca_cert(self, alias: str) -> Path:
        return self.home / "certs" / f"{alias}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """test-inter: URI:acme.internal + DNS:acme.internal (the agent CA of the README)."""
    base = tmp_path_factory.mktemp("nc")
    hierarchy = build_hierarchy(base, extra=("--name-constraints", "--permit-dns", "acme.internal"))
    return Pki(hierarchy, base)


@pytest.fixture(scope="module")
def ip_ca(pki: Pki) -> str:
    """ip-ca: IP 10.20.0.0/16 and fd00:20::/32 only (no trust domain)."""
    done = cli(
        "create-intermediate",
        "--name",
        "IP Constrained CA",
        "--alias",
        IP_CA,
        "--name-constraints",
        "--permit-ip",
        "10.20.0.0/16",
        "--permit-ip",
        "fd00:20::/32",
        "--home",
        str(pki.home),
        "--passphrase-file",
        str(pki.hierarchy.inter_pass),
        "--root-passphrase-file",
        str(pki.hierarchy.root_pass),
    )
    assert done.exit_code == 0, done.stderr
    return IP_CA


def _ca(request: pytest.FixtureRequest, ca: str) -> str:
    return str(request.getfixturevalue("ip_ca")) if ca == IP_CA else ca


# --------------------------------------------------------------------------- verifiers


def openssl_verdict(root: Path, inter: Path, leaf: Path) -> str:
    """``ok`` or ``error N`` (47 = X509_V_ERR_PERMITTED_VIOLATION)."""
    proc = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", root, "-untrusted", inter, leaf],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return "ok"
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("error ") and " at " in line:
            return line.split(" at ")[0]
    raise AssertionError(f"openssl verify failed without an error line: {proc.stderr}")


def gnutls_verdict(root: Path, inter: Path, leaf: Path, work: Path) -> str:
    """``ok`` or GnuTLS's reason; the chain file is leaf, intermediate, root."""
    chain = work / "gnutls-chain.pem"
    chain.write_bytes(leaf.read_bytes() + inter.read_bytes() + root.read_bytes())
    proc = subprocess.run(
        ["certtool", "--verify-chain", "--verify-profile", "low", "--infile", str(chain)],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = [
        line for line in proc.stdout.splitlines() if line.startswith("Chain verification output")
    ]
    assert summary, proc.stdout + proc.stderr
    if proc.returncode == 0 and "Verified. The certificate is trusted." in summary[0]:
        return "ok"
    return summary[0].split(":", 1)[1].strip()


def cryptography_verdict(root: Path, inter: Path, leaf: Path, server_name: str | None) -> str:
    """pyca/cryptography's verifier: a server verifier for ``server_name`` (DNS or IP), or a
    client verifier (the agent/mTLS case) when it is None. ``ok`` or the error text."""
    store = Store(x509.load_pem_x509_certificates(root.read_bytes()))
    builder = PolicyBuilder().store(store).time(datetime.now(UTC))
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    intermediates = x509.load_pem_x509_certificates(inter.read_bytes())
    try:
        if server_name is None:
            builder.build_client_verifier().verify(cert, intermediates)
        else:
            try:
                subject: x509.verification.Subject = x509.IPAddress(
                    ipaddress.ip_address(server_name)
                )
            except ValueError:
                subject = x509.DNSName(server_name)
            builder.build_server_verifier(subject).verify(cert, intermediates)
    except VerificationError as exc:
        return str(exc)
    return "ok"


def verdicts(pki: Pki, ca: str, leaf: Path, server_name: str | None) -> dict[str, str]:
    root, inter = pki.hierarchy.root_cert, pki.ca_cert(ca)
    return {
        "openssl": openssl_verdict(root, inter, leaf),
        "gnutls": gnutls_verdict(root, inter, leaf, leaf.parent),
        "cryptography": cryptography_verdict(root, inter, leaf, server_name),
    }


UNSUPPORTED_URI = "validation failed: candidates exhausted: unsupported name constraint"
GNUTLS_VIOLATION = (
    "Not verified. The certificate is NOT trusted."
    " The certificate chain violates the signer's constraints."
)
CRYPTOGRAPHY_VIOLATION = (
    "validation failed: candidates exhausted: no permitted name constraints matched SAN"
)


def issue(pki: Pki, ca: str, *args: str) -> tuple[int, str, Path]:
    out = pki.base / f"out-{len(list(pki.base.glob('out-*')))}"
    done = cli(
        "issue",
        *args,
        "--issuer",
        ca,
        "--home",
        str(pki.home),
        "--passphrase-file",
        str(pki.hierarchy.inter_pass),
        "--out-dir",
        str(out),
    )
    return done.exit_code, done.stderr, out / "cert.pem"


# --------------------------------------------------------------------------- issued by cyphrs


def test_agent_under_uri_and_dns_constraints(pki: Pki) -> None:
    """The GnuTLS regression: with --permit-dns, the old default CN ``workflow/instance``
    was checked as a DNS name (serverAuth, no DNS SAN) and every agent was rejected."""
    code, err, leaf = issue(pki, "test-inter", "agent", "--workflow", "recon", "--instance", "a1")
    assert code == 0, err
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    # X509-SVID: the SPIFFE ID is the identity; an empty subject makes the SAN critical.
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert verdicts(pki, "test-inter", leaf, None) == {
        "openssl": "ok",
        "gnutls": "ok",
        # cryptography does not implement URI name constraints: a URI SAN meeting a URI
        # subtree fails the chain (docs/name-constraints.md).
        "cryptography": UNSUPPORTED_URI,
    }


def test_server_dns_under_dns_constraints(pki: Pki) -> None:
    code, err, leaf = issue(pki, "test-inter", "server", "--dns", "api.acme.internal")
    assert code == 0, err
    assert verdicts(pki, "test-inter", leaf, "api.acme.internal") == {
        "openssl": "ok",
        "gnutls": "ok",
        # The leaf has no URI name, so cryptography never meets the URI subtree.
        "cryptography": "ok",
    }


def test_client_with_dns_san_under_uri_and_dns_constraints(pki: Pki) -> None:
    """cryptography's client verifier accepts a URI-constrained CA as long as the leaf has
    no URI name: it refuses URI *matching*, not the constraint's presence."""
    code, err, leaf = issue(
        pki, "test-inter", "client", "--cn", "ci.acme.internal", "--dns", "ci.acme.internal"
    )
    assert code == 0, err
    assert verdicts(pki, "test-inter", leaf, None) == {
        "openssl": "ok",
        "gnutls": "ok",
        "cryptography": "ok",
    }


@pytest.mark.parametrize("address", ["10.20.1.2", "fd00:20::7"])
def test_ip_san_under_ip_constraints(pki: Pki, ip_ca: str, address: str) -> None:
    code, err, leaf = issue(pki, ip_ca, "server", "--ip", address)
    assert code == 0, err
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert cert.subject == x509.Name([])  # no default CN: "10.20.1.2" looks like a host name
    constraints = x509.load_pem_x509_certificate(
        pki.ca_cert(IP_CA).read_bytes()
    ).extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.IPAddress(ipaddress.ip_network("10.20.0.0/16")),
        x509.IPAddress(ipaddress.ip_network("fd00:20::/32")),
    ]
    assert verdicts(pki, IP_CA, leaf, address) == {
        "openssl": "ok",
        "gnutls": "ok",
        "cryptography": "ok",
    }


# --------------------------------------------------------------------------- refused by cyphrs


def _certificate_rows(home: Path) -> int:
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (count,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    return int(count)


def _last_denial(home: Path) -> dict[str, object]:
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (details,) = conn.execute(
            "SELECT details FROM events WHERE type = 'policy.denied' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return dict(json.loads(details))


@pytest.mark.parametrize(
    ("ca", "args", "fragment"),
    [
        ("test-inter", ("server", "--dns", "api.evil.test"), "DNS name 'api.evil.test'"),
        ("test-inter", ("server", "--dns", "acme.internal.evil.test"), "DNS name"),
        ("test-inter", ("server", "--dns", "evilacme.internal"), "DNS name"),
        # A CN is checked as a DNS name by OpenSSL (error 47) and GnuTLS.
        (
            "test-inter",
            ("server", "--dns", "api.acme.internal", "--cn", "api.evil.test"),
            "common name 'api.evil.test'",
        ),
        ("test-inter", ("client", "--cn", "ci-deployer"), "common name 'ci-deployer'"),
        (
            "test-inter",
            ("agent", "--workflow", "recon", "--cn", "recon.evil.test"),
            "common name",
        ),
        (IP_CA, ("server", "--ip", "10.21.0.1"), "IP address 10.21.0.1"),
        (IP_CA, ("server", "--ip", "10.20.1.1", "--ip", "192.168.0.1"), "IP address 192"),
        (IP_CA, ("server", "--ip", "fd00:21::1"), "IP address fd00:21::1"),
        # An IPv4-mapped IPv6 address is not inside the IPv4 subtree (OpenSSL agrees).
        (IP_CA, ("server", "--ip", "::ffff:10.20.1.1"), "IP address ::ffff:"),
    ],
)
def test_names_outside_constraints_are_refused_before_signing(
    pki: Pki, request: pytest.FixtureRequest, ca: str, args: tuple[str, ...], fragment: str
) -> None:
    ca = _ca(request, ca)
    before = _certificate_rows(pki.home)
    code, err, leaf = issue(pki, ca, *args)
    assert code == 5, err
    assert fragment in err and f"(rule {ca}.name_constraints)" in err
    assert not leaf.exists()
    assert _certificate_rows(pki.home) == before
    assert _last_denial(pki.home)["rule"] == f"{ca}.name_constraints"


# --------------------------------------------------------------------------- forged outside


def _forge(
    pki: Pki,
    ca: str,
    name: str,
    *,
    cn: str | None,
    sans: list[x509.GeneralName],
    server_auth: bool = True,
) -> Path:
    """A leaf signed with the CA's real key, bypassing cyphrs's policy entirely."""
    inter = x509.load_pem_x509_certificate(pki.ca_cert(ca).read_bytes())
    ca_key = serialization.load_pem_private_key(
        (pki.home / "keys" / f"{ca}.key.pem").read_bytes(), INTER_PASS.encode()
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] * server_auth)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(inter.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=cn is None)
    path = pki.base / f"forged-{name}.pem"
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


REFUSED_47 = "error 47"  # X509_V_ERR_PERMITTED_VIOLATION


@pytest.mark.parametrize(
    ("case", "ca", "cn", "sans", "server_name", "expected"),
    [
        (
            "dns-outside",
            "test-inter",
            None,
            [x509.DNSName("api.evil.test")],
            "api.evil.test",
            {
                "openssl": REFUSED_47,
                "gnutls": GNUTLS_VIOLATION,
                "cryptography": CRYPTOGRAPHY_VIOLATION,
            },
        ),
        (
            "ip-outside",
            IP_CA,
            None,
            [x509.IPAddress(ipaddress.ip_address("10.99.0.1"))],
            "10.99.0.1",
            {
                "openssl": REFUSED_47,
                "gnutls": GNUTLS_VIOLATION,
                "cryptography": CRYPTOGRAPHY_VIOLATION,
            },
        ),
        (
            "uri-other-trust-domain",
            "test-inter",
            None,
            [x509.UniformResourceIdentifier("spiffe://evil.test/agent/x/1")],
            None,
            # GnuTLS (3.7) does not enforce URI subtrees: it accepts a foreign trust domain.
            # Against GnuTLS peers, cyphrs's refusal before signing is the only defence.
            {"openssl": REFUSED_47, "gnutls": "ok", "cryptography": UNSUPPORTED_URI},
        ),
        (
            # The old cyphrs output for --cn outside the subtree: OpenSSL checks a CN that
            # looks like a host name against DNS subtrees when there is no DNS SAN.
            "cn-outside-dns",
            "test-inter",
            "api.evil.test",
            [x509.UniformResourceIdentifier("spiffe://acme.internal/agent/x/1")],
            None,
            {"openssl": REFUSED_47, "gnutls": GNUTLS_VIOLATION, "cryptography": UNSUPPORTED_URI},
        ),
        (
            # An IP address as CN looks like a host name to OpenSSL (digits and dots).
            "cn-ip-address",
            "test-inter",
            "10.99.0.1",
            [x509.UniformResourceIdentifier("spiffe://acme.internal/agent/x/1")],
            None,
            {"openssl": REFUSED_47, "gnutls": GNUTLS_VIOLATION, "cryptography": UNSUPPORTED_URI},
        ),
        (
            # A single label has no dot: OpenSSL does not take it for a host name; GnuTLS
            # does (serverAuth, no DNS SAN).
            "cn-single-label",
            "test-inter",
            "ci-deployer",
            [x509.UniformResourceIdentifier("spiffe://acme.internal/agent/x/1")],
            None,
            {"openssl": "ok", "gnutls": GNUTLS_VIOLATION, "cryptography": UNSUPPORTED_URI},
        ),
        (
            # With a DNS SAN inside, no verifier looks at the CN: all three accept a CN
            # outside the subtree. cyphrs still refuses it (a CN-reading application
            # would be misled), which makes it stricter than the verifiers here.
            "cn-outside-dns-san-inside",
            "test-inter",
            "api.evil.test",
            [x509.DNSName("api.acme.internal")],
            "api.acme.internal",
            {"openssl": "ok", "gnutls": "ok", "cryptography": "ok"},
        ),
        (
            # The old default agent CN: GnuTLS checks the CN of a serverAuth certificate
            # without DNS SANs as a DNS name; OpenSSL skips it (a '/' is no host name).
            "agent-cn-workflow-instance",
            "test-inter",
            "recon/a1",
            [x509.UniformResourceIdentifier("spiffe://acme.internal/agent/recon/a1")],
            None,
            {"openssl": "ok", "gnutls": GNUTLS_VIOLATION, "cryptography": UNSUPPORTED_URI},
        ),
        (
            # ... but only for serverAuth: a clientAuth-only certificate passes GnuTLS.
            "agent-cn-client-only",
            "test-inter",
            "recon/a1",
            [x509.UniformResourceIdentifier("spiffe://acme.internal/agent/recon/a1")],
            None,
            {"openssl": "ok", "gnutls": "ok", "cryptography": UNSUPPORTED_URI},
        ),
    ],
)
def test_forged_violations_are_refused_by_verifiers(
    pki: Pki,
    request: pytest.FixtureRequest,
    case: str,
    ca: str,
    cn: str | None,
    sans: list[x509.GeneralName],
    server_name: str | None,
    expected: dict[str, str],
) -> None:
    ca = _ca(request, ca)
    leaf = _forge(pki, ca, case, cn=cn, sans=sans, server_auth=case != "agent-cn-client-only")
    assert verdicts(pki, ca, leaf, server_name) == expected


# --------------------------------------------------------------------------- offline root


def test_sign_intermediate_takes_ip_subtrees(tmp_path: Path) -> None:
    """The offline-root flow: sign-intermediate --permit-ip constrains what the imported
    intermediate may issue, enforced by cyphrs on the online host and by OpenSSL."""
    root_pass, inter_pass = tmp_path / "root.pass", tmp_path / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    root_home, online = tmp_path / "root-host", tmp_path / "online"

    def run(*args: str, home: Path, secret: Path) -> None:
        done = cli(*args, "--home", str(home), "--passphrase-file", str(secret))
        assert done.exit_code == 0, done.stderr

    run("init-root", "--name", "Vault Root", home=root_home, secret=root_pass)
    csr = tmp_path / "edge.csr"
    unplumbed = cli(
        "create-intermediate", "--name", "Edge CA", "--csr-out", str(csr), "--permit-ip",
        "10.30.0.0/16", "--home", str(online), "--passphrase-file", str(inter_pass),
    )  # fmt: skip
    assert unplumbed.exit_code == 3 and "--name-constraints" in unplumbed.stderr
    assert not csr.exists()
    # The subtree travels in the CSR: the root's host signs it without repeating it.
    run("create-intermediate", "--name", "Edge CA", "--csr-out", str(csr), "--name-constraints",
        "--permit-ip", "10.30.0.0/16", home=online, secret=inter_pass)  # fmt: skip
    run("sign-intermediate", str(csr), "--out", str(tmp_path / "edge.pem"), home=root_home,
        secret=root_pass)  # fmt: skip
    assert (
        cli(
            "import-intermediate", str(tmp_path / "edge.pem"), "--home", str(online),
            "--root", str(root_home / "certs" / "vault-root.pem"),
        ).exit_code
        == 0
    )  # fmt: skip

    def issue_ip(address: str, out: Path) -> int:
        return cli(
            "issue", "server", "--ip", address, "--out-dir", str(out), "--home", str(online),
            "--passphrase-file", str(inter_pass),
        ).exit_code  # fmt: skip

    assert issue_ip("10.30.4.5", tmp_path / "in") == 0
    assert (
        openssl_verdict(
            tmp_path / "in" / "ca.pem", tmp_path / "in" / "chain.pem", tmp_path / "in" / "cert.pem"
        )
        == "ok"
    )
    assert issue_ip("10.31.4.5", tmp_path / "out") == 5
    assert not (tmp_path / "out").exists()
