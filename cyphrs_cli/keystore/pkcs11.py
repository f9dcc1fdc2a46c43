"""PKCS#11 key store: CA keys generated and used inside a token (HSM, SoftHSM2, YubiHSM).

Private keys are created ``TOKEN``, ``PRIVATE``, ``SENSITIVE``, non-``EXTRACTABLE`` and
``SIGN``-only. Signers are subclasses of cryptography's private-key classes whose ``sign()``
calls the token, so the certificate, CRL and OCSP builders use them unchanged.

ECDSA: the host hashes, the token signs the digest with ``CKM_ECDSA`` (SoftHSM2 has no
combined ECDSA-with-SHA mechanism) and returns r||s, which we DER-encode. RSA: PKCS#1 v1.5
or PSS with the token's combined SHA-2 mechanisms. Ed25519: ``CKM_EDDSA``.

python-pkcs11 is imported only here, and this module only for ``pkcs11:`` URIs.
"""

from __future__ import annotations

import contextlib
import secrets as random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from cyphrs_cli.errors import ConflictError, KeyStoreError, SecretError
from cyphrs_cli.keystore.base import KeyInfo, KeySpec, SecretProvider
from cyphrs_cli.keystore.uri import MODULE_ENV, Pkcs11Uri

__all__ = ["MODULE_ENV", "Pkcs11KeyStore", "Pkcs11Uri", "TokenSession", "list_token_keys"]
AUDIT_ATTRIBUTES = ("SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE", "LOCAL")
_PIN_ERRORS = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange)
T = TypeVar("T")


#: What a token says when the session we hold is gone (closed underneath, logged out,
#: token pulled and re-inserted): reopening the session and logging in again may help.
#: Anything else (key not allowed to sign, mechanism refused, device error) would fail
#: again the same way, so it is reported at once.
_SESSION_LOST = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)


class TokenSession:
    """One logged-in read-write session on one token, owned by the key store that opened
    it (no process-wide cache). Calls are serialised by its lock (a PKCS#11 session runs
    one operation at a time, so threads sharing a signer take turns); a call that finds
    the session lost reopens it and logs in again once; ``close`` ends it.

    PKCS#11 login state belongs to the whole process, not to a session: when another
    store of this process is already logged in to the token, the session opens without
    logging in and shares that login.
    """

    def __init__(self, parsed: Pkcs11Uri, secrets: SecretProvider) -> None:
        self._parsed = parsed
        self._secrets = secrets
        self._lock = threading.RLock()
        self._session: Any = None
        self._private: dict[str, Any] = {}  # label -> key object of the current session

    @property
    def label(self) -> str:
        return self._parsed.token

    def session(self) -> Any:
        """The open session, opened (and logged in) on first use."""
        with self._lock:
            if self._session is None:
                self._session = self._open()
            return self._session

    def _open(self) -> Any:
        parsed = self._parsed
        module = parsed.module()
        try:
            library = pkcs11.lib(module)
        except (RuntimeError, OSError, p11.PKCS11Error) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {module}: {exc}") from exc
        try:
            token = library.get_token(token_label=parsed.token)
        except p11.NoSuchToken as exc:
            raise KeyStoreError(f"no PKCS#11 token labelled {parsed.token!r} in {module}") from exc
        except p11.MultipleTokensReturned as exc:
            raise KeyStoreError(f"several tokens are labelled {parsed.token!r}") from exc
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"cannot reach token {parsed.token!r}: {type(exc).__name__}"
            ) from exc
        pin = _pin(parsed, self._secrets)
        try:
            try:
                return token.open(user_pin=pin.decode(), rw=True)
            except p11.UserAlreadyLoggedIn:
                return token.open(rw=True)
        except _PIN_ERRORS as exc:
            raise SecretError(f"wrong PIN for token {parsed.token!r}") from exc
        except p11.PinLocked as exc:
            raise KeyStoreError(f"the user PIN of token {parsed.token!r} is locked") from exc
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"cannot open token {parsed.token!r}: {type(exc).__name__}"
            ) from exc

    def private_key(self, label: str) -> Any:
        """The private key object labelled ``label`` in the current session (kept), to sign
        with: a key gone from the token is a signing failure (exit 9)."""
        with self._lock:
            found = self._private.get(label)
            if found is None:
                found = _find(self.session(), label, ObjectClass.PRIVATE_KEY)
                if found is None:
                    raise KeyStoreError(
                        f"token {self.label!r} failed to sign: it holds no private key"
                        f" labelled {label!r} (any more)",
                        hint="check that the token is present and still holds the CA key",
                    )
                self._private[label] = found
            return found

    def remember(self, label: str, private: Any) -> None:
        with self._lock:
            self._private[label] = private

    def run(self, action: Callable[[TokenSession], T]) -> T:
        """``action`` under the lock; after a lost session, once more on a new one."""
        with self._lock:
            try:
                return action(self)
            except _SESSION_LOST:
                self._drop()
            return action(self)

    def _drop(self) -> None:
        """Forget the session (closing what is left of it) so the next use reopens."""
        session, self._session = self._session, None
        self._private.clear()
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _pin(parsed: Pkcs11Uri, secrets: SecretProvider) -> bytes:
    source = parsed.pin_source
    if source is None:
        return secrets(f"PIN for token {parsed.token}")
    path = Path(source.removeprefix("file:"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read PIN source {path}: {exc.strerror}") from exc
    return data[:-1] if data.endswith(b"\n") else data


def _require_mechanism(session: Any, mechanism: Mechanism, token: str) -> None:
    if mechanism not in session.token.slot.get_mechanisms():
        raise KeyStoreError(f"token {token!r} does not offer mechanism CKM_{mechanism.name}")


def _key_attributes(private: Any) -> dict[str, bool]:
    return {name: bool(private[getattr(Attribute, name)]) for name in AUDIT_ATTRIBUTES}


def _find(session: Any, label: str, object_class: ObjectClass) -> Any | None:
    found = list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class}))
    if len(found) > 1:
        raise KeyStoreError(f"several objects labelled {label!r} on the token")
    return found[0] if found else None


