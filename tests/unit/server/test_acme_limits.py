"""The per-address key of ACME's unsigned requests: one IPv4 address, or one IPv6 /64 (a
host owning a /64 must not get 2^64 budgets); IPv4-mapped IPv6 counts as the IPv4 address."""

from __future__ import annotations

import pytest

from cyphrs_cli.server.acme.routes import client_network
from cyphrs_cli.server.limits import Rate, RateLimiter


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "None"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_client_network(remote: str | None, key: str) -> None:
    assert client_network(remote) == key


def test_rotating_addresses_inside_one_ipv6_64_share_one_budget() -> None:
    limiter = RateLimiter(Rate(3, 60.0), max_keys=10)
    waits = [limiter.retry_after("ip:" + client_network(f"2001:db8::{n:x}"), now=0.0)
             for n in range(1, 6)]
    assert waits[:3] == [0, 0, 0] and all(w >= 1 for w in waits[3:])
