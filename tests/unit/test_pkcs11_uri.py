"""RFC 7512 parsing of key URIs: a PIN is refused in every spelling and never echoed."""

from __future__ import annotations

import pytest

from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.keystore.uri import Pkcs11Uri, canonical_key_uri, scheme_of

PIN = "918273645"
BASE = "pkcs11:token=tok;object=key"
MODULE = "module-path=/usr/lib/softhsm/libsofthsm2.so"

PIN_SMUGGLING = [
    f"{BASE}?{MODULE}&pin-value={PIN}",
    f"{BASE}?{MODULE}&PIN-VALUE={PIN}",
    f"{BASE}?{MODULE}&Pin-Value={PIN}",
    f"{BASE}?{MODULE}&pin%2Dvalue={PIN}",
    f"{BASE}?{MODULE}&pin%2dvalue={PIN}",
    f"{BASE}?{MODULE}&%70in-value={PIN}",
    f"{BASE}?{MODULE}&pin_value={PIN}",
    f"{BASE}?{MODULE}&pinvalue={PIN}",
    f"{BASE}?{MODULE}&x-pin-value={PIN}",
    f"{BASE}?{MODULE}&\uff50in-value={PIN}",  # full-width p
    f"{BASE};pin-value={PIN}?{MODULE}",
    f"pkcs11:token=tok;pin-value={PIN};object=key?{MODULE}",
    f"pkcs11:PIN-VALUE={PIN};token=tok;object=key",
    f"{BASE};pin-value={PIN}",
    f"{BASE}?pin-value={PIN}&{MODULE}",
    f"{BASE}?{MODULE}&pin-value={PIN}&pin-value={PIN}",
    f"{BASE}?{MODULE}&pin-source=file:/p&pin-value={PIN}",
    f"{BASE}?{MODULE}&pin-value={PIN}#frag",
    f"{BASE}?{MODULE}&pin-value={PIN}?x=y",
    f"PKCS11:token=tok;object=key?pin-value={PIN}",
    f"{BASE}?{MODULE}&pin-value%3D{PIN}",
    f"{BASE}?{MODULE}&x-vendor-secret={PIN}",
    f"{BASE}?{MODULE}&module-path={PIN}",
    f"{BASE};token={PIN}?{MODULE}",
    f"{BASE}?{MODULE}&pin-value={PIN}%",
]


@pytest.mark.parametrize("uri", PIN_SMUGGLING)
def test_pin_smuggling_is_refused_without_echo(uri: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Pkcs11Uri.parse(uri)
    assert PIN not in caught.value.message
    assert PIN not in (caught.value.hint or "")
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    "uri",
    [f"{BASE}?{MODULE}&pin-value={PIN}", f"{BASE};pin-value={PIN}", f"{BASE}?PIN%2DVALUE={PIN}"],
)
def test_pin_value_names_the_reason(uri: str) -> None:
    with pytest.raises(InvalidInputError, match="pin-value"):
        Pkcs11Uri.parse(uri)


def test_names_are_case_insensitive_and_values_percent_decoded() -> None:
    parsed = Pkcs11Uri.parse(
        "pkcs11:TOKEN=my%20token;Object=ca%3Bkey?Module-Path=/lib/x.so&PIN-SOURCE=file:/p"
    )
    assert parsed == Pkcs11Uri("my token", "ca;key", "/lib/x.so", "file:/p")
    assert parsed.canonical() == (
        "pkcs11:token=my%20token;object=ca%3Bkey?module-path=/lib/x.so&pin-source=file:/p"
    )
    assert Pkcs11Uri.parse(parsed.canonical()) == parsed