def public_key_of(public: Any) -> Any:
    """A cryptography public key from a token public-key object."""
    from asn1crypto import core, keys

    key_type = public[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        n = int.from_bytes(public[Attribute.MODULUS], "big")
        e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    point = core.OctetString.load(public[Attribute.EC_POINT]).native
    if key_type == KeyType.EC_EDWARDS:
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    curve_name = keys.ECDomainParameters.load(public[Attribute.EC_PARAMS]).chosen.native
    curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}.get(curve_name)
    if curve is None:
        raise KeyStoreError(f"unsupported token curve {curve_name}")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def _no_export(*_: object, **__: object) -> Any:
    raise KeyStoreError("a PKCS#11 key never leaves its token")


def _token_sign(tokens: TokenSession, label: str, data: bytes, **mechanism: Any) -> bytes:
    """C_SignInit/C_Sign on the token, on a reopened session if the first one was lost.
    Whatever the token says then (object gone, token removed, device error, key not
    allowed to sign) is a key-store failure (exit 9), never an internal error: the key was
    found and unlocked, but the token would not sign."""
    try:
        return tokens.run(lambda t: bytes(t.private_key(label).sign(data, **mechanism)))
    except p11.PKCS11Error as exc:
        raise KeyStoreError(
            f"token {tokens.label!r} failed to sign: {type(exc).__name__}",
            hint="check that the token is present and still holds the CA key",
        ) from exc


class _TokenKey:
    """What every token key shares: its session, its label, and ``close``."""

    _tokens: TokenSession
    _label: str
    #: A signature is a call into the token (a device, maybe over a network): see
    #: ``keystore.base.signs_in_process``.
    signs_on_token = True

    def close(self) -> None:
        """End the token session (an ``Authority`` calls this when it closes)."""
        self._tokens.close()


class TokenEcKey(_TokenKey, ec.EllipticCurvePrivateKey):
    """ECDSA through CKM_ECDSA on a host-computed digest."""

    def __init__(
        self, tokens: TokenSession, label: str, public_key: ec.EllipticCurvePublicKey
    ) -> None:
        self._tokens, self._label, self._public = tokens, label, public_key

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise KeyStoreError("only ECDSA signatures are supported with EC token keys")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(bytes(data))
            digest = hasher.finalize()
        raw = _token_sign(self._tokens, self._label, digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        return utils.encode_dss_signature(r, s)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    exchange = private_numbers = private_bytes = _no_export

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenEcKey:
        return self


_RSA_PKCS1 = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}
_RSA_PSS = {
    "sha256": Mechanism.SHA256_RSA_PKCS_PSS,
    "sha384": Mechanism.SHA384_RSA_PKCS_PSS,
    "sha512": Mechanism.SHA512_RSA_PKCS_PSS,
}


