"""Terminal escaping and CSV formula neutralising (cyphrs_cli.safe_text), value by value."""

from __future__ import annotations

import pytest

from cyphrs_cli.safe_text import csv_safe, terminal_safe

HOSTILE = [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear screen, cursor home
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # OSC window title
    ("\x1b]8;;https://evil\x1b\\link\x1b]8;;\x1b\\", None),  # OSC 8 hyperlink
    ("ok\rFAKE", "ok\\x0dFAKE"),  # carriage return overwrites the line
    ("a\nb", "a\\x0ab"),  # fake second line
    ("\x9b31m", "\\x9b31m"),  # C1 CSI (one code point)
    ("\x7f", "\\x7f"),
    ("x\u202eexe.txt", "x\\u202eexe.txt"),  # right-to-left override
    ("\u2066a\u2069", "\\u2066a\\u2069"),  # bidi isolates
    ("a\u200bb", "a\\u200bb"),  # zero-width space
    ("a\u2028b", "a\\u2028b"),  # line separator
    ("\udcff", "\\udcff"),  # undecodable byte from argv (surrogateescape)
    ("\x00", "\\x00"),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE)
def test_terminal_safe_makes_controls_visible(raw: str, expected: str | None) -> None:
    out = terminal_safe(raw)
    if expected is not None:
        assert out == expected
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in out)
    assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@pytest.mark.parametrize("text", ["plain", "Zürich Ωmega 東京", "CN=a,O=b", "spiffe://td/x"])
def test_terminal_safe_keeps_printable_text(text: str) -> None:
    assert terminal_safe(text) == text


@pytest.mark.parametrize(
    "cell",
    ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "\uff1d1+1"],
)
def test_csv_safe_neutralises_formula_prefixes(cell: str) -> None:
    assert csv_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["agent", "spiffe://td/a", "", "a=b", "CN=x"])
def test_csv_safe_leaves_plain_cells(cell: str) -> None:
    assert csv_safe(cell) == cell
