"""ACME (RFC 8555) use cases behind ``cyphrs serve``'s ``/acme/...`` routes: accounts (with
External Account Binding), orders, authorizations, challenges, finalize, revocation.

The HTTP layer (``server.acme``) verifies the JWS (signature, ``nonce``, ``url``) and
passes the verified account key or account id and the payload here; everything decided
about ACME objects is decided here, in ledger transactions, so orders and authorizations
survive a restart.

Order of checks (the point of EAB): a ``newOrder`` is refused (``rejectedIdentifier``)
unless every identifier is inside the account's EAB name policy AND the profile would issue
it (a dry run of ``policy.decide``) -- before any authorization or challenge exists, so a
name outside the policy never causes a validation request.

Finalize: the order moves ``ready -> processing`` by one conditional UPDATE (the winner of
any number of concurrent finalize calls); the certificate is issued through
``Authority.commit_leaf`` (the one issuance path; group commit when serving) with an
``after_record`` hook that marks the order ``valid`` and records ``acme.order.finalized``
(account, order, serial) in the certificate's own transaction. Only the CSR's public key
is used; its names must equal the order's identifiers exactly.

Reuse (RFC 8555 §7.1.4): a valid authorization of the same account for the same identifier,
at most ``AUTHZ_REUSE`` after its validation, is copied into a later order already valid
(never across accounts; recorded as ``reused`` in ``acme.order.created``). Orders past
their expiry are swept ``invalid`` before listings and new orders and at start. ARI
``replaces`` (RFC 9773 §5) links the new certificate to the one it replaces.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import CyphrsError, ExitCode
from cyphrs_cli.numerals import is_decimal

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.service.authority import Authority

ORDER_LIFETIME = timedelta(hours=8)
#: How long a valid authorization may be reused by later orders of the same account
#: (RFC 8555 §7.1.4); never across accounts.
AUTHZ_REUSE = timedelta(hours=24)
#: A reused authorization must stay valid at least this long into the new order.
AUTHZ_REUSE_MARGIN = timedelta(minutes=5)
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")
MAX_IDENTIFIERS = 20
#: RFC 5280 reason codes ACME clients send (revokeCert ``reason``).
REASON_CODES = {
    0: None,
    1: "key-compromise",
    3: "affiliation-changed",
    4: "superseded",
    5: "cessation-of-operation",
}


class AcmeProblem(CyphrsError):
    """A refusal in ACME's terms: ``urn:ietf:params:acme:error:<acme_type>`` (RFC 8555
    §6.7) with its HTTP status."""

    exit_code = ExitCode.POLICY_DENIED
    slug = "acme"

    def __init__(
        self, acme_type: str, detail: str, status: int = 400, *, retry_after: int = 0
    ) -> None:
        super().__init__(detail)
        self.acme_type = acme_type
        self.status = status
        self.retry_after = retry_after

    def document(self) -> dict[str, Any]:
        return {
            "type": f"urn:ietf:params:acme:error:{self.acme_type}",
            "detail": self.message,
            "status": self.status,
        }


@dataclass(frozen=True)
class AcmeSettings:
    """What the operator decides about ACME for one server (``cyphrs serve --acme-*``)."""

    allow_no_eab: bool = False
    no_eab_profile: str = "server"
    dns_resolver: tuple[str, int] | None = None  # None: the system's resolver
    http_port: int = 80
    tls_port: int = 443
    allowed_networks: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                         "fc00::/7")
    timeout: float = 5.0


@dataclass(frozen=True)
class Account:
    account_id: str
    status: str
    contact: tuple[str, ...]
    jwk: dict[str, Any]
    eab_kid: str | None
    created: bool = False  # this request created it


@dataclass(frozen=True)
class Challenge:
    challenge_id: str
    authz_id: str
    type: str
    token: str
    status: str
    validated_at: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Authorization:
    authz_id: str
    order_id: str
    account_id: str
    identifier_type: str
    identifier: str
    wildcard: bool
    status: str
    expires_at: str
    challenges: tuple[Challenge, ...]


@dataclass(frozen=True)
class Order:
    order_id: str
    account_id: str
    status: str
    identifiers: tuple[dict[str, str], ...]
    expires_at: str
    authz_ids: tuple[str, ...]
    error: dict[str, Any] | None
    certificate_serial: str | None
    replaces: str | None = None  # ARI certificate identifier (RFC 9773 §5), echoed back


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def key_authorization(token: str, thumbprint: str) -> str:
    return f"{token}.{thumbprint}"


# -- accounts ------------------------------------------------------------------------


def _account(row: sqlite3.Row, created: bool = False) -> Account:
    return Account(
        account_id=str(row["account_id"]),
        status=str(row["status"]),
        contact=tuple(json.loads(row["contact"])),
        jwk=json.loads(row["jwk"]),
        eab_kid=row["eab_kid"],
        created=created,
    )


def _check_contact(contact: Any) -> tuple[str, ...]:
    if contact is None:
        return ()
    if not isinstance(contact, list) or len(contact) > 5:
        raise AcmeProblem("malformed", "contact must be a list of at most 5 URLs")
    for entry in contact:
        if not isinstance(entry, str) or not entry.startswith("mailto:") or len(entry) > 256:
            raise AcmeProblem("unsupportedContact", "only mailto: contacts are accepted")
    return tuple(contact)


def verify_eab(
    conn: sqlite3.Connection, binding: Any, account_jwk: dict[str, Any], url: str
) -> str:
    """The kid of a valid External Account Binding for ``account_jwk`` (RFC 8555 §7.3.4):
    a flattened JWS, HS256/384/512 with the key's HMAC key, ``url`` the newAccount URL,
    payload the account's public JWK, the key active and not yet bound."""
    from jwcrypto import jwk, jws

    if not isinstance(binding, dict) or set(binding) - {"protected", "payload", "signature"}:
        raise AcmeProblem("malformed", "externalAccountBinding must be a flattened JWS")
    try:
        protected = json.loads(_unb64(str(binding["protected"])))
        payload = json.loads(_unb64(str(binding["payload"])))
    except (KeyError, ValueError) as exc:
        raise AcmeProblem("malformed", "externalAccountBinding is not a JWS") from exc
    if not isinstance(protected, dict) or protected.get("alg") not in ("HS256", "HS384", "HS512"):
        raise AcmeProblem("malformed", "externalAccountBinding must use HS256, HS384 or HS512")
    if "nonce" in protected:
        raise AcmeProblem("malformed", "externalAccountBinding must not carry a nonce")
    if protected.get("url") != url:
        raise AcmeProblem("unauthorized", "externalAccountBinding url is not newAccount's", 403)
    kid = protected.get("kid")
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.acme_eab import eab_key_row

    key = eab_key_row(conn, kid) if isinstance(kid, str) else None
    if key is None or key.hmac_key is None:
        raise AcmeProblem("unauthorized", "unknown external account binding key id", 403)
    status = key.status(utc_now())
    if status != "active":
        raise AcmeProblem("unauthorized", f"external account binding key {kid} is {status}", 403)
    token = jws.JWS()
    try:
        token.deserialize(json.dumps(binding))
        token.allowed_algs = ["HS256", "HS384", "HS512"]
        token.verify(jwk.JWK(kty="oct", k=key.hmac_key), alg=protected["alg"])
    except Exception as exc:  # jwcrypto raises several types for a bad MAC
        raise AcmeProblem(
            "unauthorized", "external account binding MAC does not verify", 403
        ) from exc
    if _thumbprint(payload) != _thumbprint(account_jwk):
        raise AcmeProblem("unauthorized", "external account binding names another account key", 403)
    return key.kid


