"""Renew, revoke and CRLs, checked with openssl and pkilint."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyphrs_cli.ca.serials import serial_hex
from cyphrs_cli.errors import ExitCode
from tests.helpers import (
    Hierarchy,
    cli,
    openssl_csr,
    openssl_verify,
    pkilint_findings,
    run_cyphrs,
    tool,
)


def _agent(h: Hierarchy, out: Path, *extra: str) -> Path:
    result = h.issue(
        "agent",
        "--workflow",
        "payments-recon",
        "--permission",
        "ledger:read",
        "--out-dir",
        str(out),
        *extra,
    )
    assert result.exit_code == 0, result.stderr
    return out


def _crl(h: Hierarchy, out: Path, *extra: str, passphrase: Path | None = None) -> Path:
    result = cli(
        "crl",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(passphrase or h.inter_pass),
        "--out",
        str(out),
        "--force",
        *extra,
    )
    assert result.exit_code == 0, result.stderr
    return out


def _lint_crl(path: Path) -> str:
    proc = subprocess.run(
        [tool("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() + proc.stderr.strip()


def test_revoked_leaf_fails_crl_check(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    victim, bystander = _agent(h, tmp_path / "victim"), _agent(h, tmp_path / "ok")
    result = cli(
        "revoke",
        str(victim / "cert.pem"),
        "--reason",
        "key-compromise",
        "--json",
        "--home",
        str(h.home),
    )
    assert result.exit_code == 0, result.stderr
    assert result.json()["revoked"]["reason"] == "key-compromise"
    crl_path = _crl(h, tmp_path / "crl.pem")
    proc = openssl_verify(
        victim / "ca.pem",
        victim / "chain.pem",
        victim / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(crl_path),
    )
    assert proc.returncode != 0 and "error 23 at 0 depth" in proc.stdout + proc.stderr
    proc = openssl_verify(
        bystander / "ca.pem",
        bystander / "chain.pem",
        bystander / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(crl_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verify = subprocess.run(
        ["openssl", "crl", "-verify", "-noout", "-in", str(crl_path), "-CAfile", str(h.inter_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "verify OK" in verify.stderr + verify.stdout
    assert _lint_crl(crl_path) == ""
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(
        x509.load_pem_x509_certificate((victim / "cert.pem").read_bytes()).serial_number
    )
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )


def test_empty_crl_lints_clean_and_numbers_only_increase(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    first = x509.load_pem_x509_crl(_crl(h, tmp_path / "1.pem").read_bytes())
    assert len(first) == 0 and _lint_crl(tmp_path / "1.pem") == ""
    assert (
        b"revokedCertificates"
        not in subprocess.run(
            ["openssl", "asn1parse", "-in", str(tmp_path / "1.pem")],
            capture_output=True,
            check=True,
        ).stdout
    )
    # A crash after the number is allocated burns that number; it is never reused.
    proc = run_cyphrs(
        "crl",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--out",
        "-",
        env={"CYPHRS_TEST_FAULT": "crl-after-allocate"},
    )
    assert proc.returncode == 86 and proc.stdout == b""
    third = x509.load_pem_x509_crl(_crl(h, tmp_path / "3.pem").read_bytes())
    number = lambda c: c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number  # noqa: E731
    assert (number(first), number(third)) == (1, 3)
    aki = third.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    inter = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    assert aki == inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert (h.home / "crls" / "test-inter.crl").read_bytes() == third.public_bytes(
        serialization.Encoding.DER
    )


def test_revocation_errors(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    out = _agent(h, tmp_path / "a")
    assert (
        cli("revoke", "--serial", "0badc0ffee", "--home", str(h.home)).exit_code
        == ExitCode.NOT_FOUND
    )
    assert cli("revoke", str(out / "cert.pem"), "--home", str(h.home)).exit_code == 0
    again = cli("revoke", str(out / "cert.pem"), "--home", str(h.home))
    assert again.exit_code == ExitCode.CONFLICT and "already revoked" in again.stderr
    bad = cli("revoke", "--serial", "01", "--reason", "unspecified-ish", "--home", str(h.home))
    assert bad.exit_code == ExitCode.INVALID_INPUT
    root = cli("revoke", str(h.root_cert), "--home", str(h.home))
    assert root.exit_code == ExitCode.USAGE


def test_revoked_intermediate_is_on_the_root_crl(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    leaf = _agent(h, tmp_path / "a")
    assert (
        cli(
            "revoke", str(h.inter_cert), "--reason", "ca-compromise", "--home", str(h.home)
        ).exit_code
        == 0
    )
    root_crl = _crl(h, tmp_path / "root.crl.pem", "--issuer", "test-root", passphrase=h.root_pass)
    inter_crl = _crl(h, tmp_path / "inter.crl.pem")
    assert _lint_crl(root_crl) == ""
    both = tmp_path / "crls.pem"
    both.write_bytes(root_crl.read_bytes() + inter_crl.read_bytes())
    proc = openssl_verify(
        leaf / "ca.pem",
        leaf / "chain.pem",
        leaf / "cert.pem",
        "sslclient",
        "-crl_check_all",
        "-CRLfile",
        str(both),
    )
    assert proc.returncode != 0 and "error 23 at 1 depth" in proc.stdout + proc.stderr


def test_renewal_chain(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    first = _agent(h, tmp_path / "a", "--ttl", "2h")
    old = x509.load_pem_x509_certificate((first / "cert.pem").read_bytes())
    renewed = cli(
        "renew",
        str(first / "cert.pem"),
        "--out-dir",
        str(tmp_path / "b"),
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert renewed.exit_code == 0, renewed.stderr
    second = cli(
        "renew",
        "--serial",
        renewed.json()["certificate"]["serial"],
        "--reuse-key",
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert second.exit_code == 0, second.stderr
    new = x509.load_pem_x509_certificate((tmp_path / "b" / "cert.pem").read_bytes())
    third = x509.load_pem_x509_certificate(
        second.json()["certificate"]["pem"]["certificate"].encode()
    )
    assert new.serial_number != old.serial_number and new.public_key() != old.public_key()
    assert (
        third.public_key() == new.public_key()
        and second.json()["certificate"]["pem"]["private_key"] is None
    )
    for cert in (new, third):
        assert (
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            == old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        assert cert.subject == old.subject
        assert (
            cert.not_valid_after_utc - cert.not_valid_before_utc
            == old.not_valid_after_utc - old.not_valid_before_utc
        )
    proc = openssl_verify(
        first / "ca.pem", first / "chain.pem", tmp_path / "b" / "cert.pem", "sslclient"
    )
    assert proc.returncode == 0, proc.stdout
    assert pkilint_findings("lint_pkix_cert", str(tmp_path / "b" / "cert.pem")) == []
    listing = cli("list", "--workflow", "payments-recon", "--json", "--home", str(h.home)).json()
    by_serial = {c["serial"]: c for c in listing["certificates"]}
    a, b, c = (serial_hex(x.serial_number) for x in (old, new, third))
    assert by_serial[a]["status"] == "superseded" and by_serial[a]["replaced_by"] == b
    assert by_serial[b]["replaces"] == a and by_serial[b]["replaced_by"] == c
    assert by_serial[c]["replaces"] == b and by_serial[c]["status"] == "valid"
    # Renewing a superseded certificate points at the newest one.
    stale = cli(
        "renew",
        str(first / "cert.pem"),
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert stale.exit_code == ExitCode.CONFLICT and c in stale.stderr


def test_renew_check_predicate(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    fresh = _agent(h, tmp_path / "a")
    not_due = cli("renew", str(fresh / "cert.pem"), "--check", "--home", str(h.home))
    assert not_due.exit_code == ExitCode.CHECK_NOT_MET and "not due until" in not_due.stderr
    # Backdated 60 s with a 2-minute life: half of it has already passed.
    short = _agent(h, tmp_path / "b", "--ttl", "2m")
    due = cli(
        "renew",
        str(short / "cert.pem"),
        "--check",
        "--due-fraction",
        "0.4",
        "--json",
        "--home",
        str(h.home),
    )
    assert due.exit_code == 0 and due.json()["due"] is True


def test_renewal_with_csr_uses_its_key(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    server = h.issue("server", "--dns", "api.acme.internal", "--out-dir", str(tmp_path / "s"))
    assert server.exit_code == 0
    key, csr = openssl_csr(tmp_path, "/CN=ignored")
    renewed = cli(
        "renew",
        str(tmp_path / "s" / "cert.pem"),
        "--csr",
        str(csr),
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert renewed.exit_code == 0, renewed.stderr
    body = renewed.json()["certificate"]
    assert body["sans"] == ["DNS:api.acme.internal"] and body["subject"] == "CN=api.acme.internal"
    key_pub = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True, check=True
    ).stdout
    cert = x509.load_pem_x509_certificate(body["pem"]["certificate"].encode())
    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == key_pub
    )


def test_a_revoked_intermediate_issues_nothing_but_still_publishes_its_crl(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    assert (
        cli(
            "revoke", str(h.inter_cert), "--reason", "ca-compromise", "--home", str(h.home)
        ).exit_code
        == 0
    )
    before = h.ledger_rows()
    refused = h.issue("agent", "--workflow", "wf", "--json")
    assert refused.exit_code == ExitCode.POLICY_DENIED
    assert json.loads(refused.stderr)["error"]["rule"] == "test-inter.revoked"
    assert h.ledger_rows() == before
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        last = conn.execute("SELECT type, details FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    assert last[0] == "policy.denied" and json.loads(last[1])["rule"] == "test-inter.revoked"
    assert cli("crl", "--home", str(h.home), "--passphrase-file", str(h.inter_pass)).exit_code == 0


def _openssl_crl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", "crl", *args], input=data, capture_output=True, check=False)


def test_crl_der_is_read_by_openssl_as_der(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """``crl --der`` writes DER that openssl reads with -inform DER (and only that way), whose
    signature verifies, and that makes openssl refuse the revoked leaf."""
    h = fresh_hierarchy
    victim = _agent(h, tmp_path / "victim")
    leaf = x509.load_pem_x509_certificate((victim / "cert.pem").read_bytes())
    revoked = cli(
        "revoke", str(victim / "cert.pem"), "--reason", "key-compromise", "--home", str(h.home)
    )
    assert revoked.exit_code == 0, revoked.stderr
    der_path = _crl(h, tmp_path / "crl.der", "--der")
    data = der_path.read_bytes()
    assert data[:1] == b"\x30" and b"-----BEGIN" not in data  # a DER SEQUENCE, not PEM
    check = _openssl_crl(
        "-inform", "DER", "-in", str(der_path), "-verify", "-noout", "-CAfile", str(h.inter_cert)
    )
    assert check.returncode == 0 and b"verify OK" in check.stdout + check.stderr, check.stderr
    text = _openssl_crl("-inform", "DER", "-in", str(der_path), "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert format(leaf.serial_number, "X").encode() in text.stdout.replace(b":", b"").upper()
    assert b"Key Compromise" in text.stdout
    assert _openssl_crl("-inform", "PEM", "-in", str(der_path), "-noout").returncode != 0
    # The same CRL as PEM (converted by openssl, not by us) puts the leaf out of service.
    pem_path = tmp_path / "crl.pem"
    converted = _openssl_crl(
        "-inform", "DER", "-in", str(der_path), "-outform", "PEM", "-out", str(pem_path)
    )
    assert converted.returncode == 0, converted.stderr
    proc = openssl_verify(
        victim / "ca.pem",
        victim / "chain.pem",
        victim / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(pem_path),
    )
    assert "error 23 at 0 depth" in proc.stdout + proc.stderr
    crl = x509.load_der_x509_crl(data)
    assert crl.is_signature_valid(
        x509.load_pem_x509_certificate(h.inter_cert.read_bytes()).public_key()  # type: ignore[arg-type]
    )
    # To standard output as raw bytes, from a real process (no text-mode mangling).
    streamed = run_cyphrs(
        "crl", "--der", "--out", "-", "--home", str(h.home), "--passphrase-file", str(h.inter_pass)
    )
    assert streamed.returncode == 0, streamed.stderr
    parsed = x509.load_der_x509_crl(streamed.stdout)
    assert parsed.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    assert _openssl_crl("-inform", "DER", "-noout", data=streamed.stdout).returncode == 0
