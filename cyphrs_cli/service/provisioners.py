"""JWT provisioners: CI systems (GitHub Actions, GitLab, any OIDC issuer) enroll with the
bearer JWT their platform gives a job, verified against a configured JWKS -- the shape of
step-ca's OIDC provisioner and Vault's JWT auth method.

A provisioner is trust state: its whole configuration (issuer ``iss``, audience, the JWKS
itself when it came from a file or the JWKS URL, allowed algorithms, required claims, the
claim mapping to workflow / permissions / instance, bound profile, maximum TTL) is stored
in the ledger and pinned by a hash-chained ``provisioner.set`` event; a row that differs
from its latest event signs nothing (exit 8), exactly like a home profile.

Verification (PyJWT): the header's ``alg`` must be in the provisioner's allow-list (only
asymmetric algorithms can be configured: never ``none``, never HS* with a public key),
``kid`` must name a key of the JWKS (a URL's JWKS is refetched once on an unknown kid),
the signature must verify, ``exp``, ``iat``, ``iss`` and ``aud`` are required, ``exp``,
``nbf`` and ``iat`` are checked with a small leeway, and the required claims must match
exactly. The JWT is one-time: its ``jti`` (or, without one, its SHA-256) is recorded in
``jwt_uses`` inside the issuance's own transaction, and a second use is refused
(``jwt.replay``) for as long as the row exists (rows are kept; see the design notes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError, NotFoundError, UsageError
from cyphrs_cli.service.tokens import CredentialRefused

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.ca.issuance import AfterRecord
    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.service.authority import Authority

#: Asymmetric JWS algorithms a provisioner may allow (RFC 7518 / RFC 8037).
SUPPORTED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Clock skew tolerated on exp / nbf / iat.
LEEWAY = timedelta(seconds=30)
JWKS_FETCH_TIMEOUT_S = 5.0
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
SET_EVENT = "provisioner.set"
REMOVED_EVENT = "provisioner.removed"


def _refused(rule: str, message: str) -> CredentialRefused:
    return CredentialRefused(f"{message} (rule {rule})", rule=rule)


@dataclass(frozen=True)
class ProvisionerSpec:
    """One JWT provisioner (see the module docstring). ``jwks`` is an inline JWKS (the
    content of a file, pinned in the ledger); ``jwks_url`` is fetched when verifying."""

    name: str
    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    profile: str = "agent"
    workflow: str | None = None  # a fixed workflow, or
    workflow_claim: str | None = None  # the claim whose value is the workflow
    permissions: tuple[str, ...] = ()  # granted to every enrollment
    permissions_claim: str | None = None  # a claim adding more (list, or space-separated)
    instance_claim: str | None = None  # e.g. a run id; else the request's or a random one
    required_claims: tuple[tuple[str, str], ...] = ()  # claim == value, all of them
    max_ttl: timedelta | None = None

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["algorithms"] = list(self.algorithms)
        document["permissions"] = list(self.permissions)
        document["required_claims"] = {k: v for k, v in self.required_claims}
        document["max_ttl_seconds"] = int(self.max_ttl.total_seconds()) if self.max_ttl else None
        del document["max_ttl"]
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ProvisionerSpec:
        seconds = document.get("max_ttl_seconds")
        return cls(
            name=document["name"],
            issuer=document["issuer"],
            audience=document["audience"],
            jwks_url=document.get("jwks_url"),
            jwks=document.get("jwks"),
            algorithms=tuple(document["algorithms"]),
            profile=document["profile"],
            workflow=document.get("workflow"),
            workflow_claim=document.get("workflow_claim"),
            permissions=tuple(document.get("permissions", ())),
            permissions_claim=document.get("permissions_claim"),
            instance_claim=document.get("instance_claim"),
            required_claims=tuple(sorted(document.get("required_claims", {}).items())),
            max_ttl=timedelta(seconds=seconds) if seconds else None,
        )

    def sha256(self) -> str:
        from cyphrs_cli.ledger.events import canonical_json

        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()


@dataclass(frozen=True)
class JwtGrant:
    """What a verified JWT authorises, and what makes it one-time."""

    provisioner: ProvisionerSpec
    subject: str | None
    workflow: str
    permissions: tuple[str, ...]
    instance: str | None
    jti: str
    expires_at: datetime


def require_pyjwt() -> None:
    """PyJWT comes with the ``server`` extra; without it, say so in one line (exit 2)."""
    from importlib.util import find_spec

    if find_spec("jwt") is None:
        raise UsageError(
            "JWT provisioners need PyJWT, which is not installed",
            hint="pip install 'cyphrs[server]'",
        )


def _check_spec(authority: Authority, spec: ProvisionerSpec) -> None:
    from urllib.parse import urlsplit

    from cyphrs_cli.ca.extensions import validate_name_token

    require_pyjwt()
    validate_name_token("provisioner name", spec.name)
    if not spec.issuer or not spec.audience:
        raise UsageError("a provisioner needs --issuer and --audience")
    if (spec.jwks is None) == (spec.jwks_url is None):
        raise UsageError("give the provisioner's keys by --jwks-file or --jwks-url, exactly one")
    if spec.jwks_url is not None:
        url = urlsplit(spec.jwks_url)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in _LOOPBACK):
            raise UsageError("--jwks-url must be https:// (plain http only on loopback)")
    if spec.jwks is not None:
        _key_set(spec.jwks, source="--jwks-file")
    bad = [a for a in spec.algorithms if a not in SUPPORTED_ALGORITHMS]
    if bad or not spec.algorithms:
        raise UsageError(
            f"unsupported JWT algorithm(s) {', '.join(bad) or '(none)'}",
            hint=f"allowed: {', '.join(SUPPORTED_ALGORITHMS)} (never none or HS*)",
        )
    if (spec.workflow is None) == (spec.workflow_claim is None):
        raise UsageError("give the workflow as --workflow or --workflow-claim, exactly one")
    if spec.workflow is not None:
        validate_name_token("workflow", spec.workflow)
    profile = authority.profile(spec.profile)
    if spec.max_ttl is not None and not timedelta(0) < spec.max_ttl <= profile.max_ttl:
        raise UsageError(f"--max-ttl must be positive and within profile {profile.name!r}'s max")


def _key_set(jwks: Any, *, source: str) -> Any:
    import jwt

    try:
        return jwt.PyJWKSet.from_dict(jwks)
    except (jwt.PyJWKSetError, jwt.PyJWKError, jwt.InvalidKeyError, TypeError, KeyError) as exc:
        raise InvalidInputError(f"{source}: not a usable JWKS ({exc})") from exc


def set_provisioner(authority: Authority, spec: ProvisionerSpec, *, replace: bool = False) -> bool:
    """Record ``spec`` (row + ``provisioner.set`` event); returns False if unchanged.

    Raises:
        CyphrsError: 2/3 a bad configuration, 6 an unknown profile, 7 an existing name
            without ``replace`` or another provisioner with the same issuer and audience.
    """
    from cyphrs_cli.errors import ConflictError
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, canonical_json, rfc3339, utc_now

    _check_spec(authority, spec)
    digest = spec.sha256()
    with authority.ledger.transaction() as conn:
        row = conn.execute(
            "SELECT config_sha256 FROM provisioners WHERE name = ?", (spec.name,)
        ).fetchone()
        if row is not None and row["config_sha256"] == digest:
            return False
        if row is not None and not replace:
            raise ConflictError(
                f"provisioner {spec.name!r} exists", hint="pass --replace to change it"
            )
        for other in conn.execute(
            "SELECT name, config FROM provisioners WHERE name != ?", (spec.name,)
        ):
            config = json.loads(other["config"])
            if (config.get("issuer"), config.get("audience")) == (spec.issuer, spec.audience):
                raise ConflictError(
                    f"provisioner {other['name']!r} already verifies issuer {spec.issuer!r}"
                    f" for audience {spec.audience!r}"
                )
        conn.execute(
            "INSERT INTO provisioners (name, config, config_sha256, recorded_at) VALUES (?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET config = excluded.config,"
            " config_sha256 = excluded.config_sha256, recorded_at = excluded.recorded_at",
            (spec.name, canonical_json(spec.to_json()).decode(), digest, rfc3339(utc_now())),
        )
        append_event(
            conn,
            LedgerEvent(
                type=SET_EVENT,
                target=f"provisioner:{spec.name}",
                details={"name": spec.name, "config_sha256": digest, "config": spec.to_json()},
            ),
        )
    return True


def remove_provisioner(authority: Authority, name: str) -> None:
    """Withdraw a provisioner (row deleted, ``provisioner.removed`` event)."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    with authority.ledger.transaction() as conn:
        if conn.execute("DELETE FROM provisioners WHERE name = ?", (name,)).rowcount != 1:
            raise NotFoundError(f"no provisioner {name!r}", hint="cyphrs provisioner list")
        append_event(
            conn,
            LedgerEvent(type=REMOVED_EVENT, target=f"provisioner:{name}", details={"name": name}),
        )