def _thumbprint(key: Any) -> str:
    from jwcrypto import jwk

    try:
        return str(jwk.JWK(**key).thumbprint())
    except Exception as exc:
        raise AcmeProblem("badPublicKey", "not a usable JWK") from exc


def new_account(
    authority: Authority,
    settings: AcmeSettings,
    *,
    account_jwk: dict[str, Any],
    payload: dict[str, Any],
    url: str,
) -> Account:
    """newAccount: the existing account of this key, or a new one (EAB required unless
    the operator allows accounts without it). The EAB key is bound in the same
    transaction: a second account with the same key is refused."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    thumbprint = _thumbprint(account_jwk)
    conn = authority.ledger.conn
    existing = conn.execute(
        "SELECT * FROM acme_accounts WHERE jwk_thumbprint = ?", (thumbprint,)
    ).fetchone()
    if existing is not None:
        return _account(existing)
    if payload.get("onlyReturnExisting") is True:
        raise AcmeProblem("accountDoesNotExist", "no account for this key", 400)
    if payload.get("termsOfServiceAgreed") not in (None, True, False):
        raise AcmeProblem("malformed", "termsOfServiceAgreed must be a boolean")
    contact = _check_contact(payload.get("contact"))
    binding = payload.get("externalAccountBinding")
    if binding is None and not settings.allow_no_eab:
        raise AcmeProblem(
            "externalAccountRequired",
            "this CA requires external account binding (cyphrs acme eab create)",
            403,
        )
    account_id = new_id("acct_")
    with authority.ledger.transaction() as tx:
        kid = verify_eab(tx, binding, account_jwk, url) if binding is not None else None
        if kid is not None:
            bound = tx.execute(
                "UPDATE acme_eab_keys SET account_id = ? WHERE kid = ? AND account_id IS NULL"
                " AND revoked_at IS NULL",
                (account_id, kid),
            ).rowcount
            if bound != 1:
                raise AcmeProblem(
                    "unauthorized", f"external account binding key {kid} is used", 403
                )
        tx.execute(
            "INSERT INTO acme_accounts (account_id, jwk_thumbprint, jwk, status, contact,"
            " eab_kid, created_at) VALUES (?,?,?,?,?,?,?)",
            (account_id, thumbprint, json.dumps(account_jwk), "valid", json.dumps(contact),
             kid, rfc3339(utc_now())),
        )
        append_event(
            tx,
            LedgerEvent(
                type="acme.account.created",
                target=f"acme-account:{account_id}",
                details={"account": account_id, "eab_kid": kid, "jwk_thumbprint": thumbprint},
            ),
        )
    row = conn.execute(
        "SELECT * FROM acme_accounts WHERE account_id = ?", (account_id,)
    ).fetchone()
    return _account(row, created=True)


def account_by_id(authority: Authority, account_id: str) -> Account:
    row = authority.ledger.conn.execute(
        "SELECT * FROM acme_accounts WHERE account_id = ?", (account_id,)
    ).fetchone()
    if row is None:
        raise AcmeProblem("accountDoesNotExist", "no such account", 400)
    return _account(row)


def valid_account(authority: Authority, account_id: str) -> Account:
    account = account_by_id(authority, account_id)
    if account.status != "valid":
        raise AcmeProblem("unauthorized", f"account is {account.status}", 401)
    return account


def update_account(authority: Authority, account_id: str, payload: dict[str, Any]) -> Account:
    """Account update (contact) or deactivation (``status: deactivated``, final)."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    account = valid_account(authority, account_id)
    status = payload.get("status")
    if status is not None and status != "deactivated":
        raise AcmeProblem("malformed", "an account can only be set to 'deactivated'")
    with authority.ledger.transaction() as tx:
        if "contact" in payload:
            contact = _check_contact(payload["contact"])
            tx.execute(
                "UPDATE acme_accounts SET contact = ? WHERE account_id = ?",
                (json.dumps(contact), account_id),
            )
        if status == "deactivated":
            tx.execute(
                "UPDATE acme_accounts SET status = 'deactivated' WHERE account_id = ?",
                (account_id,),
            )
            append_event(
                tx,
                LedgerEvent(type="acme.account.deactivated",
                            target=f"acme-account:{account.account_id}",
                            details={"account": account.account_id}),
            )
    return account_by_id(authority, account_id)


