"""The anchored trust state: the ledger decides what gets signed; files in the home are caches.

Every fact that shapes a signature — which certificate a CA has (by fingerprint), its key
URI, role, parent and trust domain, the agent-claims OID, the text of a home profile — is
read from the ledger, whose rows are anchored by hash-chained events. ``config.toml``,
``certs/*.pem`` and ``profiles/*.toml`` are conveniences that must agree with the ledger
before anything is signed; when one does not, ``TrustStateMismatch`` (exit 8) names the
file and what differs, in one line. ``config.toml`` may still add what is not a trust fact
(``default_issuer``, the pending offline requests).

The comparisons live here and nowhere else: ``anchored_authority`` is what
``ca.hierarchy.load_issuer`` and ``issuer_facts`` call, ``check_profile`` is what the
issuance path calls for the profile it signs under.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID
from cyphrs_cli.errors import InvalidInputError, StorageError
from cyphrs_cli.fsutil import home_lock

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.config.settings import AuthorityEntry, HomeConfig
    from cyphrs_cli.profiles.model import Profile

#: The agent-claims OID a home uses until it records its own (``config claims-oid``).
DEFAULT_CLAIMS_OID = AGENT_CLAIMS_OID
CLAIMS_OID_EVENT = "home.claims_oid_set"
PUBLIC_URL_EVENT = "home.public_url_set"
PROFILE_SET_EVENT = "profile.set"
PROFILE_REMOVED_EVENT = "profile.removed"
_CREATION_EVENTS = ("authority.created", "authority.imported")
_DOTTED_OID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
# Arcs whose meaning is fixed by others; a private extension placed there would claim to be
# something it is not (standard X.509 extensions, PKIX, the UUID arc that breaks Go, ...).
_RESERVED_ARCS = (
    ("2.5", "X.500 / X.509 standard attributes and extensions"),
    ("1.3.6.1.5.5.7", "PKIX (RFC 5280 and friends)"),
    ("1.2.840.113549", "RSA Data Security (PKCS)"),
    ("1.2.840.10045", "ANSI X9.62 (ECDSA)"),
    ("1.3.6.1.4.1.11129", "Google (Certificate Transparency)"),
    ("1.3.6.1.4.1.311", "Microsoft"),
    ("2.16.840.1.101.3.4", "NIST algorithms"),
    ("2.23.140", "CA/Browser Forum"),
    ("2.25", "UUID arc (128-bit arcs that Go's x509 parser rejects)"),
)


class TrustStateMismatch(StorageError):
    """A file in the CA home disagrees with what the ledger records: nothing is signed."""

    slug = "trust-state-mismatch"


@dataclass(frozen=True)
class AnchoredAuthority:
    """One CA as the ledger records it, with its certificate file checked against it."""

    name: str
    role: str
    authority_id: int
    key_uri: str
    trust_domain: str | None
    certificate: x509.Certificate
    # Certificates above this CA, nearest first, ending with the root (ledger copies).
    parents: tuple[x509.Certificate, ...]
    revoked: bool
    claims_oid: str
    # The home's recorded public URL (AIA / CRL DP in what is signed), None when unset.
    public_url: str | None = None


def _mismatch(what: str, hint: str | None = None) -> TrustStateMismatch:
    return TrustStateMismatch(
        what,
        hint=hint
        or "put back the ledger's version: cyphrs config restore (after cyphrs audit verify)",
    )


def _details(text: str, *keys: str) -> dict[str, Any]:
    """An event's details, which must be a JSON object with ``keys``: an edited ledger is a
    storage problem (exit 8), never a crash."""
    try:
        details = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        details = None
    if not isinstance(details, dict) or any(k not in details for k in keys):
        raise _mismatch(
            "the ledger holds an event whose details are not what cyphrs wrote",
            hint="run 'cyphrs audit verify'; the ledger may have been edited",
        )
    return details


def _latest_details(conn: sqlite3.Connection, event_type: str, *keys: str) -> dict[str, Any] | None:
    """The details of the newest ``event_type`` event (checked for ``keys``), or None."""
    row = conn.execute(
        "SELECT details FROM events WHERE type = ? ORDER BY seq DESC LIMIT 1", (event_type,)
    ).fetchone()
    return None if row is None else _details(row["details"], *keys)


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _short(fp: str) -> str:
    return fp[: len("sha256:") + 16] + "…"


def _ledger_certificate(conn: sqlite3.Connection, row: sqlite3.Row) -> tuple[x509.Certificate, str]:
    """The CA's certificate from its ledger row, checked against the row's fingerprint and
    the fingerprint its creation event carries (the hash chain anchors that event)."""
    from cryptography import x509

    name = row["name"]
    cert_row = conn.execute(
        "SELECT id, fingerprint, pem, status FROM certificates WHERE id = ?",
        (row["certificate_id"],),
    ).fetchone()
    if cert_row is None:
        raise _mismatch(f"the ledger has no certificate row for authority {name!r}")
    try:
        cert = x509.load_pem_x509_certificate(str(cert_row["pem"]).encode())
    except ValueError as exc:
        raise _mismatch(f"the ledger's certificate of {name!r} is not a PEM certificate") from exc
    fp = _fingerprint(cert)
    import sqlite3

    try:
        anchored = {
            fingerprint
            for (fingerprint,) in conn.execute(
                "SELECT json_extract(details, '$.fingerprint') FROM events WHERE type IN (?, ?)"
                " AND json_extract(details, '$.certificate_id') = ?",
                (*_CREATION_EVENTS, cert_row["id"]),
            )
        }
    except sqlite3.Error as exc:  # e.g. an edited event whose details are not JSON
        raise _mismatch(
            f"the ledger's creation event of {name!r} is unreadable ({exc})",
            hint="run 'cyphrs audit verify'; the ledger may have been edited",
        ) from exc
    if fp != cert_row["fingerprint"] or anchored != {fp}:
        raise _mismatch(
            f"the ledger's certificate of {name!r} does not match its recorded creation event",
            hint="run 'cyphrs audit verify'; the ledger may have been edited",
        )
    return cert, str(cert_row["status"])


def _check_entry(
    home: CaHome, entry: AuthorityEntry | None, row: sqlite3.Row, parent: str | None
) -> None:
    """``config.toml`` and ``certs/ALIAS.pem`` against the ledger's authority row."""
    name = row["name"]
    where = home.config_path.name
    if entry is None:
        raise _mismatch(f"{where} lacks authority {name!r}, which the ledger records")
    recorded = {
        "role": row["role"],
        "key": row["key_uri"],
        "trust_domain": row["trust_domain"],
        "parent": parent,
    }
    cached = {
        "role": entry.role,
        "key": entry.key_uri,
        "trust_domain": entry.trust_domain,
        "parent": entry.parent,
    }
    for field_name, value in recorded.items():
        if cached[field_name] != value:
            raise _mismatch(
                f"{where}: authority {name!r} {field_name} is {cached[field_name]!r} but the"
                f" ledger records {value!r}",
                hint=f"set it back to {value!r}; trust facts change only through recorded commands",
            )


