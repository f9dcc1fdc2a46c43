"""ACME request authentication (RFC 8555 §6.2, §6.4, §6.5): a flattened JWS verified with
jwcrypto, its ``nonce`` spent once, its ``url`` equal to the request's, and exactly one of
``jwk`` (newAccount, revokeCert by certificate key) or ``kid`` (an account URL).

Replay nonces live in memory, bounded (oldest evicted first): a restart forgets them, and
a client answered ``badNonce`` retries with the fresh nonce every response carries.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cyphrs_cli.service.acme import AcmeProblem

#: Account key algorithms and the key each needs.
ALGORITHMS = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}
MIN_RSA_BITS = 2048


class NonceStore:
    """Single-use nonces, at most ``limit`` outstanding (event-loop thread only)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._nonces: OrderedDict[str, None] = OrderedDict()

    def issue(self) -> str:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        self._nonces[nonce] = None
        while len(self._nonces) > self._limit:
            self._nonces.popitem(last=False)
        return nonce

    def consume(self, nonce: str) -> bool:
        return self._nonces.pop(nonce, 0) is None

    def __len__(self) -> int:
        return len(self._nonces)


@dataclass(frozen=True)
class Verified:
    """A verified request: the protected header, the payload bytes, and who signed."""

    protected: dict[str, Any]
    payload: bytes
    jwk: dict[str, Any] | None  # the embedded key (jwk requests)
    account_id: str | None  # the account (kid requests)

    def json(self) -> dict[str, Any]:
        if not self.payload:
            return {}
        try:
            document = json.loads(self.payload)
        except ValueError as exc:
            raise AcmeProblem("malformed", "payload is not JSON") from exc
        if not isinstance(document, dict):
            raise AcmeProblem("malformed", "payload must be a JSON object")
        return document


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise AcmeProblem("malformed", "JWS fields must be base64url strings")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise AcmeProblem("malformed", "JWS field is not base64url") from exc


def check_key(alg: str, key: dict[str, Any]) -> None:
    """The key type must be the algorithm's (no RSA key under ES256, no small RSA)."""
    wanted = ALGORITHMS.get(alg)
    if wanted is None:
        raise AcmeProblem("badSignatureAlgorithm",
                          f"alg {alg!r} unsupported; use one of {', '.join(ALGORITHMS)}")
    kty, crv = wanted
    if key.get("kty") != kty or (crv is not None and key.get("crv") != crv):
        raise AcmeProblem("badPublicKey", f"a {alg} signature needs a {kty} {crv or ''} key")
    if "d" in key or "p" in key:
        raise AcmeProblem("badPublicKey", "the JWK must be a public key")
    if kty == "RSA" and len(_unb64(key.get("n", ""))) * 8 < MIN_RSA_BITS:
        raise AcmeProblem("badPublicKey", f"RSA account keys need at least {MIN_RSA_BITS} bits")


def parse(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flattened JWS object and its decoded protected header."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise AcmeProblem("malformed", "request body is not JSON") from exc
    if not isinstance(document, dict) or set(document) != {"protected", "payload", "signature"}:
        raise AcmeProblem("malformed", "expected a flattened JWS (protected, payload, signature)")
    try:
        protected = json.loads(_unb64(document["protected"]))
    except ValueError as exc:
        raise AcmeProblem("malformed", "protected header is not JSON") from exc
    if not isinstance(protected, dict):
        raise AcmeProblem("malformed", "protected header must be an object")
    return document, protected


def verify_signature(document: dict[str, Any], alg: str, key: dict[str, Any]) -> bytes:
    """The payload of ``document`` if its signature verifies with ``key`` under ``alg``."""
    from jwcrypto import jwk, jws

    check_key(alg, key)
    token = jws.JWS()
    try:
        token.deserialize(json.dumps(document))
        token.allowed_algs = [alg]
        token.verify(jwk.JWK(**key), alg=alg)
    except Exception as exc:  # jwcrypto raises several types for a bad signature
        raise AcmeProblem("malformed", "JWS signature does not verify") from exc
    payload = token.payload
    return bytes(payload) if payload else b""


def check_protected(protected: dict[str, Any], url: str, nonces: NonceStore | None) -> str:
    """Enforce ``alg``, ``url`` and (unless ``nonces`` is None: an inner JWS) ``nonce``;
    returns alg."""
    alg = protected.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise AcmeProblem("badSignatureAlgorithm",
                          f"alg {alg!r} unsupported; use one of {', '.join(ALGORITHMS)}")
    if protected.get("url") != url:
        raise AcmeProblem("unauthorized", "the JWS url header is not this request's URL", 401)
    if nonces is not None:
        nonce = protected.get("nonce")
        if not isinstance(nonce, str) or not nonces.consume(nonce):
            raise AcmeProblem("badNonce", "unknown, used or missing nonce", 400)
    elif "nonce" in protected:
        raise AcmeProblem("malformed", "the inner JWS must not carry a nonce")
    if ("jwk" in protected) == ("kid" in protected):
        raise AcmeProblem("malformed", "the JWS needs exactly one of jwk and kid")
    return alg
