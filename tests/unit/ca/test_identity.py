"""SPIFFE IDs and the agent-claims codec."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cyphrs_cli.ca.extensions import (
    AgentClaims,
    decode_agent_claims,
    encode_agent_claims,
    parse_spiffe_id,
    validate_name_token,
)
from cyphrs_cli.errors import InvalidInputError


def test_spiffe_ids() -> None:
    assert parse_spiffe_id("spiffe://acme.internal/agent/wf/i1") == (
        "acme.internal",
        ("agent", "wf", "i1"),
    )
    assert parse_spiffe_id("spiffe://acme.internal", leaf=False) == ("acme.internal", ())


@pytest.mark.parametrize(
    "value",
    [
        "https://acme.internal/x",
        "spiffe://Acme.internal/x",
        "spiffe://acme.internal/a//b",
        "spiffe://acme.internal/a/../b",
        "spiffe://acme.internal/a?x=1",
        "spiffe://acme.internal/a#f",
        "spiffe://acme.internal/%41",
        "spiffe://acme internal/a",
        "spiffe://acme.internal/" + "a" * 2100,
    ],
)
def test_bad_spiffe_ids(value: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_spiffe_id(value)


@pytest.mark.parametrize("value", ["", "-x", "a/b", "a b", "x" * 64, "é"])
def test_bad_name_tokens(value: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_name_token("workflow", value)


def test_claims_round_trip_and_der_is_exact() -> None:
    claims = AgentClaims(
        "payments-recon",
        ("ledger:read", "queue:write"),
        "ci:deploy-bot",
        datetime(2026, 11, 29, 5, 0, tzinfo=UTC),
    )
    der = encode_agent_claims(claims)
    assert decode_agent_claims(der) == claims
    # SEQUENCE { INTEGER 1, UTF8String ... }: the version comes first.
    assert der[0] == 0x30 and der[2:5] == bytes([0x02, 0x01, 0x01])
    assert (
        decode_agent_claims(
            encode_agent_claims(AgentClaims("w", (), "r", claims.issued_at))
        ).permissions
        == ()
    )


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"\x30\x03\x02\x01\x02", b"\x04\x01\x00"])
def test_malformed_claims(der: bytes) -> None:
    with pytest.raises(InvalidInputError):
        decode_agent_claims(der)
