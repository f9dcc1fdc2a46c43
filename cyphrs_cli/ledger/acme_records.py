"""The ACME EAB keys table (``acme_eab_keys``) as ``audit verify`` checks it against the
hash-chained events, so that an edited row cannot widen what an EAB key grants:

* a key row must match its ``acme.eab.created`` event (profile, name policy, expiry, the
  SHA-256 of its HMAC key), and its HMAC key must hash to that SHA-256 (a swapped key is
  caught); an event without its row is a deleted row, a row without its event a forged one;
* ``revoked_at`` is set exactly when an ``acme.eab.revoked`` event exists;
* the account a key is bound to must be the one its ``acme.account.created`` event names.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

ACME_AUDITED_EVENTS = frozenset({"acme.eab.created", "acme.eab.revoked", "acme.account.created"})
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
