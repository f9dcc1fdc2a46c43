"""Use cases for incident reconstruction: find a certificate by any handle a responder has
(fingerprint, serial, SPIFFE ID, the certificate itself) with its renewal chain, status
history and who obtained it; and the timeline of one identity, workflow, issuer or
certificate in a window, with the hash chain checked over the events it shows.

Decisions live here: how a handle is read (SHA-256 or SHA-1 by length, hex or decimal
serials, an unambiguous prefix), which events belong to a scope, which range of the chain
is checked. The queries are in ``cyphrs_cli.ledger.investigate``; front ends render the
documents these return (``cyphrs.find/v1``, ``cyphrs.timeline/v1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError, NotFoundError, UsageError
from cyphrs_cli.numerals import is_decimal

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.investigate import ChainCheck

TIMELINE_KINDS = ("spiffe_id", "workflow", "issuer", "serial")
#: Events a timeline's chain check walks contiguously (about 0.5 s); a longer range is
#: checked around the events shown instead (``ChainCheck.scope`` says which).
CHAIN_WALK_LIMIT = 200_000
#: Renewal-chain links ``find`` shows on each side of a certificate.
CHAIN_NEIGHBOURS = 10
#: Candidates an ambiguous serial prefix lists before it says "and more".
AMBIGUOUS_SHOWN = 10
_HEX = re.compile(r"[0-9a-f]+")
_ISSUANCE_TYPES = (
    "certificate.issued",
    "certificate.renewed",
    "authority.created",
    "authority.imported",
)


@dataclass(frozen=True)
class FindRequest:
    """Exactly one handle: a fingerprint, a serial, a SPIFFE ID or certificate bytes."""

    fingerprint: str | None = None
    serial: str | None = None
    spiffe_id: str | None = None
    certificate: bytes | None = None
    source: str = "certificate"
    at: datetime | None = None  # "now" for current statuses (default: the ledger clock)


@dataclass(frozen=True)
class TimelineScope:
    """What a timeline is about: ``kind`` is one of ``TIMELINE_KINDS``."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in TIMELINE_KINDS:
            raise UsageError(f"unknown timeline scope {self.kind!r}")

    @classmethod
    def parse(cls, text: str) -> TimelineScope:
        """``spiffe-id=spiffe://...``, ``workflow=NAME``, ``issuer=ALIAS``, ``serial=HEX``."""
        kind, sep, value = text.partition("=")
        kind = kind.strip().replace("-", "_")
        if not sep or kind not in TIMELINE_KINDS or not value:
            raise UsageError(
                f"bad timeline scope {text!r}",
                hint="use spiffe-id=ID, workflow=NAME, issuer=ALIAS or serial=HEX",
            )
        return cls(kind, value)


@dataclass(frozen=True)
class TimelineRequest:
    scope: TimelineScope
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class FindResult:
    handle: str
    value: str
    certificates: list[dict[str, Any]]

    def document(self) -> dict[str, Any]:
        return {
            "schema": "cyphrs.find/v1",
            "query": {"handle": self.handle, "value": self.value},
            "certificates": self.certificates,
            "count": len(self.certificates),
        }


@dataclass(frozen=True)
class TimelineResult:
    scope: TimelineScope
    since: str | None
    until: str | None
    events: list[dict[str, Any]]
    chain: ChainCheck = field(repr=False)

    def document(self) -> dict[str, Any]:
        return {
            "schema": "cyphrs.timeline/v1",
            "scope": {"kind": self.scope.kind, "value": self.scope.value},
            "since": self.since,
            "until": self.until,
            "events": self.events,
            "count": len(self.events),
            "chain": self.chain.to_json(),
        }


# -- reading handles ---------------------------------------------------------------------


def parse_fingerprint(text: str) -> tuple[str, str]:
    """(``sha256`` | ``sha1``, lowercase hex) from ``sha256:ab12...``, ``AB:12:...``,
    ``SHA1 Fingerprint=AB:...`` (openssl) or bare hex; the length decides when no
    algorithm is named, and must agree with one that is."""
    value = text.strip().lower()
    algorithm = None
    if "fingerprint=" in value:
        named, value = value.split("fingerprint=", 1)
        algorithm = named.strip().replace("-", "")
    else:
        match = re.fullmatch(r"(sha-?256|sha-?1)[:=](.*)", value, re.DOTALL)
        if match:
            algorithm, value = match.group(1).replace("-", ""), match.group(2)
    digits = value.replace(":", "").replace(" ", "")
    by_length = {64: "sha256", 40: "sha1"}.get(len(digits))
    if not _HEX.fullmatch(digits) or by_length is None or algorithm not in (None, by_length):
        raise InvalidInputError(
            f"{text!r} is not a SHA-256 or SHA-1 fingerprint",
            hint="e.g. sha256:<64 hex digits>, <40 hex digits> (SHA-1), colons allowed",
        )
    return by_length, digits