def _check_file(home: CaHome, entry: AuthorityEntry, ledger_cert: x509.Certificate) -> None:
    from cryptography import x509

    path = home.resolve(entry.cert_path)
    shown = entry.cert_path
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _mismatch(f"{shown} (certificate of {entry.name!r}) is missing") from exc
    except OSError as exc:
        raise _mismatch(f"cannot read {shown}: {exc.strerror}") from exc
    try:
        on_disk = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _mismatch(f"{shown} (certificate of {entry.name!r}) is not PEM") from exc
    want = _fingerprint(ledger_cert)
    got = [_fingerprint(c) for c in on_disk]
    if got != [want]:
        shown_got = ", ".join(_short(g) for g in got) or "nothing"
        raise _mismatch(
            f"{shown} differs from the certificate the ledger records for {entry.name!r}"
            f" (file {shown_got}, ledger {_short(want)})"
        )


def anchored_authority(
    home: CaHome, config: HomeConfig, conn: sqlite3.Connection, name: str | None
) -> AnchoredAuthority:
    """The authority ``name`` (or the default issuer) and every CA above it, from the ledger,
    after checking that config.toml, each certificate file, the claims OID and every home
    profile file agree with it: no signature is made over a home whose caches differ.

    Raises:
        TrustStateMismatch: a cache in the home differs from the ledger (exit 8).
        NotFoundError: no such authority in config.toml.
    """
    from dataclasses import replace

    chosen = config.issuer(name).name
    claims_oid = check_claims_oid(home, config, conn)
    public_url = check_public_url(home, config, conn)
    check_profile_files(home, conn)
    return replace(_anchored_chain(home, config, conn, chosen, claims_oid), public_url=public_url)


