"""When the renewal daemon acts: pure functions of times, counts and a random source.

- ``renewal_at``: at ``fraction`` (2/3) of the lifetime, moved by up to ``jitter`` of the
  lifetime either way so that agents started together do not renew together; never
  before notBefore, never later than 90 % of the lifetime.
- ``not_before_next``: after a renewal, the next one waits at least a tenth of the new
  lifetime, whatever ``renewal_at`` says -- a certificate that is due the moment it arrives
  (a short TTL whose notBefore is backdated, a fraction set too low) must not turn the
  daemon into a loop that asks the CA as fast as it answers.
- ``retry_delay``: exponential backoff with "equal jitter" (half fixed, half random),
  capped, never shorter than the server's ``Retry-After``, never past the expiry.
- ``is_transient``: which errors are worth another try (the CA unreachable or busy, a
  local storage failure); every other refusal (revoked, superseded, expired, bad input,
  policy) is final and ends the daemon with that error's exit code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from cyphrs_cli.errors import CyphrsError, ExitCode

DEFAULT_FRACTION = 2 / 3
DEFAULT_JITTER = 0.05
LATEST_FRACTION = 0.9
BACKOFF_BASE = timedelta(seconds=2)
BACKOFF_CAP = timedelta(minutes=5)

_TRANSIENT_CODES = frozenset({ExitCode.INTERNAL, ExitCode.STORAGE, ExitCode.KEYSTORE})

Random = Callable[[], float]


def renewal_at(
    not_before: datetime,
    not_after: datetime,
    *,
    fraction: float = DEFAULT_FRACTION,
    jitter: float = DEFAULT_JITTER,
    rng: Random = random.random,
) -> datetime:
    """The moment to renew a certificate valid from ``not_before`` to ``not_after``."""
    if not 0 < fraction <= 1 or not 0 <= jitter < 1:
        raise ValueError("fraction must be in (0, 1] and jitter in [0, 1)")
    lifetime = not_after - not_before
    share = fraction + jitter * (2 * rng() - 1)
    share = min(max(share, 0.0), LATEST_FRACTION)  # --due-fraction 1 would renew at expiry
    return not_before + lifetime * share


MIN_INTERVAL_SHARE = 0.1
MIN_INTERVAL_FLOOR = timedelta(seconds=1)


def not_before_next(renewed_at: datetime, not_before: datetime, not_after: datetime) -> datetime:
    """The earliest moment a certificate received at ``renewed_at`` may be renewed."""
    return renewed_at + max((not_after - not_before) * MIN_INTERVAL_SHARE, MIN_INTERVAL_FLOOR)


def retry_delay(
    failures: int,
    *,
    retry_after: float | None = None,
    until_expiry: timedelta | None = None,
    base: timedelta = BACKOFF_BASE,
    cap: timedelta = BACKOFF_CAP,
    rng: Random = random.random,
) -> timedelta:
    """How long to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    ceiling = min(cap, base * (2 ** min(max(failures - 1, 0), 30)))
    delay: timedelta = ceiling / 2 + ceiling / 2 * rng()
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    if until_expiry is not None:
        delay = min(delay, max(until_expiry, timedelta(0)))
    return delay


def is_transient(error: CyphrsError) -> bool:
    """Worth another try later (see the module docstring)."""
    from cyphrs_cli.client.api import CaUnavailable

    return isinstance(error, CaUnavailable) or error.exit_code in _TRANSIENT_CODES
