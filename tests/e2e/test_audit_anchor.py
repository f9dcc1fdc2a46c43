"""Checkpoints prove something only against a root pinned from outside the ledger.

The attacker here can write the ledger file: they drop a key-compromise revocation,
recompute the whole chain, and re-sign the stored checkpoints and the operator's
external ``cp.json`` with a throwaway CA that copies the genuine names. Everything is
driven through the real ``cyphrs`` executable.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.e2e.audit_attacks import (
    connect,
    forge_checkpoint,
    rechain,
    throwaway_ca,
    write_json,
)
from tests.e2e.test_audit import busy  # noqa: F401 - shared fixture
from tests.helpers import Hierarchy, build_hierarchy, run_cyphrs


def _run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return run_cyphrs(*[str(a) for a in args])


def _checkpoint(h: Hierarchy, out: Path, *extra: str) -> None:
    made = _run(
        "audit", "checkpoint", "--out", out, "--home", h.home, "--passphrase-file", h.inter_pass,
        *extra,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def _fingerprint(cert_path: Path) -> str:
    """The root's fingerprint as openssl prints it (a real, independent oracle)."""
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert_path), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return out.strip().split("=", 1)[1]  # "AB:CD:..."


def _rewrite_history(h: Hierarchy) -> None:
    """Drop the key-compromise revocation and everything that mentions it, then make the
    ledger self-consistent again: chain, stored checkpoint, its event."""
    conn = connect(h.home / "ledger.sqlite3")
    seq, cert_id = conn.execute(
        "SELECT seq, json_extract(details, '$.certificate_id') FROM events"
        " WHERE type = 'certificate.revoked'"
        " AND json_extract(details, '$.reason') = 'key-compromise'"
    ).fetchone()
    conn.execute("DELETE FROM events WHERE type = 'audit.checkpoint'")
    conn.execute("DELETE FROM checkpoints")
    conn.execute("DELETE FROM revocations WHERE certificate_id = ?", (cert_id,))
    conn.execute("UPDATE certificates SET status = 'valid' WHERE id = ?", (cert_id,))
    conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
    rechain(conn)
    conn.close()


def _genuine_names(h: Hierarchy) -> tuple[x509.Name, x509.Name]:
    root = x509.load_pem_x509_certificate(h.root_cert.read_bytes())
    inter = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    return root.subject, inter.subject


def test_forged_history_with_throwaway_ca_fails_against_the_genuine_root(
    busy: Hierarchy,  # noqa: F811
    tmp_path: Path,
) -> None:
    h = busy
    cp = tmp_path / "cp.json"
    _checkpoint(h, cp)
    genuine = _run("audit", "verify", "--root", h.root_cert, "--checkpoint", cp, "--home", h.home)
    assert genuine.returncode == 0, genuine.stderr

    _rewrite_history(h)
    key, inter, fake_root = throwaway_ca(*_genuine_names(h))
    conn = connect(h.home / "ledger.sqlite3")
    forge_checkpoint(conn, key, inter, [fake_root])  # the stored one, with its event
    write_json(cp, forge_checkpoint(conn, key, inter, [fake_root], store=False))
    conn.close()

    # The rewrite is complete: without an anchor nothing is left to catch it ...
    unanchored = _run("audit", "verify", "--home", h.home)
    assert unanchored.returncode == 0, unanchored.stderr
    assert b"checkpoint signatures were NOT verified" in unanchored.stderr
    # ... and an external checkpoint without an anchor is refused, not "verified".
    refused = _run("audit", "verify", "--checkpoint", cp, "--home", h.home)
    assert refused.returncode == ExitCode.USAGE
    assert refused.stderr.count(b"\n") <= 2 and b"needs a trust anchor" in refused.stderr

    for pin in (("--root", h.root_cert), ("--root-fingerprint", _fingerprint(h.root_cert))):
        forged = _run("audit", "verify", *pin, "--checkpoint", cp, "--json", "--home", h.home)
        assert forged.returncode == ExitCode.CHECK_NOT_MET, forged.stderr
        report = json.loads(forged.stdout)
        assert report["checkpoint_signatures_verified"] is True
        problems = report["problems"]
        assert any(p.startswith("stored checkpoint") and "not anchored" in p for p in problems)
        assert any(p.startswith(str(cp)) and "not anchored" in p for p in problems), problems


