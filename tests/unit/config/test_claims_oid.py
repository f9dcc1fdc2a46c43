"""Validation of a home's agent-claims OID (``config claims-oid``, ``init-root --claims-oid``)."""

from __future__ import annotations

import pytest

from cyphrs_cli.config.trust import DEFAULT_CLAIMS_OID, validate_claims_oid
from cyphrs_cli.errors import InvalidInputError


@pytest.mark.parametrize(
    "oid",
    [DEFAULT_CLAIMS_OID, "1.3.6.1.4.1.99999.1", "1.3.6.1.4.1.2147483647.7.1", "2.999.1.2"],
)
def test_accepted(oid: str) -> None:
    assert validate_claims_oid(oid) == oid


@pytest.mark.parametrize(
    "oid",
    [
        "",
        "1",
        "1.3.6.1.4.1.99999.01",  # leading zero
        "1.3.6.1.4.1.99999.1.",
        "1.3.6.1.4.1.99999.1\n",  # trailing newline must not slip through
        " 1.3.6.1.4.1.99999.1",
        "1.3.6.1.4.1.99999.-1",
        "3.1.2",  # first arc 0-2
        "1.40.1",  # second arc 0-39 under 0 and 1
        "1.3.6.1.4.1.99999.2147483648",  # Go's parser limit
        "1.3.6.1.4.1.99999",  # the PEN itself, not an arc below it
        "2.5.29.99",  # X.509 extensions
        "1.3.6.1.5.5.7.1.99",  # PKIX
        "2.25.314576118886387779014683655382789779139",
        "2.23.140.1.2.1",  # CA/B Forum
        "1.2.840.113549.1.9.99",  # PKCS#9
        "1." + ".".join(["1"] * 80),  # absurdly long
    ],
)
def test_refused(oid: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_claims_oid(oid)