def change_key(authority: Authority, account_id: str, new_jwk: dict[str, Any],
               old_jwk: Any) -> Account:
    """keyChange (RFC 8555 §7.3.5): the inner JWS was verified by the caller with
    ``new_jwk``; ``old_jwk`` must be the account's current key; the new key must be free."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    account = valid_account(authority, account_id)
    if _thumbprint(old_jwk) != _thumbprint(account.jwk):
        raise AcmeProblem("malformed", "oldKey is not the account's current key")
    new_thumbprint = _thumbprint(new_jwk)
    with authority.ledger.transaction() as tx:
        taken = tx.execute(
            "SELECT account_id FROM acme_accounts WHERE jwk_thumbprint = ?", (new_thumbprint,)
        ).fetchone()
        if taken is not None:
            raise AcmeProblem("conflict", "the new key belongs to an account already", 409)
        tx.execute(
            "UPDATE acme_accounts SET jwk = ?, jwk_thumbprint = ? WHERE account_id = ?",
            (json.dumps(new_jwk), new_thumbprint, account_id),
        )
        append_event(
            tx,
            LedgerEvent(type="acme.account.key-changed", target=f"acme-account:{account_id}",
                        details={"account": account_id, "jwk_thumbprint": new_thumbprint}),
        )
    return account_by_id(authority, account_id)


def account_for_key(authority: Authority, jwk_json: dict[str, Any]) -> Account | None:
    row = authority.ledger.conn.execute(
        "SELECT * FROM acme_accounts WHERE jwk_thumbprint = ?", (_thumbprint(jwk_json),)
    ).fetchone()
    return _account(row) if row is not None else None


# -- orders --------------------------------------------------------------------------


def _identifiers(payload: dict[str, Any]) -> list[tuple[str, str]]:
    import ipaddress

    from cyphrs_cli.ca.orders import is_dns_name

    raw = payload.get("identifiers")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_IDENTIFIERS:
        raise AcmeProblem("malformed", f"identifiers: a list of 1 to {MAX_IDENTIFIERS}")
    if "notBefore" in payload or "notAfter" in payload:
        raise AcmeProblem("malformed", "notBefore/notAfter are not supported; the profile decides")
    found: list[tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise AcmeProblem("malformed", "each identifier is {type, value}")
        kind, value = item.get("type"), str(item["value"])
        if kind == "dns":
            value = value.lower()
            if not is_dns_name(value) or value.endswith("."):
                raise AcmeProblem("rejectedIdentifier", f"not a DNS name: {value[:80]!r}")
        elif kind == "ip":
            try:
                value = str(ipaddress.ip_address(value))
            except ValueError as exc:
                raise AcmeProblem("rejectedIdentifier", f"not an IP address: {value[:80]!r}") \
                    from exc
        else:
            raise AcmeProblem("unsupportedIdentifier", f"identifier type {kind!r} unsupported")
        if (kind, value) not in found:
            found.append((str(kind), value))
    return found


def _policy(authority: Authority, settings: AcmeSettings, account: Account
            ) -> tuple[str, Any]:
    """The profile and the EAB key (None: an account without EAB) of an account."""
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.acme_eab import eab_key_row

    if account.eab_kid is None:
        if not settings.allow_no_eab:
            raise AcmeProblem("unauthorized", "accounts without EAB are not allowed here", 403)
        return settings.no_eab_profile, None
    key = eab_key_row(authority.ledger.conn, account.eab_kid)
    if key is None or key.status(utc_now()) == "revoked":
        raise AcmeProblem("unauthorized", "the account's external account binding was revoked",
                          403)
    return key.profile, key


def _check_names(authority: Authority, profile_name: str, key: Any,
                 identifiers: list[tuple[str, str]]) -> None:
    """Refuse before any challenge: EAB policy, then the profile's decision (dry run)."""
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.policy.decide import decide
    from cyphrs_cli.service.tokens import _stand_in_key

    for kind, value in identifiers:
        if key is not None and not key.allows(kind, value):
            raise AcmeProblem(
                "rejectedIdentifier",
                f"{kind} identifier {value!r} is outside this account's name policy",
            )
    profile = authority.profile(profile_name)
    order = LeafOrder(
        profile=profile.name,
        dns_names=tuple(v for k, v in identifiers if k == "dns"),
        ip_addresses=tuple(v for k, v in identifiers if k == "ip"),
    )
    try:
        request, _ = prepare_request(
            order, profile, authority.facts.trust_domain, stand_in=lambda _s: _stand_in_key()
        )
        decide(profile, request, authority.facts)
    except CyphrsError as error:
        raise AcmeProblem("rejectedIdentifier", f"the profile refuses: {error.message}") from error


