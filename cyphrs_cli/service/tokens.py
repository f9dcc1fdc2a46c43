"""Enrollment tokens: create, list, revoke, and redeem (check, then consume in the
issuance's own transaction).

A token is 256 random bits shown once as ``cyphrs_tok_<43 base64url chars>``; the ledger
keeps only its SHA-256, with its binding (profile, workflow, permissions, trust domain,
maximum certificate TTL, number of uses, expiry, requester). What a token may issue is
decided here and by the profile; the agent's CSR contributes its key only.

Atomicity: ``consume_hook`` is run by ``ca.issuance.issue_leaves`` inside the savepoint
of the certificate it pays for, right after its row is written. It re-reads the token
under the write lock (``BEGIN IMMEDIATE``) and refuses when no use is left, so however
many requests race on one token, each use pays for exactly one certificate: the losers'
certificates are rolled back (no row, no event) and their refusals recorded.

Events: ``token.created``, ``token.used`` (with the serial it paid for), ``token.refused``
(with the rule: ``token.unknown``, ``token.used``, ``token.expired``, ``token.revoked``,
``token.trust_domain``, ``token.ttl``, ``token.workflow``, ``token.permission``,
``token.names``, or the profile's rule), ``token.revoked``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import ConflictError, NotFoundError, PolicyDenied, UsageError

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.ca.issuance import AfterRecord
    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.service.authority import Authority

TOKEN_PREFIX = "cyphrs_tok_"  # noqa: S105 -- a prefix, not a secret
_TOKEN_FORMAT = re.compile(r"cyphrs_tok_[A-Za-z0-9_-]{43}")
#: A token is a short-lived hand-over, not a standing credential.
TOKEN_TTL_MAX = timedelta(days=30)
TOKEN_USES_MAX = 10_000


class CredentialRefused(PolicyDenied):
    """An enrollment credential (token or JWT) was refused; the enrollment records it as
    ``<kind>.refused`` with the rule, in its own transaction."""


@dataclass(frozen=True)
class TokenSpec:
    """What ``cyphrs token create`` / ``POST /v1/admin/tokens`` asks for."""

    profile: str = "agent"
    workflow: str | None = None
    permissions: tuple[str, ...] = ()
    trust_domain: str | None = None  # default: the issuer's
    max_ttl: timedelta | None = None  # certificates under it live at most this long
    uses: int = 1
    ttl: timedelta = timedelta(minutes=10)  # the token's own lifetime
    requester: str | None = None  # who asked for the token


@dataclass(frozen=True)
class TokenInfo:
    """A token as the ledger records it (never its secret)."""

    token_id: str
    profile: str
    workflow: str | None
    permissions: tuple[str, ...]
    trust_domain: str | None
    max_ttl: timedelta | None
    uses_allowed: int
    uses: int
    requester: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    row_id: int = field(default=0, repr=False, compare=False)

    def status(self, now: datetime) -> str:
        """``revoked``, ``used`` (no use left), ``expired`` or ``active``, in that order."""
        if self.revoked_at is not None:
            return "revoked"
        if self.uses >= self.uses_allowed:
            return "used"
        if now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        from cyphrs_cli.ledger.events import rfc3339

        return {
            "token_id": self.token_id,
            "status": self.status(now),
            "profile": self.profile,
            "workflow": self.workflow,
            "permissions": list(self.permissions),
            "trust_domain": self.trust_domain,
            "max_ttl_seconds": int(self.max_ttl.total_seconds()) if self.max_ttl else None,
            "uses_allowed": self.uses_allowed,
            "uses": self.uses,
            "requester": self.requester,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "revoked_at": rfc3339(self.revoked_at) if self.revoked_at else None,
        }


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``token`` is the secret, shown once and stored nowhere."""

    token: str = field(repr=False)
    info: TokenInfo

    @property
    def token_id(self) -> str:
        return self.info.token_id

    @property
    def expires_at(self) -> datetime:
        return self.info.expires_at

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The ``cyphrs.token/v1`` document (CLI ``--json`` and ``POST /v1/admin/tokens``):
        the only place the secret is ever rendered."""
        return {"schema": "cyphrs.token/v1", "token": self.token, **self.info.to_json(now)}


def secret_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_secret() -> str:
    """256 bits from the OS CSPRNG, base64url without padding (43 characters)."""
    raw = secrets.token_bytes(32)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _info(row: sqlite3.Row) -> TokenInfo:
    from cyphrs_cli.times import parse_time

    return TokenInfo(
        token_id=str(row["token_id"]),
        profile=str(row["profile"]),
        workflow=row["workflow"],
        permissions=tuple(json.loads(row["permissions"])),
        trust_domain=row["trust_domain"],
        max_ttl=timedelta(seconds=row["max_ttl_seconds"]) if row["max_ttl_seconds"] else None,
        uses_allowed=int(row["uses_allowed"]),
        uses=int(row["uses"]),
        requester=row["requester"],
        created_at=parse_time(row["created_at"]),
        expires_at=parse_time(row["expires_at"]),
        revoked_at=parse_time(row["revoked_at"]) if row["revoked_at"] else None,
        row_id=int(row["id"]),
    )


def token_row_digest(info: TokenInfo, sha256: str) -> str:
    """What ``token.created`` pins of the row (``ledger.credentials.token_digest``)."""
    from cyphrs_cli.ledger.credentials import token_digest

    document = info.to_json(info.created_at)
    return token_digest({**document, "secret_sha256": sha256})


def _check_spec(authority: Authority, spec: TokenSpec) -> str | None:
    """Refuse (before anything is recorded) a token that could never issue; returns the
    trust domain it binds."""
    from cyphrs_cli.ca.extensions import REQUESTER_MAX, parse_spiffe_id, validate_text
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.durations import format_duration
    from cyphrs_cli.policy.decide import decide

    # An int, not a float or a bool: the ledger's column would store 1.0 as 1 while the
    # token.created event kept 1.0, and the row would no longer match its event.
    if type(spec.uses) is not int or not 1 <= spec.uses <= TOKEN_USES_MAX:
        raise UsageError(f"--uses must be a whole number from 1 to {TOKEN_USES_MAX}")
    if not timedelta(seconds=1) <= spec.ttl <= TOKEN_TTL_MAX:
        raise UsageError(f"a token lives from 1 second to {format_duration(TOKEN_TTL_MAX)}")
    if spec.max_ttl is not None and spec.max_ttl <= timedelta(0):
        raise UsageError("--max-ttl must be positive")
    if spec.workflow is None:
        raise UsageError("a token binds a workflow (--workflow): it issues agent identities")
    if spec.requester is not None:
        validate_text("requester", spec.requester, max_length=REQUESTER_MAX)
    profile = authority.profile(spec.profile)
    facts = authority.facts
    trust_domain = spec.trust_domain or facts.trust_domain
    if trust_domain is not None:
        parse_spiffe_id(f"spiffe://{trust_domain}/agent/check/check")
    if trust_domain != facts.trust_domain:
        return trust_domain  # another issuer's domain: checked where it is redeemed
    # Ask the profile now, as a dry run (nothing recorded): a token that could never
    # issue is refused at creation, not at the agent's start-up.
    order = LeafOrder(
        profile=profile.name,
        workflow=spec.workflow,
        instance="token-check" if spec.workflow else None,
        permissions=spec.permissions,
        ttl=format_duration(spec.max_ttl) if spec.max_ttl else None,
    )
    request, _ = prepare_request(
        order, profile, trust_domain, stand_in=lambda key_spec: _stand_in_key()
    )
    decide(profile, request, facts)
    return trust_domain


def _stand_in_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).public_key()


def create_token(authority: Authority, spec: TokenSpec) -> CreatedToken:
    """Record a new token (its SHA-256 and binding, event ``token.created``) and return its
    secret once.

    Raises:
        CyphrsError: 2 bad uses/lifetime, 3 bad names, 5 a binding the profile refuses,
            6 an unknown profile, 8 a ledger failure.
    """
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, default_actor, rfc3339, utc_now

    trust_domain = _check_spec(authority, spec)
    secret = new_token_secret()
    digest = secret_sha256(secret)
    now = utc_now()
    info = TokenInfo(
        token_id="tok_" + secrets.token_hex(8),
        profile=spec.profile,
        workflow=spec.workflow,
        permissions=tuple(spec.permissions),
        trust_domain=trust_domain,
        max_ttl=spec.max_ttl,
        uses_allowed=spec.uses,
        uses=0,
        requester=spec.requester or default_actor(),
        created_at=now,
        expires_at=now + spec.ttl,
    )
    with authority.ledger.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO tokens (token_id, secret_sha256, profile, workflow, permissions,"
            " trust_domain, max_ttl_seconds, uses_allowed, requester, created_at, expires_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                info.token_id,
                digest,
                info.profile,
                info.workflow,
                json.dumps(list(info.permissions)),
                info.trust_domain,
                int(spec.max_ttl.total_seconds()) if spec.max_ttl else None,
                info.uses_allowed,
                info.requester,
                rfc3339(info.created_at),
                rfc3339(info.expires_at),
            ),
        )
        append_event(
            conn,
            LedgerEvent(
                type="token.created",
                target=f"token:{info.token_id}",
                details={**info.to_json(now), "row_digest": token_row_digest(info, digest)},
            ),
        )
    assert cursor.lastrowid is not None
    from dataclasses import replace

    return CreatedToken(secret, replace(info, row_id=cursor.lastrowid))


def list_tokens(authority: Authority, *, include_inactive: bool = False) -> list[TokenInfo]:
    """Tokens, newest first: the active ones, or every one with ``include_inactive``."""
    from cyphrs_cli.ledger.events import utc_now

    now = utc_now()
    rows = authority.ledger.conn.execute("SELECT * FROM tokens ORDER BY id DESC")
    found = [_info(row) for row in rows]
    return [t for t in found if include_inactive or t.status(now) == "active"]


def revoke_token(authority: Authority, token_id: str) -> TokenInfo:
    """Revoke a token so that it can no longer be redeemed (event ``token.revoked``).

    Raises:
        CyphrsError: 6 unknown token id, 7 already revoked, 8 a ledger failure.
    """
    from dataclasses import replace

    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    now = utc_now()
    with authority.ledger.transaction() as conn:
        row = conn.execute("SELECT * FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no token {token_id!r}", hint="cyphrs token list --all")
        if row["revoked_at"] is not None:
            raise ConflictError(f"token {token_id} was already revoked at {row['revoked_at']}")
        conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (rfc3339(now), row["id"]))
        append_event(
            conn,
            LedgerEvent(
                type="token.revoked",
                target=f"token:{token_id}",
                details={"token_id": token_id, "revoked_at": rfc3339(now)},
            ),
        )
    return replace(_info(row), revoked_at=now)


def _refusal(info: TokenInfo, now: datetime) -> CredentialRefused | None:
    status = info.status(now)
    if status == "active":
        return None
    from cyphrs_cli.ledger.events import rfc3339

    why = {
        "revoked": f"was revoked at {rfc3339(info.revoked_at or now)}",
        "used": f"has no use left ({info.uses} of {info.uses_allowed} used)",
        "expired": f"expired at {rfc3339(info.expires_at)}",
    }[status]
    rule = f"token.{status}"
    return CredentialRefused(f"token {info.token_id} {why} (rule {rule})", rule=rule)


def _unknown_token() -> CredentialRefused:
    """No such token (also a malformed string, or a row deleted since the early check)."""
    return CredentialRefused("unknown enrollment token (rule token.unknown)", rule="token.unknown")


def redeemable_token(conn: sqlite3.Connection, token: str) -> TokenInfo:
    """The token ``token`` names, if it may be used now (the early check, before any
    signing; ``consume_hook`` decides races).

    Raises:
        CredentialRefused: ``token.unknown`` (also a malformed string), ``token.revoked``,
            ``token.used``, ``token.expired``.
    """
    from cyphrs_cli.ledger.events import utc_now

    if not _TOKEN_FORMAT.fullmatch(token):
        raise _unknown_token()
    row = conn.execute(
        "SELECT * FROM tokens WHERE secret_sha256 = ?", (secret_sha256(token),)
    ).fetchone()
    if row is None:
        raise _unknown_token()
    info = _info(row)
    refused = _refusal(info, utc_now())
    if refused is not None:
        raise refused
    return info


def consume_hook(info: TokenInfo) -> AfterRecord:
    """The ``after_record`` hook that spends one use of ``info`` on the certificate just
    recorded, in its transaction; raises ``CredentialRefused`` (rolling the certificate
    back) when, under the write lock, no use is left or the token expired or was revoked.
    """

    def consume(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        from cyphrs_cli.ledger.events import LedgerEvent, append_event, utc_now

        current = _spend_one_use(conn, info, utc_now())
        append_event(
            conn,
            LedgerEvent(
                type="token.used",
                target=f"token:{info.token_id}",
                details={
                    "token_id": info.token_id,
                    "serial": issued.serial,
                    "certificate_id": issued.record_id,
                    "use": current.uses + 1,
                    "uses_allowed": current.uses_allowed,
                },
            ),
        )

    return consume


def _spend_one_use(conn: sqlite3.Connection, info: TokenInfo, now: datetime) -> TokenInfo:
    """Spend one use of the token ``info`` names, under the write lock; returns the token as
    it was just before. The token is re-read here, not trusted from the early check: it
    may have been used up, revoked or have expired since.

    The common case is one statement: an ``UPDATE`` whose condition is the token being
    active (stored times are ``rfc3339`` text, which sorts as time), returning what the
    refusal rules need, which are then applied in Python as well (``_refusal``, on the
    parsed times: a row whose text the comparison misjudges cannot slip through). When
    the ``UPDATE`` matches nothing, the row is read and refused with its rule, exactly
    as before this fast path.

    Raises:
        CredentialRefused: ``token.unknown``, ``token.revoked``, ``token.used`` or
            ``token.expired``; the caller's savepoint is then rolled back, which also
            undoes a use spent here.
    """
    from dataclasses import replace

    from cyphrs_cli.ledger.events import rfc3339
    from cyphrs_cli.times import parse_time

    spent = conn.execute(
        "UPDATE tokens SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL"
        " AND uses < uses_allowed AND expires_at > ? RETURNING uses, uses_allowed, expires_at",
        (info.row_id, rfc3339(now)),
    ).fetchall()
    if spent:
        uses, uses_allowed, expires_at = spent[0]
        before = replace(
            info,
            uses=int(uses) - 1,
            uses_allowed=int(uses_allowed),
            expires_at=parse_time(expires_at),
            revoked_at=None,
        )
        refused = _refusal(before, now)
        if refused is not None:
            raise refused
        return before
    row = conn.execute("SELECT * FROM tokens WHERE id = ?", (info.row_id,)).fetchone()
    if row is None:
        raise _unknown_token()
    before = _info(row)
    refused = _refusal(before, now)
    if refused is not None:
        raise refused
    updated = conn.execute(
        "UPDATE tokens SET uses = uses + 1 WHERE id = ? AND uses < uses_allowed",
        (info.row_id,),
    ).rowcount
    if updated != 1:  # cannot happen under the write lock; refuse rather than trust it
        raise CredentialRefused(f"token {info.token_id} has no use left", rule="token.used")
    return before


def record_refusal(
    ledger: Ledger, kind: str, refused: PolicyDenied, details: dict[str, Any]
) -> None:
    """A refused credential is audit evidence: ``<kind>.refused`` with its rule, committed
    on its own (the refused issuance left nothing)."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    label = details.get("token_id") or details.get("provisioner") or "unknown"
    with ledger.transaction() as conn:
        append_event(
            conn,
            LedgerEvent(
                type=f"{kind}.refused",
                target=f"{kind}:{label}",
                outcome="denied",
                details={"rule": refused.rule, "message": refused.message, **details},
            ),
        )