class TokenRsaKey(_TokenKey, rsa.RSAPrivateKey):
    """RSA PKCS#1 v1.5 or PSS with the token's combined SHA-2 mechanisms."""

    def __init__(self, tokens: TokenSession, label: str, public_key: rsa.RSAPublicKey) -> None:
        self._tokens, self._label, self._public = tokens, label, public_key

    def sign(
        self,
        data: Any,
        padding_: padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        if not isinstance(algorithm, hashes.HashAlgorithm):
            raise KeyStoreError("pre-hashed RSA signing is not supported with token keys")
        if isinstance(padding_, padding.PKCS1v15) and algorithm.name in _RSA_PKCS1:
            return _token_sign(
                self._tokens, self._label, bytes(data), mechanism=_RSA_PKCS1[algorithm.name]
            )
        if isinstance(padding_, padding.PSS) and algorithm.name in _RSA_PSS:
            from pkcs11 import MGF

            mgf = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}[algorithm.name]
            hash_mech = {
                "sha256": Mechanism.SHA256,
                "sha384": Mechanism.SHA384,
                "sha512": Mechanism.SHA512,
            }[algorithm.name]
            salt = _pss_salt_length(padding_, algorithm, self._public.key_size)
            return _token_sign(
                self._tokens,
                self._label,
                bytes(data),
                mechanism=_RSA_PSS[algorithm.name],
                mechanism_param=(hash_mech, mgf, salt),
            )
        raise KeyStoreError(
            f"unsupported RSA signature: {type(padding_).__name__}/{algorithm.name}"
        )

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    decrypt = private_numbers = private_bytes = _no_export

    def __copy__(self) -> TokenRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenRsaKey:
        return self


def _pss_salt_length(pss: padding.PSS, algorithm: hashes.HashAlgorithm, key_bits: int) -> int:
    """Resolve cryptography's salt-length markers to the number the token needs."""
    salt = pss._salt_length  # cryptography keeps the requested length here
    if isinstance(salt, int):
        return salt
    if isinstance(salt, padding._DigestLength):
        return algorithm.digest_size
    if isinstance(salt, padding._MaxLength):
        return (key_bits + 7) // 8 - algorithm.digest_size - 2
    raise KeyStoreError("unsupported PSS salt length for a token key")


class TokenEd25519Key(_TokenKey, ed25519.Ed25519PrivateKey):
    """Pure EdDSA through CKM_EDDSA."""

    def __init__(
        self, tokens: TokenSession, label: str, public_key: ed25519.Ed25519PublicKey
    ) -> None:
        self._tokens, self._label, self._public = tokens, label, public_key

    def sign(self, data: Any) -> bytes:
        return _token_sign(self._tokens, self._label, bytes(data), mechanism=Mechanism.EDDSA)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    private_bytes = private_bytes_raw = _no_export

    def __copy__(self) -> TokenEd25519Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenEd25519Key:
        return self


def signer_for(tokens: TokenSession, label: str, private: Any, public_key: Any) -> Any:
    """Wrap the token key ``label``, after checking the token offers the mechanism it
    needs and the key may sign at all (python-pkcs11 gives a key without CKA_SIGN no
    ``sign`` method)."""
    token = tokens.label
    if not callable(getattr(private, "sign", None)):
        raise KeyStoreError(f"the key on token {token!r} is not allowed to sign (CKA_SIGN false)")
    tokens.remember(label, private)
    session = tokens.session()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        _require_mechanism(session, Mechanism.ECDSA, token)
        return TokenEcKey(tokens, label, public_key)
    if isinstance(public_key, rsa.RSAPublicKey):
        _require_mechanism(session, Mechanism.SHA256_RSA_PKCS, token)
        return TokenRsaKey(tokens, label, public_key)
    _require_mechanism(session, Mechanism.EDDSA, token)
    return TokenEd25519Key(tokens, label, public_key)


@dataclass
class PendingTokenKey:
    """A key pair just generated on a token; ``discard`` destroys it again."""

    uri: str
    signer: Any = field(repr=False)
    private: Any = field(repr=False)
    public: Any = field(repr=False)
    generated: bool = True
    _attributes: dict[str, bool] = field(default_factory=dict)

    @property
    def info(self) -> KeyInfo:
        from cyphrs_cli.keystore.file import spec_of

        return KeyInfo(
            self.uri,
            "pkcs11",
            spec_of(self.signer),
            "hsm" if self._attributes.get("LOCAL") else "imported",
            self._attributes,
        )

    def commit(self) -> None:
        """Token objects are persistent the moment they are created."""

    def discard(self) -> None:
        if self.generated:
            for obj in (self.private, self.public):
                with contextlib.suppress(p11.PKCS11Error):
                    obj.destroy()


_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
}


