"""Our own invariants, checked on what we issue (not on what we meant to issue)."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, decode_agent_claims
from cyphrs_cli.ca.serials import serial_hex
from tests.helpers import Hierarchy


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_leaf_invariants(hierarchy: Hierarchy, tmp_path: Path) -> None:
    serials = set()
    inter = _load(hierarchy.inter_cert)
    for i in range(5):
        out = tmp_path / f"a{i}"
        result = hierarchy.issue(
            "agent",
            "--workflow",
            "wf",
            "--permission",
            "x:read",
            "--ttl",
            "2h",
            "--out-dir",
            str(out),
            "--json",
        )
        assert result.exit_code == 0, result.stderr
        cert = _load(out / "cert.pem")
        serial = cert.serial_number
        assert 0 < serial < 2**159 and serial >= 2**64
        assert len(serial.to_bytes((serial.bit_length() + 8) // 8, "big")) <= 20
        serials.add(serial)
        # Inclusive validity: exactly the TTL, backdated one minute, within the issuer's.
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc + timedelta(seconds=1)
        assert lifetime == timedelta(hours=2)
        assert inter.not_valid_before_utc <= cert.not_valid_before_utc
        assert cert.not_valid_after_utc <= inter.not_valid_after_utc
        # Exact extension set for the agent profile, in order.
        oids = [e.oid.dotted_string for e in cert.extensions]
        assert oids == [
            "2.5.29.19",
            "2.5.29.15",
            "2.5.29.37",
            "2.5.29.17",
            "2.5.29.14",
            "2.5.29.35",
            AGENT_CLAIMS_OID,
        ]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        claims_ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(AGENT_CLAIMS_OID))
        assert not claims_ext.critical
        claims = decode_agent_claims(claims_ext.value.value)  # type: ignore[attr-defined]
        assert claims.workflow == "wf" and claims.permissions == ("x:read",)
        # Strict DER round trip.
        der = cert.public_bytes(serialization.Encoding.DER)
        assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) == der
        assert int(result.json()["certificate"]["serial"], 16) == serial
    assert len(serials) == 5


def test_ca_profiles(hierarchy: Hierarchy) -> None:
    root, inter = _load(hierarchy.root_cert), _load(hierarchy.inter_cert)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not any(e.oid == x509.ExtendedKeyUsage.oid for e in root.extensions)
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert inter.not_valid_after_utc <= root.not_valid_after_utc
    inter.verify_directly_issued_by(root)


def test_every_certificate_is_in_the_ledger(hierarchy: Hierarchy, tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert (
        hierarchy.issue("server", "--dns", "x.acme.internal", "--out-dir", str(out)).exit_code == 0
    )
    cert = _load(out / "cert.pem")
    with sqlite3.connect(hierarchy.home / "ledger.sqlite3") as conn:
        row = conn.execute(
            "SELECT serial, profile, sans, pem FROM certificates WHERE serial = ?",
            (serial_hex(cert.serial_number),),
        ).fetchone()
        event = conn.execute(
            "SELECT type, details FROM events WHERE target = ?", (f"certificate:{row[0]}",)
        ).fetchone()
    assert row[1] == "server" and json.loads(row[2]) == ["DNS:x.acme.internal"]
    assert row[3].encode() == cert.public_bytes(serialization.Encoding.PEM)
    assert event[0] == "certificate.issued" and json.loads(event[1])["serial"] == row[0]


def test_intermediate_validity_is_clamped_to_the_root(tmp_path: Path) -> None:
    from tests.helpers import INTER_PASS, ROOT_PASS, cli

    (tmp_path / "r").write_text(ROOT_PASS)
    (tmp_path / "i").write_text(INTER_PASS)
    home = ("--home", str(tmp_path / "home"))
    assert (
        cli(
            "init-root",
            "--name",
            "Short Root",
            "--validity",
            "30d",
            *home,
            "--passphrase-file",
            str(tmp_path / "r"),
        ).exit_code
        == 0
    )
    result = cli(
        "create-intermediate",
        "--name",
        "Long Inter",
        "--validity",
        "5y",
        "--json",
        *home,
        "--passphrase-file",
        str(tmp_path / "i"),
        "--root-passphrase-file",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 0, result.stderr
    authority = result.json()["authority"]
    root = x509.load_pem_x509_certificate(
        (tmp_path / "home" / "certs" / "short-root.pem").read_bytes()
    )
    assert authority["validity_clamped"] is True
    assert authority["not_after"] == root.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    leaf = cli(
        "issue",
        "server",
        "--dns",
        "a.example.internal",
        "--ttl",
        "30d",
        "--json",
        *home,
        "--passphrase-file",
        str(tmp_path / "i"),
    )
    assert leaf.exit_code == 0 and leaf.json()["certificate"]["not_after"] <= authority["not_after"]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_leaf_private_keys_are_0600_whatever_the_umask(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """key.pem is 0600 from issue, issue --force over a 0644 file, renew and batch, even
    when the process runs with umask 0; the public files are 0644."""
    import os
    import subprocess

    from tests.helpers import tool

    h = fresh_hierarchy
    home = ("--home", str(h.home), "--passphrase-file", str(h.inter_pass))

    def cyphrs(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [tool("cyphrs"), *args, *home],
            capture_output=True,
            check=False,
            umask=0,
            env={**os.environ, "CI": "true"},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    first = tmp_path / "first"
    cyphrs("issue", "agent", "--workflow", "modes", "--instance", "m1", "--out-dir", str(first))
    assert _mode(first / "key.pem") == 0o600
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem"):
        assert _mode(first / name) == 0o644, name

    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "key.pem").write_text("old")
    (forced / "key.pem").chmod(0o644)
    cyphrs(
        "issue",
        "agent",
        "--workflow",
        "modes",
        "--instance",
        "m2",
        "--out-dir",
        str(forced),
        "--force",
    )
    assert _mode(forced / "key.pem") == 0o600
    assert (forced / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    serial = serial_hex(_load(first / "cert.pem").serial_number)
    renewed = tmp_path / "renewed"
    cyphrs("renew", "--serial", serial, "--out-dir", str(renewed))
    assert _mode(renewed / "key.pem") == 0o600

    batch = tmp_path / "b.jsonl"
    batch.write_text('{"workflow": "modes-batch", "instance": "b1"}\n')
    cyphrs("issue", "agent", "--batch", str(batch), "--out-dir", str(tmp_path / "batch"))
    keys = list((tmp_path / "batch").rglob("key.pem"))
    assert len(keys) == 1 and _mode(keys[0]) == 0o600