def test_canonical_form_drops_type_and_orders_attributes() -> None:
    uri = "pkcs11:object=key;type=private;token=tok?pin-source=/p&module-path=/m.so"
    assert canonical_key_uri(uri) == "pkcs11:token=tok;object=key?module-path=/m.so&pin-source=/p"
    assert canonical_key_uri("file:keys/a.pem") == "file:keys/a.pem"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("pkcs11:token=a;token=b;object=k", "twice"),
        ("pkcs11:token=a;object=k;id=%01", "not supported"),
        ("pkcs11:token=a;object=k;x-vendor=1", "not supported"),
        ("pkcs11:token=a;object=k?module-name=softhsm2", "not supported"),
        ("pkcs11:token=a;object=k;module-path=/m.so", "belongs in the query"),
        ("pkcs11:token=a?object=k", "belongs in the path"),
        ("pkcs11:token=a;object=k;type=cert", "private"),
        ("pkcs11:token=a;;object=k", "malformed"),
        ("pkcs11:token=a;object", "malformed"),
        ("pkcs11:token=a%zz;object=k", "percent-encoding"),
        ("pkcs11:token=a%ff;object=k", "UTF-8"),
        ("pkcs11:token=a%1b%5b2J;object=k", "control"),
        ("pkcs11:token=a%0a;object=k", "control"),
        ("pkcs11:object=k", "token="),
        ("pkcs11:token=;object=k", "token="),
    ],
)
def test_malformed_uris_are_refused(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        Pkcs11Uri.parse(uri)


def test_scheme_is_case_insensitive_and_unknown_schemes_are_not_echoed() -> None:
    assert scheme_of("PKCS11:token=a;object=b") == "pkcs11"
    with pytest.raises(InvalidInputError) as caught:
        scheme_of(f"pkcs11 :token=a?pin-value={PIN}")
    assert PIN not in caught.value.message
    with pytest.raises(InvalidInputError) as caught:
        scheme_of(PIN)
    assert PIN not in caught.value.message


# --- Exact refusals and boundaries (issue 15: mutation testing found these unchecked) ---

PIN_MESSAGE = (
    "PKCS#11 URIs with pin-value are refused: a PIN must not sit in a URI (it would be"
    " stored in config.toml and the ledger)"
)
PIN_HINT = "give the PIN with --pin-file, --pin-env or ?pin-source=file:PATH"
UNSUPPORTED_HINT = (
    "cyphrs selects a key by token= and object= (labels) and takes module-path= and"
    " pin-source= in the query"
)


def _refused(uri: str, **kwargs: bool) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        Pkcs11Uri.parse(uri, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    "uri",
    [
        # The PIN check runs before every other one, so no other message can quote it:
        # each of these would otherwise fail on a fragment, a second '?' or a bad name.
        f"pkcs11:token=t;pin-value={PIN};object=k#frag",
        f"pkcs11:token=t;object=k;pin-value={PIN}?a=b?c",
        f"pkcs11:token=t;object=k?{MODULE}&pin-value={PIN}#frag",
        f"pkcs11:token=t;object=k?{MODULE}&pin-value={PIN}&x=1?y",
        f"pkcs11:token=t;object=k;id=1;pin-value={PIN}",
        f"pkcs11:token=t;object=k?module-name=x&pin-value={PIN}",
        f"pkcs11:token=t;object=k;bad name=1;pin-value={PIN}",
        f"pkcs11:token=t;object=k?{MODULE}&VALUE-PIN={PIN}",  # both words, any order
        f"pkcs11:token=t;object=k?{MODULE}&pin%zzvalue={PIN}",  # undecodable name
        f"pkcs11:token=t;object=k?{MODULE}&pin%value={PIN}",  # '%' without hex digits
        f"pkcs11:token=t;object=k?{MODULE}&pinvalue123={PIN}",  # 11 letters and digits
        f"pkcs11:token=t;object=k?{MODULE}&pin%C3value={PIN}",  # invalid UTF-8 in the name
        # Undecodable bytes are dropped, not spelled out: "pinvalue12", not "pinffvalue12".
        f"pkcs11:token=t;object=k?{MODULE}&pin%FFvalue12={PIN}",
    ],
)
def test_pin_refusal_comes_first_and_is_exact(uri: str) -> None:
    error = _refused(uri)
    assert error.message == PIN_MESSAGE
    assert error.hint == PIN_HINT


def test_names_near_pin_value_are_unsupported_attributes_not_pins() -> None:
    """The fuzzy match is bounded (at most 11 letters/digits), so a long vendor name that
    merely contains both words is refused as unsupported, quoting only its name."""
    error = _refused("pkcs11:token=t;object=k?pinvalue1234=x")
    assert error.message == "PKCS#11 URI vendor attribute pinvalue1234 is not supported"
    assert error.hint == UNSUPPORTED_HINT
    error = _refused("pkcs11:token=t;object=k?pin=x")
    assert error.message == "PKCS#11 URI vendor attribute pin is not supported"
    error = _refused("pkcs11:token=t;object=k;value=x")
    assert error.message == "PKCS#11 URI vendor attribute value is not supported"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs1:token=t;object=k", "not a PKCS#11 URI (it must start with pkcs11:)"),
        ("pkcs11;token=t;object=k", "not a PKCS#11 URI (it must start with pkcs11:)"),
        ("pkcs11:token=t;object=k#x", "a PKCS#11 URI has no fragment ('#' must be %23)"),
        (
            "pkcs11:token=t;object=k?a=1?b=2",
            "a PKCS#11 URI has one query ('?' in a value must be %3F)",
        ),
        (
            "pkcs11:token=t;;object=k",
            "malformed PKCS#11 URI path attribute (expected name=value, the name made of"
            " letters, digits, '-' and '_')",
        ),
        (
            "pkcs11:token=t;object=k?module-path",
            "malformed PKCS#11 URI query attribute (expected name=value, the name made of"
            " letters, digits, '-' and '_')",
        ),
        (
            "pkcs11:token=t;ob%6Aect=k",
            "malformed PKCS#11 URI path attribute (expected name=value, the name made of"
            " letters, digits, '-' and '_')",
        ),
        ("pkcs11:token=t;TOKEN=u;object=k", "PKCS#11 URI attribute token is given twice"),
        (
            "pkcs11:token=t;object=k?pin-source=/a&PIN-SOURCE=/b",
            "PKCS#11 URI attribute pin-source is given twice",
        ),
        (
            "pkcs11:token=t;object=k;module-path=/m.so",
            "PKCS#11 URI attribute module-path belongs in the query (after '?')",
        ),
        (
            "pkcs11:token=t;object=k?token=u",
            "PKCS#11 URI attribute token belongs in the path (before '?')",
        ),
        (
            "pkcs11:token=t;object=k;serial=1",
            "PKCS#11 URI standard attribute serial is not supported",
        ),
        (
            "pkcs11:token=t;object=k?module-name=p11",
            "PKCS#11 URI standard attribute module-name is not supported",
        ),
        ("pkcs11:token=t;object=k;x-foo=1", "PKCS#11 URI vendor attribute x-foo is not supported"),
        (
            "pkcs11:token=t;object=k%2",
            "malformed percent-encoding in the PKCS#11 URI attribute object",
        ),
        (
            "pkcs11:token=t;object=k%",
            "malformed percent-encoding in the PKCS#11 URI attribute object",
        ),
        (
            "pkcs11:token=t;object=k%C3",
            "the PKCS#11 URI attribute object is not UTF-8 once decoded",
        ),
        (
            "pkcs11:token=\ud800;object=k",
            "the PKCS#11 URI attribute token is not UTF-8 once decoded",
        ),
        ("pkcs11:token=t;object=a%0Ab", "PKCS#11 URI attribute object holds control characters"),
        (
            "pkcs11:token=t;object=a%E2%80%8Eb",
            "PKCS#11 URI attribute object holds control characters",
        ),
        (
            "pkcs11:token=t;object=a%E2%80%A8b",
            "PKCS#11 URI attribute object holds control characters",
        ),
        (
            "pkcs11:token=t;object=a%E2%80%A9b",
            "PKCS#11 URI attribute object holds control characters",
        ),
        (
            "pkcs11:token=t;object=k;type=public",
            "a CA key URI names a private key: type= must be private",
        ),
        (
            "pkcs11:token=t;object=k;type=",
            "a CA key URI names a private key: type= must be private",
        ),
        ("pkcs11:object=k", "a PKCS#11 key URI must name token= and object= (by label)"),
        ("pkcs11:token=t;object=", "a PKCS#11 key URI must name token= and object= (by label)"),
    ],
)
def test_refusals_are_exact(uri: str, message: str) -> None:
    error = _refused(uri)
    assert error.message == message
    if "not supported" in message:
        assert error.hint == UNSUPPORTED_HINT