def _anchored_chain(
    home: CaHome, config: HomeConfig, conn: sqlite3.Connection, chosen: str, claims_oid: str
) -> AnchoredAuthority:
    """The authority walk of ``anchored_authority``: each CA up to the root, checked."""
    from cyphrs_cli.ledger.records import authority_by_name

    chain: list[tuple[sqlite3.Row, x509.Certificate, str]] = []
    current: str | None = chosen
    seen: set[str] = set()
    while current is not None:
        if current in seen:
            raise _mismatch(f"the ledger's authorities form a loop at {current!r}")
        seen.add(current)
        row = authority_by_name(conn, current)
        if row is None:
            raise _mismatch(
                f"{home.config_path.name} names authority {current!r}, which the ledger does"
                " not record"
            )
        parent_row = (
            conn.execute(
                "SELECT name FROM authorities WHERE id = ?", (row["parent_id"],)
            ).fetchone()
            if row["parent_id"] is not None
            else None
        )
        parent = str(parent_row["name"]) if parent_row is not None else None
        entry = config.authorities.get(current)
        _check_entry(home, entry, row, parent)
        assert entry is not None
        cert, status = _ledger_certificate(conn, row)
        _check_file(home, entry, cert)
        chain.append((row, cert, status))
        current = parent
    row, cert, status = chain[0]
    return AnchoredAuthority(
        name=chosen,
        role=str(row["role"]),
        authority_id=int(row["id"]),
        key_uri=str(row["key_uri"]),
        trust_domain=row["trust_domain"],
        certificate=cert,
        parents=tuple(c for _, c, _ in chain[1:]),
        revoked=status == "revoked",
        claims_oid=claims_oid,
    )


def check_trust_state(home: CaHome, config: HomeConfig, conn: sqlite3.Connection) -> list[str]:
    """Every authority in the ledger and config, plus every home profile: the one-line
    problems found (empty when the home's files all match the ledger)."""
    from cyphrs_cli.errors import CyphrsError

    problems: list[str] = []

    def collect(check: Callable[[], object]) -> None:
        try:
            check()
        except CyphrsError as exc:
            if exc.message not in problems:
                problems.append(exc.message)

    collect(lambda: check_claims_oid(home, config, conn))
    collect(lambda: check_public_url(home, config, conn))
    collect(lambda: check_profile_files(home, conn))
    names = {r["name"] for r in conn.execute("SELECT name FROM authorities")}
    for name in sorted(names | set(config.authorities)):
        collect(partial(_anchored_chain, home, config, conn, name, ""))
    return problems