class Pkcs11KeyStore:
    """``pkcs11:`` URIs; the ``SecretProvider`` supplies the user PIN when no pin-source."""

    def __init__(self, secrets: SecretProvider) -> None:
        self._secrets = secrets
        self._tokens: dict[tuple[str, str], TokenSession] = {}

    def tokens(self, parsed: Pkcs11Uri) -> TokenSession:
        """This store's session on the token ``parsed`` names (one per module and token)."""
        key = (parsed.module(), parsed.token)
        if key not in self._tokens:
            self._tokens[key] = TokenSession(parsed, self._secrets)
        return self._tokens[key]

    def create_key(self, spec: KeySpec, uri: str) -> PendingTokenKey:
        parsed = Pkcs11Uri.parse(uri)
        tokens = self.tokens(parsed)
        session = tokens.session()
        if _find(session, parsed.object, ObjectClass.PRIVATE_KEY) is not None:
            raise ConflictError(
                f"token {parsed.token!r} already holds a key labelled {parsed.object!r}",
                hint="choose another object= label, or use --existing-key to adopt it",
            )
        key_id = random.token_bytes(16)
        templates = {
            "store": True,
            "label": parsed.object,
            "id": key_id,
            "public_template": _PUBLIC_TEMPLATE,
            "private_template": _PRIVATE_TEMPLATE,
        }
        try:
            if spec.kind == "rsa":
                _require_mechanism(session, Mechanism.RSA_PKCS_KEY_PAIR_GEN, parsed.token)
                public, private = session.generate_keypair(KeyType.RSA, spec.bits, **templates)
            else:
                from pkcs11.util.ec import encode_named_curve_parameters

                if spec.kind == "ec":
                    curve = {"P-256": "secp256r1", "P-384": "secp384r1"}[spec.curve or ""]
                    key_type, mech = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
                else:
                    curve, key_type, mech = (
                        "1.3.101.112",
                        KeyType.EC_EDWARDS,
                        Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                    )
                _require_mechanism(session, mech, parsed.token)
                params = session.create_domain_parameters(
                    key_type,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True,
                )
                public, private = params.generate_keypair(**templates)
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"token {parsed.token!r} could not generate a {spec.name} key: {type(exc).__name__}"
            ) from exc
        public_key = public_key_of(public)
        # The recorded URI, never the one given: it is what config.toml and the ledger keep.
        pending = PendingTokenKey(
            parsed.recorded(),
            signer_for(tokens, parsed.object, private, public_key),
            private,
            public,
        )
        pending._attributes = _key_attributes(private)
        return pending

    def adopt_key(self, uri: str) -> PendingTokenKey:
        """Use a key pair that already exists on the token (never destroyed on failure)."""
        parsed = Pkcs11Uri.parse(uri)
        tokens = self.tokens(parsed)
        private, public = self._pair(tokens.session(), parsed)
        pending = PendingTokenKey(
            parsed.recorded(),
            signer_for(tokens, parsed.object, private, public_key_of(public)),
            private,
            public,
            generated=False,
        )
        pending._attributes = _key_attributes(private)
        return pending

    def _pair(self, session: Any, parsed: Pkcs11Uri) -> tuple[Any, Any]:
        private = _find(session, parsed.object, ObjectClass.PRIVATE_KEY)
        public = _find(session, parsed.object, ObjectClass.PUBLIC_KEY)
        if private is None or public is None:
            raise KeyStoreError(f"no key pair labelled {parsed.object!r} on token {parsed.token!r}")
        return private, public

    def open_signer(self, uri: str) -> Any:
        parsed = Pkcs11Uri.parse(uri)
        tokens = self.tokens(parsed)
        private, public = self._pair(tokens.session(), parsed)
        return signer_for(tokens, parsed.object, private, public_key_of(public))


def list_token_keys(uri: str, secrets: SecretProvider) -> list[dict[str, Any]]:
    """Every private key on the token named by ``uri`` (object= is ignored)."""
    parsed = Pkcs11Uri.parse(uri, need_object=False)
    session = TokenSession(parsed, secrets).session()
    keys = []
    # One search at a time per session: materialise before the nested look-ups.
    for private in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
        label = private[Attribute.LABEL]
        public = _find(session, label, ObjectClass.PUBLIC_KEY)
        algorithm = "unknown"
        if public is not None:
            from cyphrs_cli.ca.issuance import key_algorithm_name

            algorithm = key_algorithm_name(public_key_of(public))
        keys.append(
            {
                "label": label,
                "id": bytes(private[Attribute.ID]).hex(),
                "algorithm": algorithm,
                "attributes": _key_attributes(private),
            }
        )
    return sorted(keys, key=lambda k: k["label"])
