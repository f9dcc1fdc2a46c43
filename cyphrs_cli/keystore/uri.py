"""Key URIs: ``file:<path>`` and RFC 7512 ``pkcs11:`` URIs, and the store each selects.

The ``pkcs11:`` parser lives here (pure Python) so a URI is checked -- and a PIN in it
refused -- before python-pkcs11 is imported, which happens only when a token is opened.

RFC 7512 as applied (section numbers of the RFC):

* scheme ``pkcs11`` compared case-insensitively (RFC 3986 sec. 3.1); path attributes
  separated by ``;``, query attributes (after ``?``) by ``&`` (sec. 2.3); no fragment;
* attribute names are ABNF quoted strings, so compared case-insensitively (RFC 5234
  sec. 2.3): ``TOKEN=`` is ``token=``; a name is ``1*(ALPHA / DIGIT / "-" / "_")`` -- a
  percent-encoded name (``pin%2Dvalue``) is malformed, and refused as a PIN when it decodes
  to one;
* values are percent-decoded (``%`` and two hex digits, UTF-8); decoded control characters
  are refused;
* ``pin-value`` is refused in every spelling and in either component, and the refusal never
  repeats the value; so is every attribute cyphrs would not honour (vendor ``x-``
  attributes, ``id``, ``serial`` ...): silently ignoring a selector would use another key
  than the URI names, and an unknown attribute could carry a secret into the ledger;
* an attribute given twice is refused (sec. 2.3 allows each path attribute once; a second
  query attribute would be ambiguous);
* what is stored (ledger events, ``config.toml``, exports) is ``Pkcs11Uri.recorded()``:
  rebuilt from the accepted attributes only, in a fixed order, percent-encoded, and without
  ``pin-source``: where a PIN lives is a secret's location, which the ledger (and so every
  audit export) must not disclose. A ``pin-source`` given when a key is created unlocks the
  token then; later commands take the PIN from ``--pin-file``/``--pin-env``/
  ``CYPHRS_PIN_FILE`` or a prompt.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cyphrs_cli.errors import InvalidInputError, KeyStoreError

if TYPE_CHECKING:
    from cyphrs_cli.keystore.base import KeyStore, SecretProvider


OFFLINE_URI = "offline:"
MODULE_ENV = "CYPHRS_PKCS11_MODULE"

_PATH_ATTRIBUTES = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "object",
        "type",
        "id",
        "slot-manufacturer",
        "slot-description",
        "slot-id",
    }
)
_QUERY_ATTRIBUTES = frozenset({"pin-source", "pin-value", "module-name", "module-path"})
#: What cyphrs honours; everything else RFC 7512 defines (or a vendor adds) is refused.
_USED = {"path": ("token", "object", "type"), "query": ("module-path", "pin-source")}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PIN_HINT = "give the PIN with --pin-file, --pin-env or ?pin-source=file:PATH"


def _pin_refused() -> InvalidInputError:
    # Never quote the URI here: it holds the PIN.
    return InvalidInputError(
        "PKCS#11 URIs with pin-value are refused: a PIN must not sit in a URI (it would be"
        " stored in config.toml and the ledger)",
        hint=_PIN_HINT,
    )


def _percent_decode(raw: str, what: str) -> str:
    if _PCT.search(raw):
        raise InvalidInputError(f"malformed percent-encoding in the PKCS#11 URI {what}")
    try:
        data = bytes(_unquote_bytes(raw))
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"the PKCS#11 URI {what} is not UTF-8 once decoded") from exc


def _unquote_bytes(raw: str) -> bytearray:
    out = bytearray()
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "%":
            out.append(int(raw[index + 1 : index + 3], 16))
            index += 3
        else:
            out += char.encode("utf-8", "surrogatepass")
            index += 1
    return out


def _is_pin_name(raw_name: str) -> bool:
    """Any spelling of pin-value: case, percent-encoding, stray spaces or separators."""
    try:
        decoded = bytes(_unquote_bytes(raw_name)).decode("utf-8", "replace")
    except ValueError:
        decoded = raw_name
    folded = "".join(c for c in unicodedata.normalize("NFKC", decoded).casefold() if c.isalnum())
    return folded == "pinvalue" or (
        "pin" in folded and "value" in folded and len(folded) <= len("xpinvalue") + 2
    )


def _attributes(text: str, separator: str, component: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if text == "":
        return found
    parts = text.split(separator)
    # Look for a PIN first, so no other error message can be the one that quotes it.
    for part in parts:
        if _is_pin_name(part.partition("=")[0]):
            raise _pin_refused()
    for part in parts:
        raw_name, sep, raw_value = part.partition("=")
        if not sep or not _NAME.fullmatch(raw_name):
            raise InvalidInputError(
                f"malformed PKCS#11 URI {component} attribute (expected name=value, the name"
                " made of letters, digits, '-' and '_')"
            )
        name = raw_name.lower()
        if name in found:
            raise InvalidInputError(f"PKCS#11 URI attribute {name} is given twice")
        other = _QUERY_ATTRIBUTES if component == "path" else _PATH_ATTRIBUTES
        if name in other:
            place = "query (after '?')" if component == "path" else "path (before '?')"
            raise InvalidInputError(f"PKCS#11 URI attribute {name} belongs in the {place}")
        if name not in _USED[component]:
            kind = "vendor" if name not in _PATH_ATTRIBUTES | _QUERY_ATTRIBUTES else "standard"
            raise InvalidInputError(
                f"PKCS#11 URI {kind} attribute {name} is not supported",
                hint="cyphrs selects a key by token= and object= (labels) and takes"
                " module-path= and pin-source= in the query",
            )
        value = _percent_decode(raw_value, f"attribute {name}")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in value):
            raise InvalidInputError(f"PKCS#11 URI attribute {name} holds control characters")
        found[name] = value
    return found


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI that cyphrs uses (token and object by label)."""

    token: str
    object: str
    module_path: str | None = None
    pin_source: str | None = None

    @classmethod
    def parse(cls, uri: str, *, need_object: bool = True) -> Pkcs11Uri:
        """Parse per RFC 7512 (see the module docstring); error messages never quote ``uri``."""
        if uri[:7].lower() != "pkcs11:":
            raise InvalidInputError("not a PKCS#11 URI (it must start with pkcs11:)")
        rest = uri[7:]
        path, has_query, query = rest.partition("?")
        # Check both components for a PIN before anything else can fail.
        for text, separator in ((path, ";"), (query, "&")):
            for part in text.split(separator):
                if _is_pin_name(part.partition("=")[0]):
                    raise _pin_refused()
        if "#" in rest:
            raise InvalidInputError("a PKCS#11 URI has no fragment ('#' must be %23)")
        if has_query and "?" in query:
            raise InvalidInputError("a PKCS#11 URI has one query ('?' in a value must be %3F)")
        attrs = _attributes(path, ";", "path")
        params = _attributes(query, "&", "query")
        if attrs.get("type", "private") != "private":
            raise InvalidInputError("a CA key URI names a private key: type= must be private")
        if not attrs.get("token") or (need_object and not attrs.get("object")):
            raise InvalidInputError("a PKCS#11 key URI must name token= and object= (by label)")
        return cls(
            attrs["token"],
            attrs.get("object", ""),
            params.get("module-path"),
            params.get("pin-source"),
        )

    def canonical(self) -> str:
        """The form cyphrs stores: accepted attributes only, fixed order, percent-encoded."""
        path = [f"token={quote(self.token, safe='')}"]
        if self.object:
            path.append(f"object={quote(self.object, safe='')}")
        query = []
        if self.module_path is not None:
            query.append(f"module-path={quote(self.module_path, safe='/:')}")
        if self.pin_source is not None:
            query.append(f"pin-source={quote(self.pin_source, safe='/:')}")
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")

    def recorded(self) -> str:
        """The form the ledger and config.toml keep: ``canonical()`` without pin-source."""
        from dataclasses import replace

        return replace(self, pin_source=None).canonical()

    def module(self) -> str:
        path = self.module_path or os.environ.get(MODULE_ENV)
        if not path:
            raise KeyStoreError(
                "no PKCS#11 module given",
                hint=f"add ?module-path=/path/lib.so to the URI or set {MODULE_ENV}",
            )
        if not Path(path).is_file():
            raise KeyStoreError(f"PKCS#11 module {path} not found")
        return path


def canonical_key_uri(uri: str) -> str:
    """The stored form of a key URI: a ``pkcs11:`` URI re-built, others unchanged."""
    return Pkcs11Uri.parse(uri).canonical() if scheme_of(uri) == "pkcs11" else uri


def scheme_of(uri: str) -> str:
    """``file``, ``pkcs11`` or ``offline`` (a CA whose key lives on another host)."""
    scheme, sep, _ = uri.partition(":")
    if sep and scheme.lower() == "pkcs11":
        return "pkcs11"
    if not sep or scheme not in ("file", "offline"):
        # Not quoted: an unparsable URI may still hold a PIN.
        raise InvalidInputError(
            "unsupported key URI (it must start with file:, pkcs11: or offline:)",
            hint="use file:<path> or pkcs11:token=...;object=...",
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
