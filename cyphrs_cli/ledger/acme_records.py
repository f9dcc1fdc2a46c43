"""The ACME EAB keys table (``acme_eab_keys``) as ``audit verify`` checks it against the
hash-chained events, so that an edited row cannot widen what an EAB key grants:

* a key row must match its ``acme.eab.created`` event (profile, name policy, expiry, the
  SHA-256 of its HMAC key), and its HMAC key must hash to that SHA-256 (a swapped key is
  caught); an event without its row is a deleted row, a row without its event a forged one;
* ``revoked_at`` is set exactly when an ``acme.eab.revoked`` event exists;
* the account a key is bound to must be the one its ``acme.account.created`` event names.

And the ACME state that decides what an account may be issued (``check_acme_state``):

* an account row must match ``acme.account.created`` (EAB binding), its key the last
  recorded thumbprint (``acme.account.key-changed``) and its status the events
  (``deactivated`` exactly when ``acme.account.deactivated`` exists);
* an order row must match ``acme.order.created`` (account, identifiers, profile, expiry,
  the certificate it ``replaces``: ARI);
  it is ``valid`` exactly when ``acme.order.finalized`` names it, with that serial, and
  its certificate must be that serial's ledger row, requested by that account;
* an authorization must name one of its order's identifiers for its order's account, and
  a ``valid`` one (or a ``ready``/``processing`` order) must be explained by an
  ``acme.challenge.valid`` event for that order and identifier, or by a reuse recorded in
  ``acme.order.created`` of an authorization so explained, of the same account;
* a ``valid`` challenge must belong to a ``valid`` authorization so explained.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

ACME_AUDITED_EVENTS = frozenset({
    "acme.eab.created", "acme.eab.revoked", "acme.account.created",
    "acme.account.deactivated", "acme.account.key-changed", "acme.order.created",
    "acme.order.finalized", "acme.challenge.valid",
})
_FIELDS = ("profile", "dns_patterns", "ip_networks", "key_sha256", "expires_at")


def _row_fields(row: sqlite3.Row) -> dict[str, Any]:
    fields: dict[str, Any] = {k: row[k] for k in ("profile", "key_sha256", "expires_at")}
    for name in ("dns_patterns", "ip_networks"):
        try:
            fields[name] = json.loads(row[name])
        except (TypeError, ValueError, RecursionError):
            fields[name] = row[name]
    return fields


def _key_sha256(hmac_key: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    except (ValueError, TypeError):
        return None
    return hashlib.sha256(raw).hexdigest()


def check_acme(conn: sqlite3.Connection, events: Sequence[Any], problems: list[str]) -> None:
    """Append a problem for every EAB key row that its events do not explain."""
    created: dict[str, Any] = {}
    revoked: set[str] = set()
    bound: dict[str, str] = {}
    for event in events:
        kid = event.details.get("kid")
        if event.type == "acme.eab.created" and isinstance(kid, str):
            created[kid] = event
        elif event.type == "acme.eab.revoked" and isinstance(kid, str):
            revoked.add(kid)
        elif event.type == "acme.account.created":
            eab = event.details.get("eab_kid")
            if isinstance(eab, str):
                bound[eab] = str(event.details.get("account"))
    rows = {str(r["kid"]): r for r in conn.execute("SELECT * FROM acme_eab_keys")}
    for kid, row in rows.items():
        event = created.get(kid)
        if event is None:
            problems.append(f"EAB key {kid} has no acme.eab.created event (forged row)")
            continue
        recorded = {k: event.details.get(k) for k in _FIELDS}
        if _row_fields(row) != recorded:
            problems.append(f"EAB key {kid} differs from its acme.eab.created event (edited)")
        if _key_sha256(str(row["hmac_key"])) != row["key_sha256"]:
            problems.append(f"EAB key {kid}: its HMAC key is not the one created (swapped)")
        if (row["revoked_at"] is not None) != (kid in revoked):
            problems.append(f"EAB key {kid}: revoked_at disagrees with acme.eab.revoked")
        if row["account_id"] != bound.get(kid):
            problems.append(f"EAB key {kid}: bound account disagrees with acme.account.created")
    for kid in created.keys() - rows.keys():
        problems.append(f"EAB key {kid} was deleted (its acme.eab.created event remains)")
    check_acme_state(conn, events, problems)


def jwk_thumbprint(jwk: Any) -> str | None:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public JWK; None if it is not one."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                "OKP": ("crv", "kty", "x")}
    if not isinstance(jwk, dict) or jwk.get("kty") not in required:
        return None
    members = {k: jwk.get(k) for k in required[str(jwk["kty"])]}
    if not all(isinstance(v, str) for v in members.values()):
        return None
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _first_pem(text: Any) -> str:
    end = "-----END CERTIFICATE-----"
    return str(text or "").split(end)[0].strip() + end


def _check_accounts(conn: sqlite3.Connection, events: Sequence[Any],
                    problems: list[str]) -> None:
    created: dict[str, Any] = {}
    key: dict[str, Any] = {}
    deactivated: set[str] = set()
    for event in events:
        account = event.details.get("account")
        if not isinstance(account, str):
            continue
        if event.type == "acme.account.created":
            created[account] = event
            key[account] = event.details.get("jwk_thumbprint")
        elif event.type == "acme.account.key-changed":
            key[account] = event.details.get("jwk_thumbprint")
        elif event.type == "acme.account.deactivated":
            deactivated.add(account)
    rows = {str(r["account_id"]): r for r in conn.execute("SELECT * FROM acme_accounts")}
    for account, row in rows.items():
        event = created.get(account)
        if event is None:
            problems.append(f"ACME account {account} has no acme.account.created event "
                            "(forged row)")
            continue
        if row["eab_kid"] != event.details.get("eab_kid"):
            problems.append(f"ACME account {account}: its EAB binding differs from "
                            "acme.account.created (edited)")
        try:
            stored_key = jwk_thumbprint(json.loads(row["jwk"]))
        except (TypeError, ValueError, RecursionError):
            stored_key = None
        if row["jwk_thumbprint"] != key.get(account) or stored_key != row["jwk_thumbprint"]:
            problems.append(f"ACME account {account}: its key is not the recorded one "
                            "(swapped)")
        expected = "deactivated" if account in deactivated else "valid"
        if row["status"] != expected:
            problems.append(f"ACME account {account}: status {row['status']!r} disagrees "
                            f"with its events ({expected!r}; edited)")
    for account in created.keys() - rows.keys():
        problems.append(f"ACME account {account} was deleted (its acme.account.created "
                        "event remains)")


def check_acme_state(conn: sqlite3.Connection, events: Sequence[Any],
                     problems: list[str]) -> None:
    """Append a problem for every ACME account, order, authorization or challenge row
    whose state its events do not explain."""
    _check_accounts(conn, events, problems)
    orders: dict[str, Any] = {}
    finalized: dict[str, Any] = {}
    validated: set[tuple[str, str]] = set()  # (order, "dns:name") with a valid challenge
    validated_types: set[tuple[str, str, str]] = set()
    for event in events:
        order = event.details.get("order")
        if not isinstance(order, str):
            continue
        if event.type == "acme.order.created":
            orders[order] = event.details
        elif event.type == "acme.order.finalized":
            finalized[order] = event.details
        elif event.type == "acme.challenge.valid":
            name = str(event.details.get("identifier"))
            validated.add((order, name))
            validated_types.add((order, name, str(event.details.get("challenge"))))

    def explained(order: str, name: str, account: Any, depth: int = 0) -> bool:
        """A valid challenge for (order, name), or a reuse of one of the same account."""
        if (order, name) in validated:
            return True
        wildcard_base = name.replace(":*.", ":", 1)
        if (order, wildcard_base) in validated:
            return True
        details = orders.get(order) or {}
        source = (details.get("reused") or {}).get(name)
        return (isinstance(source, str) and depth < 64
                and (orders.get(source) or {}).get("account") == account
                and explained(source, name, account, depth + 1))

    rows = {str(r["order_id"]): r for r in conn.execute("SELECT * FROM acme_orders")}
    for order_id, row in rows.items():
        details = orders.get(order_id)
        if details is None:
            problems.append(f"ACME order {order_id} has no acme.order.created event "
                            "(forged row)")
            continue
        try:
            names = [f"{i['type']}:{i['value']}" for i in json.loads(row["identifiers"])]
        except (TypeError, ValueError, KeyError, RecursionError):
            names = []
        recorded = details.get("identifiers")
        if row["account_id"] != details.get("account") or names != recorded:
            problems.append(f"ACME order {order_id}: account or identifiers differ from "
                            "acme.order.created (edited)")
        for field, column in (("profile", "profile"), ("expires", "expires_at"),
                              ("replaces", "replaces_certificate_id")):
            present = column in row.keys()  # noqa: SIM118 -- `in row` tests values
            if field in details and present and details[field] != row[column]:
                problems.append(f"ACME order {order_id}: {column} differs from "
                                "acme.order.created (edited)")
        final = finalized.get(order_id)
        if final is not None and (row["status"] != "valid"
                                  or row["certificate_serial"] != final.get("serial")):
            problems.append(f"ACME order {order_id}: status or certificate differ from "
                            "acme.order.finalized (edited)")
        elif final is None and (row["status"] == "valid"
                                or row["certificate_serial"] is not None):
            problems.append(f"ACME order {order_id} is marked valid without an "
                            "acme.order.finalized event")
        if row["certificate_serial"] is not None:
            cert = conn.execute(
                "SELECT pem, requester FROM certificates WHERE serial = ? AND is_ca = 0",
                (row["certificate_serial"],)).fetchone()
            if (cert is None or cert["requester"] != f"acme:{row['account_id']}"
                    or _first_pem(cert["pem"]) != _first_pem(row["certificate_pem"])):
                problems.append(f"ACME order {order_id}: its certificate link does not "
                                "lead to the certificate issued for it (changed)")
        if row["status"] in ("ready", "processing", "valid") and not all(
                explained(order_id, n, row["account_id"]) for n in recorded or []):
            problems.append(f"ACME order {order_id} is {row['status']} without a valid "
                            "challenge for each identifier")
    for order_id in orders.keys() - rows.keys():
        problems.append(f"ACME order {order_id} was deleted (its acme.order.created event "
                        "remains)")
    authz_ok: dict[str, bool] = {}
    for authz in conn.execute("SELECT * FROM acme_authorizations"):
        authz_id, order_id = str(authz["authz_id"]), str(authz["order_id"])
        name = (f"{authz['identifier_type']}:" + ("*." if authz["wildcard"] else "")
                + str(authz["identifier"]))
        details = orders.get(order_id) or {}
        if (authz["account_id"] != details.get("account")
                or name not in (details.get("identifiers") or [])):
            problems.append(f"ACME authorization {authz_id}: identifier or account is not "
                            f"its order's (edited)")
            authz_ok[authz_id] = False
            continue
        ok = explained(order_id, name, authz["account_id"])
        authz_ok[authz_id] = ok
        if authz["status"] == "valid" and not ok:
            problems.append(f"ACME authorization {authz_id} is valid without a valid "
                            "challenge (edited)")
    for challenge in conn.execute(
            "SELECT challenge_id, authz_id FROM acme_challenges WHERE status = 'valid'"):
        if not authz_ok.get(str(challenge["authz_id"]), False):
            problems.append(f"ACME challenge {challenge['challenge_id']} is valid without "
                            "an acme.challenge.valid event (edited)")