def restore_home_files(home: CaHome) -> list[str]:
    """``config restore``: rewrite the caches from the ledger under its write lock —
    ``certs/ALIAS.pem`` from each CA's recorded certificate (checked against its creation
    event), the trust fields of config.toml, the claims OID, and each recorded home
    profile's text. Entries config.toml names but the ledger does not are dropped. The
    rewrite is recorded as a ``home.restored`` event; returns what was rewritten."""
    from cyphrs_cli.config.settings import AuthorityEntry, load_config, save_config
    from cyphrs_cli.fsutil import PRIVATE_FILE, PUBLIC_FILE, atomic_write, ensure_private_dir
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    changes: list[str] = []
    # Home lock first, then the ledger's write lock: the order every config.toml writer
    # uses (fsutil.home_lock), so no read-modify-write of the home's files is lost.
    with home_lock(home.root), Ledger(home.ledger_path) as ledger, ledger.transaction() as conn:
        config = load_config(home)
        names = {
            int(r["id"]): str(r["name"]) for r in conn.execute("SELECT id, name FROM authorities")
        }
        for row in conn.execute("SELECT * FROM authorities ORDER BY id").fetchall():
            name = str(row["name"])
            cert, _ = _ledger_certificate(conn, row)
            pem = cert.public_bytes(_pem_encoding())
            wanted = AuthorityEntry(
                name,
                str(row["role"]),
                str(row["key_uri"]),
                f"certs/{name}.pem",
                parent=names.get(row["parent_id"]) if row["parent_id"] is not None else None,
                trust_domain=row["trust_domain"],
            )
            if config.authorities.get(name) != wanted:
                config.authorities[name] = wanted
                changes.append(f"config.toml [authorities.{name}]")
            path = home.resolve(wanted.cert_path)
            if not path.is_file() or path.read_bytes() != pem:
                ensure_private_dir(home.certs_dir)
                atomic_write(path, pem, mode=PUBLIC_FILE)
                changes.append(wanted.cert_path)
        for ghost in sorted(set(config.authorities) - set(names.values())):
            del config.authorities[ghost]
            changes.append(f"config.toml [authorities.{ghost}] (not in the ledger) removed")
        if config.default_issuer is not None and config.default_issuer not in config.authorities:
            config.default_issuer = None
            changes.append("config.toml default_issuer")
        recorded_oid = recorded_claims_oid(conn)
        if config.claims_oid not in (None, recorded_oid):
            config.claims_oid = recorded_oid
            changes.append("config.toml claims_oid")
        recorded_url = recorded_public_url(conn)
        if config.public_url != recorded_url:
            config.public_url = recorded_url
            changes.append("config.toml public_url")
        save_config(home, config)
        for name, event in recorded_profiles(conn).items():
            text = str(_details(event["details"], "text")["text"])
            path = home.profiles_dir / f"{name}.toml"
            if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                ensure_private_dir(home.profiles_dir)
                atomic_write(path, text.encode("utf-8"), mode=PRIVATE_FILE)
                changes.append(f"profiles/{name}.toml")
        if changes:
            append_event(
                conn,
                LedgerEvent(type="home.restored", target="home", details={"rewritten": changes}),
            )
    return changes


def _pem_encoding() -> serialization.Encoding:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


# --- agent-claims OID ------------------------------------------------------------------


def validate_claims_oid(oid: str) -> str:
    """Dotted syntax, arcs below 2^31 (Go's parser), first arcs per X.660, no reserved arc."""
    if not _DOTTED_OID.fullmatch(oid) or len(oid) > 128:
        raise InvalidInputError(f"invalid OID {oid!r}", hint="dotted decimal, e.g. 1.3.6.1.4.1.N.1")
    arcs = [int(a) for a in oid.split(".")]
    if arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise InvalidInputError(f"invalid OID {oid!r}: first arcs must be 0-2 and 0-39")
    if any(a >= 2**31 for a in arcs):
        raise InvalidInputError(
            f"invalid OID {oid!r}: arcs of 2^31 and above make Go's x509 parser reject the"
            " certificate"
        )
    for arc, owner in _RESERVED_ARCS:
        if oid == arc or oid.startswith(arc + "."):
            raise InvalidInputError(f"OID {oid!r} lies under {arc} ({owner}); use your own PEN")
    if oid.startswith("1.3.6.1.4.1.") and len(arcs) < 8:
        raise InvalidInputError(
            f"OID {oid!r} is an enterprise number itself; put the extension below it (e.g. PEN.1)"
        )
    return oid


def recorded_claims_oid(conn: sqlite3.Connection) -> str:
    """The claims OID the ledger last recorded for this home (the default if none)."""
    details = _latest_details(conn, CLAIMS_OID_EVENT, "oid")
    if details is None:
        return DEFAULT_CLAIMS_OID
    return str(details["oid"])


