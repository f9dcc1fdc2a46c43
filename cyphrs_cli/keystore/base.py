"""The key-store contract: generate a key, open a signer for it, never expose key material.

Signers are cryptography private-key objects (software keys, or PKCS#11-backed subclasses
whose ``sign()`` calls the token), so every certificate/CRL builder works with either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
    )

#: Asks the user (file, env var or TTY) for a secret; the argument says what it unlocks.
SecretProvider = Callable[[str], bytes]

_SPECS: dict[str, tuple[str, str | None, int | None]] = {
    "p256": ("ec", "P-256", None),
    "p384": ("ec", "P-384", None),
    "rsa2048": ("rsa", None, 2048),
    "rsa3072": ("rsa", None, 3072),
    "rsa4096": ("rsa", None, 4096),
    "ed25519": ("ed25519", None, None),
}
KEY_TYPES = tuple(_SPECS)


def signs_in_process(key: CertificateIssuerPrivateKeyTypes) -> bool:
    """Whether ``key`` signs in this process's memory (a software key: tens of
    microseconds, never waits), as opposed to a PKCS#11 token key, whose every signature
    is a session call that may wait on a device or a network HSM. The server signs on its
    event loop only with the former (``service.enrollment.enroll_online``)."""
    return not getattr(key, "signs_on_token", False)


@dataclass(frozen=True)
class KeySpec:
    """A key type by its short name (``p256``, ``rsa3072``, ``ed25519`` ...)."""

    name: str
    kind: str  # "ec" | "rsa" | "ed25519"
    curve: str | None = None
    bits: int | None = None

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        key = text.strip().lower().replace("-", "").replace("_", "")
        aliases = {"ecp256": "p256", "ecp384": "p384", "secp256r1": "p256", "secp384r1": "p384"}
        key = aliases.get(key, key)
        if key not in _SPECS:
            raise InvalidInputError(
                f"unknown key type {text!r}", hint=f"choose one of {', '.join(KEY_TYPES)}"
            )
        kind, curve, bits = _SPECS[key]
        return cls(name=key, kind=kind, curve=curve, bits=bits)

    def generate_software_key(self) -> CertificateIssuerPrivateKeyTypes:
        """A fresh key from the OS CSPRNG via OpenSSL (RSA e=65537)."""
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        if self.kind == "ec":
            curve = ec.SECP256R1() if self.curve == "P-256" else ec.SECP384R1()
            return ec.generate_private_key(curve)
        if self.kind == "rsa":
            assert self.bits is not None
            return rsa.generate_private_key(public_exponent=65537, key_size=self.bits)
        return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class KeyInfo:
    """What the ledger and audit exports record about a CA key."""

    uri: str
    storage: str  # "file" | "pkcs11"
    algorithm: str  # KeySpec name
    generated_in: str  # "software" | "hsm" | "imported"
    attributes: dict[str, bool]


class PendingKey(Protocol):
    """A newly generated key whose persistence waits for the ledger commit.

    ``commit`` makes it durable (writes the encrypted file); ``discard`` undoes a
    generation that must not survive (destroys a token object).
    """

    @property
    def signer(self) -> CertificateIssuerPrivateKeyTypes: ...

    @property
    def info(self) -> KeyInfo: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class KeyStore(Protocol):
    """A backend chosen by URI scheme; see ``keystore.open_keystore``."""

    def create_key(self, spec: KeySpec, uri: str) -> PendingKey: ...

    def adopt_key(self, uri: str) -> PendingKey: ...

    def open_signer(self, uri: str) -> CertificateIssuerPrivateKeyTypes: ...
