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


# --- Exact refusals and boundaries (issue 15: mutation testing found these unchecked) ---

from cyphrs_cli.ca.extensions import (  # noqa: E402
    agent_spiffe_id,
    forbidden_character,
    name_constraint_subtrees,
)

SPIFFE_HINT = "use spiffe://<trust-domain>/<path>, e.g. spiffe://acme.internal/agent/x/1"


def _refusal(call: object, *args: object, **kwargs: object) -> InvalidInputError:
    assert callable(call)
    with pytest.raises(InvalidInputError) as info:
        call(*args, **kwargs)
    return info.value


def test_forbidden_character_names_the_first_bad_code_point() -> None:
    assert forbidden_character("plain Zürich ✓") is None
    assert forbidden_character("") is None
    assert forbidden_character("a\x01b\x02") == "U+0001"
    assert forbidden_character("\x85") == "U+0085"
    assert forbidden_character("ok\u200b") == "U+200B"
    assert forbidden_character("\U000f0000") == "U+F0000"  # plane-15 private use
    assert forbidden_character("\u0378") == "U+0378"  # unassigned (Cn)
    assert forbidden_character("a\u2029") == "U+2029"  # paragraph separator (Zp)


def test_free_text_refusals_are_exact() -> None:
    long = _refusal(validate_text, "requester", "x" * 129, max_length=128)
    assert str(long) == "requester must be 1-128 characters (got 129)"
    assert long.hint == "shorten the requester"
    empty = _refusal(validate_text, "permission", "", max_length=128)
    assert str(empty) == "permission must be 1-128 characters (got 0)"
    control = _refusal(validate_text, "common name", "a\x7fb", max_length=64)
    assert str(control) == "common name 'a\\x7fb' contains a control or format character (U+007F)"
    assert control.hint == "names may hold printable characters only"
    assert validate_text("requester", "x" * 128, max_length=128) == "x" * 128
    assert validate_text("requester", "x", max_length=1) == "x"


def test_trust_domain_refusal_and_length_boundary() -> None:
    assert validate_trust_domain("a" * 255) == "a" * 255
    assert validate_trust_domain("a_b-c.9") == "a_b-c.9"
    error = _refusal(validate_trust_domain, "a" * 256)
    assert str(error) == f"invalid SPIFFE trust domain {'a' * 256!r}"
    assert error.hint == "use lowercase letters, digits, '.', '-' and '_' (e.g. acme.internal)"
    assert str(_refusal(validate_trust_domain, "Acme")) == "invalid SPIFFE trust domain 'Acme'"


def test_name_token_refusal_and_length_boundary() -> None:
    assert validate_name_token("workflow", "W" + "x" * 62) == "W" + "x" * 62
    assert validate_name_token("workflow", "9a._-") == "9a._-"
    for value in ("W" + "x" * 63, ".hidden", "-flag", "_x", ""):
        error = _refusal(validate_name_token, "workflow", value)
        assert str(error) == f"invalid workflow {value!r}"
        assert error.hint == (
            "use 1-63 letters, digits, '.', '-', '_', starting with a letter or digit"
        )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("spiffe://acme.internal/" + "\u00e9" * 1100, "longer than 2048 bytes"),
        ("SPIFFE://acme.internal/x", "must start with spiffe:// (lowercase scheme)"),
        ("spiffe://acme.internal/a?b#c%20", "a query is not allowed"),
        ("spiffe://acme.internal/a#b%20", "a fragment is not allowed"),
        ("spiffe://acme.internal/a%20", "a percent-encoding is not allowed"),
        ("spiffe:///x", "missing trust domain"),
        ("spiffe://u@acme.internal:1/x", "userinfo is not allowed"),
        ("spiffe://acme.internal:8443/x", "a port is not allowed"),
        (
            "spiffe://Acme.internal/x",
            "the trust domain may hold only lowercase letters, digits, '.', '-', '_'",
        ),
        (
            "spiffe://" + "a" * 256 + "/x",
            "the trust domain may hold only lowercase letters, digits, '.', '-', '_'",
        ),
        (
            "spiffe://acme.internal",
            "a leaf certificate's SPIFFE ID needs a path (X509-SVID section 3.1)",
        ),
        (
            "spiffe://acme.internal/",
            "a leaf certificate's SPIFFE ID needs a path (X509-SVID section 3.1)",
        ),
        ("spiffe://acme.internal/a//b", "empty, '.' or '..' path segment ''"),
        ("spiffe://acme.internal/a/.", "empty, '.' or '..' path segment '.'"),
        ("spiffe://acme.internal/../a", "empty, '.' or '..' path segment '..'"),
        (
            "spiffe://acme.internal/ok/a b",
            "path segment 'a b' may hold only letters, digits, '.', '-', '_'",
        ),
    ],
)
def test_spiffe_id_refusals_name_their_reason(value: str, reason: str) -> None:
    error = _refusal(parse_spiffe_id, value)
    assert str(error) == f"invalid SPIFFE ID {value!r}: {reason}"
    assert error.hint == SPIFFE_HINT


