"""Bad input is refused with its documented exit code, one stderr line, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, cli


def _csr(tmp_path: Path, *, corrupt: bool = False) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if corrupt:
        der[-3] ^= 0x01  # flip a bit inside the signature value
    path = tmp_path / "req.der"
    path.write_bytes(bytes(der))
    return path


def _assert_refused(result: object, code: ExitCode, out: Path, h: Hierarchy, before: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert stderr.count("\n") == 1 and stderr.startswith("cyphrs: error: ")
    assert "Traceback" not in stderr
    assert result.stdout == ""  # type: ignore[attr-defined]
    assert not out.exists()
    assert h.ledger_rows() == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["agent", "--workflow", "wf", "--ttl", "25h"], ExitCode.POLICY_DENIED),
        (["agent", "--workflow", "wf", "--ttl", "4x"], ExitCode.INVALID_INPUT),
        (["nosuchprofile", "--cn", "x"], ExitCode.NOT_FOUND),
        (["agent", "--workflow", "bad/name"], ExitCode.INVALID_INPUT),
        (["agent", "--spiffe-id", "spiffe://other.domain/agent/x/y"], ExitCode.POLICY_DENIED),
        (["agent", "--workflow", "wf", "--key-type", "rsa1024"], ExitCode.INVALID_INPUT),
        (["server", "--cn", "no-names"], ExitCode.POLICY_DENIED),
        (["server", "--dns", "bad..name"], ExitCode.INVALID_INPUT),
        (["agent"], ExitCode.USAGE),
    ],
)
def test_issue_refusals(
    fresh_hierarchy: Hierarchy, tmp_path: Path, args: list[str], code: ExitCode
) -> None:
    # A private hierarchy: a before/after row count on the shared one would depend on what
    # other tests (in another order, or another xdist worker) add to it meanwhile.
    h, out = fresh_hierarchy, tmp_path / "out"
    before = h.ledger_rows()
    _assert_refused(h.issue(*args, "--out-dir", str(out)), code, out, h, before)


def test_malformed_csr(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    hierarchy = fresh_hierarchy
    bad = tmp_path / "bad.csr"
    bad.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"
    )
    out, before = tmp_path / "out", hierarchy.ledger_rows()
    result = hierarchy.issue(
        "server", "--dns", "a.acme.internal", "--csr", str(bad), "--out-dir", str(out)
    )
    _assert_refused(result, ExitCode.INVALID_INPUT, out, hierarchy, before)


def test_csr_with_bad_signature(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    hierarchy = fresh_hierarchy
    out, before = tmp_path / "out", hierarchy.ledger_rows()
    result = hierarchy.issue(
        "server",
        "--dns",
        "a.acme.internal",
        "--csr",
        str(_csr(tmp_path, corrupt=True)),
        "--out-dir",
        str(out),
    )
    _assert_refused(result, ExitCode.INVALID_INPUT, out, hierarchy, before)
    assert "signature" in result.stderr


def test_csr_from_stdin_uses_only_its_public_key(hierarchy: Hierarchy, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    result = cli(
        "issue",
        "server",
        "--dns",
        "api.acme.internal",
        "--csr",
        "-",
        "--json",
        "--home",
        str(hierarchy.home),
        "--passphrase-file",
        str(hierarchy.inter_pass),
        input=csr.public_bytes(serialization.Encoding.PEM),
    )
    assert result.exit_code == 0, result.stderr
    body = result.json()["certificate"]
    assert body["sans"] == ["DNS:api.acme.internal"]
    assert body["subject"] == "CN=api.acme.internal"
    cert = x509.load_pem_x509_certificate(
        result.json()["certificate"]["pem"]["certificate"].encode()
    )
    assert cert.public_key() == key.public_key()
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert result.json()["certificate"]["pem"]["private_key"] is None


def test_existing_output_needs_force(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    hierarchy = fresh_hierarchy
    out = tmp_path / "out"
    out.mkdir()
    (out / "cert.pem").write_text("keep me")
    before = hierarchy.ledger_rows()
    result = hierarchy.issue("agent", "--workflow", "wf", "--out-dir", str(out))
    assert result.exit_code == ExitCode.CONFLICT
    assert (out / "cert.pem").read_text() == "keep me"
    assert hierarchy.ledger_rows() == before
    forced = hierarchy.issue("agent", "--workflow", "wf", "--out-dir", str(out), "--force")
    assert forced.exit_code == 0
    assert (out / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_wrong_passphrase_is_exit_4_and_recorded(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-the-passphrase")
    out = tmp_path / "out"
    result = cli(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--out-dir",
        str(out),
        "--home",
        str(h.home),
        "--passphrase-file",
        str(wrong),
    )
    assert result.exit_code == ExitCode.BAD_SECRET
    assert (
        result.stderr
        == f"cyphrs: error: wrong passphrase for {h.home / 'keys' / 'test-inter.key.pem'}\n"
    )
    assert not out.exists()
    import sqlite3

    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        events = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    assert events[-1] == "key.unlock_failed"


def test_missing_home(tmp_path: Path) -> None:
    result = cli("issue", "agent", "--workflow", "wf", "--json", "--home", str(tmp_path / "nope"))
    assert result.exit_code == ExitCode.NOT_FOUND
    error = json.loads(result.stderr)
    assert error["schema"] == "cyphrs.error/v1" and error["error"]["slug"] == "not-found"
    assert not (tmp_path / "nope").exists()


def test_no_secret_source_without_tty(hierarchy: Hierarchy, tmp_path: Path) -> None:
    result = cli(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--out-dir",
        str(tmp_path / "o"),
        "--home",
        str(hierarchy.home),
    )
    assert result.exit_code == ExitCode.USAGE
    assert "--passphrase-file" in result.stderr


def test_init_root_refuses_second_root(hierarchy: Hierarchy) -> None:
    result = cli(
        "init-root",
        "--name",
        "Another Root",
        "--home",
        str(hierarchy.home),
        "--passphrase-file",
        str(hierarchy.root_pass),
    )
    assert result.exit_code == ExitCode.CONFLICT
    assert not (hierarchy.home / "keys" / "another-root.key.pem").exists()


def test_init_root_short_passphrase_leaves_nothing(tmp_path: Path) -> None:
    short = tmp_path / "short.pass"
    short.write_text("abc")
    home = tmp_path / "home"
    result = cli(
        "init-root", "--name", "Root", "--home", str(home), "--passphrase-file", str(short)
    )
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert not home.exists()


def test_key_files_are_private_and_encrypted(hierarchy: Hierarchy) -> None:
    for key_file in (hierarchy.home / "keys").iterdir():
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert (hierarchy.home / "keys").stat().st_mode & 0o777 == 0o700


def test_init_root_in_an_existing_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    short = tmp_path / "short.pass"
    short.write_text("abc")
    result = cli(
        "init-root", "--name", "Root", "--home", str(home), "--passphrase-file", str(short)
    )
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert list(home.iterdir()) == []


def test_crash_while_creating_a_root_leaves_no_key_and_can_be_retried(tmp_path: Path) -> None:
    from tests.helpers import ROOT_PASS, run_cyphrs

    secret = tmp_path / "root.pass"
    secret.write_text(ROOT_PASS)
    home = tmp_path / "home"
    args = ("init-root", "--name", "Root", "--home", str(home), "--passphrase-file", str(secret))
    crashed = run_cyphrs(*args, env={"CYPHRS_TEST_FAULT": "after-sign"})
    assert crashed.returncode == 86
    assert not (home / "keys").exists() or list((home / "keys").iterdir()) == []
    assert not (home / "config.toml").exists()
    retried = run_cyphrs(*args)
    assert retried.returncode == 0, retried.stderr


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("*.acme.internal", True),
        ("xn--bcher-kva.acme.internal", True),
        ("bücher.acme.internal", False),
        ("a.*.acme.internal", False),
        ("-a.acme.internal", False),
        ("a" * 64 + ".internal", False),
    ],
)
def test_dns_names(hierarchy: Hierarchy, name: str, ok: bool) -> None:
    result = hierarchy.issue("server", "--dns", name, "--json")
    assert result.exit_code == (0 if ok else ExitCode.INVALID_INPUT), result.stderr
    if name.startswith("bücher"):
        assert "punycode" in json.loads(result.stderr)["error"]["hint"]


@pytest.mark.parametrize("command", ["verify-export", "import-intermediate"])
def test_missing_root_file_is_not_found(tmp_path: Path, command: str) -> None:
    """``--root`` naming no file is the user's mistake: exit 6, one line naming the file."""
    missing = tmp_path / "no-such-root.pem"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cert = tmp_path / "signed.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    home = tmp_path / "home"
    if command == "verify-export":
        args = ["audit", "verify-export", str(bundle), "--root", str(missing)]
    else:
        args = ["import-intermediate", str(cert), "--root", str(missing), "--home", str(home)]
    for extra in ([], ["--json"]):
        result = cli(*args, *extra)
        assert result.exit_code == ExitCode.NOT_FOUND, result.stderr
        assert result.stdout == ""
        if extra:
            assert json.loads(result.stderr)["error"]["slug"] == "not-found"
        else:
            assert result.stderr.startswith("cyphrs: error: ") and result.stderr.count("\n") == 1
        assert str(missing) in result.stderr and "internal error" not in result.stderr
    assert not home.exists()
