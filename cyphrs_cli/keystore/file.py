"""Encrypted PKCS#8 key files: passphrase-protected, mode 0600, written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SecretError,
    StorageError,
    UsageError,
)
from cyphrs_cli.fsutil import PRIVATE_FILE, ensure_private_dir, remove_own_file, write_new_file
from cyphrs_cli.keystore.base import KeyInfo, KeySpec, SecretProvider

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
    )

MIN_PASSPHRASE_BYTES = 8


def encrypt_private_key(key: CertificateIssuerPrivateKeyTypes, passphrase: bytes) -> bytes:
    """PEM PKCS#8 under the best encryption the OpenSSL build offers."""
    from cryptography.hazmat.primitives import serialization

    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise InvalidInputError(
            f"passphrase too short: at least {MIN_PASSPHRASE_BYTES} characters are required"
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def decrypt_private_key(
    data: bytes, passphrase: bytes, *, source: str
) -> CertificateIssuerPrivateKeyTypes:
    """Load an encrypted PEM key; a wrong passphrase is exit 4, garbage is exit 3."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if b"ENCRYPTED PRIVATE KEY" not in data:
        raise InvalidInputError(f"{source}: not an encrypted PKCS#8 PEM key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError as exc:
        # cryptography reports a wrong passphrase as ValueError("Bad decrypt...").
        raise SecretError(f"wrong passphrase for {source}") from exc
    except TypeError as exc:
        raise InvalidInputError(f"{source}: unreadable key ({exc})") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise InvalidInputError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def spec_of(key: CertificateIssuerPrivateKeyTypes) -> str:
    """The KeySpec name of a software or token key."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "p256", "secp384r1": "p384"}.get(key.curve.name, key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa{key.key_size}"
    return "ed25519"


@dataclass
class PendingFileKey:
    """A software key held in memory until the ledger has recorded its certificate.

    ``commit`` creates the file exclusively (never replacing one, even another process's
    key written a moment earlier) and remembers which inode it made; ``discard`` removes
    that file only, so a failed creation can never delete a key it did not write.

    The passphrase and the key stay out of ``repr()``: a traceback under ``--debug``, a log
    line or an assertion message must never show them.
    """

    path: Path
    uri: str
    passphrase: bytes = field(repr=False)
    signer: CertificateIssuerPrivateKeyTypes = field(repr=False)
    _encrypted: bytes = field(repr=False)
    _written: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def info(self) -> KeyInfo:
        return KeyInfo(self.uri, "file", spec_of(self.signer), "software", {})

    def commit(self) -> None:
        ensure_private_dir(self.path.parent)
        try:
            self._written = write_new_file(self.path, self._encrypted, mode=PRIVATE_FILE)
        except ConflictError as exc:
            raise ConflictError(
                f"key file {self.path} appeared meanwhile; refusing to overwrite a key"
            ) from exc

    def discard(self) -> None:
        """Remove the file this object wrote, if any; never a file someone else made."""
        remove_own_file(self.path, self._written)
        self._written = None


class FileKeyStore:
    """``file:`` URIs, relative to the CA home unless absolute."""

    def __init__(self, home_root: Path, secrets: SecretProvider) -> None:
        self._home_root = home_root
        self._secrets = secrets

    def path_of(self, uri: str) -> Path:
        path = Path(uri.removeprefix("file:"))
        return path if path.is_absolute() else self._home_root / path

    def create_key(self, spec: KeySpec, uri: str) -> PendingFileKey:
        path = self.path_of(uri)
        if path.exists():
            raise ConflictError(f"key file {path} already exists; refusing to overwrite a key")
        passphrase = self._secrets(f"new passphrase for {path.name}")
        key = spec.generate_software_key()
        encrypted = encrypt_private_key(key, passphrase)
        return PendingFileKey(path, uri, passphrase, key, encrypted)

    def adopt_key(self, uri: str) -> PendingFileKey:
        raise UsageError(
            "--existing-key adopts PKCS#11 token keys; file keys are always generated here"
        )

    def open_signer(self, uri: str) -> CertificateIssuerPrivateKeyTypes:
        path = self.path_of(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"key file {path} is missing") from exc
        except OSError as exc:
            raise StorageError(f"cannot read key file {path}: {exc.strerror}") from exc
        return decrypt_private_key(
            data, self._secrets(f"passphrase for {path.name}"), source=str(path)
        )