def _reusable(conn: sqlite3.Connection, account_id: str, kind: str, value: str,
              earliest: str) -> sqlite3.Row | None:
    """The account's valid, unexpired authorization for this identifier (its own only)."""
    return conn.execute(  # type: ignore[no-any-return]
        "SELECT * FROM acme_authorizations WHERE account_id = ? AND identifier_type = ?"
        " AND identifier = ? AND wildcard = ? AND status = 'valid' AND expires_at > ?"
        " ORDER BY expires_at DESC LIMIT 1",
        (account_id, kind, value.removeprefix("*."), int(value.startswith("*.")), earliest),
    ).fetchone()


def new_order(authority: Authority, settings: AcmeSettings, account_id: str,
              payload: dict[str, Any]) -> Order:
    """newOrder: names checked against the account's policy first; an identifier the
    account holds a valid authorization for (RFC 8555 §7.1.4, at most ``AUTHZ_REUSE``
    old) gets a copy of it, already valid: no second challenge."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    account = valid_account(authority, account_id)
    identifiers = _identifiers(payload)
    profile_name, key = _policy(authority, settings, account)
    _check_names(authority, profile_name, key, identifiers)
    replaced = (None if payload.get("replaces") is None
                else _replaced(authority, account_id, payload["replaces"], identifiers))
    now = utc_now()
    expires = rfc3339(now + ORDER_LIFETIME)
    order_id = new_id("ord_")
    with authority.ledger.transaction() as tx:
        sweep_expired_orders(tx, account_id)
        if replaced is not None and tx.execute(
                "SELECT 1 FROM acme_orders WHERE replaces_certificate_id = ? AND status !="
                " 'invalid'", (replaced["id"],)).fetchone():  # a concurrent newOrder won
            raise AcmeProblem("alreadyReplaced", "replaces: that certificate was already "
                              "replaced", 409)
        reused: dict[str, sqlite3.Row] = {}
        for kind, value in identifiers:
            source = _reusable(tx, account_id, kind, value,
                               rfc3339(now + AUTHZ_REUSE_MARGIN))
            if source is not None:
                reused[f"{kind}:{value}"] = source
                expires = min(expires, str(source["expires_at"]))
        tx.execute(
            "INSERT INTO acme_orders (order_id, account_id, status, identifiers, profile,"
            " expires_at, created_at, replaces_certificate_id, replaces)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (order_id, account_id, "pending",
             json.dumps([{"type": k, "value": v} for k, v in identifiers]), profile_name,
             expires, rfc3339(now), None if replaced is None else replaced["id"],
             None if replaced is None else payload["replaces"]),
        )
        for kind, value in identifiers:
            authz_id = new_id("az_")
            wildcard = value.startswith("*.")
            source = reused.get(f"{kind}:{value}")
            tx.execute(
                "INSERT INTO acme_authorizations (authz_id, order_id, account_id,"
                " identifier_type, identifier, wildcard, status, expires_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (authz_id, order_id, account_id, kind, value.removeprefix("*."),
                 int(wildcard), "pending" if source is None else "valid",
                 expires if source is None else source["expires_at"]),
            )
            if source is not None:  # the challenge that validated it, as it was
                tx.execute(
                    "INSERT INTO acme_challenges (challenge_id, authz_id, type, token, status,"
                    " validated_at) SELECT ?, ?, type, token, status, validated_at"
                    " FROM acme_challenges WHERE authz_id = ? AND status = 'valid'",
                    (new_id("ch_"), authz_id, source["authz_id"]))
                continue
            types = ("dns-01",) if wildcard else (
                ("http-01", "tls-alpn-01") if kind == "ip" else CHALLENGE_TYPES
            )
            for challenge_type in types:
                tx.execute(
                    "INSERT INTO acme_challenges (challenge_id, authz_id, type, token, status)"
                    " VALUES (?,?,?,?,?)",
                    (new_id("ch_"), authz_id, challenge_type, _b64(secrets.token_bytes(32)),
                     "pending"),
                )
        _refresh_order(tx, order_id)
        append_event(
            tx,
            LedgerEvent(type="acme.order.created", target=f"acme-order:{order_id}",
                        details={"account": account_id, "order": order_id,
                                 "identifiers": [f"{k}:{v}" for k, v in identifiers],
                                 "profile": profile_name, "expires": expires,
                                 "reused": {name: str(row["order_id"])
                                            for name, row in reused.items()},
                                 "replaces": None if replaced is None else replaced["id"],
                                 "replaces_serial": None if replaced is None
                                 else replaced["serial"]}),
        )
    return get_order(authority, order_id, account_id)


EXPIRED_ORDER = json.dumps({"type": "urn:ietf:params:acme:error:malformed",
                            "detail": "the order expired before it was finalized",
                            "status": 403})


def sweep_expired_orders(conn: sqlite3.Connection, account_id: str | None = None) -> int:
    """Mark unfinished orders past their expiry ``invalid`` and pending or valid
    authorizations past theirs ``expired`` (of one account, or all); the number of
    orders marked. Listings and reads call it first, so they agree with each other."""
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    now = rfc3339(utc_now())
    marked = conn.execute(
        "UPDATE acme_orders SET status = 'invalid', error = ? WHERE status IN"
        " ('pending', 'ready') AND expires_at < ? AND (? IS NULL OR account_id = ?)",
        (EXPIRED_ORDER, now, account_id, account_id)
    ).rowcount
    conn.execute(
        "UPDATE acme_authorizations SET status = 'expired' WHERE status IN"
        " ('pending', 'valid') AND expires_at < ? AND (? IS NULL OR account_id = ?)",
        (now, account_id, account_id))
    return int(marked)


def list_orders(authority: Authority, account_id: str) -> list[str]:
    """The ids of an account's unfinished orders (RFC 8555 §7.1.2.1), expired ones swept
    first, oldest first."""
    with authority.ledger.transaction() as tx:
        sweep_expired_orders(tx, account_id)
    rows = authority.ledger.conn.execute(
        "SELECT order_id FROM acme_orders WHERE account_id = ? AND status IN"
        " ('pending', 'ready', 'processing') ORDER BY created_at, rowid", (account_id,))
    return [str(r[0]) for r in rows]


def _refresh_order(conn: sqlite3.Connection, order_id: str) -> None:
    """pending -> ready when every authorization is valid, -> invalid when one failed;
    an unfinished order past its expiry is invalid."""
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    row = conn.execute("SELECT * FROM acme_orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None or row["status"] not in ("pending", "ready"):
        return
    statuses = [r[0] for r in conn.execute(
        "SELECT status FROM acme_authorizations WHERE order_id = ?", (order_id,))]
    expired = str(row["expires_at"]) < rfc3339(utc_now())
    if expired or any(s not in ("valid", "pending") for s in statuses):
        new = "invalid"
    elif all(s == "valid" for s in statuses):
        new = "ready"
    else:
        new = "pending"
    if new != row["status"]:
        conn.execute(
            "UPDATE acme_orders SET status = ?, error = ? WHERE order_id = ? AND status = ?",
            (new, EXPIRED_ORDER if expired else None, order_id, row["status"]),
        )


def get_order(authority: Authority, order_id: str, account_id: str) -> Order:
    conn = authority.ledger.conn
    row = conn.execute("SELECT * FROM acme_orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None or row["account_id"] != account_id:
        raise AcmeProblem("malformed", "no such order", 404)
    if row["status"] in ("pending", "ready"):
        with authority.ledger.transaction() as tx:
            _refresh_order(tx, order_id)
        row = conn.execute("SELECT * FROM acme_orders WHERE order_id = ?",
                           (order_id,)).fetchone()
    authz = tuple(r[0] for r in conn.execute(
        "SELECT authz_id FROM acme_authorizations WHERE order_id = ? ORDER BY rowid",
        (order_id,)))
    return Order(
        order_id=order_id,
        account_id=str(row["account_id"]),
        status=str(row["status"]),
        identifiers=tuple(json.loads(row["identifiers"])),
        expires_at=str(row["expires_at"]),
        authz_ids=authz,
        error=json.loads(row["error"]) if row["error"] else None,
        certificate_serial=row["certificate_serial"],
        replaces=row["replaces"],
    )


def _challenge(row: sqlite3.Row) -> Challenge:
    return Challenge(
        challenge_id=str(row["challenge_id"]),
        authz_id=str(row["authz_id"]),
        type=str(row["type"]),
        token=str(row["token"]),
        status=str(row["status"]),
        validated_at=row["validated_at"],
        error=json.loads(row["error"]) if row["error"] else None,
    )


def get_authorization(authority: Authority, authz_id: str, account_id: str) -> Authorization:
    conn = authority.ledger.conn
    row = conn.execute(
        "SELECT * FROM acme_authorizations WHERE authz_id = ?", (authz_id,)
    ).fetchone()
    if row is None or row["account_id"] != account_id:
        raise AcmeProblem("malformed", "no such authorization", 404)
    challenges = tuple(_challenge(c) for c in conn.execute(
        "SELECT * FROM acme_challenges WHERE authz_id = ? ORDER BY rowid", (authz_id,)))
    return Authorization(
        authz_id=authz_id,
        order_id=str(row["order_id"]),
        account_id=str(row["account_id"]),
        identifier_type=str(row["identifier_type"]),
        identifier=str(row["identifier"]),
        wildcard=bool(row["wildcard"]),
        status=str(row["status"]),
        expires_at=str(row["expires_at"]),
        challenges=challenges,
    )


def deactivate_authorization(authority: Authority, authz_id: str, account_id: str
                             ) -> Authorization:
    """Deactivate an authorization (RFC 8555 §7.5.2) and every valid copy of it that
    reuse made for this account's orders: the next order must prove control again."""
    authz = get_authorization(authority, authz_id, account_id)
    with authority.ledger.transaction() as tx:
        tx.execute(
            "UPDATE acme_authorizations SET status = 'deactivated' WHERE authz_id = ?"
            " AND status IN ('pending', 'valid')", (authz_id,))
        if authz.status == "valid":
            tx.execute(
                "UPDATE acme_authorizations SET status = 'deactivated' WHERE account_id = ?"
                " AND identifier_type = ? AND identifier = ? AND wildcard = ?"
                " AND status = 'valid'",
                (account_id, authz.identifier_type, authz.identifier, int(authz.wildcard)))
    return get_authorization(authority, authz_id, account_id)


