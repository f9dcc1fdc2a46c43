"""Whole numbers written in text that somebody else chose (ports, limits, PIDs, sizes).

``str.isdigit`` is true for every Unicode digit: ``"²".isdigit()`` holds but ``int("²")``
raises, and ``int("٣")`` is 3. A check with it let such text through to a crash (a 500 on
``?limit=²``) or to a number nobody wrote in ASCII. Every such check goes through here.
"""

from __future__ import annotations


def is_decimal(text: str) -> bool:
    """Non-empty, and nothing but the ASCII digits 0-9."""
    return text.isascii() and text.isdigit()
