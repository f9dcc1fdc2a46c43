"""``audit verify``: prove the ledger is what its hash chain says it is.

Checks, in order, and reports every problem (the first broken link first):
0. the file itself: ``PRAGMA integrity_check`` and ``foreign_key_check``; a ledger that
   records no CA (or lacks one) while the home's config lists CAs was wiped or recreated;
1. the event chain: contiguous ``seq``, each ``prev_hash`` the previous ``hash``, each
   ``hash`` recomputed from the event body, each ``params_hash`` from its details;
2. every table against the events that wrote it: ``certificates`` (``row_digest``),
   ``authorities`` (``authority_digest``: key URI, key storage and attributes, trust
   domain, certificate id...), ``revocations`` and statuses, ``crls`` (number, times and
   SHA-256 per ``crl.published`` event; numbers strictly increase per issuer), stored
   ``checkpoints`` (``document_sha256`` per ``audit.checkpoint`` event); a row without
   its event, an event without its row, or a row that differs are all problems;
3. checkpoints (stored, and any given from outside): the checkpointed event still exists
   with the same hash; a checkpoint beyond the end of the ledger means the tail was
   truncated. Signatures are verified only against a trust anchor pinned from outside
   the ledger (see ``cyphrs_cli.audit.checkpoint``); without one the report says that
   checkpoint signatures were not verified.

Event details are data an attacker may have written: every field is type-checked, and a
malformed one is a reported problem, never a crash.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.ledger.events import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    event_body,
    sha256_hex,
)
from cyphrs_cli.ledger.records import authority_digest, row_digest

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.audit.checkpoint import TrustAnchor
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.config.settings import HomeConfig

ISSUANCE_EVENTS = (
    "authority.created",
    "authority.imported",
    "certificate.issued",
    "certificate.renewed",
)
AUTHORITY_EVENTS = ("authority.created", "authority.imported")


@dataclass
class LedgerVerification:
    events: int = 0
    certificates: int = 0
    authorities: int = 0
    crls: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints: int = 0
    anchor: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def signatures_verified(self) -> bool:
        return self.anchor is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events,
            "certificates_checked": self.certificates,
            "authorities_checked": self.authorities,
            "crls_checked": self.crls,
            "checkpoints_checked": self.checkpoints,
            "checkpoint_signatures_verified": self.signatures_verified,
            "anchor": self.anchor,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    details: dict[str, Any]


@dataclass(frozen=True)
class HomeAuthority:
    """One authority as ``config.toml`` and its certificate file describe it."""

    name: str
    key_uri: str
    cert_fingerprint: str | None  # None: the file is missing or unreadable


@dataclass(frozen=True)
class HomeFacts:
    """What the CA home says exists, independently of the ledger: the authorities named
    in ``config.toml`` (with their certificate files) and whether CA files are present.
    The ledger is the record; these files must agree with it."""

    authorities: tuple[HomeAuthority, ...] = ()
    has_ca_files: bool = False

    @classmethod
    def of(cls, home: CaHome, config: HomeConfig) -> HomeFacts:
        from cryptography.hazmat.primitives import serialization

        from cyphrs_cli.ca.parsing import load_certificates
        from cyphrs_cli.errors import InvalidInputError

        entries = []
        for name, entry in sorted(config.authorities.items()):
            path = home.resolve(entry.cert_path)
            try:
                cert = load_certificates(path.read_bytes(), source=str(path))[0]
                der = cert.public_bytes(serialization.Encoding.DER)
                fp: str | None = sha256_hex(der)
            except (OSError, InvalidInputError, IndexError):
                fp = None
            entries.append(HomeAuthority(name, entry.key_uri, fp))
        certs_dir = home.certs_dir
        return cls(
            authorities=tuple(entries),
            has_ca_files=certs_dir.is_dir() and any(certs_dir.glob("*.pem")),
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
        except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
            report.problems.append(f"event seq {seq}: details are not valid JSON")
            return hashes
        try:
            intact_details = sha256_hex(canonical_json(body["details"])) == row["params_hash"]
            intact = chain_hash(prev, body) == row["hash"]
        except (TypeError, ValueError):
            report.problems.append(f"event seq {seq}: unreadable content")
            return hashes
        if not intact_details:
            report.problems.append(f"event seq {seq}: details do not match params_hash")
            return hashes
        if not intact:
            report.problems.append(f"event seq {seq}: hash does not match its content")
            return hashes
        hashes[seq] = row["hash"]
        prev, expected_seq = row["hash"], seq + 1
        report.head_seq, report.head_hash = seq, row["hash"]
    return hashes


def _load_events(conn: sqlite3.Connection, report: LedgerVerification) -> list[Event]:
    """Every event with JSON-object details; others are reported once, here."""
    events = []
    for row in conn.execute("SELECT seq, type, details FROM events ORDER BY seq"):
        try:
            details = json.loads(row["details"])
        except (json.JSONDecodeError, TypeError, RecursionError):
            details = None
        if not isinstance(details, dict):
            report.problems.append(
                f"event seq {row['seq']} ({row['type']}): details are not a JSON object"
            )
            continue
        events.append(Event(row["seq"], str(row["type"]), details))
    return events


def _malformed(report: LedgerVerification, event: Event, missing: str) -> None:
    report.problems.append(
        f"event seq {event.seq} ({event.type}): malformed details ({missing} missing or"
        " of the wrong type)"
    )


def _of_type(events: list[Event], *types: str) -> list[Event]:
    return [e for e in events if e.type in types]


def _check_certificates(
    conn: sqlite3.Connection, events: list[Event], report: LedgerVerification
) -> None:
    issued: dict[int, tuple[int, dict[str, Any]]] = {}
    for event in _of_type(events, *ISSUANCE_EVENTS):
        cert_id = _int(event.details.get("certificate_id"))
        if cert_id is None:
            _malformed(report, event, "certificate_id")
            continue
        issued[cert_id] = (event.seq, event.details)
    seen: set[int] = set()
    for row in conn.execute("SELECT * FROM certificates ORDER BY id"):
        report.certificates += 1
        seen.add(row["id"])
        found = issued.get(row["id"])
        if found is None:
            report.problems.append(
                f"certificate id {row['id']} (serial {row['serial']}) has no issuance event"
            )
        elif row_digest(row) != found[1].get("row_digest"):
            report.problems.append(
                f"certificate id {row['id']} (serial {row['serial']}) does not match its"
                f" issuance event seq {found[0]}"
            )
    for cert_id, (seq, details) in sorted(issued.items()):
        if cert_id not in seen:
            report.problems.append(
                f"certificate id {cert_id} (serial {details.get('serial')}) recorded by event"
                f" seq {seq} is missing"
            )

    revoked: dict[int, dict[str, Any]] = {}
    for event in _of_type(events, "certificate.revoked"):
        cert_id = _int(event.details.get("certificate_id"))
        if cert_id is None or _str(event.details.get("revoked_at")) is None:
            _malformed(report, event, "certificate_id/revoked_at")
            continue
        revoked[cert_id] = event.details
    superseded = {
        _int(e.details.get("replaces_id"))
        for e in _of_type(events, "certificate.renewed")
        if e.details.get("replaces_id") is not None
    }
    stored = {
        r["certificate_id"]: (r["revoked_at"], r["reason"])
        for r in conn.execute("SELECT * FROM revocations")
    }
    for cert_id, details in revoked.items():
        if stored.get(cert_id) != (details.get("revoked_at"), details.get("reason")):
            report.problems.append(
                f"revocation of certificate id {cert_id} (serial {details.get('serial')}) does"
                " not match its event"
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


def _check_authorities(
    conn: sqlite3.Connection, events: list[Event], report: LedgerVerification
) -> None:
    """Each authority row must equal the digest its latest recording event carries.

    Any event whose details hold ``authority_id`` and ``authority_digest`` (re)states an
    authority row, so a later recorded change to an authority stays verifiable.
    """
    expected: dict[int, tuple[int, str]] = {}
    for event in events:
        if "authority_digest" not in event.details and event.type not in AUTHORITY_EVENTS:
            continue
        authority_id = _int(event.details.get("authority_id"))
        digest = _str(event.details.get("authority_digest"))
        if authority_id is None or digest is None:
            name = event.details.get("authority")
            report.problems.append(
                f"event seq {event.seq} ({event.type}) carries no valid authority digest, so"
                f" authority {name!r} cannot be verified (recorded by an older cyphrs?)"
            )
            continue
        expected[authority_id] = (event.seq, digest)
    seen: set[int] = set()
    for row in conn.execute("SELECT * FROM authorities ORDER BY id"):
        report.authorities += 1
        seen.add(row["id"])
        found = expected.get(row["id"])
        label = f"authority {row['name']!r} (id {row['id']})"
        if found is None:
            report.problems.append(f"{label} has no creation event")
        elif authority_digest(row) != found[1]:
            report.problems.append(
                f"{label} does not match its event seq {found[0]} (key URI, key storage or"
                " attributes, trust domain, certificate or other columns were edited)"
            )
    for authority_id, (seq, _) in sorted(expected.items()):
        if authority_id not in seen:
            report.problems.append(
                f"authority id {authority_id} recorded by event seq {seq} is missing"
            )


def _crl_sha256(pem: Any) -> str | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not isinstance(pem, str):
        return None
    try:
        crl = x509.load_pem_x509_crl(pem.encode())
    except ValueError:
        return None
    return sha256_hex(crl.public_bytes(serialization.Encoding.DER))


def _check_crls(conn: sqlite3.Connection, events: list[Event], report: LedgerVerification) -> None:
    """Every published CRL row matches its event; numbers strictly increase per issuer."""
    ids = {r["name"]: r["id"] for r in conn.execute("SELECT id, name FROM authorities")}
    names = {v: k for k, v in ids.items()}
    rows = {(r["authority_id"], r["number"]): r for r in conn.execute("SELECT * FROM crls")}
    last: dict[str, int] = {}
    published: set[tuple[int, int]] = set()
    for event in _of_type(events, "crl.published"):
        d = event.details
        authority, number = _str(d.get("authority")), _int(d.get("number"))
        if authority is None or number is None or _str(d.get("sha256")) is None:
            _malformed(report, event, "authority/number/sha256")
            continue
        if number <= last.get(authority, 0):
            report.problems.append(
                f"CRL number {number} of {authority!r} (event seq {event.seq}) does not"
                f" increase on number {last[authority]}: CRL rows were deleted or reused"
            )
        last[authority] = max(number, last.get(authority, 0))
        authority_id = ids.get(authority)
        row = rows.get((authority_id, number)) if authority_id is not None else None
        label = f"CRL number {number} of {authority!r}"
        if row is None:
            report.problems.append(f"{label} recorded by event seq {event.seq} is missing")
            continue
        published.add((row["authority_id"], number))
        if (
            row["pem"] is None
            or (row["this_update"], row["next_update"])
            != (d.get("this_update"), d.get("next_update"))
            or _crl_sha256(row["pem"]) != d["sha256"]
        ):
            report.problems.append(f"{label} does not match its event seq {event.seq}")
    for (authority_id, number), row in sorted(rows.items(), key=lambda kv: kv[1]["id"]):
        report.crls += 1
        # A row without a CRL is a number allocated by a publication that failed before
        # signing; it was never handed out. A row with a CRL must have been recorded.
        if row["pem"] is not None and (authority_id, number) not in published:
            report.problems.append(
                f"CRL number {number} of {names.get(authority_id, authority_id)!r}"
                f" (row {row['id']}) has no crl.published event"
            )


def _check_stored_checkpoints(
    conn: sqlite3.Connection, events: list[Event], report: LedgerVerification
) -> list[tuple[str, Any]]:
    """Rows of ``checkpoints`` against their ``audit.checkpoint`` events; returns the
    stored documents for the signature and chain checks."""
    recorded: dict[int, tuple[int, str]] = {}
    for event in _of_type(events, "audit.checkpoint"):
        checkpoint_id = _int(event.details.get("checkpoint_id"))
        digest = _str(event.details.get("document_sha256"))
        if checkpoint_id is None or digest is None:
            report.problems.append(
                f"event seq {event.seq} (audit.checkpoint) carries no valid checkpoint digest"
                " (recorded by an older cyphrs?)"
            )
            continue
        recorded[checkpoint_id] = (event.seq, digest)
    documents: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for row in conn.execute("SELECT * FROM checkpoints ORDER BY id"):
        seen.add(row["id"])
        label = f"stored checkpoint {row['id']}"
        found = recorded.get(row["id"])
        text = row["document"]
        if found is None:
            report.problems.append(f"{label} has no audit.checkpoint event")
        elif not isinstance(text, str) or sha256_hex(text.encode()) != found[1]:
            report.problems.append(f"{label} does not match its event seq {found[0]}")
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, TypeError, RecursionError):
            report.problems.append(f"{label}: unreadable")
            continue
        if not isinstance(document, dict) or (
            document.get("seq"),
            document.get("head_hash"),
            document.get("at"),
            document.get("authority"),
        ) != (row["seq"], row["head_hash"], row["at"], row["authority"]):
            report.problems.append(f"{label}: its columns differ from its signed document")
        documents.append((label, document))
    for checkpoint_id, (seq, _) in sorted(recorded.items()):
        if checkpoint_id not in seen:
            report.problems.append(
                f"stored checkpoint {checkpoint_id} recorded by event seq {seq} is missing"
            )
    return documents


def _check_home(conn: sqlite3.Connection, home: HomeFacts, report: LedgerVerification) -> None:
    """A ledger that lost CAs the home still has was wiped, truncated or recreated; a
    config entry or certificate file that differs from the ledger was swapped."""
    rows = {
        r["name"]: r
        for r in conn.execute(
            "SELECT a.name, a.key_uri, c.fingerprint FROM authorities a"
            " LEFT JOIN certificates c ON c.id = a.certificate_id"
        )
    }
    if not rows and (home.authorities or home.has_ca_files):
        report.problems.append(
            "the ledger records no CA but this home has CAs (config.toml / certs/):"
            " the ledger was wiped or recreated"
        )
        return
    for entry in home.authorities:
        row = rows.get(entry.name)
        if row is None:
            report.problems.append(
                f"authority {entry.name!r} is in config.toml but not in the ledger"
                " (ledger replaced or recreated?)"
            )
            continue
        if entry.key_uri != row["key_uri"]:
            report.problems.append(
                f"authority {entry.name!r}: config.toml names a different key than the ledger"
            )
        stored = str(row["fingerprint"] or "").removeprefix("sha256:").replace(":", "").lower()
        if entry.cert_fingerprint is None:
            report.problems.append(
                f"authority {entry.name!r}: its certificate file is missing or unreadable"
            )
        elif entry.cert_fingerprint != stored:
            report.problems.append(
                f"authority {entry.name!r}: its certificate file differs from the ledger's"
            )


def check_checkpoint(
    checkpoint: Any,
    hashes: dict[int, str],
    report: LedgerVerification,
    *,
    source: str,
    anchor: TrustAnchor | None,
    candidates: list[x509.Certificate],
    revoked: dict[str, str] | None = None,
) -> None:
    """A checkpoint's event must still exist with the same hash; with an anchor, its
    signer must path-validate to the anchor and must not have been revoked (as this
    ledger records it) when it signed."""
    from cyphrs_cli.audit.checkpoint import checkpoint_problem

    report.checkpoints += 1
    if anchor is not None:
        problem = checkpoint_problem(checkpoint, anchor, candidates)
        if problem is None:
            problem = _revoked_signer(checkpoint, revoked or {})
        if problem is not None:
            report.problems.append(f"{source}: {problem}")
            return
    if not isinstance(checkpoint, dict):
        report.problems.append(f"{source}: not a checkpoint document")
        return
    seq, head = _int(checkpoint.get("seq")), checkpoint.get("head_hash")
    if seq is None or seq > report.head_seq:
        report.problems.append(
            f"{source}: covers event seq {checkpoint.get('seq')} but the verified ledger"
            f" ends at seq {report.head_seq} (truncated or rewritten)"
        )
    elif hashes.get(seq) != head:
        report.problems.append(f"{source}: event seq {seq} no longer has the checkpointed hash")


def _revoked_signer(checkpoint: dict[str, Any], revoked: dict[str, str]) -> str | None:
    """A signer this ledger records as revoked before the checkpoint's time (an anchored
    checkpoint is well-formed, so its certificate and time parse)."""
    from cryptography import x509

    from cyphrs_cli.audit.checkpoint import fingerprint
    from cyphrs_cli.times import parse_time

    signer = x509.load_pem_x509_certificate(checkpoint["certificate"].encode())
    revoked_at = revoked.get(fingerprint(signer))
    if revoked_at is None:
        return None
    try:
        # Times are kept to the second: a checkpoint in the revocation's own second is
        # given the benefit of the doubt.
        if parse_time(revoked_at) >= parse_time(checkpoint["at"]):
            return None
    except InvalidInputError:
        pass
    return f"signed by a certificate revoked at {revoked_at}"


def _revoked_fingerprints(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.fingerprint, r.revoked_at FROM revocations r"
        " JOIN certificates c ON c.id = r.certificate_id"
    )
    return {str(r["fingerprint"]): str(r["revoked_at"]) for r in rows}


def _ledger_ca_certificates(conn: sqlite3.Connection) -> list[x509.Certificate]:
    from cryptography import x509

    out = []
    for row in conn.execute(
        "SELECT c.pem FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
    ):
        try:
            out.append(x509.load_pem_x509_certificate(str(row["pem"]).encode()))
        except ValueError:
            continue  # an edited row; the certificate checks name it
    return out


def _check_integrity(conn: sqlite3.Connection, report: LedgerVerification) -> bool:
    """SQLite's own checks; False when the file is too damaged to read further."""
    try:
        messages = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"the ledger file is corrupt ({exc})")
        return False
    if messages != ["ok"]:
        more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
        report.problems.append(
            f"the ledger file is corrupt (PRAGMA integrity_check: {messages[0]}{more})"
        )
    for row in conn.execute("PRAGMA foreign_key_check"):
        report.problems.append(
            f"{row[0]} row {row[1]} refers to a missing {row[2]} row (foreign_key_check)"
        )
    return True