def challenge_owner(authority: Authority, challenge_id: str, account_id: str
                    ) -> tuple[Challenge, Authorization]:
    row = authority.ledger.conn.execute(
        "SELECT * FROM acme_challenges WHERE challenge_id = ?", (challenge_id,)
    ).fetchone()
    if row is None:
        raise AcmeProblem("malformed", "no such challenge", 404)
    authz = get_authorization(authority, str(row["authz_id"]), account_id)
    return _challenge(row), authz


def start_challenge(authority: Authority, challenge_id: str, account_id: str) -> bool:
    """Mark a pending challenge ``processing`` (True: the caller must now validate it)."""
    challenge, authz = challenge_owner(authority, challenge_id, account_id)
    if authz.status != "pending" or challenge.status != "pending":
        return False
    with authority.ledger.transaction() as tx:
        started = tx.execute(
            "UPDATE acme_challenges SET status = 'processing' WHERE challenge_id = ?"
            " AND status = 'pending'", (challenge_id,)).rowcount
    return started == 1


def complete_challenge(authority: Authority, challenge_id: str,
                       problem: AcmeProblem | None) -> None:
    """Record a validation's outcome on the challenge, its authorization and its order."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now

    conn = authority.ledger.conn
    row = conn.execute("SELECT * FROM acme_challenges WHERE challenge_id = ?",
                       (challenge_id,)).fetchone()
    authz = conn.execute("SELECT * FROM acme_authorizations WHERE authz_id = ?",
                         (row["authz_id"],)).fetchone()
    with authority.ledger.transaction() as tx:
        if problem is None:
            now = utc_now()
            tx.execute("UPDATE acme_challenges SET status = 'valid', validated_at = ?"
                       " WHERE challenge_id = ?", (rfc3339(now), challenge_id))
            # A valid authorization may serve this account's later orders for a while.
            tx.execute("UPDATE acme_authorizations SET status = 'valid', expires_at = ?"
                       " WHERE authz_id = ? AND status = 'pending'",
                       (rfc3339(now + AUTHZ_REUSE), authz["authz_id"]))
        else:
            tx.execute("UPDATE acme_challenges SET status = 'invalid', error = ?"
                       " WHERE challenge_id = ?", (json.dumps(problem.document()), challenge_id))
            tx.execute("UPDATE acme_authorizations SET status = 'invalid' WHERE authz_id = ?",
                       (authz["authz_id"],))
        _refresh_order(tx, str(authz["order_id"]))
        append_event(
            tx,
            LedgerEvent(
                type="acme.challenge." + ("valid" if problem is None else "invalid"),
                target=f"acme-order:{authz['order_id']}",
                outcome="success" if problem is None else "denied",
                details={"account": authz["account_id"], "order": authz["order_id"],
                         "challenge": row["type"],
                         "identifier": f"{authz['identifier_type']}:{authz['identifier']}",
                         "error": problem.document() if problem else None},
            ),
        )


def reset_unfinished_challenges(authority: Authority) -> int:
    """At start: a validation a previous process did not finish is pending again (the
    client may retry it); its order and authorization are untouched. Orders that expired
    while no server ran are swept."""
    with authority.ledger.transaction() as tx:
        sweep_expired_orders(tx)
        return int(tx.execute(
            "UPDATE acme_challenges SET status = 'pending' WHERE status = 'processing'"
        ).rowcount)


# -- finalize, certificates, revocation -------------------------------------------------


def _csr_names(csr: Any) -> tuple[set[tuple[str, str]], list[str]]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names: set[tuple[str, str]] = set()
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for general in san:
            if isinstance(general, x509.DNSName):
                names.add(("dns", general.value.lower()))
            elif isinstance(general, x509.IPAddress):
                names.add(("ip", str(general.value)))
            else:
                raise AcmeProblem("badCSR", "the CSR names something other than DNS names or IPs")
    common = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names, common


def finalize(authority: Authority, order_id: str, account_id: str, csr_der: bytes) -> Order:
    """Issue the order's certificate for the CSR's key (exactly once per order)."""
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.ca.parsing import load_csr
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    valid_account(authority, account_id)
    order = get_order(authority, order_id, account_id)
    if order.status != "ready":
        raise AcmeProblem("orderNotReady", f"order is {order.status}, not ready", 403)
    try:
        csr = load_csr(csr_der, source="CSR")
    except CyphrsError as error:
        raise AcmeProblem("badCSR", error.message) from error
    wanted = {(i["type"], i["value"]) for i in order.identifiers}
    names, common = _csr_names(csr)
    if names != wanted:
        raise AcmeProblem("badCSR", "the CSR's names are not exactly the order's identifiers")
    if any(("dns", c.lower()) not in wanted and ("ip", c) not in wanted for c in common):
        raise AcmeProblem("badCSR", "the CSR's common name is not one of the order's names")
    row = authority.ledger.conn.execute(
        "SELECT profile, replaces_certificate_id FROM acme_orders WHERE order_id = ?",
        (order_id,)).fetchone()
    profile = authority.profile(str(row["profile"]))
    replaces_id = _still_valid(authority, row["replaces_certificate_id"])
    from cryptography.hazmat.primitives import serialization

    leaf_order = LeafOrder(
        profile=profile.name,
        dns_names=tuple(sorted(v for k, v in wanted if k == "dns")),
        ip_addresses=tuple(sorted(v for k, v in wanted if k == "ip")),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
        requester=f"acme:{account_id}",
    )
    try:
        leaf, _ = prepare_request(leaf_order, profile, authority.facts.trust_domain)
    except CyphrsError as error:
        raise AcmeProblem("badCSR", error.message) from error
    if replaces_id is not None:  # ARI: the new certificate is the old one's renewal
        from dataclasses import replace

        leaf = replace(leaf, replaces_id=replaces_id)
    # The one winner of any number of concurrent calls moves ready -> processing.
    with authority.ledger.transaction() as tx:
        won = tx.execute(
            "UPDATE acme_orders SET status = 'processing' WHERE order_id = ? AND status = 'ready'",
            (order_id,)).rowcount
    if won != 1:
        raise AcmeProblem("orderNotReady", "order is already being finalized", 403)

    def record(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        from cyphrs_cli.ca.delivery import pem_bundle

        bundle = pem_bundle(issued, None)
        updated = conn.execute(
            "UPDATE acme_orders SET status = 'valid', certificate_serial = ?,"
            " certificate_pem = ? WHERE order_id = ? AND status = 'processing'"
            " AND certificate_serial IS NULL",
            (issued.serial, bundle.certificate + bundle.chain, order_id)).rowcount
        if updated != 1:
            raise AcmeProblem("orderNotReady", "order was finalized meanwhile", 403)
        append_event(
            conn,
            LedgerEvent(type="acme.order.finalized", target=f"acme-order:{order_id}",
                        details={"account": account_id, "order": order_id,
                                 "serial": issued.serial}),
        )

    try:
        authority.commit_leaf(profile, leaf, after_record=record)
    except CyphrsError as error:
        problem = error if isinstance(error, AcmeProblem) else AcmeProblem(
            "serverInternal" if error.exit_code in (ExitCode.STORAGE, ExitCode.KEYSTORE)
            else "badCSR", error.message, 500 if error.exit_code in (
                ExitCode.STORAGE, ExitCode.KEYSTORE) else 400)
        with authority.ledger.transaction() as tx:
            tx.execute("UPDATE acme_orders SET status = 'invalid', error = ? WHERE order_id = ?"
                       " AND status = 'processing'", (json.dumps(problem.document()), order_id))
        raise problem from error
    return get_order(authority, order_id, account_id)


def _still_valid(authority: Authority, certificate_id: Any) -> int | None:
    """The replaced certificate's id while it is valid (a revoked or expired one is
    replaced without being marked superseded)."""
    if certificate_id is None:
        return None
    row = authority.ledger.conn.execute(
        "SELECT status FROM certificates WHERE id = ?", (certificate_id,)).fetchone()
    return int(certificate_id) if row is not None and row["status"] == "valid" else None


def certificate_chain(authority: Authority, order_id: str, account_id: str) -> bytes:
    row = authority.ledger.conn.execute(
        "SELECT account_id, certificate_pem FROM acme_orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    if row is None or row["account_id"] != account_id or row["certificate_pem"] is None:
        raise AcmeProblem("malformed", "no such certificate", 404)
    return str(row["certificate_pem"]).encode()


def revoke_certificate(authority: Authority, cert_der: bytes, reason_code: Any, *,
                       account_id: str | None, jwk_json: dict[str, Any] | None) -> str:
    """revokeCert: signed by the account that ordered it (``kid``) or by the certificate's
    own key (``jwk``). Returns the serial."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from jwcrypto import jwk

    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ca.revocation import revoke_certificate as revoke_row
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    if reason_code is not None and reason_code not in REASON_CODES:
        raise AcmeProblem("badRevocationReason", f"reason {reason_code!r} is not accepted")
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise AcmeProblem("malformed", "certificate is not DER") from exc
    conn = authority.ledger.conn
    row = conn.execute("SELECT * FROM certificates WHERE fingerprint = ?",
                       (fingerprint(cert),)).fetchone()
    if row is None or row["is_ca"]:
        raise AcmeProblem("malformed", "not a certificate this CA issued", 404)
    if account_id is not None:
        valid_account(authority, account_id)
        owned = conn.execute(
            "SELECT 1 FROM acme_orders WHERE certificate_serial = ? AND account_id = ?",
            (row["serial"], account_id)).fetchone()
        if owned is None:
            raise AcmeProblem("unauthorized", "this account did not order the certificate", 403)
    else:
        assert jwk_json is not None
        spki = cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if jwk.JWK.from_pem(spki).thumbprint() != _thumbprint(jwk_json):
            raise AcmeProblem("unauthorized", "the JWS key is not the certificate's key", 403)
    if row["status"] == "revoked":
        raise AcmeProblem("alreadyRevoked", f"certificate {row['serial']} is already revoked")
    revoke_row(authority.ledger, row, REASON_CODES.get(reason_code) if reason_code else None)
    with authority.ledger.transaction() as tx:
        append_event(
            tx,
            LedgerEvent(type="acme.certificate.revoked", target=f"certificate:{row['serial']}",
                        details={"serial": row["serial"], "account": account_id,
                                 "by": "account" if account_id else "certificate-key"}),
        )
    return str(row["serial"])


