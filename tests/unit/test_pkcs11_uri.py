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
