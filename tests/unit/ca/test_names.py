"""Issue 8, class 9 and limits: name syntax is matched on the whole string, SPIFFE IDs
follow the SPIFFE ID spec and X509-SVID section 3.1, free text holds no control characters.

Each hostile value below was accepted by the ``re.match(r"^...$")`` validators (a trailing
newline satisfies ``$``) or by the old SPIFFE parser (no path, userinfo, port)."""

from __future__ import annotations

import pytest

from cyphrs_cli.ca.extensions import (
    parse_spiffe_id,
    validate_name_token,
    validate_text,
    validate_trust_domain,
)
from cyphrs_cli.errors import InvalidInputError

GOOD = "spiffe://acme.internal/agent/wf/i1"


@pytest.mark.parametrize(
    "value",
    [
        GOOD + "\n",  # trailing newline: re.match(r"^...$") let it through
        "spiffe://acme.internal\n/agent/x",
        "spiffe://acme.internal/agent/x\r",
        "spiffe://acme.internal",  # X509-SVID 3.1: a leaf needs a non-root path
        "spiffe://acme.internal/",
        "spiffe://acme.internal/agent/",  # trailing slash = empty segment
        "spiffe://acme.internal/./x",
        "spiffe://acme.internal/x/..",
        "SPIFFE://acme.internal/x",  # scheme is lowercase spiffe
        "Spiffe://acme.internal/x",
        "spiffe:/acme.internal/x",
        "spiffe:///x",  # empty trust domain
        "spiffe://user@acme.internal/x",  # userinfo
        "spiffe://acme.internal:8443/x",  # port
        "spiffe://acme.internal/a%2Fb",  # percent-encoding
        "spiffe://acme.internal/a?b",
        "spiffe://acme.internal/a#b",
        "spiffe://acme.internal/a b",
        "spiffe://acme.internal/a\x00b",
        "spiffe://acme.internal/caf\u00e9",  # non-ASCII path
        "spiffe://ac\u0131me.internal/x",  # dotless i in the trust domain
        "spiffe://" + "a" * 256 + "/x",  # trust domain over 255
        "spiffe://acme.internal/" + "a" * 2030,  # over 2048 bytes
    ],
)
def test_hostile_spiffe_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_spiffe_id(value)


def test_spiffe_id_limits_and_root_ids() -> None:
    longest = "spiffe://acme.internal/" + "a" * (2048 - len("spiffe://acme.internal/"))
    assert len(longest.encode()) == 2048
    assert parse_spiffe_id(longest)[1] == ("a" * (2048 - 23),)
    # A trust-domain ID (no path) is valid outside leaves, e.g. as a constraint.
    assert parse_spiffe_id("spiffe://acme.internal", leaf=False) == ("acme.internal", ())
    with pytest.raises(InvalidInputError, match="needs a path"):
        parse_spiffe_id("spiffe://acme.internal")
    assert parse_spiffe_id("spiffe://a_b-c.d/A.b_c-9") == ("a_b-c.d", ("A.b_c-9",))


@pytest.mark.parametrize("value", ["wf\n", "wf\r\n", "\nwf", "w\x00f", "wf\u202e"])
def test_name_tokens_match_the_whole_string(value: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_name_token("instance", value)


@pytest.mark.parametrize("value", ["acme.internal\n", "acme.internal:80", "", "a@b"])
def test_trust_domains_match_the_whole_string(value: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_trust_domain(value)


@pytest.mark.parametrize(
    "value",
    [
        "api\n",
        "a\rb",
        "a\x1b[31mred",  # ANSI escape
        "a\x7f",  # DEL
        "a\x85",  # C1 NEL
        "a\u202eb",  # bidi override (Cf)
        "a\u200bb",  # zero-width space (Cf)
        "a\u2028b",  # line separator (Zl)
        "a\ue000",  # private use
        "",
        "x" * 65,
    ],
)
def test_free_text_refuses_controls_and_overlong(value: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_text("common name", value, max_length=64)


def test_free_text_accepts_printable_unicode() -> None:
    assert validate_text("common name", "Zürich agent ✓", max_length=64) == "Zürich agent ✓"
    assert validate_text("common name", "x" * 64, max_length=64) == "x" * 64


def test_no_anchored_match_left_in_the_package() -> None:
    """``re.match``/``pattern.match`` with ``$`` accepts a trailing newline; the package
    validates names with ``fullmatch`` only (a new ``.match(`` must justify itself here)."""
    import re
    from pathlib import Path

    import cyphrs_cli

    package = Path(cyphrs_cli.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(\bre|_[A-Z_]+|pattern)\.match\(", line)
        or re.search(r"re\.compile\(r?[\"']\^.*\$[\"']\)", line)
    ]
    assert offenders == []