def verify_ledger(
    conn: sqlite3.Connection,
    external_checkpoints: Sequence[tuple[str, Any]] = (),
    *,
    anchor: TrustAnchor | None = None,
    home: HomeFacts | None = None,
) -> LedgerVerification:
    report = LedgerVerification(anchor=anchor.to_json() if anchor is not None else None)
    try:
        if not _check_integrity(conn, report):
            return report
        if home is not None:
            _check_home(conn, home, report)
        hashes = _walk_chain(conn, report)
        events = _load_events(conn, report)
        _check_certificates(conn, events, report)
        _check_authorities(conn, events, report)
        _check_crls(conn, events, report)
        stored = _check_stored_checkpoints(conn, events, report)
        candidates: list[x509.Certificate] = []
        if anchor is not None:
            from cyphrs_cli.audit.checkpoint import fingerprint

            candidates = _ledger_ca_certificates(conn)
            if anchor.fingerprint not in {fingerprint(c) for c in candidates}:
                report.problems.append(
                    f"the pinned anchor {anchor.fingerprint} is not a CA recorded in this ledger"
                )
        revoked = _revoked_fingerprints(conn) if anchor is not None else None
        for source, document in [*stored, *external_checkpoints]:
            check_checkpoint(
                document,
                hashes,
                report,
                source=source,
                anchor=anchor,
                candidates=candidates,
                revoked=revoked,
            )
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"the ledger file is unreadable ({exc})")
    return report
