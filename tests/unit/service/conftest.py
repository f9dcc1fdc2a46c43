"""Fixtures of the service tests: a private CA home and an ``Authority`` opened on it
(unlocked with the test passphrase, closed at the end of the test) -- ``ca`` in the
enrollment tests, ``authority`` in the commit tests. A test module that defines its own
``home`` or ``ca`` fixture overrides these."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.service.authority import Authority
from tests.helpers import INTER_PASS, Hierarchy


@pytest.fixture
def home(fresh_hierarchy: Hierarchy) -> CaHome:
    return CaHome(fresh_hierarchy.home)


@pytest.fixture
def ca(home: CaHome) -> Iterator[Authority]:
    with Authority.open(home, secrets=lambda purpose: INTER_PASS.encode()) as opened:
        yield opened


@pytest.fixture
def authority(ca: Authority) -> Authority:
    """``ca`` under the name the commit tests give it."""
    return ca