def _serial_ids(conn: sqlite3.Connection, text: str) -> list[int]:
    """Certificates a serial names: exact hex, exact decimal (all digits), else a hex prefix.

    Two different certificates (hex and decimal readings, or a prefix shared by several)
    are ambiguous: exit 2 listing the candidates.
    """
    from cyphrs_cli.ca.serials import serial_hex
    from cyphrs_cli.ledger import investigate

    digits = text.strip().lower().replace(":", "").replace(" ", "").removeprefix("0x")
    if not digits or not _HEX.fullmatch(digits):
        raise InvalidInputError(
            f"{text!r} is not a serial number",
            hint="hex (with or without colons, or a prefix of it) or decimal",
        )
    ids = investigate.ids_by_serial(conn, serial_hex(int(digits, 16)))
    if is_decimal(digits):
        ids += investigate.ids_by_serial(conn, serial_hex(int(digits, 10)))
    ids = list(dict.fromkeys(ids))
    if not ids:
        ids = investigate.ids_by_serial_prefix(conn, digits, AMBIGUOUS_SHOWN + 1)
        if not ids and len(digits) % 2 == 1:  # the ledger pads odd hex with a leading 0
            ids = investigate.ids_by_serial_prefix(conn, "0" + digits, AMBIGUOUS_SHOWN + 1)
    if len(ids) > 1:
        serials = [investigate.certificate_row(conn, i)["serial"] for i in ids]
        shown = ", ".join(serials[:AMBIGUOUS_SHOWN])
        more = " and more" if len(ids) > AMBIGUOUS_SHOWN else ""
        raise UsageError(
            f"serial {text!r} is ambiguous: it matches {shown}{more}",
            hint="give more digits (or the whole serial, or --fingerprint)",
        )
    if not ids:
        raise NotFoundError(f"no certificate with serial {text!r} in the ledger")
    return ids


