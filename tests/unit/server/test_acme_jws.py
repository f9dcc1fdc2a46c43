"""ACME request authentication pieces without a server: the nonce store is single-use and
bounded; key type must match the algorithm."""

from __future__ import annotations

import pytest

from cyphrs_cli.server.acme.jws import NonceStore, check_key, check_protected
from cyphrs_cli.service.acme import AcmeProblem


def test_nonces_are_single_use_and_bounded() -> None:
    store = NonceStore(limit=3)
    issued = [store.issue() for _ in range(5)]
    assert len(store) == 3
    assert not store.consume(issued[0]) and not store.consume(issued[1])  # evicted
    assert store.consume(issued[4])
    assert not store.consume(issued[4])  # spent
    assert not store.consume("made-up")


@pytest.mark.parametrize(
    ("alg", "key", "kind"),
    [
        ("ES256", {"kty": "EC", "crv": "P-384"}, "badPublicKey"),
        ("ES384", {"kty": "EC", "crv": "P-256"}, "badPublicKey"),
        ("EdDSA", {"kty": "OKP", "crv": "X25519"}, "badPublicKey"),
        ("RS256", {"kty": "EC", "crv": "P-256"}, "badPublicKey"),
        ("ES256", {"kty": "EC", "crv": "P-256", "d": "secret"}, "badPublicKey"),
        ("none", {"kty": "EC", "crv": "P-256"}, "badSignatureAlgorithm"),
        ("HS256", {"kty": "oct"}, "badSignatureAlgorithm"),
    ],
)
def test_key_must_match_algorithm(alg: str, key: dict[str, str], kind: str) -> None:
    with pytest.raises(AcmeProblem) as refused:
        check_key(alg, key)
    assert refused.value.acme_type == kind


def test_protected_header_rules() -> None:
    store = NonceStore()
    url = "https://ca/acme/new-order"

    def refused(header: dict[str, object]) -> str:
        with pytest.raises(AcmeProblem) as error:
            check_protected(header, url, store)
        return error.value.acme_type

    assert refused({"alg": "ES256", "url": url, "nonce": "x", "kid": "k"}) == "badNonce"
    assert refused({"alg": "ES256", "url": url + "/", "nonce": store.issue(), "kid": "k"}) == (
        "unauthorized")
    assert refused({"alg": "ES256", "url": url, "nonce": store.issue(), "kid": "k",
                    "jwk": {}}) == "malformed"
    assert refused({"alg": "ES256", "url": url, "nonce": store.issue()}) == "malformed"
    assert check_protected({"alg": "ES256", "url": url, "nonce": store.issue(), "kid": "k"},
                           url, store) == "ES256"
