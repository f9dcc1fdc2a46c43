"""Objects that hold a passphrase or a private key never show it in repr() (tracebacks, logs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cyphrs_cli.ca.delivery import PemBundle
from cyphrs_cli.keystore.base import KeySpec
from cyphrs_cli.keystore.file import FileKeyStore, PendingFileKey

PASSPHRASE = b"correct horse battery staple 42"


def test_pending_file_key_repr_hides_passphrase_and_key(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, lambda _purpose: PASSPHRASE)
    pending = store.create_key(KeySpec.parse("p256"), "file:keys/ca.key.pem")
    text = repr(pending) + str(pending)
    assert PASSPHRASE.decode() not in text
    assert "ENCRYPTED PRIVATE KEY" not in text
    assert "ca.key.pem" in text  # still useful for debugging


def test_pem_bundle_repr_hides_private_key() -> None:
    bundle = PemBundle("CERT", "CHAIN", "ROOT", "-----BEGIN PRIVATE KEY-----\nMIGH\n")
    assert "PRIVATE KEY" not in repr(bundle)
    assert "MIGH" not in repr(bundle)


def test_pending_token_key_repr_hides_token_objects() -> None:
    from cyphrs_cli.keystore.pkcs11 import PendingTokenKey

    class Handle:
        def __repr__(self) -> str:
            return "<token object handle 7>"

    pending = PendingTokenKey("pkcs11:token=t;object=o", Handle(), Handle(), Handle())
    assert "handle" not in repr(pending)


def test_every_secret_field_is_kept_out_of_repr() -> None:
    """A new secret-bearing field must opt out of repr too: fail loudly if one does not."""
    for cls, names in (
        (PendingFileKey, {"passphrase", "signer", "_encrypted"}),
        (PemBundle, {"private_key"}),
    ):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            assert fields[name].repr is False, f"{cls.__name__}.{name} shows in repr()"
