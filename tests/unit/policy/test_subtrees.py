"""RFC 5280 subtree matching used by the name-constraints policy."""

from __future__ import annotations

import pytest

from cyphrs_cli.policy.decide import _within


@pytest.mark.parametrize(
    ("name", "base", "exact", "inside"),
    [
        ("acme.internal", "acme.internal", False, True),
        ("api.acme.internal", "acme.internal", False, True),
        ("evilacme.internal", "acme.internal", False, False),
        ("api.acme.internal", ".acme.internal", False, True),
        ("acme.internal", ".acme.internal", False, False),
        ("api.acme.internal", "acme.internal", True, False),  # URI constraints name a host
        ("acme.internal", "acme.internal", True, True),
        ("API.Acme.Internal.", "acme.internal", False, True),
    ],
)
def test_within(name: str, base: str, exact: bool, inside: bool) -> None:
    assert _within(name, base, exact_host=exact) is inside


def test_trailing_dots_on_either_side() -> None:
    assert _within("api.acme.internal", "acme.internal.")
    assert _within("api.acme.internal.", ".acme.internal.")
    assert not _within("acme.internal ", "acme.internal")  # only dots are stripped
