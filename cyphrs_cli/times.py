"""Points in time given on the command line: RFC 3339 (``2026-11-29T05:00:00Z``) or a date."""

from __future__ import annotations

from datetime import UTC, datetime

from cyphrs_cli.errors import InvalidInputError


def parse_time(text: str) -> datetime:
    """An aware UTC datetime; a date alone means its midnight UTC; a naive time is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(
            f"invalid time {text!r}", hint="use RFC 3339 (2026-11-29T05:00:00Z) or a date"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
