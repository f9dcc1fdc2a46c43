"""Per-key rate limits of ``cyphrs serve``: token buckets, one per enrollment token (its
hash), one per client identity (its certificate's fingerprint), and one per client address
for refused enrollments (a flood of made-up credentials varies the credential, not the
address: ``pending`` checks that bucket before any work, ``retry_after`` spends from it
only when a request was refused).

Buckets live in one ``RateLimiter`` per server (no module state), are touched only from the
event loop thread, and are bounded in number: the least recently used are dropped first,
so a flood of distinct keys costs memory once, not forever.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from cyphrs_cli.errors import InvalidInputError

_RATE = re.compile(r"(\d{1,6})/(s|m|h)")
_PERIOD = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_KEYS = 100_000


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period`` seconds, in bursts of up to ``count``."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``30/m``, ``5/s``, ``100/h``; ``0/m`` turns the limit off."""
        found = _RATE.fullmatch(text.strip())
        if found is None:
            raise InvalidInputError(
                f"invalid rate {text!r}", hint="write N/s, N/m or N/h, e.g. 30/m"
            )
        return cls(int(found.group(1)), _PERIOD[found.group(2)])


class RateLimiter:
    def __init__(self, rate: Rate, *, max_keys: int = MAX_KEYS) -> None:
        self._rate = rate
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def pending(self, key: str, *, now: float | None = None) -> int:
        """The whole seconds until ``key`` may be charged again (0: now), spending nothing."""
        if self._rate.count == 0:
            return 0
        found = self._buckets.get(key)
        if found is None:
            return 0
        now = time.monotonic() if now is None else now
        refill = self._rate.count / self._rate.period
        tokens = min(float(self._rate.count), found[0] + (now - found[1]) * refill)
        return 0 if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / refill))

    def retry_after(self, key: str, *, now: float | None = None) -> int:
        """Take one request from ``key``'s bucket: 0 when allowed, else the whole seconds
        to wait before the next one would be."""
        if self._rate.count == 0:
            return 0
        now = time.monotonic() if now is None else now
        capacity = float(self._rate.count)
        refill = capacity / self._rate.period  # requests per second
        tokens, stamp = self._buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + (now - stamp) * refill)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0
        else:
            self._buckets[key] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / refill))
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
