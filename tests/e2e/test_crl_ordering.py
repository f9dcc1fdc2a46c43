"""A published CRL file never goes backwards.

The race: publisher A allocates CRL #1 and is slow to sign (``CYPHRS_TEST_DELAY`` at the
``crl-after-allocate`` point); meanwhile a certificate is revoked for key compromise and
publisher B produces CRL #2 listing it. Unserialised, A finishes last and replaces #2 by
#1 in ``crls/``, and ``openssl verify -crl_check`` accepts the revoked certificate again.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, cli, openssl_verify, tool


def _start_crl(h: Hierarchy, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [tool("cyphrs"), "crl", "--home", str(h.home), "--passphrase-file", str(h.inter_pass)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _crl_rows(h: Hierarchy) -> int:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (count,) = conn.execute("SELECT count(*) FROM crls").fetchone()
    return int(count)


def _crl_number(path: Path) -> str:
    proc = subprocess.run(
        ["openssl", "crl", "-in", str(path), "-noout", "-crlnumber"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def _issue(h: Hierarchy, out: Path, instance: str) -> Path:
    issued = h.issue(
        "agent", "--workflow", "crl-race", "--instance", instance, "--out-dir", str(out)
    )
    assert issued.exit_code == 0, issued.stderr
    return out


def _refused(h: Hierarchy, leaf: Path) -> subprocess.CompletedProcess[str]:
    return openssl_verify(
        h.root_cert,
        h.inter_cert,
        leaf / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(h.home / "crls" / "test-inter.crl.pem"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(2))
def test_slow_publisher_never_replaces_a_newer_crl(
    fresh_hierarchy: Hierarchy, tmp_path: Path, round_: int
) -> None:
    h = fresh_hierarchy
    leaf = _issue(h, tmp_path / "leaf", f"i{round_}")
    slow = _start_crl(h, {"CYPHRS_TEST_DELAY": "crl-after-allocate=3"})
    try:
        deadline = time.monotonic() + 60
        while _crl_rows(h) < 1:  # A has allocated (and committed) its number
            assert slow.poll() is None, slow.communicate()
            assert time.monotonic() < deadline, "the slow publisher never allocated"
            time.sleep(0.05)
        revoked = cli(
            "revoke", str(leaf / "cert.pem"), "--reason", "key-compromise", "--home", str(h.home)
        )
        assert revoked.exit_code == 0, revoked.stderr
        fast = _start_crl(h)
        _, fast_err = fast.communicate(timeout=120)
    finally:
        _, slow_err = slow.communicate(timeout=120)
    assert fast.returncode == 0, fast_err
    assert slow.returncode == 0, slow_err
    for name in ("test-inter.crl.pem", "test-inter.crl"):
        assert _crl_number(h.home / "crls" / name) == "crlNumber=0x02"
    proc = _refused(h, leaf)
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr


def _publish(h: Hierarchy) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [tool("cyphrs"), "crl", "--home", str(h.home), "--passphrase-file", str(h.inter_pass)],
        capture_output=True,
        check=False,
    )


def test_an_older_ledger_cannot_overwrite_a_newer_published_crl(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A ledger restored from an older copy allocates numbers already published: the CRL
    is recorded but the file with the higher number stays (exit 7)."""
    h = fresh_hierarchy
    leaf = _issue(h, tmp_path / "leaf", "restored")
    assert _publish(h).returncode == 0
    backup = tmp_path / "ledger-after-crl-1.sqlite3"
    with sqlite3.connect(h.home / "ledger.sqlite3") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    assert cli("revoke", str(leaf / "cert.pem"), "--home", str(h.home)).exit_code == 0
    assert _publish(h).returncode == 0
    assert _publish(h).returncode == 0
    published = (h.home / "crls" / "test-inter.crl.pem").read_bytes()
    for suffix in ("-wal", "-shm"):
        (h.home / f"ledger.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, h.home / "ledger.sqlite3")
    stale = _publish(h)
    assert stale.returncode == ExitCode.CONFLICT, stale.stderr
    assert b"CRL #3" in stale.stderr and b"left in place" in stale.stderr
    assert (h.home / "crls" / "test-inter.crl.pem").read_bytes() == published
    assert _crl_number(h.home / "crls" / "test-inter.crl") == "crlNumber=0x03"
    assert _refused(h, leaf).returncode != 0


def test_a_foreign_crl_with_a_huge_number_cannot_pin_the_file(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Only a CRL this issuer signed can hold the number up: a forged one is replaced."""
    h = fresh_hierarchy
    assert _publish(h).returncode == 0
    key = tmp_path / "forger.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        stdout=key.open("wb"),
        check=True,
    )
    forged = _forged_crl(h, key, tmp_path)
    shutil.copyfile(forged, h.home / "crls" / "test-inter.crl.pem")
    assert _crl_number(h.home / "crls" / "test-inter.crl.pem") == "crlNumber=0x7FFFFFFF"
    assert _publish(h).returncode == 0
    assert _crl_number(h.home / "crls" / "test-inter.crl.pem") == "crlNumber=0x02"


def _forged_crl(h: Hierarchy, key: Path, tmp_path: Path) -> Path:
    """A CRL with the intermediate's name and number 0x7FFFFFFF, signed by another key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    signer = serialization.load_pem_private_key(key.read_bytes(), password=None)
    inter = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    now = inter.not_valid_before_utc
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(inter.subject)
        .last_update(now)
        .next_update(inter.not_valid_after_utc)
        .add_extension(x509.CRLNumber(0x7FFFFFFF), critical=False)
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = tmp_path / "forged.crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.slow
def test_many_concurrent_publishers_leave_the_highest_number(fresh_hierarchy: Hierarchy) -> None:
    """Four publishers, the earlier ones slower (1.2 s, 0.8 s, 0.4 s, none after allocating):
    whatever order they finish in, the files hold the highest number the ledger allocated."""
    h = fresh_hierarchy
    for _ in range(2):
        procs = []
        try:
            for delay in ("1.2", "0.8", "0.4", "0"):
                procs.append(_start_crl(h, {"CYPHRS_TEST_DELAY": f"crl-after-allocate={delay}"}))
                time.sleep(0.3)
        finally:
            results = [(p, *p.communicate(timeout=120)) for p in procs]
        assert [p.returncode for p, _, _ in results] == [0] * 4, [e for _, _, e in results]
        with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
            (highest,) = conn.execute("SELECT max(number) FROM crls").fetchone()
        for name in ("test-inter.crl.pem", "test-inter.crl"):
            assert _crl_number(h.home / "crls" / name) == f"crlNumber=0x{highest:02X}"
