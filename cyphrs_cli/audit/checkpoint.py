"""Signed checkpoints: (sequence, head hash, time) signed by a CA key.

A checkpoint handed out of the CA (in an export bundle, to a log, to a reviewer) makes
any later truncation or rewrite of the ledger up to that point detectable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cyphrs_cli.ledger.events import LedgerEvent, append_event, canonical_json, rfc3339, utc_now

if TYPE_CHECKING:
    from cyphrs_cli.ca.models import Issuer
    from cyphrs_cli.ledger.db import Ledger


def create_checkpoint(ledger: Ledger, signer: Issuer) -> dict[str, Any]:
    """Sign the current head inside the write lock, store it, and log that we did."""
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.signing import sign_document

    assert signer.certificate is not None
    with ledger.transaction() as conn:
        head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        body = {
            "schema": "cyphrs.checkpoint/v1",
            "seq": head["seq"],
            "head_hash": head["hash"],
            "at": rfc3339(utc_now()),
            "authority": signer.name,
        }
        document = {
            **body,
            "signature": sign_document(signer.signer, canonical_json(body)),
            "certificate": signer.certificate.public_bytes(serialization.Encoding.PEM).decode(),
        }
        conn.execute(
            "INSERT INTO checkpoints (seq, head_hash, at, authority, document) VALUES (?,?,?,?,?)",
            (
                body["seq"],
                body["head_hash"],
                body["at"],
                signer.name,
                canonical_json(document).decode(),
            ),
        )
        append_event(
            conn,
            LedgerEvent(
                type="audit.checkpoint",
                target=f"event:{body['seq']}",
                details={
                    "seq": body["seq"],
                    "head_hash": body["head_hash"],
                    "authority": signer.name,
                },
            ),
        )
    return document
