"""Serial numbers: positive, 159 random bits from the OS CSPRNG, at most 20 octets.

RFC 5280 caps serials at 20 octets; CA/B asks for 64 bits of entropy. 159 bits keep the
DER INTEGER positive without a leading zero byte ever pushing it past 20 octets.
"""

from __future__ import annotations

import os

SERIAL_BITS = 159
MIN_SERIAL = 1 << 64  # below this a draw lost too much entropy; draw again


def new_serial() -> int:
    while True:
        # secrets.randbits(159) (os.urandom underneath) without importing secrets, whose
        # hmac/random imports are a measurable part of a single `issue`'s start-up.
        serial = int.from_bytes(os.urandom(20), "big") >> (160 - SERIAL_BITS)
        if serial >= MIN_SERIAL:
            return serial


def serial_hex(serial: int) -> str:
    """Lowercase hex with an even number of digits, as the ledger and --json show it."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> str:
    """Normalise user input (``0A:1b``, ``0x0a1b``) to ledger form; raises on non-hex."""
    from cyphrs_cli.errors import InvalidInputError

    cleaned = _cleaned(text)
    try:
        value = int(cleaned, 16)
    except ValueError as exc:
        raise InvalidInputError(f"{text!r} is not a hexadecimal serial number") from exc
    return serial_hex(value)


#: The shortest serial prefix accepted where a whole serial is expected (``--serial``):
#: 8 hex digits are 32 random bits, so a typo rarely hits another certificate.
MIN_PREFIX_DIGITS = 8


def _cleaned(text: str) -> str:
    # A serial copied from a terminal table may end in the ellipsis that cut it.
    return text.strip().lower().removeprefix("0x").replace(":", "").removesuffix("…")


def serial_prefix(text: str) -> str | None:
    """The hex digits of ``text`` when it can be a prefix of a ledger serial (at least
    ``MIN_PREFIX_DIGITS`` of them, hex only), else None. Leading zeros are kept: the
    ledger's form starts with them too."""
    cleaned = _cleaned(text)
    if len(cleaned) < MIN_PREFIX_DIGITS or any(c not in "0123456789abcdef" for c in cleaned):
        return None
    return cleaned
