"""Per-key rate limits of ``cyphrs serve``: token buckets, one per enrollment token (its
hash), one per client identity (its certificate's fingerprint), and one per client address
for refused enrollments (a flood of made-up credentials varies the credential, not the
address: ``admit`` reserves a request from that bucket before any work, counting the
requests of that address still in flight as if each would be refused, and ``settle``
releases the reservation, spending from the bucket only when the request was refused. A
check that looked at the bucket alone let a burst of concurrent made-up credentials all
pass it before the first refusal was counted: each of them a ledger event).

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
        # Requests admitted and not yet settled, per key: as many entries as requests in
        # flight, so bounded by the open connections.
        self._in_flight: dict[str, int] = {}

    def admit(self, key: str, *, now: float | None = None) -> int:
        """Reserve one of ``key``'s requests for a request about to be worked on: 0 when
        admitted (call ``settle`` once it has ended), else the whole seconds to wait. The
        requests of ``key`` in flight count as if each will be charged, so however many
        arrive at once, no more can end in a charge than the bucket holds."""
        if self._rate.count == 0:
            return 0
        now = time.monotonic() if now is None else now
        capacity = float(self._rate.count)
        refill = capacity / self._rate.period
        found = self._buckets.get(key)
        tokens = capacity if found is None else min(capacity, found[0] + (now - found[1]) * refill)
        in_flight = self._in_flight.get(key, 0)
        if tokens - in_flight >= 1.0:
            self._in_flight[key] = in_flight + 1
            return 0
        return max(1, math.ceil((1.0 + in_flight - tokens) / refill))

    def settle(self, key: str, *, charge: bool, now: float | None = None) -> None:
        """An admitted request of ``key`` has ended: release its reservation, and take one
        request from the bucket when it ``charge``s (it was refused)."""
        if self._rate.count == 0:
            return
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        if charge:
            self.retry_after(key, now=now)

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