def test_accepted_uris_parse_to_their_parts() -> None:
    assert Pkcs11Uri.parse("pkcs11:token=Z\u00fcrich;object=k") == Pkcs11Uri("Z\u00fcrich", "k")
    assert Pkcs11Uri.parse("PkCs11:token=t;object=k") == Pkcs11Uri("t", "k")
    assert Pkcs11Uri.parse("pkcs11:token=t;object=k?") == Pkcs11Uri("t", "k")
    assert Pkcs11Uri.parse("pkcs11:token=t;object=k;type=private") == Pkcs11Uri("t", "k")
    assert Pkcs11Uri.parse("pkcs11:token=a%25b;object=%41") == Pkcs11Uri("a%b", "A")
    # RFC 7512 allows '=' inside values (pk11-v-res-avail, pk11-q-res-avail).
    assert Pkcs11Uri.parse("pkcs11:token=a=b;object=k?pin-source=file:/p=1") == Pkcs11Uri(
        "a=b", "k", None, "file:/p=1"
    )
    assert Pkcs11Uri.parse("pkcs11:token=t?pin-source=/p", need_object=False) == Pkcs11Uri(
        "t", "", None, "/p"
    )
    # Tab and no-break space: printable enough (Zs), a tab is a control (Cc).
    assert Pkcs11Uri.parse("pkcs11:token=a%C2%A0b;object=k").token == "a\u00a0b"
    assert _refused("pkcs11:token=a%09b;object=k").message.endswith("holds control characters")


def test_canonical_encodes_each_part() -> None:
    assert Pkcs11Uri("t", "").canonical() == "pkcs11:token=t"
    assert Pkcs11Uri("my token/x", "a;b?c").canonical() == (
        "pkcs11:token=my%20token%2Fx;object=a%3Bb%3Fc"
    )
    assert Pkcs11Uri("t", "k", "/opt/soft hsm/p11.so").canonical() == (
        "pkcs11:token=t;object=k?module-path=/opt/soft%20hsm/p11.so"
    )
    assert Pkcs11Uri("t", "k", None, "file:/run/pin&x").canonical() == (
        "pkcs11:token=t;object=k?pin-source=file:/run/pin%26x"
    )
    both = Pkcs11Uri("t", "k", "C:/p11.so", "file:/p")
    assert both.canonical() == "pkcs11:token=t;object=k?module-path=C:/p11.so&pin-source=file:/p"
    assert Pkcs11Uri.parse(both.canonical()) == both
    assert Pkcs11Uri("t", "", "/m.so").canonical() == "pkcs11:token=t?module-path=/m.so"
    # A '/' in a label is data, not a path separator: encoded in token and object alike.
    assert Pkcs11Uri("a/b", "c/d").canonical() == "pkcs11:token=a%2Fb;object=c%2Fd"
