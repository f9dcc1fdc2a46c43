"""ACME External Account Binding keys (RFC 8555 §7.3.4): create, list, revoke, and the
name policy each key binds.

An EAB key is a key id (``eab_<hex>``, public) and a 256-bit HMAC key shown once. Each
binds one issuance profile and a name policy (DNS names or ``*.<suffix>`` patterns, IP
networks) and may create exactly one ACME account: every order of that account is checked
against the key's policy before any challenge exists.

Storage: the ledger keeps the HMAC key itself (base64url) and its SHA-256. A hash alone
cannot verify an HMAC -- the server must recompute the MAC -- so the key is kept under the
home's protection (the ledger file is 0600 in a 0700 home, like the CA's own state) and is
useless once its account exists (single use) or it is revoked. Events: ``acme.eab.created``
(never the key), ``acme.eab.revoked``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import ConflictError, InvalidInputError, NotFoundError, UsageError

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.service.authority import Authority


@dataclass(frozen=True)
class EabSpec:
    """What ``cyphrs acme eab create`` asks for."""

    profile: str = "server"
    dns_patterns: tuple[str, ...] = ()
    ip_networks: tuple[str, ...] = ()
    ttl: timedelta | None = None  # how long the key may be used to create its account


@dataclass(frozen=True)
class EabKey:
    """An EAB key as the ledger records it (the HMAC key only when just created)."""

    kid: str
    profile: str
    dns_patterns: tuple[str, ...]
    ip_networks: tuple[str, ...]
    key_sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    account_id: str | None = None
    hmac_key: str | None = field(default=None, repr=False)

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.account_id is not None:
            return "bound"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        from cyphrs_cli.ledger.events import rfc3339

        return {
            "kid": self.kid,
            "status": self.status(now),
            "profile": self.profile,
            "dns_patterns": list(self.dns_patterns),
            "ip_networks": list(self.ip_networks),
            "key_sha256": self.key_sha256,
            "account": self.account_id,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at) if self.expires_at else None,
            "revoked_at": rfc3339(self.revoked_at) if self.revoked_at else None,
        }

    def allows(self, identifier_type: str, value: str) -> bool:
        """Whether the key's name policy covers one ACME identifier."""
        return name_allowed(self.dns_patterns, self.ip_networks, identifier_type, value)



def new_hmac_key() -> tuple[bytes, str]:
    """32 random bytes, base64url without padding, never starting with ``-``: certbot's and
    lego's argument parsers read ``--eab-hmac-key -abc...`` as a missing value followed by
    an option, and 1 key in 64 would otherwise start that way. The redraw costs
    log2(64/63) < 0.03 bits of the 256. Returns the raw bytes and their text form."""
    while True:
        raw = secrets.token_bytes(32)
        key = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        if not key.startswith("-"):
            return raw, key

def _labels_match(pattern: str, name: str) -> bool:
    """``*`` as a whole label matches exactly one label (like a certificate wildcard)."""
    pattern_labels, name_labels = pattern.split("."), name.split(".")
    if len(pattern_labels) != len(name_labels):
        return False
    return all(p == "*" or p == n for p, n in zip(pattern_labels, name_labels, strict=True))


def name_allowed(
    dns_patterns: tuple[str, ...], ip_networks: tuple[str, ...], identifier_type: str, value: str
) -> bool:
    if identifier_type == "dns":
        name = value.lower().rstrip(".")
        return any(_labels_match(pattern, name) for pattern in dns_patterns)
    if identifier_type == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net) for net in ip_networks)
    return False


def _check_patterns(spec: EabSpec) -> None:
    from cyphrs_cli.ca.orders import is_dns_name

    if not spec.dns_patterns and not spec.ip_networks:
        raise UsageError("an EAB key binds a name policy: give --dns-pattern and/or --ip-network")
    for pattern in spec.dns_patterns:
        base = pattern.removeprefix("*.")
        if pattern.lower() != pattern or "*" in base or not is_dns_name(base):
            raise InvalidInputError(
                f"invalid --dns-pattern {pattern!r}: a lowercase DNS name, or '*.' and one"
            )
        if base != pattern and base.count(".") < 1:
            raise InvalidInputError(
                f"--dns-pattern {pattern!r}: a wildcard needs a domain of two labels or more"
            )
    for network in spec.ip_networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            raise InvalidInputError(f"invalid --ip-network {network!r}: {exc}") from exc


