"""A batch killed with SIGKILL the moment its output shows that a group was delivered.

The promise under attack: a line is printed only after its group is recorded and its files
are written and synced, so whatever instant the process dies, every certificate it printed
has all five files, complete and belonging together (certificate with that serial, key of
that certificate, chain of its issuer), and the ledger records it and still verifies.
Groups are made small (``--group-size``) so the kill lands while later groups are being
signed, committed or written. (SIGKILL tests the ordering, not a power cut: the page cache
survives a killed process; the group's ``syncfs`` is what covers power loss.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyphrs_cli.ca.serials import serial_hex
from tests.e2e.test_batch_hardening import _batch_args, _write_batch
from tests.helpers import Hierarchy, run_cyphrs, tool

FILES = {"cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem"}
GROUP = 8


def _public(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("groups_before_kill", [1, 3])
def test_every_printed_certificate_survives_a_kill_right_after_its_group(
    fresh_hierarchy: Hierarchy, tmp_path: Path, groups_before_kill: int
) -> None:
    h = fresh_hierarchy
    out = tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "kill"} for _ in range(GROUP * 12)])
    argv = [tool("cyphrs"), *_batch_args(h, batch, out, "--group-size", str(GROUP))]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ}
    )
    printed: list[dict[str, object]] = []
    try:
        assert proc.stdout is not None
        while len(printed) < GROUP * groups_before_kill:
            line = proc.stdout.readline()
            assert line, "the batch ended before the kill"
            printed.append(json.loads(line))
        os.kill(proc.pid, signal.SIGKILL)  # the instant the group's last line arrived
        rest = proc.stdout.read()  # lines already in the pipe were printed too
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    printed += [json.loads(line) for line in rest.splitlines()]
    assert printed and all(item["ok"] for item in printed)

    issuer = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        recorded = {serial for (serial,) in conn.execute("SELECT serial FROM certificates")}
    for item in printed:
        certificate = item["certificate"]
        assert isinstance(certificate, dict)
        files = certificate["files"]
        assert isinstance(files, dict)
        directory = Path(str(files["certificate"])).parent
        assert {p.name for p in directory.iterdir()} == FILES
        cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
        assert serial_hex(cert.serial_number) == certificate["serial"] in recorded
        assert _public((directory / "key.pem").read_bytes()) == cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        chain = x509.load_pem_x509_certificates((directory / "chain.pem").read_bytes())
        assert chain[0] == issuer
        cert.verify_directly_issued_by(issuer)
        full = x509.load_pem_x509_certificates((directory / "fullchain.pem").read_bytes())
        assert full[0] == cert and full[1:] == chain
    # Nothing unrecorded was written: every directory with a certificate is in the ledger.
    for cert_file in out.rglob("cert.pem"):
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert serial_hex(cert.serial_number) in recorded
    verify = run_cyphrs("audit", "verify", "--home", str(h.home))
    assert verify.returncode == 0, verify.stderr.decode()


def test_group_size_is_checked_and_only_for_batches(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "gs"}])
    for bad in ("0", "4097", "x"):
        proc = run_cyphrs(*_batch_args(h, batch, tmp_path / "o", "--group-size", bad))
        assert proc.returncode == 2, proc.stderr
    alone = run_cyphrs(
        "issue", "agent", "--workflow", "gs", "--json", "--group-size", "4",
        "--home", str(h.home), "--passphrase-file", str(h.inter_pass),
    )  # fmt: skip
    assert alone.returncode == 2 and b"--group-size" in alone.stderr
