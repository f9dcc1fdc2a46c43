"""Human durations (``90s``, ``15m``, ``4h``, ``7d``, ``1h30m``) for TTL flags and profiles."""

from __future__ import annotations

import re
from datetime import timedelta

from cyphrs_cli.errors import InvalidInputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}
# ASCII digits only (``\d`` would take any Unicode digit) and at most 12 of them per part:
# int() of a 5000-digit string raises, and timedelta overflows long before.
_PART = re.compile(r"([0-9]{1,12})([smhdwy])")
#: Far beyond any certificate lifetime, far below what datetime arithmetic can hold.
MAX_DURATION = timedelta(days=100 * 365)


def parse_duration(text: str) -> timedelta:
    """Parse a positive duration; a bare number is refused (seconds or days? say which)."""
    compact = text.strip().lower()
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InvalidInputError(
            f"invalid duration {text!r}", hint="use a number with a unit: 90s, 15m, 4h, 7d, 1y"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidInputError(f"duration {text!r} must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInputError(f"duration {text!r} is too long: at most 100y")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Largest-units-first rendering, e.g. ``3h59m``; negative durations get a minus sign."""
    total = int(delta.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out.append(f"{total // size}{unit}")
            total %= size
    return sign + "".join(out[:2])