def thumbprint(jwk_json: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (base64url SHA-256) of a public JWK."""
    return _thumbprint(jwk_json)


def dns01_digest(key_auth: str) -> str:
    return _b64(hashlib.sha256(key_auth.encode()).digest())


def created_at(row_time: str) -> datetime:
    from cyphrs_cli.times import parse_time

    return parse_time(row_time)


def acme_settings(
    allow_no_eab: bool,
    dns_resolver: str | None,
    http_port: int,
    tls_port: int,
    allowed_networks: tuple[str, ...],
) -> AcmeSettings:
    """``cyphrs serve --acme-*`` as settings (2 on a bad resolver address or network)."""
    import ipaddress

    from cyphrs_cli.errors import UsageError

    resolver = None
    if dns_resolver is not None:
        host, sep, port = dns_resolver.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--acme-dns-resolver {dns_resolver!r}: expected IP:PORT") from None
        if not sep or not is_decimal(port) or not 1 <= int(port) <= 65535:
            raise UsageError(f"--acme-dns-resolver {dns_resolver!r}: expected IP:PORT")
        resolver = (host, int(port))
    networks = []
    for text in allowed_networks:
        try:
            networks.append(str(ipaddress.ip_network(text)))
        except ValueError as exc:
            raise UsageError(f"--acme-allow-network {text!r}: {exc}") from None
    defaults = AcmeSettings()
    return AcmeSettings(
        allow_no_eab=allow_no_eab,
        dns_resolver=resolver,
        http_port=http_port,
        tls_port=tls_port,
        allowed_networks=tuple(networks) or defaults.allowed_networks,
    )


def _certificate_of(authority: Authority, cert_id: Any, what: str) -> sqlite3.Row:
    """The leaf certificate row named by an ARI certificate identifier (RFC 9773 §4.1):
    base64url(AKI keyIdentifier) "." base64url(serial DER content bytes)."""
    if not isinstance(cert_id, str):
        raise AcmeProblem("malformed", f"{what}: expected <AKI>.<serial>")
    key_id, dot, serial_text = cert_id.partition(".")
    if not dot or not key_id or not serial_text or len(cert_id) > 256:
        raise AcmeProblem("malformed", f"{what}: expected <AKI>.<serial>")
    try:
        aki = base64.urlsafe_b64decode(key_id + "=" * (-len(key_id) % 4))
        serial_raw = base64.urlsafe_b64decode(serial_text + "=" * (-len(serial_text) % 4))
    except ValueError as exc:
        raise AcmeProblem("malformed", f"{what}: not base64url") from exc
    number = int.from_bytes(serial_raw, "big")
    serial = format(number, "x").rjust(2 * ((number.bit_length() + 7) // 8), "0")
    rows = authority.ledger.conn.execute(
        "SELECT * FROM certificates WHERE serial = ? AND is_ca = 0", (serial,)).fetchall()
    row = next((r for r in rows if str(r["issuer_ski"]).replace(":", "").lower()
                == aki.hex()), None)
    if row is None:
        raise AcmeProblem("malformed", f"{what}: no such certificate", 404)
    return row  # type: ignore[no-any-return]


def _replaced(authority: Authority, account_id: str, cert_id: Any,
              identifiers: list[tuple[str, str]]) -> sqlite3.Row:
    """The certificate a newOrder ``replaces`` (RFC 9773 §5): ordered by this account,
    sharing an identifier with the new order, not replaced by another live order."""
    row = _certificate_of(authority, cert_id, "replaces")
    conn = authority.ledger.conn
    ordered = conn.execute(
        "SELECT identifiers FROM acme_orders WHERE certificate_serial = ? AND account_id = ?",
        (row["serial"], account_id)).fetchone()
    if ordered is None:
        raise AcmeProblem("unauthorized", "replaces: this account did not order that "
                          "certificate", 403)
    old = {(i["type"], i["value"]) for i in json.loads(ordered["identifiers"])}
    if not old & set(identifiers):
        raise AcmeProblem("malformed", "replaces: the new order shares no identifier with "
                          "the certificate it replaces")
    taken = conn.execute(
        "SELECT 1 FROM acme_orders WHERE replaces_certificate_id = ? AND status != 'invalid'",
        (row["id"],)).fetchone()
    if taken is not None or row["status"] == "superseded":
        raise AcmeProblem("alreadyReplaced", "replaces: that certificate was already "
                          "replaced", 409)
    return row


@dataclass(frozen=True)
class RenewalWindow:
    """ARI (RFC 9773) suggested renewal window of one certificate, and how long until the
    client should ask again (seconds)."""

    start: datetime
    end: datetime
    retry_after: int


def renewal_info(authority: Authority, cert_id: str) -> RenewalWindow:
    """The window for ``cert_id`` = base64url(AKI keyIdentifier) "." base64url(serial DER
    content bytes): the middle third of the last third of the certificate's life (2/3 to
    5/6), or now when it is revoked or superseded (renew at once)."""
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.times import parse_time

    row = _certificate_of(authority, cert_id, "renewalInfo")
    not_before, not_after = parse_time(row["not_before"]), parse_time(row["not_after"])
    life = not_after - not_before
    retry = int(max(60, min(6 * 3600, life.total_seconds() / 10)))
    if row["status"] != "valid":
        now = utc_now()
        return RenewalWindow(now - timedelta(minutes=1), now, retry)
    return RenewalWindow(not_before + life * 2 / 3, not_before + life * 5 / 6, retry)
