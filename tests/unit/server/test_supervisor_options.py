"""What a worker of ``serve --processes N`` is configured with: the options survive the trip
through the worker's stdin unchanged, and every rate and the connection cap are divided so
that N workers together never allow more than one process would (rounded up per worker)."""

from __future__ import annotations

import json

import pytest

from cyphrs_cli.errors import UsageError
from cyphrs_cli.server.limits import Rate
from cyphrs_cli.server.run import ServeOptions
from cyphrs_cli.server.supervisor import options_document, options_from_document, per_process


def test_options_round_trip_through_json() -> None:
    options = ServeOptions(
        host="127.0.0.1",
        port=0,
        dns_names=("ca.example.internal",),
        token_rate=Rate(7, 60.0),
        failure_rate=Rate(0, 60.0),
    )
    again = options_from_document(json.loads(json.dumps(options_document(options))))
    assert again == options


@pytest.mark.parametrize(
    ("count", "processes", "each"), [(20, 2, 10), (5, 2, 3), (6, 4, 2), (1, 3, 1), (60, 1, 60)]
)
def test_rates_are_divided_rounding_up(count: int, processes: int, each: int) -> None:
    options = ServeOptions(host="127.0.0.1", port=0, failure_rate=Rate(count, 60.0))
    shared = per_process(options, processes).failure_rate
    assert shared == Rate(each, 60.0)
    # The bound the docs state: N * ceil(R / N), exactly R when N divides R.
    assert processes * shared.count >= count
    assert processes * shared.count < count + processes


def test_an_unlimited_rate_stays_unlimited_and_connections_are_shared() -> None:
    options = ServeOptions(host="127.0.0.1", port=0, token_rate=Rate(0, 60.0), max_connections=1024)
    shared = per_process(options, 3)
    assert shared.token_rate == Rate(0, 60.0)
    assert shared.max_connections == 342


def test_acme_options_are_not_sent_to_workers() -> None:
    from cyphrs_cli.service.acme import acme_settings

    options = ServeOptions(host="127.0.0.1", port=0, acme=acme_settings(False, None, 80, 443, ()))
    with pytest.raises(UsageError, match="one process"):
        options_document(options)