def _resolve(conn: sqlite3.Connection, request: FindRequest) -> tuple[str, str, list[int]]:
    from cyphrs_cli.ledger import investigate

    given = [
        name
        for name, value in (
            ("fingerprint", request.fingerprint),
            ("serial", request.serial),
            ("spiffe_id", request.spiffe_id),
            ("certificate", request.certificate),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise UsageError(
            "name exactly one of --fingerprint, --serial, --spiffe-id or --cert FILE (or -)"
        )
    if request.fingerprint is not None:
        algorithm, digits = parse_fingerprint(request.fingerprint)
        if algorithm == "sha256":
            ids = investigate.ids_by_sha256(conn, digits)
        else:
            ids = investigate.ids_by_sha1(conn, digits)
        if not ids:
            raise NotFoundError(f"no certificate with {algorithm} fingerprint {digits}")
        return "fingerprint", f"{algorithm}:{digits}", ids
    if request.serial is not None:
        return "serial", request.serial, _serial_ids(conn, request.serial)
    if request.spiffe_id is not None:
        ids = investigate.ids_by_spiffe_id(conn, request.spiffe_id)
        if not ids:
            raise NotFoundError(f"no certificate for {request.spiffe_id} in the ledger")
        return "spiffe_id", request.spiffe_id, ids
    assert request.certificate is not None
    return "certificate", request.source, _certificate_ids(conn, request)


def _certificate_ids(conn: sqlite3.Connection, request: FindRequest) -> list[int]:
    """The ledger row of these exact bytes; a certificate we did not record is named as
    such, and one that reuses a recorded serial with other bytes is called out (forged,
    altered, or from another CA)."""
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.ca.serials import serial_hex
    from cyphrs_cli.ledger import investigate

    assert request.certificate is not None
    cert = load_certificates(request.certificate, source=request.source)[0]
    digest = fingerprint(cert)
    ids = investigate.ids_by_sha256(conn, digest.removeprefix("sha256:"))
    if ids:
        return ids
    serial = serial_hex(cert.serial_number)
    if investigate.fingerprints_of_serial(conn, serial):
        raise NotFoundError(
            f"{request.source}: serial {serial} is recorded, but with another fingerprint;"
            f" this certificate ({digest}) was not issued as recorded (forged, altered or"
            " from another CA)"
        )
    raise NotFoundError(f"{request.source}: certificate {digest} is not in the ledger")


# -- find --------------------------------------------------------------------------------


def find(home: CaHome, request: FindRequest) -> FindResult:
    """Open the home's ledger and answer ``request`` (see ``find_in``)."""
    from cyphrs_cli.ca.hierarchy import open_ledger

    home.require_initialised()
    with open_ledger(home) as ledger:
        return find_in(ledger.conn, request)


def find_in(conn: sqlite3.Connection, request: FindRequest) -> FindResult:
    """Every certificate the handle names (a SPIFFE ID names all of its certificates, in
    issue order), each with its renewal chain, status history and events.

    Raises:
        CyphrsError: 2 no handle, several, or an ambiguous serial prefix; 3 a malformed
            handle; 6 nothing recorded under it.
    """
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    handle, value, ids = _resolve(conn, request)
    now = rfc3339(request.at or utc_now())
    chains: dict[int, list[int]] = {}
    return FindResult(handle, value, [_certificate_story(conn, i, now, chains) for i in ids])


def _certificate_story(
    conn: sqlite3.Connection, certificate_id: int, now: str, chains: dict[int, list[int]]
) -> dict[str, Any]:
    """``chains`` caches renewal chains by member id: a SPIFFE ID's certificates usually
    share one chain, walked once instead of once per certificate."""
    from cyphrs_cli.ledger import investigate
    from cyphrs_cli.ledger.queries import register_row

    raw = investigate.certificate_row(conn, certificate_id)
    register = register_row(raw, now)
    chain_ids = chains.get(certificate_id)
    if chain_ids is None:
        chain_ids = investigate.renewal_chain(conn, certificate_id)
        chains.update(dict.fromkeys(chain_ids, chain_ids))
    position = chain_ids.index(certificate_id)
    # The links around this certificate (a long-lived identity renews thousands of times).
    start = max(0, position - CHAIN_NEIGHBOURS)
    shown = chain_ids[start : position + CHAIN_NEIGHBOURS + 1]
    chain = investigate.chain_summaries(conn, shown)
    position -= start
    successor = chain[position + 1]["serial"] if position + 1 < len(chain) else None
    for index, link in enumerate(chain):
        link["this"] = index == position
        newer = start + index + 1 < len(chain_ids)
        link["status"] = _status_now(link, now, superseded=newer)
        del link["stored_status"]
    targets = [f"certificate:{register['serial']}"]
    if successor is not None:
        targets.append(f"certificate:{successor}")
    rows = sorted(investigate.events_of_targets(conn, targets, None, None))
    events = [investigate.event_view(r) for r in rows]
    own = [e for e in events if e["target"] == targets[0]]
    issuance = next((e for e in own if e["type"] in _ISSUANCE_TYPES), None)
    history = _history(register, raw, events, targets, issuance, now)
    obtained_by = {
        "requester": register["requester"],
        "actor": issuance["actor"] if issuance else None,
        "host": issuance["host"] if issuance else None,
        "event_seq": issuance["seq"] if issuance else None,
        "event_type": issuance["type"] if issuance else None,
        "details": issuance["details"] if issuance else None,
    }
    return {
        "certificate": {**register, "issuer_revoked_at": raw["issuer_revoked_at"]},
        "renewal_chain": chain,
        "renewal_chain_length": len(chain_ids),
        "history": history,
        "obtained_by": obtained_by,
        "events": own,
    }


def _status_now(link: dict[str, Any], now: str, *, superseded: bool) -> str:
    if link["revoked_at"] is not None and link["revoked_at"] <= now:
        return "revoked"
    if link["not_after"] < now:
        return "expired"
    return "superseded" if superseded else "valid"


def _history(
    register: dict[str, Any],
    raw: dict[str, Any],
    events: list[dict[str, Any]],
    targets: list[str],
    issuance: dict[str, Any] | None,
    now: str,
) -> list[dict[str, Any]]:
    """The certificate's status changes in time order: issued, superseded (its successor's
    issuance), revoked, its issuer revoked, expired; each with the event behind it."""

    def entry(at: str, status: str, event: dict[str, Any] | None, detail: str) -> dict[str, Any]:
        return {
            "at": at,
            "status": status,
            "event_seq": event["seq"] if event else None,
            "actor": event["actor"] if event else None,
            "host": event["host"] if event else None,
            "detail": detail,
        }

    history = [entry(register["issued_at"], "valid", issuance, f"issued as {register['profile']}")]
    renewal = next(
        (
            e
            for e in events
            if len(targets) > 1 and e["target"] == targets[1] and e["type"] == "certificate.renewed"
        ),
        None,
    )
    if renewal is not None:
        history.append(
            entry(renewal["at"], "superseded", renewal, f"renewed as {targets[1].split(':', 1)[1]}")
        )
    if raw["recorded_revoked_at"] is not None:
        revoked = next(
            (e for e in events if e["type"] == "certificate.revoked" and e["target"] == targets[0]),
            None,
        )
        reason = raw["recorded_reason"] or "no reason given"
        history.append(entry(raw["recorded_revoked_at"], "revoked", revoked, reason))
    if raw["issuer_revoked_at"] is not None:
        history.append(
            entry(
                raw["issuer_revoked_at"],
                "issuer_revoked",
                None,
                f"issuer {register['issuer']} revoked: the chain is invalid from then",
            )
        )
    if register["not_after"] < now:
        history.append(entry(register["not_after"], "expired", None, "notAfter passed"))
    return sorted(history, key=lambda h: str(h["at"]))


# -- timeline ----------------------------------------------------------------------------


def timeline(home: CaHome, request: TimelineRequest) -> TimelineResult:
    """Open the home's ledger and build the timeline (see ``timeline_in``)."""
    from cyphrs_cli.ca.hierarchy import open_ledger

    home.require_initialised()
    with open_ledger(home) as ledger:
        return timeline_in(ledger.conn, request)


def timeline_in(conn: sqlite3.Connection, request: TimelineRequest) -> TimelineResult:
    """The events of the scope in [since, until), in log order, with the hash chain checked
    over every event of the window (or, without a window, from the first event shown to
    the last): a row edited, re-chained or deleted in that range is reported by ``seq``.
    A range longer than ``CHAIN_WALK_LIMIT`` events is checked around each event shown.

    What belongs to a scope:

    * ``spiffe_id``: events of each of its certificates, events whose details name it
      (issuance, policy denials, later event types), CRLs published by its issuers and
      the revocation of an issuer;
    * ``workflow``: the same for every instance of the workflow;
    * ``issuer``: events about the CA, naming it as issuer, or about a certificate it signed;
    * ``serial``: the certificate's events, its renewal, and its issuer's CRLs.

    Raises:
        CyphrsError: 2 an ambiguous serial; 3 an empty window; 6 nothing recorded for the
            scope (an unknown issuer, serial, or an identity never seen).
    """
    from cyphrs_cli.ledger import investigate
    from cyphrs_cli.ledger.events import rfc3339

    since = rfc3339(request.since) if request.since else None
    until = rfc3339(request.until) if request.until else None
    if since is not None and until is not None and until <= since:
        raise InvalidInputError("the window is empty: --until must be after --since")
    scope = request.scope
    rows: list[tuple[Any, ...]]
    if scope.kind == "issuer":
        found = conn.execute("SELECT id FROM authorities WHERE name = ?", (scope.value,))
        authority = found.fetchone()
        if authority is None:
            raise NotFoundError(f"no CA named {scope.value!r} in the ledger")
        rows = investigate.events_of_issuer(conn, scope.value, authority[0], since, until)
    else:
        rows = _identity_events(conn, scope, since, until)
    unique = sorted({row[0]: row for row in rows}.values())
    events = [_timeline_event(investigate.event_view(row)) for row in unique]
    if since is not None or until is not None:
        first, last = investigate.seq_bounds(conn, since, until)
    elif events:
        first, last = events[0]["seq"], events[-1]["seq"]
    else:
        first, last = 0, -1
    if last - first < CHAIN_WALK_LIMIT:
        chain = investigate.check_chain(conn, first, last)
    else:  # a long window (or none): check around each event shown, and say so
        chain = investigate.check_events(conn, [e["seq"] for e in events], first, last)
    broken = {p["seq"] for p in chain.problems}
    for event in events:
        event["chain_ok"] = event["seq"] not in broken
    return TimelineResult(scope, since, until, events, chain)


def _identity_events(
    conn: sqlite3.Connection, scope: TimelineScope, since: str | None, until: str | None
) -> list[tuple[Any, ...]]:
    """Events of a SPIFFE ID, a workflow or one certificate (see ``timeline_in``)."""
    from cyphrs_cli.ledger import investigate

    spiffe_id, prefixes = None, []
    rows: list[tuple[Any, ...]] = []
    if scope.kind == "serial":
        (certificate_id,) = _serial_ids(conn, scope.value)
        chain = investigate.renewal_chain(conn, certificate_id)
        ids = [certificate_id]
        position = chain.index(certificate_id)
        if position + 1 < len(chain):  # the renewal that superseded it, not its successor's life
            successor = investigate.certificate_row(conn, chain[position + 1])
            rows += [
                row
                for row in investigate.events_of_targets(
                    conn, [f"certificate:{successor['serial']}"], since, until
                )
                if row[2] == "certificate.renewed"
            ]
    elif scope.kind == "spiffe_id":
        spiffe_id = scope.value
        ids = investigate.ids_by_spiffe_id(conn, spiffe_id)
    else:
        ids = investigate.ids_of_workflow(conn, scope.value, until)
        prefixes = [
            f"spiffe://{domain}/agent/{scope.value}" for domain in investigate.trust_domains(conn)
        ]
    certificates = [investigate.certificate_row(conn, i) for i in ids]
    targets = [f"certificate:{c['serial']}" for c in certificates]
    rows += investigate.events_of_targets(conn, targets, since, until)
    rows += investigate.events_naming_spiffe_ids(conn, spiffe_id, prefixes, since, until)
    if not certificates and not rows:
        raise NotFoundError(f"nothing recorded for {scope.kind.replace('_', '-')} {scope.value}")
    # Around the identity: its issuers' CRLs, and the revocation of an issuer itself.
    issuers = {f"authority:{c['issuer_name']}" for c in certificates if c["issuer_name"]}
    rows += [
        row
        for row in investigate.events_of_targets(conn, sorted(issuers), since, until)
        if row[2] == "crl.published"
    ]
    issuer_serials = investigate.authority_certificate_serials(
        conn, (c["authority_id"] for c in certificates if c["authority_id"] is not None)
    )
    rows += [
        row
        for row in investigate.events_of_targets(
            conn, [f"certificate:{s}" for s in issuer_serials], since, until
        )
        if row[2] == "certificate.revoked"
    ]
    return rows


def _timeline_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event with the certificate serial and SPIFFE ID it concerns and one readable
    line (``summary``) next to its stored fields."""
    details = event["details"] if isinstance(event["details"], dict) else {}
    target = event["target"] or ""
    serial = target.split(":", 1)[1] if target.startswith("certificate:") else None
    spiffe_id = details.get("spiffe_id")
    return {
        **event,
        "serial": serial,
        "spiffe_id": spiffe_id if isinstance(spiffe_id, str) else None,
        "summary": _summary(event["type"], details, serial, target),
    }


def _summary(kind: str, details: dict[str, Any], serial: str | None, target: str) -> str:
    def get(key: str) -> str:
        value = details.get(key)
        return "" if value is None else str(value)

    if kind in ("certificate.issued", "certificate.renewed"):
        verb = "renewed as" if kind == "certificate.renewed" else "issued"
        who = get("spiffe_id") or get("subject")
        return f"{verb} {serial} ({get('profile')}) for {who} until {get('not_after')}".strip()
    if kind == "certificate.revoked":
        return f"revoked {serial} ({get('reason') or 'no reason given'})"
    if kind == "policy.denied":
        return f"denied by {get('rule')}: {get('message')}"
    if kind == "crl.published":
        return f"CRL #{get('number')} of {get('authority')} published ({get('entries')} entries)"
    if kind == "certificate.delivery_failed":
        return f"delivery of {serial} failed: {get('reason')}"
    if kind == "certificate.redelivered":
        return (
            f"{serial} answered again to the holder of {get('presented_serial')}"
            " (its renewal's answer had been lost)"
        )
    return f"{kind} {target}".strip()