def check_claims_oid(home: CaHome, config: HomeConfig, conn: sqlite3.Connection) -> str:
    recorded = recorded_claims_oid(conn)
    cached = config.claims_oid
    if cached is not None and cached != recorded:
        raise _mismatch(
            f"{home.config_path.name}: claims_oid is {cached!r} but the ledger records"
            f" {recorded!r}",
            hint="change it with 'cyphrs config claims-oid OID', which records it",
        )
    return recorded


def record_claims_oid(conn: sqlite3.Connection, oid: str) -> bool:
    """Append a ``home.claims_oid_set`` event inside the caller's transaction; False when
    the ledger already records that OID (nothing to change)."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    validate_claims_oid(oid)
    previous = recorded_claims_oid(conn)
    if previous == oid:
        return False
    append_event(
        conn,
        LedgerEvent(
            type=CLAIMS_OID_EVENT,
            target="home:claims_oid",
            details={"oid": oid, "previous": previous},
        ),
    )
    return True


def set_claims_oid(home: CaHome, oid: str) -> bool:
    """The recorded command behind ``config claims-oid`` and ``init-root --claims-oid``:
    event and config.toml change under the ledger's write lock. Returns False when the
    ledger already records ``oid``."""
    from cyphrs_cli.config.settings import load_config, save_config
    from cyphrs_cli.ledger.db import Ledger

    validate_claims_oid(oid)
    # Home lock first, then the ledger's write lock: the order every config.toml writer
    # uses (fsutil.home_lock), so no read-modify-write of the home's files is lost.
    with home_lock(home.root), Ledger(home.ledger_path) as ledger, ledger.transaction() as conn:
        config = load_config(home)
        changed = record_claims_oid(conn, oid)
        if config.claims_oid != oid:
            # Written before COMMIT: if the commit fails, config disagrees with the ledger
            # and signing refuses, which is the safe side.
            config.claims_oid = oid
            save_config(home, config)
    return changed


# --- public URL ------------------------------------------------------------------------

PUBLIC_URL_MAX = 200


def validate_public_url(url: str) -> str:
    """An absolute ``http``/``https`` URL with a host and nothing a path could not be
    appended to (no query, fragment or userinfo), printable ASCII (an IA5String in the
    certificate); returned without a trailing slash."""
    from urllib.parse import urlsplit

    def bad(reason: str) -> InvalidInputError:
        return InvalidInputError(
            f"invalid public URL {url!r}: {reason}",
            hint="e.g. https://ca.acme.internal:8443 (where 'cyphrs serve' is reachable)",
        )

    if not url or len(url) > PUBLIC_URL_MAX:
        raise bad(f"must be 1-{PUBLIC_URL_MAX} characters")
    if not url.isascii() or any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise bad("only printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError as exc:
        raise bad(str(exc)) from exc
    if parts.scheme not in ("http", "https"):
        raise bad("the scheme must be http or https")
    if not parts.hostname:
        raise bad("a host is required")
    if parts.username is not None or "@" in parts.netloc:
        raise bad("userinfo is not allowed")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("a query or fragment is not allowed")
    return url.rstrip("/")


def recorded_public_url(conn: sqlite3.Connection) -> str | None:
    """The public URL the ledger last recorded for this home (None: unset or cleared)."""
    details = _latest_details(conn, PUBLIC_URL_EVENT, "url")
    if details is None:
        return None
    url = details["url"]
    return str(url) if url is not None else None


def check_public_url(home: CaHome, config: HomeConfig, conn: sqlite3.Connection) -> str | None:
    """config.toml's ``public_url`` must be the recorded one: it changes what is signed."""
    recorded = recorded_public_url(conn)
    if config.public_url != recorded:
        raise _mismatch(
            f"{home.config_path.name}: public_url is {config.public_url!r} but the ledger"
            f" records {recorded!r}",
            hint="change it with 'cyphrs config public-url URL', which records it",
        )
    return recorded


