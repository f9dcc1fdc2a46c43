"""The enrollment-credential tables (``tokens``, ``provisioners``, ``jwt_uses``) as
``audit verify`` checks them against the hash-chained events that wrote them.

* a token row must match the ``row_digest`` of its ``token.created`` event (binding,
  secret hash, times); its ``uses`` must equal its ``token.used`` events and its
  ``revoked_at`` its ``token.revoked`` event; an event without its row is a deleted row;
* a provisioner row must carry the digest of the latest ``provisioner.set`` of its name
  (and none may exist after a ``provisioner.removed``);
* every ``jwt_uses`` row must have its ``jwt.used`` event and every event its row.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ledger.events import canonical_json, sha256_hex

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

#: Event types whose details this module reads (``audit verify`` keeps them for it).
CREDENTIAL_EVENTS = (
    "token.created",
    "token.used",
    "token.revoked",
    "jwt.used",
    "provisioner.set",
    "provisioner.removed",
)
TOKEN_DIGEST_FIELDS = (
    "token_id",
    "secret_sha256",
    "profile",
    "workflow",
    "permissions",
    "trust_domain",
    "max_ttl_seconds",
    "uses_allowed",
    "requester",
    "created_at",
    "expires_at",
)


def token_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of a token's fixed columns (not ``uses`` or ``revoked_at``, which their own
    events record); ``permissions`` as a list."""
    return sha256_hex(canonical_json({k: fields[k] for k in TOKEN_DIGEST_FIELDS}))


def _row_fields(row: sqlite3.Row) -> dict[str, Any]:
    fields = {k: row[k] for k in TOKEN_DIGEST_FIELDS}
    try:
        fields["permissions"] = json.loads(row["permissions"])
    except (TypeError, ValueError, RecursionError):
        fields["permissions"] = row["permissions"]
    return fields


def check_credentials(conn: sqlite3.Connection, events: Sequence[Any], problems: list[str]) -> None:
    """Append a problem for every credential row that its events do not explain.
    ``events`` are objects with ``seq``, ``type`` and ``details`` (dict), in order."""
    _check_tokens(conn, events, problems)
    _check_provisioners(conn, events, problems)
    _check_jwt_uses(conn, events, problems)


def _check_tokens(conn: sqlite3.Connection, events: Sequence[Any], problems: list[str]) -> None:
    created: dict[str, tuple[int, Any]] = {}
    used: Counter[str] = Counter()
    revoked: dict[str, Any] = {}
    for event in events:
        token_id = event.details.get("token_id")
        if not isinstance(token_id, str):
            if event.type.startswith("token."):
                problems.append(f"event seq {event.seq} ({event.type}) names no token_id")
            continue
        if event.type == "token.created":
            created[token_id] = (event.seq, event.details.get("row_digest"))
        elif event.type == "token.used":
            used[token_id] += 1
        elif event.type == "token.revoked":
            revoked[token_id] = event.details.get("revoked_at")
    seen = set()
    for row in conn.execute("SELECT * FROM tokens ORDER BY id"):
        token_id = str(row["token_id"])
        seen.add(token_id)
        label = f"token {token_id}"
        found = created.get(token_id)
        if found is None:
            problems.append(f"{label} has no token.created event")
            continue
        if token_digest(_row_fields(row)) != found[1]:
            problems.append(f"{label} does not match its token.created event seq {found[0]}")
        if row["uses"] != used[token_id]:
            problems.append(
                f"{label} records {row['uses']} use(s) but {used[token_id]} token.used event(s)"
            )
        if row["revoked_at"] != revoked.get(token_id):
            problems.append(f"{label}: its revocation differs from its token.revoked event")
    for token_id, (seq, _) in created.items():
        if token_id not in seen:
            problems.append(f"token {token_id} recorded by event seq {seq} is missing")


def _check_provisioners(
    conn: sqlite3.Connection, events: Sequence[Any], problems: list[str]
) -> None:
    latest: dict[str, tuple[int, str | None]] = {}  # name -> seq, digest (None: removed)
    for event in events:
        name = event.details.get("name")
        if event.type == "provisioner.set" and isinstance(name, str):
            digest = event.details.get("config_sha256")
            latest[name] = (event.seq, digest if isinstance(digest, str) else "")
        elif event.type == "provisioner.removed" and isinstance(name, str):
            latest[name] = (event.seq, None)
    seen = set()
    for row in conn.execute("SELECT name, config, config_sha256 FROM provisioners"):
        name = str(row["name"])
        seen.add(name)
        found = latest.get(name)
        text = row["config"]
        if found is None or found[1] is None:
            problems.append(f"provisioner {name!r} has no provisioner.set event in force")
        elif (
            row["config_sha256"] != found[1]
            or not isinstance(text, str)
            or sha256_hex(text.encode()) != found[1]
        ):
            problems.append(f"provisioner {name!r} does not match its event seq {found[0]}")
    for name, (seq, digest) in latest.items():
        if digest is not None and name not in seen:
            problems.append(f"provisioner {name!r} recorded by event seq {seq} is missing")


def _check_jwt_uses(conn: sqlite3.Connection, events: Sequence[Any], problems: list[str]) -> None:
    recorded: dict[tuple[Any, Any], tuple[int, Any]] = {}
    for event in events:
        if event.type == "jwt.used":
            d = event.details
            recorded[(d.get("provisioner"), d.get("jti"))] = (event.seq, d.get("serial"))
    seen = set()
    for row in conn.execute("SELECT provisioner, jti, serial FROM jwt_uses"):
        key = (row["provisioner"], row["jti"])
        seen.add(key)
        found = recorded.get(key)
        if found is None or found[1] != row["serial"]:
            problems.append(
                f"JWT use {row['jti']!r} of {row['provisioner']!r} has no matching jwt.used event"
            )
    for key, (seq, _) in recorded.items():
        if key not in seen:
            problems.append(
                f"JWT use {key[1]!r} of {key[0]!r} (event seq {seq}) is missing: replayable"
            )
