"""The offline-root flow across two CA homes: the root key never sits on the issuing host."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import INTER_PASS, ROOT_PASS, cli, openssl_verify, pkilint_findings


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    root_pass, inter_pass = tmp_path / "root.pass", tmp_path / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    root_home, online = tmp_path / "root-host", tmp_path / "online"
    assert (
        cli(
            "init-root",
            "--name",
            "Vault Root",
            "--home",
            str(root_home),
            "--passphrase-file",
            str(root_pass),
        ).exit_code
        == 0
    )
    return root_home, online, root_pass, inter_pass


def test_request_sign_import_then_issue(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, online, root_pass, inter_pass = homes
    csr = tmp_path / "agents.csr"
    request = cli(
        "create-intermediate",
        "--name",
        "Agents CA",
        "--trust-domain",
        "acme.internal",
        "--home",
        str(online),
        "--name-constraints",
        "--passphrase-file",
        str(inter_pass),
        "--csr-out",
        str(csr),
        "--json",
    )
    assert request.exit_code == 0, request.stderr
    assert_valid(request.json())
    signed = cli(
        "sign-intermediate",
        str(csr),
        "--out",
        str(tmp_path / "agents.pem"),
        "--home",
        str(root_home),
        "--passphrase-file",
        str(root_pass),
        "--json",
    )
    assert signed.exit_code == 0, signed.stderr
    assert_valid(signed.json())
    imported = cli(
        "import-intermediate",
        str(tmp_path / "agents.pem"),
        "--root",
        str(root_home / "certs" / "vault-root.pem"),
        "--home",
        str(online),
        "--json",
    )
    assert imported.exit_code == 0, imported.stderr
    assert_valid(imported.json())
    assert imported.json()["alias"] == "agents-ca" and imported.json()["root"] == "vault-root"
    # The online host can now issue, and what it issues chains to the offline root.
    out = tmp_path / "agent"
    issued = cli(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--out-dir",
        str(out),
        "--home",
        str(online),
        "--passphrase-file",
        str(inter_pass),
    )
    assert issued.exit_code == 0, issued.stderr
    proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "ca.pem").read_bytes() == (root_home / "certs" / "vault-root.pem").read_bytes()
    assert pkilint_findings("lint_pkix_cert", str(online / "certs" / "agents-ca.pem")) == []
    # Both ledgers verify; the root's ledger knows the intermediate it signed.
    for home in (root_home, online):
        assert cli("audit", "verify", "--home", str(home)).exit_code == 0
    with sqlite3.connect(root_home / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT profile FROM certificates ORDER BY id").fetchall() == [
            ("root",),
            ("intermediate",),
        ]
    with sqlite3.connect(online / "ledger.sqlite3") as conn:
        keys = conn.execute("SELECT name, key_uri FROM authorities ORDER BY id").fetchall()
    assert keys == [("vault-root", "offline:"), ("agents-ca", "file:keys/agents-ca.key.pem")]
    assert not (online / "keys" / "vault-root.key.pem").exists()
    # The root key is not here: anything needing it says so with the key-store exit code.
    refused = cli("crl", "--issuer", "vault-root", "--home", str(online))
    assert refused.exit_code == ExitCode.KEYSTORE and "offline" in refused.stderr


def test_import_refuses_a_certificate_for_another_key(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, online, root_pass, inter_pass = homes
    for name, csr in (("First CA", "a.csr"), ("Second CA", "b.csr")):
        home = online if name == "First CA" else tmp_path / "elsewhere"
        assert (
            cli(
                "create-intermediate",
                "--name",
                name,
                "--home",
                str(home),
                "--passphrase-file",
                str(inter_pass),
                "--csr-out",
                str(tmp_path / csr),
            ).exit_code
            == 0
        )
    assert (
        cli(
            "sign-intermediate",
            str(tmp_path / "b.csr"),
            "--out",
            str(tmp_path / "b.pem"),
            "--home",
            str(root_home),
            "--passphrase-file",
            str(root_pass),
        ).exit_code
        == 0
    )
    result = cli(
        "import-intermediate",
        str(tmp_path / "b.pem"),
        "--root",
        str(root_home / "certs" / "vault-root.pem"),
        "--home",
        str(online),
    )
    assert result.exit_code == ExitCode.NOT_FOUND and "pending" in result.stderr
    config = tomllib.loads((online / "config.toml").read_text())
    assert list(config["pending_intermediates"]) == ["first-ca"] and config["authorities"] == {}


def test_sign_intermediate_refuses_a_bad_csr(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, _, root_pass, _ = homes
    bad = tmp_path / "bad.csr"
    bad.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    result = cli(
        "sign-intermediate",
        str(bad),
        "--out",
        str(tmp_path / "x.pem"),
        "--home",
        str(root_home),
        "--passphrase-file",
        str(root_pass),
        "--json",
    )
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert json.loads(result.stderr)["error"]["slug"] == "invalid-input"
    assert not (tmp_path / "x.pem").exists()


def _sha256_key_id(public_key: object) -> bytes:
    """RFC 7093 section 2 method 1: the leftmost 160 bits of SHA-256 of the subjectPublicKey
    BIT STRING; not the SHA-1 (RFC 5280 method 1) that cyphrs and OpenSSL compute."""
    from asn1crypto import keys
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import load_der_x509_certificate  # noqa: F401

    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = keys.PublicKeyInfo.load(der)["public_key"].contents[1:]  # drop the unused-bits octet
    digest = hashes.Hash(hashes.SHA256())
    digest.update(bits)
    return digest.finalize()[:20]


def test_leaves_carry_the_issuers_own_ski_as_aki(tmp_path: Path) -> None:
    """An intermediate signed by an outside root whose tooling derives key identifiers with
    SHA-256 (RFC 7093), not SHA-1: every leaf's AKI must be the SKI the intermediate's
    certificate actually carries, or path builders that match AKI to SKI cannot chain it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    inter_pass = tmp_path / "inter.pass"
    inter_pass.write_text(INTER_PASS)
    online, csr_path = tmp_path / "online", tmp_path / "agents.csr"
    request = cli(
        "create-intermediate",
        "--name",
        "Agents CA",
        "--trust-domain",
        "acme.internal",
        "--home",
        str(online),
        "--passphrase-file",
        str(inter_pass),
        "--csr-out",
        str(csr_path),
    )
    assert request.exit_code == 0, request.stderr
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())

    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Outside Root")])
    root_ski = _sha256_key_id(root_key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    ku = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.SubjectKeyIdentifier(root_ski), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    inter_ski = _sha256_key_id(csr.public_key())
    sha1 = x509.SubjectKeyIdentifier.from_public_key(csr.public_key()).digest  # type: ignore[arg-type]
    assert inter_ski != sha1
    inter = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.SubjectKeyIdentifier(inter_ski), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(root_ski, None, None), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    signed, root_file = tmp_path / "agents.pem", tmp_path / "root.pem"
    signed.write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    imported = cli(
        "import-intermediate", str(signed), "--root", str(root_file), "--home", str(online)
    )
    assert imported.exit_code == 0, imported.stderr

    for profile, args in (
        ("agent", ["--workflow", "aki", "--instance", "a1"]),
        ("server", ["--dns", "api.acme.internal"]),
        ("client", ["--cn", "aki-client"]),
    ):
        out = tmp_path / profile
        issued = cli(
            "issue",
            profile,
            *args,
            "--home",
            str(online),
            "--passphrase-file",
            str(inter_pass),
            "--out-dir",
            str(out),
        )
        assert issued.exit_code == 0, issued.stderr
        leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == inter_ski, profile
        purpose = "sslserver" if profile == "server" else "sslclient"
        proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", purpose)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    crl = cli(
        "crl",
        "--home",
        str(online),
        "--passphrase-file",
        str(inter_pass),
        "--out",
        str(tmp_path / "crl.pem"),
    )
    assert crl.exit_code == 0, crl.stderr
    crl_aki = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes()).extensions
    assert crl_aki.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == (
        inter_ski
    )
