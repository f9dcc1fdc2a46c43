"""Reading the hash-chained event log with filters (``cyphrs audit events``).

Read-only: nothing is signed or written; the chain itself is checked by ``audit verify``.
Filters are plain SQL on the stored columns: a time window on ``at`` (RFC 3339 UTC text
sorts as time), exact ``actor``, and ``type`` / ``target`` as exact values or shell-style
patterns (``policy.*``, ``certificate:0a1b*``) through SQLite's GLOB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ledger.events import EVENT_BODY_FIELDS, event_body, rfc3339

if TYPE_CHECKING:
    import sqlite3


@dataclass(frozen=True)
class EventFilter:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    types: tuple[str, ...] = ()
    target: str | None = None
    limit: int | None = None


def iter_events(conn: sqlite3.Connection, where: EventFilter) -> Iterator[dict[str, Any]]:
    """Matching events in chain order (oldest first), each as the body its hash covers."""
    clauses: list[str] = []
    params: list[Any] = []
    if where.since is not None:
        clauses.append("at >= ?")
        params.append(rfc3339(where.since))
    if where.until is not None:
        clauses.append("at < ?")
        params.append(rfc3339(where.until))
    if where.actor is not None:
        clauses.append("actor = ?")
        params.append(where.actor)
    if where.types:
        clauses.append("(" + " OR ".join("type GLOB ?" for _ in where.types) + ")")
        params.extend(where.types)
    if where.target is not None:
        clauses.append("target GLOB ?")
        params.append(where.target)
    columns = ", ".join(EVENT_BODY_FIELDS)
    condition = " AND ".join(clauses) or "1"
    if where.limit is None:
        sql = f"SELECT {columns} FROM events WHERE {condition} ORDER BY seq"  # noqa: S608
    else:
        # The newest ``limit`` matches, still listed oldest first.
        sql = (
            f"SELECT * FROM (SELECT {columns} FROM events WHERE {condition}"  # noqa: S608
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        )
        params.append(where.limit)
    for row in conn.execute(sql, params):
        yield event_body(row)
