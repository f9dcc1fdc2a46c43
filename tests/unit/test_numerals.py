"""``numerals.is_decimal``: only ASCII digits make a number. ``str.isdigit`` also holds
for superscripts (``int`` then raises: a 500 on ``?limit=²``) and other scripts' digits
(``int("٣")`` is 3), and every check of a port, limit, PID or size goes through it."""

from __future__ import annotations

import pytest

from cyphrs_cli.errors import UsageError
from cyphrs_cli.numerals import is_decimal
from cyphrs_cli.server.run import parse_listen


@pytest.mark.parametrize("text", ["0", "7", "8443", "000123"])
def test_ascii_digits_are_decimal(text: str) -> None:
    assert is_decimal(text) and int(text) >= 0


@pytest.mark.parametrize("text", ["", "²", "٣", "\uff11\uff12", "1²", "-1", "+1", " 1", "1 ", "1_0", "½"])
def test_anything_else_is_not(text: str) -> None:
    assert not is_decimal(text)


@pytest.mark.parametrize("port", ["²", "٣", "\uff18\uff14\uff14\uff13"])
def test_listen_with_a_unicode_digit_port_is_a_usage_error(port: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(f"127.0.0.1:{port}")
