"""Untrusted text made safe for the two places people read it: a terminal and a spreadsheet.

Certificate names, permissions, requesters, profile fields and ledger details are data that
somebody else chose. Printed raw they can move the cursor, rewrite earlier lines, set the
window title or a hyperlink (ANSI/OSC escape sequences), fake a second line (CR/LF) or reverse
what follows (Unicode bidi overrides, "Trojan Source"). Opened in a spreadsheet, a field that
starts with ``=`` is a formula (OWASP "CSV injection").

This module owns both neutralisations; the CLI applies them centrally (the Rich console, the
error printer, the CSV writers), never field by field. JSON output is left exact: it is
already escaped by the encoder and machines need the real value.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode categories that never belong in a printed name: controls (C0, DEL, C1 -- among them
# ESC and the one-byte CSI U+009B), format characters (bidi embeddings/overrides/isolates,
# zero-width characters, BOM), lone surrogates (undecodable bytes from argv or files),
# private-use characters, and the line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_ALL_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with every control, format or bidi character shown as a visible escape.

    ``"\\x1b[2J"`` becomes ``"\\\\x1b[2J"`` (the four characters backslash, x, 1, b), a
    newline becomes ``\\x0a``, U+202E becomes ``\\u202e``. Printable text, including
    non-ASCII letters, is unchanged. Backslashes are not doubled: the output is for eyes,
    and the exact value is always available through ``--json``.
    """
    if _ALL_PRINTABLE_ASCII.fullmatch(text):
        return text
    return "".join(
        _escape_char(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text
    )


# OWASP CSV injection: a cell starting with one of these is read as a formula (or a DDE
# call) by Excel, LibreOffice or Google Sheets. The full-width forms are included because
# some spreadsheet versions normalise them to their ASCII equivalents.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_safe(value: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a formula prefix gets a leading ``'``.

    This is the OWASP recommendation; the quote is visible in the cell, which is the price
    of never executing it. Values that do not start with a prefix are returned unchanged.
    """
    if value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value
