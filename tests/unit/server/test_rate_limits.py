"""``server.limits.RateLimiter``'s refusal budget: requests in flight count against it, so
however many arrive at once, no more can end in a charge than the bucket holds; only a
charged (refused) request spends; the reservation is released whatever the outcome."""

from __future__ import annotations

from cyphrs_cli.server.limits import Rate, RateLimiter


def test_requests_in_flight_count_against_the_budget() -> None:
    limiter = RateLimiter(Rate(5, 60.0))
    admitted = [limiter.admit("addr:a", now=0.0) for _ in range(8)]
    assert admitted == [0] * 5 + [admitted[5]] * 3 and admitted[5] >= 1
    assert limiter.admit("addr:b", now=0.0) == 0  # another address has its own
    for _ in range(5):  # every one of them refused: the bucket is spent
        limiter.settle("addr:a", charge=True, now=1.0)
    assert limiter.admit("addr:a", now=1.0) >= 1
    assert limiter.admit("addr:a", now=1.0 + 12.0) == 0  # one refilled (5 per 60 s)


def test_only_refusals_spend_and_every_outcome_releases() -> None:
    limiter = RateLimiter(Rate(2, 60.0))
    for _ in range(50):  # successes, one after another and two at a time
        assert limiter.admit("addr:a", now=0.0) == 0
        assert limiter.admit("addr:a", now=0.0) == 0
        assert limiter.admit("addr:a", now=0.0) >= 1  # two in flight: the budget's size
        limiter.settle("addr:a", charge=False, now=0.0)
        limiter.settle("addr:a", charge=False, now=0.0)
    assert limiter.admit("addr:a", now=0.0) == 0
    limiter.settle("addr:a", charge=True, now=0.0)
    assert limiter.admit("addr:a", now=0.0) == 0  # one left
    assert limiter.admit("addr:a", now=0.0) >= 1  # and it is in flight
    limiter.settle("addr:a", charge=True, now=0.0)
    assert limiter.admit("addr:a", now=0.0) >= 1


def test_a_rate_of_zero_admits_everything_and_keeps_nothing() -> None:
    limiter = RateLimiter(Rate(0, 60.0))
    assert all(limiter.admit("addr:a", now=0.0) == 0 for _ in range(1000))
    limiter.settle("addr:a", charge=True)
    assert limiter._in_flight == {} and not limiter._buckets