def _row_key(row: sqlite3.Row, *, with_secret: bool = False) -> EabKey:
    from cyphrs_cli.times import parse_time

    return EabKey(
        kid=str(row["kid"]),
        profile=str(row["profile"]),
        dns_patterns=tuple(json.loads(row["dns_patterns"])),
        ip_networks=tuple(json.loads(row["ip_networks"])),
        key_sha256=str(row["key_sha256"]),
        created_at=parse_time(row["created_at"]),
        expires_at=parse_time(row["expires_at"]) if row["expires_at"] else None,
        revoked_at=parse_time(row["revoked_at"]) if row["revoked_at"] else None,
        account_id=row["account_id"],
        hmac_key=str(row["hmac_key"]) if with_secret else None,
    )


def create_eab_key(authority: Authority, spec: EabSpec) -> EabKey:
    """Record a new EAB key (event ``acme.eab.created``) and return it with its HMAC key.

    Raises:
        CyphrsError: 2 no name policy, 3 a bad pattern or network, 6 an unknown profile,
            8 a ledger failure.
    """
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    _check_patterns(spec)
    authority.profile(spec.profile)  # 6 when unknown
    raw, hmac_key = new_hmac_key()
    now = utc_now()
    key = EabKey(
        kid="eab_" + secrets.token_hex(12),
        profile=spec.profile,
        dns_patterns=tuple(spec.dns_patterns),
        ip_networks=tuple(str(ipaddress.ip_network(n)) for n in spec.ip_networks),
        key_sha256=hashlib.sha256(raw).hexdigest(),
        created_at=now,
        expires_at=now + spec.ttl if spec.ttl else None,
        hmac_key=hmac_key,
    )
    with authority.ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO acme_eab_keys (kid, hmac_key, key_sha256, profile, dns_patterns,"
            " ip_networks, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                key.kid,
                hmac_key,
                key.key_sha256,
                key.profile,
                json.dumps(list(key.dns_patterns)),
                json.dumps(list(key.ip_networks)),
                rfc3339(now),
                rfc3339(key.expires_at) if key.expires_at else None,
            ),
        )
        append_event(
            conn,
            LedgerEvent(type="acme.eab.created", target=f"acme-eab:{key.kid}",
                        details=key.to_json(now)),
        )
    return key


def list_eab_keys(authority: Authority) -> list[EabKey]:
    rows = authority.ledger.conn.execute("SELECT * FROM acme_eab_keys ORDER BY created_at DESC")
    return [_row_key(row) for row in rows]


def revoke_eab_key(authority: Authority, kid: str) -> EabKey:
    """Revoke an EAB key: it can no longer create an account, and the account it bound can
    no longer order (its policy is gone).

    Raises:
        CyphrsError: 6 unknown kid, 7 already revoked, 8 a ledger failure.
    """
    from dataclasses import replace

    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    now = utc_now()
    with authority.ledger.transaction() as conn:
        row = conn.execute("SELECT * FROM acme_eab_keys WHERE kid = ?", (kid,)).fetchone()
        if row is None:
            raise NotFoundError(f"no EAB key {kid!r}", hint="cyphrs acme eab list")
        if row["revoked_at"] is not None:
            raise ConflictError(f"EAB key {kid} was already revoked at {row['revoked_at']}")
        conn.execute("UPDATE acme_eab_keys SET revoked_at = ? WHERE kid = ?", (rfc3339(now), kid))
        append_event(
            conn,
            LedgerEvent(type="acme.eab.revoked", target=f"acme-eab:{kid}",
                        details={"kid": kid, "account": row["account_id"]}),
        )
    return replace(_row_key(row), revoked_at=now)


def eab_key_row(conn: sqlite3.Connection, kid: str) -> EabKey | None:
    """The key ``kid`` with its HMAC key (the server's verification), or None."""
    row = conn.execute("SELECT * FROM acme_eab_keys WHERE kid = ?", (kid,)).fetchone()
    return _row_key(row, with_secret=True) if row is not None else None
