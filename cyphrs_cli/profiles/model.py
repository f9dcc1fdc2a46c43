"""The ``Profile`` model and its TOML form.

A profile bounds what one kind of certificate may contain: usages, TTL range, key types and
name rules. Built-in profiles ship as TOML next to this module; a CA home may add or override
them in ``<home>/profiles/<name>.toml``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cyphrs_cli.durations import parse_duration
from cyphrs_cli.errors import InvalidInputError, NotFoundError
from cyphrs_cli.keystore.base import KeySpec

_NAME_RULES = ("required", "optional", "forbidden")
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Profile:
    """One issuance profile; every field has a safe default so small TOML files suffice."""

    name: str
    description: str
    extended_key_usage: tuple[str, ...]
    default_ttl: timedelta
    min_ttl: timedelta
    max_ttl: timedelta
    key_types: tuple[str, ...]
    spiffe: str  # required | optional | forbidden
    dns: str
    ip: str
    require_one_of: tuple[str, ...] = ()
    require_common_name: bool = False
    dns_patterns: tuple[str, ...] = ()  # fnmatch-style ("*.acme.internal"); empty = any
    ip_ranges: tuple[str, ...] = ()  # CIDR; empty = any
    trust_domains: tuple[str, ...] = ()  # empty = the issuer's trust domain
    spiffe_path_patterns: tuple[str, ...] = ()  # fnmatch on the path; empty = any
    issuers: tuple[str, ...] = ()  # authority names allowed to use it; empty = any
    key_usage: tuple[str, ...] = ("digitalSignature",)
    source: str = "builtin"
    # SHA-256 of the TOML text in force: home profiles must match the ledger's record of it.
    sha256: str = ""
    overrides_builtin: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "key_usage": list(self.key_usage),
            "extended_key_usage": list(self.extended_key_usage),
            "default_ttl_seconds": int(self.default_ttl.total_seconds()),
            "min_ttl_seconds": int(self.min_ttl.total_seconds()),
            "max_ttl_seconds": int(self.max_ttl.total_seconds()),
            "key_types": list(self.key_types),
            "names": {
                "spiffe": self.spiffe,
                "dns": self.dns,
                "ip": self.ip,
                "require_one_of": list(self.require_one_of),
                "require_common_name": self.require_common_name,
                "dns_patterns": list(self.dns_patterns),
                "ip_ranges": list(self.ip_ranges),
                "trust_domains": list(self.trust_domains),
                "spiffe_path_patterns": list(self.spiffe_path_patterns),
            },
            "issuers": list(self.issuers),
            "sha256": self.sha256,
            "overrides_builtin": self.overrides_builtin,
        }


_TOP_KEYS = frozenset(
    {
        "description",
        "extended_key_usage",
        "default_ttl",
        "min_ttl",
        "max_ttl",
        "key_types",
        "key_usage",
        "issuers",
        "names",
    }
)
_NAMES_KEYS = frozenset(
    {
        "spiffe",
        "dns",
        "ip",
        "require_one_of",
        "require_common_name",
        "dns_patterns",
        "ip_ranges",
        "trust_domains",
        "spiffe_path_patterns",
    }
)


def profile_from_toml(
    name: str,
    data: dict[str, Any],
    *,
    source: str,
    sha256: str = "",
    overrides_builtin: bool = False,
) -> Profile:
    """Validate a parsed TOML table into a Profile; errors name the file and the field.

    Every field has one type and an unknown key is refused (a misspelt ``max_tll`` must not
    silently leave the default in force); a wrong type or value is exit 3 naming the field.
    """

    def fail(message: str) -> InvalidInputError:
        return InvalidInputError(f"profile {name!r} ({source}): {message}")

    if not _PROFILE_NAME.fullmatch(name):
        raise fail("name must be lowercase letters, digits, '-' or '_'")
    unknown_keys = sorted(set(data) - _TOP_KEYS)
    if unknown_keys:
        raise fail(f"unknown field {unknown_keys[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    names = data.get("names", {})
    if not isinstance(names, dict):
        raise fail("[names] must be a table")
    unknown_names = sorted(set(names) - _NAMES_KEYS)
    if unknown_names:
        raise fail(f"unknown field names.{unknown_names[0]}")

    def text(table: dict[str, Any], key: str, label: str, default: str) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise fail(f"{label} must be a string")
        return value

    def strings(
        table: dict[str, Any], key: str, label: str, default: tuple[str, ...]
    ) -> tuple[str, ...]:
        value = table.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{label} must be a list of strings")
        return tuple(value)

    ttl = {}
    for key in ("default_ttl", "min_ttl", "max_ttl"):
        if key not in data:
            raise fail(f"missing {key}")
        raw = data[key]
        if not isinstance(raw, str):
            raise fail(f'{key} must be a duration string such as "4h"')
        try:
            ttl[key] = parse_duration(raw)
        except InvalidInputError as exc:
            raise fail(f"{key}: {exc.message}") from exc
    if not ttl["min_ttl"] <= ttl["default_ttl"] <= ttl["max_ttl"]:
        raise fail("need min_ttl <= default_ttl <= max_ttl")
    rules = {k: text(names, k, f"names.{k}", "forbidden") for k in ("spiffe", "dns", "ip")}
    for key, rule in rules.items():
        if rule not in _NAME_RULES:
            raise fail(f"names.{key} must be one of {', '.join(_NAME_RULES)}")
    key_types = strings(data, "key_types", "key_types", ("p256", "p384"))
    for key_type in key_types:
        try:
            KeySpec.parse(key_type)
        except InvalidInputError as exc:
            raise fail(f"key_types: {exc.message}") from exc
    ekus = strings(data, "extended_key_usage", "extended_key_usage", ())
    if not ekus:
        raise fail("extended_key_usage must list at least one usage")
    from cyphrs_cli.ca.extensions import LEAF_KEY_USAGES, eku_oids

    try:
        eku_oids(ekus)
    except InvalidInputError as exc:
        raise fail(f"extended_key_usage: {exc.message}") from exc
    if "OCSPSigning" in ekus and len(ekus) > 1:
        # An OCSPSigning certificate gets id-pkix-ocsp-nocheck: it must do nothing else.
        raise fail("extended_key_usage: OCSPSigning must be the only usage")
    key_usage = strings(data, "key_usage", "key_usage", ("digitalSignature",))
    unknown = [u for u in key_usage if u not in LEAF_KEY_USAGES]
    if unknown or "digitalSignature" not in key_usage:
        raise fail(f"key_usage must include digitalSignature and only {', '.join(LEAF_KEY_USAGES)}")
    lists = {
        field_name: strings(names, field_name, f"names.{field_name}", ())
        for field_name in (
            "require_one_of",
            "dns_patterns",
            "ip_ranges",
            "trust_domains",
            "spiffe_path_patterns",
        )
    }
    for cidr in lists["ip_ranges"]:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise fail(f"names.ip_ranges: {cidr!r} is not a network") from exc
    require_cn = names.get("require_common_name", False)
    if not isinstance(require_cn, bool):
        raise fail("names.require_common_name must be true or false")
    return Profile(
        name=name,
        description=text(data, "description", "description", ""),
        extended_key_usage=ekus,
        default_ttl=ttl["default_ttl"],
        min_ttl=ttl["min_ttl"],
        max_ttl=ttl["max_ttl"],
        key_types=key_types,
        spiffe=rules["spiffe"],
        dns=rules["dns"],
        ip=rules["ip"],
        require_one_of=lists["require_one_of"],
        require_common_name=require_cn,
        dns_patterns=lists["dns_patterns"],
        ip_ranges=lists["ip_ranges"],
        trust_domains=lists["trust_domains"],
        spiffe_path_patterns=lists["spiffe_path_patterns"],
        issuers=strings(data, "issuers", "issuers", ()),
        key_usage=key_usage,
        source=source,
        sha256=sha256,
        overrides_builtin=overrides_builtin,
    )


@cache
def _builtin_files() -> dict[str, str]:
    folder = resources.files("cyphrs_cli.profiles").joinpath("builtin")
    return {
        entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


def builtin_profile_names() -> frozenset[str]:
    return frozenset(_builtin_files())


def profile_text_sha256(text: str) -> str:
    """The hash the ledger records for a profile: SHA-256 of its UTF-8 TOML text."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_profile_text(name: str, text: str, *, source: str) -> Profile:
    """One profile from its TOML text, carrying the text's hash and whether it replaces a
    built-in of the same name."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"profile {name!r} ({source}): not valid TOML ({exc})") from exc
    return profile_from_toml(
        name,
        data,
        source=source,
        sha256=profile_text_sha256(text),
        overrides_builtin=source != "builtin" and name in _builtin_files(),
    )


def read_profile_file(path: Path) -> str:
    """The exact text (no newline translation: the recorded hash covers every byte)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text") from exc
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc


def load_profiles(profiles_dir: Path | None) -> dict[str, Profile]:
    """Built-ins overlaid by the home's own profiles (a home file wins over a built-in, but
    issuance refuses it until its text is recorded in the ledger: ``profiles set``)."""
    texts = {name: (text, "builtin") for name, text in _builtin_files().items()}
    if profiles_dir is not None and profiles_dir.is_dir():
        for path in sorted(profiles_dir.glob("*.toml")):
            texts[path.stem] = (read_profile_file(path), str(path))
    return {
        name: parse_profile_text(name, text, source=source)
        for name, (text, source) in texts.items()
    }


def get_profile(profiles_dir: Path | None, name: str) -> Profile:
    profiles = load_profiles(profiles_dir)
    if name not in profiles:
        raise NotFoundError(
            f"unknown profile {name!r}", hint=f"known profiles: {', '.join(sorted(profiles))}"
        )
    return profiles[name]
