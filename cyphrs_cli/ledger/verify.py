"""``audit verify``: prove the ledger is what its hash chain says it is.

Checks, in order, and reports every problem (the first broken link first):
1. the event chain: contiguous ``seq``, each ``prev_hash`` the previous ``hash``, each
   ``hash`` recomputed from the event body, each ``params_hash`` from its details;
2. certificate rows against their issuance events (``row_digest``): edited, deleted or
   unrecorded rows;
3. derived state against the events: revocations and ``superseded`` statuses;
4. checkpoints (stored, and any given from outside): the checkpointed event still exists
   with the same hash, and the signature verifies; a checkpoint beyond the end of the
   ledger means the tail was truncated.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cyphrs_cli.ledger.events import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    event_body,
    sha256_hex,
)
from cyphrs_cli.ledger.records import row_digest

ISSUANCE_EVENTS = (
    "authority.created",
    "authority.imported",
    "certificate.issued",
    "certificate.renewed",
)


@dataclass
class LedgerVerification:
    events: int = 0
    certificates: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events,
            "certificates_checked": self.certificates,
            "checkpoints_checked": self.checkpoints,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
        }


def _walk_chain(conn: sqlite3.Connection, report: LedgerVerification) -> dict[int, str]:
    """Verify links; returns {seq: hash} for the verified prefix."""
    hashes: dict[int, str] = {}
    expected_seq, prev = 1, GENESIS_HASH
    for row in conn.execute("SELECT * FROM events ORDER BY seq"):
        report.events += 1
        seq = row["seq"]
        if seq != expected_seq:
            report.problems.append(f"event seq {expected_seq} is missing (next present: {seq})")
            return hashes
        if row["prev_hash"] != prev:
            report.problems.append(f"event seq {seq}: prev_hash does not link to event {seq - 1}")
            return hashes
        try:
            body = event_body(row)
        except json.JSONDecodeError:
            report.problems.append(f"event seq {seq}: details are not valid JSON")
            return hashes
        if sha256_hex(canonical_json(body["details"])) != row["params_hash"]:
            report.problems.append(f"event seq {seq}: details do not match params_hash")
            return hashes
        if chain_hash(prev, body) != row["hash"]:
            report.problems.append(f"event seq {seq}: hash does not match its content")
            return hashes
        hashes[seq] = row["hash"]
        prev, expected_seq = row["hash"], seq + 1
        report.head_seq, report.head_hash = seq, row["hash"]
    return hashes


def _details_by_type(
    conn: sqlite3.Connection, types: tuple[str, ...]
) -> list[tuple[int, dict[str, Any]]]:
    marks = ",".join("?" for _ in types)
    out = []
    for row in conn.execute(
        f"SELECT seq, details FROM events WHERE type IN ({marks}) ORDER BY seq",  # noqa: S608
        types,
    ):
        try:
            out.append((row["seq"], json.loads(row["details"])))
        except json.JSONDecodeError:
            continue
    return out


def _check_certificates(conn: sqlite3.Connection, report: LedgerVerification) -> None:
    issued = {d["certificate_id"]: (seq, d) for seq, d in _details_by_type(conn, ISSUANCE_EVENTS)}
    seen: set[int] = set()
    for row in conn.execute("SELECT * FROM certificates ORDER BY id"):
        report.certificates += 1
        seen.add(row["id"])
        event = issued.get(row["id"])
        if event is None:
            report.problems.append(
                f"certificate id {row['id']} (serial {row['serial']}) has no issuance event"
            )
        elif row_digest(row) != event[1].get("row_digest"):
            report.problems.append(
                f"certificate id {row['id']} (serial {row['serial']}) does not match its"
                f" issuance event seq {event[0]}"
            )
    for cert_id, (seq, details) in sorted(issued.items()):
        if cert_id not in seen:
            report.problems.append(
                f"certificate id {cert_id} (serial {details.get('serial')}) recorded by event"
                f" seq {seq} is missing"
            )

    revoked = {d["certificate_id"]: d for _, d in _details_by_type(conn, ("certificate.revoked",))}
    superseded = {
        d["replaces_id"]
        for _, d in _details_by_type(conn, ("certificate.renewed",))
        if d.get("replaces_id")
    }
    stored = {
        r["certificate_id"]: (r["revoked_at"], r["reason"])
        for r in conn.execute("SELECT * FROM revocations")
    }
    for cert_id, details in revoked.items():
        if stored.get(cert_id) != (details["revoked_at"], details["reason"]):
            report.problems.append(
                f"revocation of certificate id {cert_id} (serial {details['serial']}) does not"
                " match its event"
            )
    for cert_id in stored.keys() - revoked.keys():
        report.problems.append(f"revocation of certificate id {cert_id} has no event")
    for row in conn.execute("SELECT id, serial, status FROM certificates"):
        expected = (
            "revoked"
            if row["id"] in revoked
            else "superseded"
            if row["id"] in superseded
            else "valid"
        )
        if row["status"] != expected:
            report.problems.append(
                f"certificate id {row['id']} (serial {row['serial']}) has status {row['status']!r};"
                f" its events say {expected!r}"
            )


def check_checkpoint(
    checkpoint: dict[str, Any], hashes: dict[int, str], report: LedgerVerification, *, source: str
) -> None:
    """A checkpoint's event must still exist with the same hash, and its signature verify."""
    from cryptography import x509

    from cyphrs_cli.ca.signing import verify_document

    report.checkpoints += 1
    body = {k: v for k, v in checkpoint.items() if k not in ("signature", "certificate")}
    seq, head = body.get("seq"), body.get("head_hash")
    try:
        cert = x509.load_pem_x509_certificate(checkpoint["certificate"].encode())
        signed = verify_document(cert, canonical_json(body), checkpoint["signature"])
    except (KeyError, ValueError, TypeError):
        signed = False
    if not signed:
        report.problems.append(f"{source}: signature does not verify")
        return
    if not isinstance(seq, int) or seq > report.head_seq:
        report.problems.append(
            f"{source}: covers event seq {seq} but the verified ledger ends at seq"
            f" {report.head_seq} (truncated or rewritten)"
        )
    elif hashes.get(seq) != head:
        report.problems.append(f"{source}: event seq {seq} no longer has the checkpointed hash")


def verify_ledger(
    conn: sqlite3.Connection, external_checkpoints: Sequence[tuple[str, dict[str, Any]]] = ()
) -> LedgerVerification:
    report = LedgerVerification()
    hashes = _walk_chain(conn, report)
    _check_certificates(conn, report)
    for row in conn.execute("SELECT * FROM checkpoints ORDER BY id"):
        try:
            document = json.loads(row["document"])
        except json.JSONDecodeError:
            report.problems.append(f"stored checkpoint {row['id']}: unreadable")
            continue
        check_checkpoint(document, hashes, report, source=f"stored checkpoint {row['id']}")
    for source, document in external_checkpoints:
        check_checkpoint(document, hashes, report, source=source)
    return report
