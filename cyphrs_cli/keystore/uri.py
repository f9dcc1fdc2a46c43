"""Key URIs: ``file:<path>`` and RFC 7512 ``pkcs11:`` URIs, and the store each selects.

python-pkcs11 is imported only when a ``pkcs11:`` URI is actually opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from cyphrs_cli.keystore.base import KeyStore, SecretProvider


OFFLINE_URI = "offline:"


def scheme_of(uri: str) -> str:
    """``file``, ``pkcs11`` or ``offline`` (a CA whose key lives on another host)."""
    scheme, sep, _ = uri.partition(":")
    if not sep or scheme not in ("file", "pkcs11", "offline"):
        raise InvalidInputError(
            f"unsupported key URI {uri!r}", hint="use file:<path> or pkcs11:token=...;object=..."
        )
    return scheme


def open_keystore(uri: str, home_root: Path, secrets: SecretProvider) -> KeyStore:
    """The key store that serves ``uri``."""
    scheme = scheme_of(uri)
    if scheme == "offline":
        from cyphrs_cli.errors import KeyStoreError

        raise KeyStoreError(
            "this CA's key is offline (kept on another host)",
            hint="sign with it on the host that holds the key",
        )
    if scheme == "file":
        from cyphrs_cli.keystore.file import FileKeyStore

        return FileKeyStore(home_root, secrets)
    from cyphrs_cli.keystore.pkcs11 import Pkcs11KeyStore

    return Pkcs11KeyStore(secrets)
