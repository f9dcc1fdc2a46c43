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
   ``checkpoints`` (``document_sha256`` per ``audit.checkpoint`` event), the enrollment
   credentials (``tokens``, ``provisioners``, ``jwt_uses``: ``ledger.credentials``); a row without
   its event, an event without its row, or a row that differs are all problems; the
   derived ``certificate_sans`` table must equal what the certificate rows say;
3. checkpoints (stored, and any given from outside): the checkpointed event still exists
   with the same hash; a checkpoint beyond the end of the ledger means the tail was
   truncated. Signatures are verified only against a trust anchor pinned from outside
   the ledger (see ``cyphrs_cli.audit.checkpoint``); without one the report says that
   checkpoint signatures were not verified.

Event details are data an attacker may have written: every field is type-checked, and a
malformed one is a reported problem, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.ledger.acme_records import ACME_AUDITED_EVENTS, check_acme
from cyphrs_cli.ledger.credentials import CREDENTIAL_EVENTS, check_credentials
from cyphrs_cli.ledger.events import (
    EVENT_COLUMNS,
    GENESIS_HASH,
    canonical_json,
    sha256_hex,
)
from cyphrs_cli.ledger.records import CERT_IMMUTABLE_COLUMNS, authority_digest, row_digest

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


_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _json_scalar(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` for a SQLite scalar, without its overhead."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value, ensure_ascii=False)


def _body_hash(prev: str, row: tuple[Any, ...], details_json: bytes) -> str:
    """``chain_hash(prev, event_body(row))`` with the details serialised once (their
    canonical form is also what ``params_hash`` covers).

    ``canonical_json`` sorts keys and uses no spaces, so the body's canonical form is the
    fixed key order below with each value serialised alone; the other columns are SQLite
    scalars, whose JSON form does not depend on ``sort_keys`` or separators. A test
    compares this with ``chain_hash`` on hostile values and on every event of a ledger.
    """
    seq, at, type_, actor, host, outcome, target, params_hash = row[:8]
    digest = hashlib.sha256(bytes.fromhex(prev))
    digest.update(f'{{"actor":{_json_scalar(actor)},"at":{_json_scalar(at)},"details":'.encode())
    digest.update(details_json)
    digest.update(
        f',"host":{_json_scalar(host)},"outcome":{_json_scalar(outcome)},'
        f'"params_hash":{_json_scalar(params_hash)},"seq":{_json_scalar(seq)},'
        f'"target":{_json_scalar(target)},"type":{_json_scalar(type_)}}}'.encode()
    )
    return digest.hexdigest()


# ``canonical_json`` of a certificate row's covered columns, built by SQLite's
# ``json_object`` with the keys in sorted order. For TEXT, INTEGER and NULL values its text
# is byte-for-byte Python's (same escapes: \" \\ \b \f \n \r \t, \u00XX for the other
# control characters, everything else as UTF-8; a property test holds it to that); any
# other storage class gives NULL, and the row is digested by ``row_digest`` instead.
_ROW_CANONICAL_SQL = (
    "CASE WHEN "
    + " AND ".join(
        f"typeof({column}) IN ('text', 'integer', 'null')" for column in CERT_IMMUTABLE_COLUMNS
    )
    + " THEN json_object("
    + ", ".join(f"'{column}', {column}" for column in sorted(CERT_IMMUTABLE_COLUMNS))
    + ") END"
)


class _Walk:
    """One pass over the events (in ``seq`` order) that does, at once, what used to be a
    chain walk, a load of every event and a certificate check:

    * the chain: links, ``params_hash`` and ``hash`` until the first break (as before);
    * each event's details parsed once, kept only for the few event types the authority,
      CRL and checkpoint checks read (not one object per event);
    * certificate rows merged with their issuance events as both streams advance (rows
      in ``id`` order on a second cursor): rows and events written together pair up at
      once, so memory holds only what is out of order, never a map of every certificate;
    * hashes kept only for the event ``seq``s that checkpoints name.

    Problems are collected per check and concatenated in the order of the checks they
    replace, so the report reads as before.
    """

    def __init__(
        self, conn: sqlite3.Connection, report: LedgerVerification, wanted: set[int]
    ) -> None:
        self.conn = conn
        self.report = report
        self.wanted = wanted
        self.hashes: dict[int, str] = {}
        self.chain_problems: list[str] = []
        self.load_problems: list[str] = []
        self.kept: list[Event] = []  # authority, CRL and checkpoint events only
        # certificates
        self.malformed_issuance: list[str] = []
        self.pending: dict[int, tuple[int, Any, Any]] = {}  # event seen, row not yet
        self.waiting: dict[int, tuple[Any, str]] = {}  # row seen, event not yet
        self.row_problems: dict[int, str] = {}
        self.missing: dict[int, tuple[int, Any]] = {}  # events whose row does not exist
        self.max_event_cert = -1
        self.last_row_id: int | None = None
        self.malformed_revocations: list[str] = []
        self.revoked: dict[int, tuple[Any, Any, Any]] = {}  # id -> revoked_at, reason, serial
        self.superseded: set[int | None] = set()
        self.unusual_status: dict[int, tuple[Any, Any]] = {}  # id -> serial, status
        cursor = conn.cursor()
        cursor.row_factory = None
        cursor.arraysize = 1024
        # id, status, serial, and the text row_digest hashes, made by SQLite (see
        # _ROW_CANONICAL_SQL): no per-row Python dict or json.dumps.
        self.rows = iter(
            cursor.execute(
                f"SELECT id, status, serial, {_ROW_CANONICAL_SQL} FROM certificates ORDER BY id"  # noqa: S608
            )
        )
        self.next_row: tuple[Any, ...] | None = next(self.rows, None)

    # -- events ---------------------------------------------------------------------------
    def run(self) -> None:
        expected_seq, prev, chained = 1, GENESIS_HASH, True
        cursor = self.conn.cursor()
        cursor.row_factory = None
        cursor.arraysize = 1024
        for row in cursor.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq"):  # noqa: S608
            seq, type_, raw = row[0], row[2], row[8]
            parsed: Any = None
            parse_error = False
            if isinstance(raw, str):
                try:
                    parsed = json.loads(raw)
                except (json.JSONDecodeError, RecursionError):
                    parse_error = True
            if chained:
                chained = self._chain(row, expected_seq, prev, raw, parsed, parse_error)
                if chained:
                    prev, expected_seq = row[10], seq + 1
            if not isinstance(raw, str):
                try:
                    parsed = json.loads(raw)
                except (json.JSONDecodeError, TypeError, RecursionError):
                    parsed = None
            if not isinstance(parsed, dict):
                self.load_problems.append(
                    f"event seq {seq} ({type_}): details are not a JSON object"
                )
                continue
            self._event(Event(seq, str(type_), parsed))
        self._rows_up_to(None)

    def _chain(
        self,
        row: tuple[Any, ...],
        expected_seq: int,
        prev: str,
        raw: Any,
        parsed: Any,
        parse_error: bool,
    ) -> bool:
        report = self.report
        report.events += 1
        seq = row[0]
        if seq != expected_seq:
            self.chain_problems.append(f"event seq {expected_seq} is missing (next present: {seq})")
            return False
        if row[9] != prev:
            self.chain_problems.append(
                f"event seq {seq}: prev_hash does not link to event {seq - 1}"
            )
            return False
        if parse_error:
            self.chain_problems.append(f"event seq {seq}: details are not valid JSON")
            return False
        try:
            details_json = canonical_json(parsed if isinstance(raw, str) else raw)
            intact_details = sha256_hex(details_json) == row[7]
            intact = _body_hash(prev, row, details_json) == row[10]
        except (TypeError, ValueError):
            self.chain_problems.append(f"event seq {seq}: unreadable content")
            return False
        if not intact_details:
            self.chain_problems.append(f"event seq {seq}: details do not match params_hash")
            return False
        if not intact:
            self.chain_problems.append(f"event seq {seq}: hash does not match its content")
            return False
        if seq in self.wanted:
            self.hashes[seq] = row[10]
        report.head_seq, report.head_hash = seq, row[10]
        return True

    def _event(self, event: Event) -> None:
        kind, details = event.type, event.details
        if kind in ISSUANCE_EVENTS:
            self._issuance(event)
        if kind == "certificate.renewed" and details.get("replaces_id") is not None:
            self.superseded.add(_int(details.get("replaces_id")))
        elif kind == "certificate.revoked":
            cert_id = _int(details.get("certificate_id"))
            if cert_id is None or _str(details.get("revoked_at")) is None:
                self.malformed_revocations.append(
                    _malformed_text(event, "certificate_id/revoked_at")
                )
            else:
                self.revoked[cert_id] = (
                    details.get("revoked_at"),
                    details.get("reason"),
                    details.get("serial"),
                )
        if (
            "authority_digest" in details
            or kind in AUTHORITY_EVENTS
            or kind in ("crl.published", "audit.checkpoint")
            or kind in CREDENTIAL_EVENTS
            or kind in ACME_AUDITED_EVENTS
        ):
            self.kept.append(event)

    # -- certificates ---------------------------------------------------------------------
    def _issuance(self, event: Event) -> None:
        cert_id = _int(event.details.get("certificate_id"))
        if cert_id is None:
            self.malformed_issuance.append(_malformed_text(event, "certificate_id"))
            return
        digest, serial = event.details.get("row_digest"), event.details.get("serial")
        if cert_id in self.waiting:  # its row came first
            row_serial, row_hash = self.waiting.pop(cert_id)
            self._compare(cert_id, row_serial, row_hash, event.seq, digest)
        elif self.last_row_id is not None and cert_id <= self.last_row_id:
            # The row's turn has passed: a second event for one certificate (the last
            # event wins, as it always has), or an event for a row that does not exist.
            row = self.conn.execute("SELECT * FROM certificates WHERE id = ?", (cert_id,))
            found = row.fetchone()
            if found is None:
                self.pending.pop(cert_id, None)
                self.missing[cert_id] = (event.seq, serial)
            else:
                self.row_problems.pop(cert_id, None)
                self._compare(cert_id, found["serial"], row_digest(found), event.seq, digest)
        else:
            self.pending[cert_id] = (event.seq, digest, serial)
            self.max_event_cert = max(self.max_event_cert, cert_id)
            self._rows_up_to(self.max_event_cert)

    def _compare(self, cert_id: int, serial: Any, actual: str, seq: int, expected: Any) -> None:
        if actual != expected:
            self.row_problems[cert_id] = (
                f"certificate id {cert_id} (serial {serial}) does not match its"
                f" issuance event seq {seq}"
            )

    def _rows_up_to(self, limit: int | None) -> None:
        """Check certificate rows up to ``limit`` (all remaining rows when None)."""
        while self.next_row is not None and (limit is None or self.next_row[0] <= limit):
            row = self.next_row
            self.next_row = next(self.rows, None)
            self.report.certificates += 1
            cert_id, status, serial, canonical = row
            self.last_row_id = cert_id
            if status != "valid":
                self.unusual_status[cert_id] = (serial, status)
            if canonical is not None:  # == canonical_json of the row's covered columns
                actual = hashlib.sha256(canonical.encode()).hexdigest()
            else:  # a REAL or BLOB value (never written by cyphrs): the reference path
                full = self.conn.execute("SELECT * FROM certificates WHERE id = ?", (cert_id,))
                try:
                    actual = row_digest(full.fetchone())
                except (TypeError, ValueError):  # a BLOB has no JSON form: cannot match
                    actual = "unserialisable"
            found = self.pending.pop(cert_id, None)
            if found is None:
                self.waiting[cert_id] = (serial, actual)
            else:
                self._compare(cert_id, serial, actual, found[0], found[1])

    def certificate_problems(self) -> list[str]:
        out = list(self.malformed_issuance)
        for cert_id, (serial, _) in self.waiting.items():
            self.row_problems[cert_id] = (
                f"certificate id {cert_id} (serial {serial}) has no issuance event"
            )
        out += [self.row_problems[k] for k in sorted(self.row_problems)]
        missing = {**self.missing, **{k: (v[0], v[2]) for k, v in self.pending.items()}}
        for cert_id, (seq, serial) in sorted(missing.items()):
            out.append(
                f"certificate id {cert_id} (serial {serial}) recorded by event seq {seq} is missing"
            )
        out += self.malformed_revocations
        stored = {
            r["certificate_id"]: (r["revoked_at"], r["reason"])
            for r in self.conn.execute("SELECT * FROM revocations")
        }
        for cert_id, (revoked_at, reason, serial) in self.revoked.items():
            if stored.get(cert_id) != (revoked_at, reason):
                out.append(
                    f"revocation of certificate id {cert_id} (serial {serial}) does"
                    " not match its event"
                )
        for cert_id in stored.keys() - self.revoked.keys():
            out.append(f"revocation of certificate id {cert_id} has no event")
        # Statuses: a 'valid' row is wrong only if an event revoked or superseded it, so
        # only those ids and the rows not 'valid' need a look (no second pass).
        suspects = (
            set(self.unusual_status)
            | set(self.revoked)
            | {i for i in self.superseded if i is not None}
        )
        for cert_id in sorted(suspects):
            if cert_id in self.unusual_status:
                serial, status = self.unusual_status[cert_id]
            else:
                row = self.conn.execute(
                    "SELECT serial, status FROM certificates WHERE id = ?", (cert_id,)
                ).fetchone()
                if row is None:
                    continue
                serial, status = row["serial"], row["status"]
            expected = (
                "revoked"
                if cert_id in self.revoked
                else "superseded"
                if cert_id in self.superseded
                else "valid"
            )
            if status != expected:
                out.append(
                    f"certificate id {cert_id} (serial {serial}) has status {status!r};"
                    f" its events say {expected!r}"
                )
        return out


def _malformed_text(event: Event, missing: str) -> str:
    return (
        f"event seq {event.seq} ({event.type}): malformed details ({missing} missing or"
        " of the wrong type)"
    )


def _malformed(report: LedgerVerification, event: Event, missing: str) -> None:
    report.problems.append(_malformed_text(event, missing))


def _of_type(events: list[Event], *types: str) -> list[Event]:
    return [e for e in events if e.type in types]


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


# What ``certificate_sans`` must hold: recomputed from ``certificates.sans`` with the
# expression of migration 0006's triggers.
_DERIVED_SANS = (
    "SELECT lower(substr(j.value, instr(j.value, ':') + 1)) AS name, c.id AS certificate_id"
    " FROM certificates c,"
    " json_each(CASE WHEN json_valid(c.sans) THEN c.sans ELSE '[]' END) j"
    " WHERE j.type = 'text'"
)
_STORED_SANS = "SELECT name, certificate_id FROM certificate_sans"


def _check_san_index(conn: sqlite3.Connection, report: LedgerVerification) -> None:
    """``certificate_sans`` is derived data (``list --san`` reads it): it must equal what
    the certificate rows, themselves checked against their events, say. A missing entry
    would hide a certificate from a SAN query; a stray one would show the wrong one."""
    differences = (
        ("is missing", f"{_DERIVED_SANS} EXCEPT {_STORED_SANS}"),
        ("is not among its SANs", f"{_STORED_SANS} EXCEPT {_DERIVED_SANS}"),
    )
    for wording, sql in differences:
        cursor = conn.execute(f"SELECT certificate_id, name FROM ({sql}) ORDER BY 1, 2")  # noqa: S608
        rows = cursor.fetchmany(21)
        for cert_id, name in rows[:20]:
            report.problems.append(
                f"SAN index: entry {name!r} of certificate id {cert_id} {wording}"
            )
        if len(rows) > 20:
            report.problems.append(f"SAN index: more entries of other certificates {wording}")


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


def _integrity_in_background(conn: sqlite3.Connection) -> Callable[[LedgerVerification], bool]:
    """Start ``_check_integrity`` on a second connection; the returned function waits for
    it and adds its problems to a report (False: the file is too damaged to read)."""
    import threading
    from pathlib import Path

    path = next((str(r[2]) for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    if not path:  # an in-memory database has no second connection: check it here
        return lambda report: _check_integrity(conn, report)
    found = LedgerVerification()
    outcome: list[bool] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            # mode=ro: a file that vanished meanwhile is an error, never a new empty one.
            other = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True)
            try:
                outcome.append(_check_integrity(other, found))
            finally:
                other.close()
        except BaseException as exc:  # reported by the caller's thread, never lost
            failure.append(exc)

    thread = threading.Thread(target=work, name="cyphrs-integrity-check", daemon=True)
    thread.start()

    def finish(report: LedgerVerification) -> bool:
        thread.join()
        if failure or not outcome:  # could not open a second connection: check inline
            return _check_integrity(conn, report)
        report.problems += found.problems
        return outcome[0]

    return finish


def _checkpointed_seqs(conn: sqlite3.Connection, external: Sequence[tuple[str, Any]]) -> set[int]:
    """The event seqs that stored and given checkpoints name: the only hashes kept."""
    documents: list[Any] = [document for _, document in external]
    for (text,) in conn.execute("SELECT document FROM checkpoints"):
        try:
            documents.append(json.loads(text))
        except (json.JSONDecodeError, TypeError, RecursionError):
            continue
    return {
        seq
        for seq in (_int(d.get("seq")) for d in documents if isinstance(d, dict))
        if seq is not None
    }


def verify_ledger(
    conn: sqlite3.Connection,
    external_checkpoints: Sequence[tuple[str, Any]] = (),
    *,
    anchor: TrustAnchor | None = None,
    home: HomeFacts | None = None,
) -> LedgerVerification:
    report = LedgerVerification(anchor=anchor.to_json() if anchor is not None else None)
    # SQLite's integrity check reads the whole file (a third of the time at a million
    # events): it runs on its own read-only connection in a thread (SQLite releases the
    # GIL) while this thread walks the events; its problems still come first, and a file
    # it finds unreadable still ends the verification with that one problem.
    integrity = _integrity_in_background(conn)
    walked = LedgerVerification()
    walk: _Walk | None = None
    walk_error: sqlite3.DatabaseError | None = None
    certificate_problems: list[str] = []
    san_index = LedgerVerification()
    try:
        walk = _Walk(conn, walked, _checkpointed_seqs(conn, external_checkpoints))
        walk.run()
        certificate_problems = walk.certificate_problems()
        # Still while the integrity check runs: this thread is free until it ends.
        _check_san_index(conn, san_index)
    except sqlite3.DatabaseError as exc:
        walk_error = exc
    try:
        if not integrity(report):
            return report
        if home is not None:
            _check_home(conn, home, report)
        if walk_error is not None or walk is None:
            raise walk_error or sqlite3.DatabaseError("unreadable")
        report.events, report.certificates = walked.events, walked.certificates
        report.head_seq, report.head_hash = walked.head_seq, walked.head_hash
        hashes, events = walk.hashes, walk.kept
        report.problems += walk.chain_problems
        report.problems += walk.load_problems
        report.problems += certificate_problems
        report.problems += san_index.problems
        _check_authorities(conn, events, report)
        _check_crls(conn, events, report)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tokens'").fetchone():
            check_credentials(conn, events, report.problems)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'acme_eab_keys'").fetchone():
            check_acme(conn, events, report.problems)
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
