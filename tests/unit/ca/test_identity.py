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


def test_spiffe_id_limits_and_characters() -> None:
    longest = "spiffe://acme.internal/" + "a" * (2048 - len("spiffe://acme.internal/"))
    assert len(longest.encode()) == 2048
    assert parse_spiffe_id(longest)[1] == ("a" * (2048 - 23),)
    with pytest.raises(InvalidInputError):
        parse_spiffe_id(longest + "a")
    # Path segments may use upper case, digits, '.', '-', '_' (only '.' and '..' alone are out).
    assert parse_spiffe_id("spiffe://acme.internal/X/a.b/A-1_") == (
        "acme.internal",
        ("X", "a.b", "A-1_"),
    )
    for bad in ("spiffe://acme.internal/a/./b", "spiffe://acme.internal/."):
        with pytest.raises(InvalidInputError) as caught:
            parse_spiffe_id(bad)
        assert caught.value.message == f"invalid SPIFFE ID {bad!r}: empty, '.' or '..' path segment '.'"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://x/y", "invalid SPIFFE ID 'https://x/y': must start with spiffe:// (lowercase scheme)"),
        ("spiffe://td/a?b", "invalid SPIFFE ID 'spiffe://td/a?b': a query is not allowed"),
        ("spiffe://td/a//b", "invalid SPIFFE ID 'spiffe://td/a//b': empty, '.' or '..' path segment ''"),
    ],
)
def test_spiffe_id_messages(value: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_spiffe_id(value)
    assert caught.value.message == message


def test_trust_domain_length_and_message() -> None:
    from cyphrs_cli.ca.extensions import validate_trust_domain

    longest = ("a" * 63 + ".") * 3 + "a" * 63
    assert len(longest) == 255 and validate_trust_domain(longest) == longest
    with pytest.raises(InvalidInputError) as caught:
        validate_trust_domain(longest + "a")
    assert caught.value.message == f"invalid SPIFFE trust domain {longest + 'a'!r}"
    assert caught.value.hint == (
        "use lowercase letters, digits, '.', '-' and '_' (e.g. acme.internal)"
    )
    assert validate_trust_domain("a-b_c.9") == "a-b_c.9"


def test_name_token_limits_and_message() -> None:
    assert validate_name_token("workflow", "a" * 63) == "a" * 63
    assert validate_name_token("instance", "0.a_b-C") == "0.a_b-C"
    with pytest.raises(InvalidInputError) as caught:
        validate_name_token("instance", "-x")
    assert caught.value.message == "invalid instance '-x'"
    assert caught.value.hint == (
        "use 1-63 letters, digits, '.', '-', '_', starting with a letter or digit"
    )


def test_agent_spiffe_id() -> None:
    from cyphrs_cli.ca.extensions import agent_spiffe_id

    assert agent_spiffe_id("acme.internal", "wf", "i-1") == "spiffe://acme.internal/agent/wf/i-1"
