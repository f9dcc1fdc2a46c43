"""Key URIs: the scheme switch and RFC 7512 ``pkcs11:`` parsing (token and object by label)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyphrs_cli.errors import InvalidInputError, KeyStoreError
from cyphrs_cli.keystore.pkcs11 import MODULE_ENV, Pkcs11Uri
from cyphrs_cli.keystore.uri import open_keystore, scheme_of


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("file:keys/root.key.pem", "file"),
        ("file:", "file"),
        ("pkcs11:token=t;object=o", "pkcs11"),
        ("offline:", "offline"),
        ("offline:anything", "offline"),
        ("pkcs11:token=t;object=o?pin-source=file:/run/pin", "pkcs11"),  # later colons
        ("file:c:/keys/root.pem", "file"),
    ],
)
def test_schemes(uri: str, scheme: str) -> None:
    assert scheme_of(uri) == scheme


@pytest.mark.parametrize(
    "uri", ["", "keys/root.pem", "http://x", "pkcs11", "file", "c:\\keys\\root.pem"]
)
def test_unsupported_schemes(uri: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        scheme_of(uri)
    # The URI is never echoed: a mistyped one may carry a PIN.
    assert caught.value.message == (
        "unsupported key URI (it must start with file:, pkcs11: or offline:)"
    )
    assert uri in ("", "pkcs11", "file") or uri not in caught.value.message
    assert caught.value.hint == "use file:<path> or pkcs11:token=...;object=..."


def test_offline_keys_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError) as caught:
        open_keystore("offline:", tmp_path, lambda purpose: b"")
    assert caught.value.message == "this CA's key is offline (kept on another host)"
    assert caught.value.hint == "sign with it on the host that holds the key"


def test_file_uris_open_the_file_store_of_this_home(tmp_path: Path) -> None:
    """The store resolves relative key paths in the home and asks the given provider."""
    from cyphrs_cli.keystore.base import KeySpec
    from cyphrs_cli.keystore.file import FileKeyStore

    asked: list[str] = []

    def provider(purpose: str) -> bytes:
        asked.append(purpose)
        return b"a passphrase long enough"

    store = open_keystore("file:keys/k.pem", tmp_path, provider)
    assert isinstance(store, FileKeyStore)
    assert store.path_of("file:keys/k.pem") == tmp_path / "keys" / "k.pem"
    pending = store.create_key(KeySpec.parse("p256"), "file:keys/k.pem")
    assert asked == ["new passphrase for k.pem"]
    assert pending.info.uri == "file:keys/k.pem"


def test_pkcs11_uris_open_the_token_store(tmp_path: Path) -> None:
    from cyphrs_cli.keystore.pkcs11 import Pkcs11KeyStore

    def provider(purpose: str) -> bytes:
        return b"1234"

    store = open_keystore("pkcs11:token=t;object=o", tmp_path, provider)
    assert isinstance(store, Pkcs11KeyStore)
    assert store._secrets is provider  # the PIN comes from the caller's provider


def test_token_and_object() -> None:
    parsed = Pkcs11Uri.parse("pkcs11:token=issuing;object=agents-ca")
    assert parsed == Pkcs11Uri("issuing", "agents-ca", None, None)


def test_query_attributes() -> None:
    parsed = Pkcs11Uri.parse(
        "pkcs11:token=t;object=o?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
    )
    assert parsed.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert parsed.pin_source == "file:/run/pin"


def test_percent_encoded_values_are_decoded() -> None:
    parsed = Pkcs11Uri.parse(
        "pkcs11:token=My%20Token;object=CA%3bkey?module-path=/opt/lib%20dir/p11.so"
    )
    assert parsed.token == "My Token" and parsed.object == "CA;key"
    assert parsed.module_path == "/opt/lib dir/p11.so"


def test_other_rfc7512_attributes_are_refused_not_ignored() -> None:
    """An attribute cyphrs would not honour could make it use another key than the URI
    names, so it is refused (issue 8, class 10); ``type=private`` is what we use anyway."""
    with pytest.raises(InvalidInputError, match="manufacturer is not supported"):
        Pkcs11Uri.parse("pkcs11:manufacturer=SoftHSM;token=t;type=private;object=o")
    parsed = Pkcs11Uri.parse("pkcs11:token=t;type=private;object=o")
    assert (parsed.token, parsed.object) == ("t", "o")


def test_token_only_uris_for_listing() -> None:
    assert Pkcs11Uri.parse("pkcs11:token=t", need_object=False) == Pkcs11Uri("t", "", None, None)
    with pytest.raises(InvalidInputError, match="must name token= and object="):
        Pkcs11Uri.parse("pkcs11:token=t")


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:object=o",  # no token
        "pkcs11:",
        "pkcs11:?module-path=/x.so",
        "pkcs11:token=t;object",  # attribute without '='
        "file:token=t;object=o",
        "token=t;object=o",
    ],
)
def test_malformed_uris_are_invalid_input(uri: str) -> None:
    with pytest.raises(InvalidInputError):
        Pkcs11Uri.parse(uri)


def test_pin_value_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        Pkcs11Uri.parse("pkcs11:token=t;object=o?pin-value=1234")
    assert "pin-value" in caught.value.message and "1234" not in caught.value.message
    assert caught.value.hint is not None and "--pin-file" in caught.value.hint


def test_module_comes_from_the_uri_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = tmp_path / "lib.so"
    library.write_bytes(b"")
    monkeypatch.delenv(MODULE_ENV, raising=False)
    assert Pkcs11Uri("t", "o", str(library)).module() == str(library)
    with pytest.raises(KeyStoreError, match="no PKCS#11 module given"):
        Pkcs11Uri("t", "o").module()
    monkeypatch.setenv(MODULE_ENV, str(library))
    assert Pkcs11Uri("t", "o").module() == str(library)
    with pytest.raises(KeyStoreError, match="not found"):
        Pkcs11Uri("t", "o", str(tmp_path / "missing.so")).module()


def test_module_refusals_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODULE_ENV, raising=False)
    with pytest.raises(KeyStoreError) as caught:
        Pkcs11Uri("t", "o").module()
    assert caught.value.message == "no PKCS#11 module given"
    assert caught.value.hint == (
        "add ?module-path=/path/lib.so to the URI or set CYPHRS_PKCS11_MODULE"
    )
    monkeypatch.setenv(MODULE_ENV, "")
    with pytest.raises(KeyStoreError, match="no PKCS#11 module given"):
        Pkcs11Uri("t", "o").module()
    missing = tmp_path / "missing.so"
    monkeypatch.setenv(MODULE_ENV, str(missing))
    with pytest.raises(KeyStoreError) as caught:
        Pkcs11Uri("t", "o").module()
    assert caught.value.message == f"PKCS#11 module {missing} not found"
    # A directory is not a module; the URI's path wins over the environment.
    with pytest.raises(KeyStoreError, match="not found"):
        Pkcs11Uri("t", "o", str(tmp_path)).module()
    library = tmp_path / "lib.so"
    library.write_bytes(b"")
    assert Pkcs11Uri("t", "o", str(library)).module() == str(library)