def test_spiffe_id_boundaries_and_segments() -> None:
    # 2048 bytes counted in UTF-8, not characters; a lone surrogate is input, not a crash.
    assert "needs a path" not in str(_refusal(parse_spiffe_id, "spiffe://acme.internal/\ud800"))
    assert parse_spiffe_id("spiffe://" + "a" * 255 + "/x") == ("a" * 255, ("x",))
    assert parse_spiffe_id(GOOD) == ("acme.internal", ("agent", "wf", "i1"))
    assert parse_spiffe_id("spiffe://acme.internal/...") == ("acme.internal", ("...",))
    # Outside leaves the root ID is fine, but a trailing slash is still an empty segment.
    error = _refusal(parse_spiffe_id, "spiffe://acme.internal/", leaf=False)
    assert str(error).endswith(": empty, '.' or '..' path segment ''")
    assert parse_spiffe_id("spiffe://acme.internal/x", leaf=False) == ("acme.internal", ("x",))


def test_agent_spiffe_id_layout() -> None:
    spiffe_id = agent_spiffe_id("acme.internal", "wf", "i1")
    assert spiffe_id == "spiffe://acme.internal/agent/wf/i1"
    assert parse_spiffe_id(spiffe_id) == ("acme.internal", ("agent", "wf", "i1"))


def _subtrees(
    *,
    on: bool = True,
    td: str | None = None,
    dns: tuple[str, ...] = (),
    ip: tuple[str, ...] = (),
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return name_constraint_subtrees(
        name_constraints=on, trust_domain=td, permitted_dns=dns, permitted_ip=ip
    )


def test_subtrees_without_name_constraints() -> None:
    assert _subtrees(on=False) == ((), (), ())
    assert _subtrees(on=False, td="acme.internal") == ((), (), ())
    for kwargs in ({"dns": ("acme.internal",)}, {"ip": ("10.0.0.0/8",)}):
        error = _refusal(_subtrees, on=False, **kwargs)
        assert str(error) == "--permit-dns/--permit-ip take effect only with --name-constraints"
        assert error.hint == "add --name-constraints"
    error = _refusal(_subtrees)
    assert str(error) == "--name-constraints needs --trust-domain, --permit-dns and/or --permit-ip"


def test_subtrees_each_kind_alone_and_together() -> None:
    assert _subtrees(td="acme.internal") == (("acme.internal",), (), ())
    assert _subtrees(dns=("Acme.Internal", ".svc.acme")) == ((), ("acme.internal", ".svc.acme"), ())
    assert _subtrees(ip=("10.20.0.0/16", "FD00::/8")) == ((), (), ("10.20.0.0/16", "fd00::/8"))
    assert _subtrees(td="td", dns=("a.b",), ip=("192.0.2.1/32",)) == (
        ("td",),
        ("a.b",),
        ("192.0.2.1/32",),
    )
    assert "invalid SPIFFE trust domain" in str(_refusal(_subtrees, td="Bad Domain"))


def test_dns_subtree_syntax_and_length() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert _subtrees(dns=(longest,))[1] == (longest,)
    assert _subtrees(dns=("x-1.y",))[1] == ("x-1.y",)
    for bad in (
        longest + "d",  # 254 characters
        "." + longest,  # the leading dot counts too
        "a" * 64 + ".internal",  # a label of 64
        "-a.internal",
        "a-.internal",
        "a..internal",
        "a.internal.",
        "..a",
        "",
        "a_b.internal",
        "a.internal\n",
    ):
        error = _refusal(_subtrees, dns=(bad,))
        assert str(error) == f"invalid --permit-dns subtree {bad!r}"
        assert error.hint == (
            "a host name such as acme.internal, or .acme.internal for below it only"
        )


def test_ip_subtree_needs_a_network_without_host_bits() -> None:
    error = _refusal(_subtrees, ip=("10.0.0.1/8",))
    assert str(error) == "invalid --permit-ip subtree '10.0.0.1/8': 10.0.0.1/8 has host bits set"
    assert error.hint == "a CIDR network with no host bits set, e.g. 10.20.0.0/16 or fd00::/8"
    assert str(_refusal(_subtrees, ip=("acme",))).startswith("invalid --permit-ip subtree 'acme': ")
    assert _subtrees(ip=("10.0.0.1",))[2] == ("10.0.0.1/32",)