def list_provisioners(authority: Authority) -> list[ProvisionerSpec]:
    """Every provisioner, each checked against its ledger event (exit 8 on a mismatch)."""
    conn = authority.ledger.conn
    names = [str(r["name"]) for r in conn.execute("SELECT name FROM provisioners ORDER BY name")]
    return [anchored_provisioner(conn, name) for name in names]


def anchored_provisioner(conn: sqlite3.Connection, name: str) -> ProvisionerSpec:
    """The provisioner ``name`` as its latest hash-chained event pins it: a row whose text
    or digest differs (edited in the database) is refused, nothing is verified with it."""
    from cyphrs_cli.config.trust import TrustStateMismatch

    row = conn.execute("SELECT config, config_sha256 FROM provisioners WHERE name = ?", (name,))
    found = row.fetchone()
    if found is None:
        raise NotFoundError(f"no provisioner {name!r}")
    event = conn.execute(
        "SELECT type, details FROM events WHERE target = ? ORDER BY seq DESC LIMIT 1",
        (f"provisioner:{name}",),
    ).fetchone()
    mismatch = TrustStateMismatch(
        f"provisioner {name!r} differs from the ledger's record of it",
        hint="run 'cyphrs audit verify'; the ledger may have been edited",
    )
    try:
        spec = ProvisionerSpec.from_json(json.loads(found["config"]))
        recorded = json.loads(event["details"]) if event is not None else {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise mismatch from exc
    if (
        event is None
        or event["type"] != SET_EVENT
        or spec.sha256() != found["config_sha256"]
        or recorded.get("config_sha256") != found["config_sha256"]
    ):
        raise mismatch
    return spec


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import jwt

    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _refused("jwt.malformed", f"not a JWT ({exc})") from exc
    return header, claims


def _choose(conn: sqlite3.Connection, claims: dict[str, Any]) -> ProvisionerSpec:
    """The provisioner whose issuer and audience the (not yet verified) claims name."""
    issuer = claims.get("iss")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    names = [str(r["name"]) for r in conn.execute("SELECT name FROM provisioners ORDER BY name")]
    same_issuer = [s for s in (anchored_provisioner(conn, n) for n in names) if s.issuer == issuer]
    if not same_issuer:
        raise _refused("jwt.issuer", f"no provisioner trusts JWT issuer {str(issuer)[:200]!r}")
    for spec in same_issuer:
        if spec.audience in audiences:
            return spec
    raise _refused("jwt.audience", f"the JWT's audience is not {same_issuer[0].audience!r}")


def _signing_key(authority: Authority, spec: ProvisionerSpec, kid: Any) -> Any:
    import jwt

    if not isinstance(kid, str) or not kid:
        raise _refused("jwt.unknown-key", "the JWT names no key (kid)")
    if spec.jwks is not None:
        for key in _key_set(spec.jwks, source=f"provisioner {spec.name}").keys:
            if key.key_id == kid:
                return key
        raise _refused("jwt.unknown-key", f"key {kid[:100]!r} is not in the provisioner's JWKS")
    assert spec.jwks_url is not None
    client = authority.jwks_client(spec.jwks_url)
    try:
        return client.get_signing_key(kid)  # refetches the set once on an unknown kid
    except jwt.PyJWKClientConnectionError as exc:
        raise _refused("jwt.jwks-unavailable", f"cannot fetch {spec.jwks_url}: {exc}") from exc
    except jwt.PyJWKClientError as exc:
        raise _refused("jwt.unknown-key", f"key {kid[:100]!r} is not in {spec.jwks_url}") from exc


def verify_jwt(authority: Authority, token: str) -> JwtGrant:
    """Verify a provisioner JWT and map its claims; refusals are ``CredentialRefused``
    naming the rule (``jwt.malformed``, ``jwt.issuer``, ``jwt.audience``, ``jwt.algorithm``,
    ``jwt.unknown-key``, ``jwt.signature``, ``jwt.expired``, ``jwt.not-yet-valid``,
    ``jwt.claims``, ``jwt.replay`` ...). Nothing is recorded here."""
    require_pyjwt()
    import jwt

    conn = authority.ledger.conn
    header, unverified = _unverified(token)
    spec = _choose(conn, unverified)
    alg = header.get("alg")
    if alg not in spec.algorithms:
        raise _refused("jwt.algorithm", f"JWT algorithm {str(alg)[:20]!r} is not allowed")
    key = _signing_key(authority, spec, header.get("kid"))
    if key.algorithm_name != alg:
        raise _refused(
            "jwt.algorithm", f"key {key.key_id!r} is for {key.algorithm_name}, not {alg}"
        )
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=spec.audience,
            issuer=spec.issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise _refused("jwt.expired", "the JWT has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise _refused("jwt.not-yet-valid", "the JWT is not valid yet (nbf/iat)") from exc
    except jwt.InvalidAudienceError as exc:
        raise _refused("jwt.audience", f"the JWT's audience is not {spec.audience!r}") from exc
    except jwt.InvalidIssuerError as exc:
        raise _refused("jwt.issuer", "the JWT's issuer differs") from exc
    except jwt.InvalidSignatureError as exc:
        raise _refused("jwt.signature", "the JWT signature does not verify") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise _refused("jwt.claims", f"the JWT lacks a required claim ({exc})") from exc
    except jwt.PyJWTError as exc:
        raise _refused("jwt.invalid", f"the JWT is invalid ({exc})") from exc
    return _grant(conn, spec, claims, token)


def _claim_text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise _refused("jwt.claims", f"the JWT's claim {name!r} is missing or not a string")
    return str(value)


def _grant(
    conn: sqlite3.Connection, spec: ProvisionerSpec, claims: dict[str, Any], token: str
) -> JwtGrant:
    from cyphrs_cli.ca.extensions import validate_name_token

    for name, wanted in spec.required_claims:
        if claims.get(name) != wanted:
            raise _refused("jwt.claims", f"the JWT's claim {name!r} is not {wanted!r}")
    try:
        workflow = spec.workflow or validate_name_token(
            "workflow", _claim_text(claims, str(spec.workflow_claim))
        )
        instance = None
        if spec.instance_claim is not None:
            instance = validate_name_token("instance", _claim_text(claims, spec.instance_claim))
    except InvalidInputError as exc:
        raise _refused("jwt.claims", exc.message) from exc
    permissions = list(spec.permissions)
    if spec.permissions_claim is not None:
        extra = claims.get(spec.permissions_claim, [])
        if isinstance(extra, str):
            extra = extra.split()
        if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
            raise _refused(
                "jwt.claims", f"the JWT's claim {spec.permissions_claim!r} is not a list"
            )
        permissions += [p for p in extra if p not in permissions]
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        # The JWT's identity is what its signature covers (header.payload, as sent), not
        # its whole text: the same JWT also verifies with "=" padding added to the
        # signature segment, and an ECDSA signature has a second valid form (s, n - s).
        signed = token.strip().rpartition(".")[0]
        jti = "jws-sha256:" + hashlib.sha256(signed.encode()).hexdigest()
        # A use recorded before the key was the signing input (the whole text's hash).
        check_unused(conn, spec.name, "sha256:" + hashlib.sha256(token.encode()).hexdigest())
    expires_at = _expiry(claims["exp"])
    subject = claims.get("sub")
    check_unused(conn, spec.name, jti)
    return JwtGrant(
        provisioner=spec,
        subject=str(subject)[:200] if subject is not None else None,
        workflow=workflow,
        permissions=tuple(permissions),
        instance=instance,
        jti=jti,
        expires_at=expires_at,
    )


def _expiry(exp: Any) -> datetime:
    """The ``exp`` claim as a time (PyJWT has checked it is a number in the future). One
    past what a ``datetime`` holds (year 9999) is refused, not a crash."""
    try:
        return datetime.fromtimestamp(int(exp), UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise _refused("jwt.claims", "the JWT's exp is out of range") from exc


def check_unused(conn: sqlite3.Connection, provisioner: str, jti: str) -> None:
    """Refuse (``jwt.replay``) a JWT whose ``jti`` already paid for a certificate."""
    used = conn.execute(
        "SELECT serial, used_at FROM jwt_uses WHERE provisioner = ? AND jti = ?",
        (provisioner, jti),
    ).fetchone()
    if used is not None:
        raise _refused(
            "jwt.replay",
            f"this JWT was already used at {used['used_at']} (certificate {used['serial']})",
        )


def consume_jwt_hook(grant: JwtGrant) -> AfterRecord:
    """The ``after_record`` hook that records the JWT's use with the certificate, in the
    same transaction; a second use (a race lost under the write lock) is refused."""

    def consume(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

        inserted = conn.execute(
            "INSERT OR IGNORE INTO jwt_uses (provisioner, jti, expires_at, serial, used_at)"
            " VALUES (?,?,?,?,?)",
            (
                grant.provisioner.name,
                grant.jti,
                rfc3339(grant.expires_at),
                issued.serial,
                rfc3339(utc_now()),
            ),
        ).rowcount
        if inserted != 1:
            raise _refused("jwt.replay", "this JWT was already used")
        append_event(
            conn,
            LedgerEvent(
                type="jwt.used",
                target=f"jwt:{grant.provisioner.name}",
                details={
                    "provisioner": grant.provisioner.name,
                    "jti": grant.jti,
                    "subject": grant.subject,
                    "serial": issued.serial,
                    "certificate_id": issued.record_id,
                },
            ),
        )

    return consume
