"""What an attacker who can write the ledger file does: rewrite events and recompute the
whole chain, forge checkpoints with a throwaway CA, append events with odd details.

Shared by the audit attack tests; nothing here is a mock: these are real SQLite writes
and real signatures, with the project's own hashing code (an attacker has it too).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cyphrs_cli.ca.signing import sign_document
from cyphrs_cli.ledger.events import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    event_body,
    rfc3339,
    sha256_hex,
)


def connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def rechain(conn: sqlite3.Connection) -> None:
    """Renumber the remaining events 1..n and recompute every link and hash."""
    rows = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    conn.execute("DELETE FROM events")
    prev = GENESIS_HASH
    for seq, row in enumerate(rows, start=1):
        body = event_body(row)
        body["seq"] = seq
        digest = chain_hash(prev, body)
        conn.execute(
            "INSERT INTO events (seq, at, type, actor, host, outcome, target, params_hash,"
            " details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                seq,
                row["at"],
                row["type"],
                row["actor"],
                row["host"],
                row["outcome"],
                row["target"],
                row["params_hash"],
                row["details"],
                prev,
                digest,
            ),
        )
        prev = digest


def append_raw(conn: sqlite3.Connection, type_: str, details: Any) -> int:
    """Append an event whose details may be any JSON value, with a valid chain hash."""
    head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (head["seq"] + 1, head["hash"]) if head else (1, GENESIS_HASH)
    body = {
        "seq": seq,
        "at": rfc3339(datetime.now(UTC)),
        "type": type_,
        "actor": "mallory",
        "host": "h",
        "outcome": "success",
        "target": None,
        "params_hash": sha256_hex(canonical_json(details)),
        "details": details,
    }
    conn.execute(
        "INSERT INTO events (seq, at, type, actor, host, outcome, target, params_hash, details,"
        " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            seq,
            body["at"],
            type_,
            "mallory",
            "h",
            "success",
            None,
            body["params_hash"],
            canonical_json(details).decode(),
            prev,
            chain_hash(prev, body),
        ),
    )
    return seq


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = True,
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def throwaway_ca(
    root_subject: x509.Name, inter_subject: x509.Name
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    """A look-alike hierarchy: same names as the genuine one, keys the attacker owns."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(root_subject, root_subject, root_key, root_key)
    inter = _cert(inter_subject, root_subject, inter_key, root_key)
    return inter_key, inter, root


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def forge_checkpoint(
    conn: sqlite3.Connection,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    *,
    store: bool = True,
) -> dict[str, Any]:
    """A checkpoint over the current head, signed with ``key``; stored with its event
    exactly as cyphrs stores one, so everything but the signer's anchor is consistent."""
    head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    body = {
        "schema": "cyphrs.checkpoint/v1",
        "seq": head["seq"],
        "head_hash": head["hash"],
        "at": rfc3339(datetime.now(UTC)),
        "authority": "test-inter",
    }
    document = {
        **body,
        "signature": sign_document(key, canonical_json(body)),
        "certificate": pem(cert),
        "chain": [pem(c) for c in chain],
    }
    if store:
        stored = canonical_json(document).decode()
        checkpoint_id = conn.execute(
            "INSERT INTO checkpoints (seq, head_hash, at, authority, document) VALUES (?,?,?,?,?)",
            (body["seq"], body["head_hash"], body["at"], "test-inter", stored),
        ).lastrowid
        append_raw(
            conn,
            "audit.checkpoint",
            {
                "seq": body["seq"],
                "head_hash": body["head_hash"],
                "authority": "test-inter",
                "checkpoint_id": checkpoint_id,
                "document_sha256": sha256_hex(stored.encode()),
            },
        )
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
