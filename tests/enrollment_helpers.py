"""Shared by the enrollment tests: CSRs made with real keys, ledger counters, and an
``audit verify`` of a home."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.config.settings import load_config
from cyphrs_cli.ledger.verify import HomeFacts, verify_ledger


def make_csr(
    *sans: x509.GeneralName, common_name: str = "agent"
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A P-256 key and a CSR for it, signed by it, with the given SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), key


def count(home: CaHome | Path, sql: str, *params: object) -> int:
    path = home.ledger_path if isinstance(home, CaHome) else home
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql, params).fetchone()[0])


def events(home: CaHome, kind: str, like: str = "%") -> int:
    return count(home, "SELECT count(*) FROM events WHERE type = ? AND details LIKE ?", kind, like)


def audit_problems(home: CaHome) -> list[str]:
    with sqlite3.connect(home.ledger_path) as conn:
        conn.row_factory = sqlite3.Row
        report = verify_ledger(conn, home=HomeFacts.of(home, load_config(home)))
    return report.problems


def run_replayers(script: str, home: CaHome, token: str, processes: int, go: Path) -> list[Any]:
    """Run ``script`` in ``processes`` Python processes on ``home``: each gets the token and
    the intermediate's passphrase on stdin (never argv), prints ``ready`` once it has
    opened and unlocked, and starts when the file ``go`` appears (created here once every
    process is ready); returns their JSON outputs concatenated. Every process is stopped
    by its PID before this returns."""
    from tests.helpers import INTER_PASS

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(home.root), str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{token}\n{INTER_PASS}\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        results: list[Any] = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            results += json.loads(stdout)
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
