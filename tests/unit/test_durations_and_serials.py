"""Durations, serial numbers and key specs: the small parsers every command relies on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cyphrs_cli.ca.serials import MIN_SERIAL, SERIAL_BITS, new_serial, parse_serial, serial_hex
from cyphrs_cli.durations import format_duration, parse_duration
from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.keystore.base import KeySpec
from cyphrs_cli.times import parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("4h", 14400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1y", 31536000),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "4", "4x", "h", "-1h", "0s", "1.5h", "4h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(hours=3, minutes=59, seconds=10)) == "3h59m"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(seconds=-61)) == "-1m1s"


def _der_integer_content(value: int) -> bytes:
    """The content octets of a DER INTEGER, as asn1crypto (an independent encoder) writes it."""
    from asn1crypto import core

    return bytes(core.Integer(value).contents)


def test_serials_are_positive_wide_and_short() -> None:
    serials = {new_serial() for _ in range(2000)}
    assert len(serials) == 2000
    for serial in serials:
        assert MIN_SERIAL <= serial < 1 << SERIAL_BITS
        # RFC 5280 4.1.2.2: at most 20 octets *as encoded*, and positive. A value with bit 159
        # set would need a leading 0x00 octet (21 octets); the top bit of the first content
        # octet set would make the INTEGER negative.
        content = _der_integer_content(serial)
        assert len(content) <= 20, serial
        assert content[0] & 0x80 == 0, serial
    assert max(s.bit_length() for s in serials) > 150  # really 159 random bits
    # The draws use the top bit position: some serial fills all 20 octets (bit 159 clear).
    assert max(len(_der_integer_content(s)) for s in serials) == 20


@pytest.mark.parametrize(
    ("value", "octets", "fits"),
    [
        ((1 << 159) - 1, 20, True),  # the largest serial new_serial can draw
        (1 << 159, 21, False),  # one more bit: the DER form needs a 0x00 pad, 21 octets
        ((1 << 160) - 1, 21, False),
    ],
)
def test_der_length_check_can_fail(value: int, octets: int, fits: bool) -> None:
    """The 20-octet check above is a real check: one bit wider than SERIAL_BITS breaks it."""
    content = _der_integer_content(value)
    assert len(content) == octets
    assert (len(content) <= 20 and content[0] & 0x80 == 0) is fits
    assert (value < 1 << SERIAL_BITS) is fits


def test_serial_text_forms() -> None:
    assert serial_hex(0xABC) == "0abc"
    assert parse_serial("0A:BC") == parse_serial("0xabc") == "0abc"
    with pytest.raises(InvalidInputError):
        parse_serial("xyz")


def test_key_specs() -> None:
    assert KeySpec.parse("P-256").name == "p256"
    assert KeySpec.parse("secp384r1").curve == "P-384"
    assert KeySpec.parse("RSA_3072").bits == 3072
    with pytest.raises(InvalidInputError):
        KeySpec.parse("rsa1024")


def test_times() -> None:
    assert parse_time("2026-11-01").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_time("2026-11-01T05:00:00+02:00").hour == 3
    with pytest.raises(InvalidInputError):
        parse_time("yesterday")


def test_serial_hex_pads_to_whole_octets() -> None:
    assert serial_hex(0xAB) == "ab"  # even: unchanged
    assert serial_hex(0xABC) == "0abc"  # odd: one leading zero
    assert serial_hex(0) == "00"
    assert serial_hex((1 << 159) - 1) == "7f" + "ff" * 19


def test_bad_serial_message() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_serial("0xZZ")
    assert caught.value.message == "'0xZZ' is not a hexadecimal serial number"


def test_smallest_durations_and_messages() -> None:
    assert parse_duration("1s") == timedelta(seconds=1)
    assert parse_duration("0h1s") == timedelta(seconds=1)
    with pytest.raises(InvalidInputError) as caught:
        parse_duration("4x")
    assert caught.value.message == "invalid duration '4x'"
    assert caught.value.hint == "use a number with a unit: 90s, 15m, 4h, 7d, 1y"
    with pytest.raises(InvalidInputError) as caught:
        parse_duration("0m")
    assert caught.value.message == "duration '0m' must be positive"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1s"), (59, "59s"), (60, "1m"), (3600, "1h"), (86400 + 1, "1d1s"), (90061, "1d1h")],
)
def test_format_duration_keeps_two_largest_units(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


def test_duration_ceiling_is_exactly_100_years() -> None:
    """MAX_DURATION (100 years of 365 days) is allowed; one second more is refused."""
    assert parse_duration("100y") == timedelta(days=36500)
    with pytest.raises(InvalidInputError) as caught:
        parse_duration("100y1s")
    assert caught.value.message == "duration '100y1s' is too long: at most 100y"