def test_throwaway_self_signed_signer_fails(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    """The signer is its own self-signed CA that even copies the genuine root's name."""
    h = busy
    root_name, _ = _genuine_names(h)
    key, _, fake_root = throwaway_ca(root_name, root_name)
    conn = connect(h.home / "ledger.sqlite3")
    cp = tmp_path / "cp.json"
    write_json(cp, forge_checkpoint(conn, key, fake_root, [], store=False))
    conn.close()
    result = _run("audit", "verify", "--root", h.root_cert, "--checkpoint", cp, "--home", h.home)
    assert result.returncode == ExitCode.CHECK_NOT_MET
    assert b"signature does not verify" in result.stderr or b"not anchored" in result.stderr


def test_checkpoint_from_a_foreign_intermediate_under_a_foreign_root_fails(
    busy: Hierarchy,  # noqa: F811
    tmp_path: Path,
) -> None:
    other = build_hierarchy(tmp_path / "other")
    cp = tmp_path / "foreign.json"
    _checkpoint(other, cp)
    result = _run(
        "audit", "verify", "--root", busy.root_cert, "--checkpoint", cp, "--json",
        "--home", busy.home,
    )  # fmt: skip
    assert result.returncode == ExitCode.CHECK_NOT_MET
    problems = json.loads(result.stdout)["problems"]
    assert problems == [f"{cp}: signer is not anchored: " + problems[0].split(": ", 2)[2]]
    assert "does not chain to the pinned anchor" in problems[0]
    # Pinning the foreign root instead does not help either: it is not this home's CA.
    result = _run("audit", "verify", "--root", other.root_cert, "--home", busy.home, "--json")
    assert result.returncode == ExitCode.CHECK_NOT_MET
    assert "is not a CA recorded in this ledger" in json.loads(result.stdout)["problems"][0]


def test_genuine_checkpoints_pass_against_root_file_and_fingerprint(
    busy: Hierarchy,  # noqa: F811
    tmp_path: Path,
) -> None:
    inter_cp, root_cp = tmp_path / "inter.json", tmp_path / "root.json"
    _checkpoint(busy, inter_cp)
    made = _run(
        "audit", "checkpoint", "--out", root_cp, "--issuer", "test-root", "--home", busy.home,
        "--passphrase-file", busy.root_pass,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(inter_cp.read_text())["chain"], "the checkpoint carries its chain"
    fingerprint = _fingerprint(busy.root_cert)
    for pin in (
        ("--root", str(busy.root_cert)),
        ("--root-fingerprint", fingerprint),
        ("--root-fingerprint", "sha256:" + fingerprint.replace(":", "").lower()),
    ):
        result = _run(
            "audit", "verify", *pin, "--checkpoint", inter_cp, "--checkpoint", root_cp,
            "--json", "--home", busy.home,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert_valid(report)
        assert report["checkpoint_signatures_verified"] is True
        assert report["anchor"]["fingerprint"] == "sha256:" + fingerprint.replace(":", "").lower()
        assert report["checkpoints_checked"] == 4  # two stored, two given
    human = _run("audit", "verify", "--root", busy.root_cert, "--home", busy.home)
    assert b"Checkpoint signatures verified against sha256:" in human.stdout


def test_wrong_pins_fail(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    cp = tmp_path / "cp.json"
    _checkpoint(busy, cp)
    wrong = "sha256:" + "ab" * 32
    result = _run("audit", "verify", "--root-fingerprint", wrong, "--checkpoint", cp,
                  "--home", busy.home)  # fmt: skip
    assert result.returncode == ExitCode.CHECK_NOT_MET
    for bad in ("sha256:xyz", "1234"):
        result = _run("audit", "verify", "--root-fingerprint", bad, "--home", busy.home)
        assert result.returncode == ExitCode.USAGE
    # A root file and a fingerprint that disagree are a usage error, not a silent choice.
    result = _run("audit", "verify", "--root", busy.root_cert, "--root-fingerprint", wrong,
                  "--home", busy.home)  # fmt: skip
    assert result.returncode == ExitCode.USAGE
    # The intermediate's certificate is a CA too, but a checkpoint signed by the root is
    # not below it: pinning the wrong CA fails the root-signed checkpoint.
    root_cp = tmp_path / "root.json"
    made = _run("audit", "checkpoint", "--out", root_cp, "--issuer", "test-root",
                "--home", busy.home, "--passphrase-file", busy.root_pass)  # fmt: skip
    assert made.returncode == 0
    result = _run("audit", "verify", "--root", busy.inter_cert, "--checkpoint", root_cp,
                  "--home", busy.home)  # fmt: skip
    assert result.returncode == ExitCode.CHECK_NOT_MET


def test_init_root_prints_the_fingerprint_to_pin(tmp_path: Path) -> None:
    pass_file = tmp_path / "p"
    pass_file.write_text("a-long-enough-passphrase\n")
    made = _run(
        "init-root", "--name", "Pin Root", "--key-type", "p256", "--home", tmp_path / "h",
        "--passphrase-file", pass_file, "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    printed = json.loads(made.stdout)["authority"]["fingerprint"]
    der = x509.load_pem_x509_certificate(
        (tmp_path / "h" / "certs" / "pin-root.pem").read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    assert printed == "sha256:" + hashlib.sha256(der).hexdigest()
    verified = _run(
        "audit", "verify", "--root-fingerprint", printed, "--home", tmp_path / "h", "--json"
    )
    assert verified.returncode == 0, verified.stdout


def test_checkpoint_signed_after_its_signer_was_revoked_fails(
    busy: Hierarchy,  # noqa: F811
    tmp_path: Path,
) -> None:
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    _checkpoint(busy, before)
    time.sleep(1.1)  # ledger times are kept to the second
    revoked = _run("revoke", busy.inter_cert, "--reason", "key-compromise", "--home", busy.home)
    assert revoked.returncode == 0, revoked.stderr
    time.sleep(1.1)
    made = _run(
        "audit", "checkpoint", "--out", after, "--home", busy.home,
        "--passphrase-file", busy.inter_pass,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("a revoked intermediate signs no checkpoints at all")
    result = _run(
        "audit", "verify", "--root", busy.root_cert, "--checkpoint", before,
        "--checkpoint", after, "--json", "--home", busy.home,
    )  # fmt: skip
    assert result.returncode == ExitCode.CHECK_NOT_MET
    problems = json.loads(result.stdout)["problems"]
    assert any(
        p.startswith(str(after)) and "signed by a certificate revoked" in p for p in problems
    )
    assert not any(p.startswith(str(before)) for p in problems), problems