def set_public_url(home: CaHome, url: str | None) -> bool:
    """``config public-url``: record (``home.public_url_set``) and cache in config.toml
    the URL that AIA and CRL DP extensions point at; None clears it. False when the
    ledger already records it."""
    from cyphrs_cli.config.settings import load_config, save_config
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    if url is not None:
        url = validate_public_url(url)
    with home_lock(home.root), Ledger(home.ledger_path) as ledger, ledger.transaction() as conn:
        config = load_config(home)
        previous = recorded_public_url(conn)
        changed = previous != url
        if changed:
            append_event(
                conn,
                LedgerEvent(
                    type=PUBLIC_URL_EVENT,
                    target="home:public_url",
                    details={"url": url, "previous": previous},
                ),
            )
        if config.public_url != url:
            # Written before COMMIT, as set_claims_oid: a failed commit leaves a mismatch,
            # and signing refuses, the safe side.
            config.public_url = url
            save_config(home, config)
    return changed


# --- profiles --------------------------------------------------------------------------


def recorded_profiles(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """The last ``profile.set``/``profile.removed`` event per profile name still in force."""
    latest: dict[str, sqlite3.Row] = {}
    for row in conn.execute(
        "SELECT seq, at, actor, type, target, details FROM events WHERE type IN (?, ?)"
        " ORDER BY seq",
        (PROFILE_SET_EVENT, PROFILE_REMOVED_EVENT),
    ):
        latest[str(_details(row["details"], "name")["name"])] = row
    return {n: r for n, r in latest.items() if r["type"] == PROFILE_SET_EVENT}


def profile_record(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    """What the ledger says of profile ``name``: sha256, overrides_builtin, at, actor.

    Read on every issuance (``check_profile``), so only the last event for this name is
    read and decoded, not every profile text ever recorded (``recorded_profiles``). It
    reads through the ``type`` index (the few profile events), named: the ``target``
    index would walk every ``policy.denied`` event of the profile, which anyone sending
    refused requests adds to, and with statistics (an operator's ``ANALYZE``) SQLite
    would otherwise scan the whole table. ``profiles set`` and ``profiles remove`` write
    the name in both the target and the details; when the last event found by target
    names another profile in its details, the scan by details decides. A ledger edited
    otherwise (a target changed away from its profile, details no longer JSON in another
    profile's event) may be judged differently from the full scan: such edits break the
    hash chain, which ``audit verify`` reports, and ``check_profile_files`` still reads
    every event."""
    row = conn.execute(
        "SELECT seq, at, actor, type, target, details FROM events INDEXED BY events_type"
        " WHERE type IN (?, ?) AND target = ? ORDER BY seq DESC LIMIT 1",
        (PROFILE_SET_EVENT, PROFILE_REMOVED_EVENT, f"profile:{name}"),
    ).fetchone()
    if row is not None and _details(row["details"], "name")["name"] != name:
        row = recorded_profiles(conn).get(name)
    if row is None or row["type"] != PROFILE_SET_EVENT:
        return None
    details = _details(row["details"], "sha256", "overrides_builtin")
    return {
        "sha256": details["sha256"],
        "overrides_builtin": bool(details["overrides_builtin"]),
        "recorded_at": row["at"],
        "recorded_by": row["actor"],
        "seq": row["seq"],
    }


def _unrecorded(
    name: str, record: dict[str, Any] | None, overrides_builtin: bool
) -> TrustStateMismatch:
    state = "is not recorded" if record is None else "differs from the profile recorded"
    flag = " --override-builtin" if overrides_builtin else ""
    return _mismatch(
        f"profiles/{name}.toml {state} in the ledger; record it with"
        f" 'cyphrs profiles set profiles/{name}.toml{flag}'",
        hint="recording makes the profile text part of the hash-chained audit trail",
    )


def _missing(name: str) -> TrustStateMismatch:
    return _mismatch(
        f"profiles/{name}.toml is missing but the ledger records it",
        hint=f"restore it (cyphrs config restore), or record its removal: cyphrs profiles"
        f" remove {name}",
    )


def check_profile_files(home: CaHome, conn: sqlite3.Connection) -> None:
    """Every ``profiles/*.toml`` must hash to the text last recorded under its name, and
    every recorded profile must have its file (so a built-in cannot silently return).
    Raw bytes only: an unparsable file is a mismatch here, not an input error."""
    import hashlib

    from cyphrs_cli.profiles.model import builtin_profile_names

    recorded = {name: profile_record(conn, name) for name in recorded_profiles(conn)}
    folder = home.profiles_dir
    files = {p.stem: p for p in folder.glob("*.toml")} if folder.is_dir() else {}
    for name, path in sorted(files.items()):
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise _mismatch(f"cannot read profiles/{name}.toml: {exc.strerror}") from exc
        record = recorded.get(name)
        if record is None or record["sha256"] != digest:
            raise _unrecorded(name, record, name in builtin_profile_names())
    for name in sorted(set(recorded) - set(files)):
        raise _missing(name)


def check_profile(conn: sqlite3.Connection, profile: Profile) -> None:
    """The profile object about to be signed under is the text last recorded under its
    name (a home profile), or a built-in the ledger has not replaced. Checked on the
    loaded text, so a file swapped after ``check_profile_files`` cannot slip through."""
    record = profile_record(conn, profile.name)
    if profile.source == "builtin":
        if record is not None:
            raise _missing(profile.name)
        return
    if record is None or record["sha256"] != profile.sha256:
        raise _unrecorded(profile.name, record, profile.overrides_builtin)


def record_profile(
    home: CaHome, source: Path, *, name: str, override_builtin: bool
) -> tuple[Profile, bool]:
    """``profiles set``: validate the text, append ``profile.set`` (name, sha256, whether
    it replaces a built-in, the text) and install ``profiles/NAME.toml``, under the
    ledger's write lock. Returns (profile, False when that text was already in force)."""
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import PRIVATE_FILE, atomic_write, ensure_private_dir
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.events import LedgerEvent, append_event
    from cyphrs_cli.profiles.model import parse_profile_text, read_profile_file

    text = read_profile_file(source)
    profile = parse_profile_text(name, text, source=str(home.profiles_dir / f"{name}.toml"))
    if profile.overrides_builtin and not override_builtin:
        raise UsageError(
            f"profile {name!r} would replace the built-in of that name",
            hint="pass --override-builtin if that is intended, or choose another --name",
        )
    ensure_private_dir(home.profiles_dir)
    # Home lock first, then the ledger's write lock: the order every config.toml writer
    # uses (fsutil.home_lock), so no read-modify-write of the home's files is lost.
    with home_lock(home.root), Ledger(home.ledger_path) as ledger, ledger.transaction() as conn:
        record = profile_record(conn, name)
        changed = record is None or record["sha256"] != profile.sha256
        if changed:
            append_event(
                conn,
                LedgerEvent(
                    type=PROFILE_SET_EVENT,
                    target=f"profile:{name}",
                    details={
                        "name": name,
                        "sha256": profile.sha256,
                        "overrides_builtin": profile.overrides_builtin,
                        "text": text,
                    },
                ),
            )
        # Installed before COMMIT: a failed commit leaves a file that issuance refuses.
        atomic_write(home.profiles_dir / f"{name}.toml", text.encode("utf-8"), mode=PRIVATE_FILE)
    return profile, changed


def remove_recorded_profile(home: CaHome, name: str) -> None:
    """``profiles remove``: append ``profile.removed`` and delete ``profiles/NAME.toml``."""
    from cyphrs_cli.errors import NotFoundError, StorageError
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    path = home.profiles_dir / f"{name}.toml"
    # Home lock first, then the ledger's write lock: the order every config.toml writer
    # uses (fsutil.home_lock), so no read-modify-write of the home's files is lost.
    with home_lock(home.root), Ledger(home.ledger_path) as ledger, ledger.transaction() as conn:
        record = profile_record(conn, name)
        if record is None and not path.exists():
            raise NotFoundError(f"no home profile named {name!r}")
        append_event(
            conn,
            LedgerEvent(
                type=PROFILE_REMOVED_EVENT,
                target=f"profile:{name}",
                details={"name": name, "sha256": record["sha256"] if record else None},
            ),
        )
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc.strerror}") from exc
