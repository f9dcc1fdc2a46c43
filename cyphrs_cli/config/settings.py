"""``config.toml``: the registry of authorities in a CA home and per-home settings.

Read with ``tomllib`` and written with ``tomli-w`` (atomically), so completion can list
authority names without opening the ledger. Its trust facts (role, key URI, certificate,
parent, trust domain, claims OID) are a cache of the ledger: ``config.trust`` refuses to
sign when they differ. Only conveniences such as ``default_issuer`` are config's own.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import InvalidInputError, NotFoundError
from cyphrs_cli.fsutil import PRIVATE_FILE, atomic_write

CONFIG_VERSION = 1


@dataclass(frozen=True)
class AuthorityEntry:
    """How to use one CA of this home: its role, key URI and certificate file."""

    name: str
    role: str  # "root" | "intermediate"
    key_uri: str
    cert_path: str  # relative to the home
    parent: str | None = None
    trust_domain: str | None = None

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "key": self.key_uri, "cert": self.cert_path}
        if self.parent:
            data["parent"] = self.parent
        if self.trust_domain:
            data["trust_domain"] = self.trust_domain
        return data


@dataclass
class HomeConfig:
    """Everything ``config.toml`` holds; unknown sections are preserved on save."""

    authorities: dict[str, AuthorityEntry] = field(default_factory=dict)
    default_issuer: str | None = None
    # A cache of the ledger's claims OID (``config claims-oid`` writes both); None = unset.
    claims_oid: str | None = None
    # A cache of the ledger's public URL (``config public-url`` writes both); None = unset.
    public_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> AuthorityEntry | None:
        for entry in self.authorities.values():
            if entry.role == "root":
                return entry
        return None

    def issuer(self, name: str | None) -> AuthorityEntry:
        """The named intermediate, else the default one, else the only one."""
        if name is not None:
            entry = self.authorities.get(name)
            if entry is None:
                known = ", ".join(sorted(self.authorities)) or "none"
                raise NotFoundError(f"no authority named {name!r} (known: {known})")
            return entry
        if self.default_issuer and self.default_issuer in self.authorities:
            return self.authorities[self.default_issuer]
        intermediates = [e for e in self.authorities.values() if e.role == "intermediate"]
        if len(intermediates) == 1:
            return intermediates[0]
        if not intermediates:
            raise NotFoundError(
                "this CA home has no intermediate to issue from",
                hint="run 'cyphrs create-intermediate'",
            )
        names = ", ".join(sorted(e.name for e in intermediates))
        raise NotFoundError(f"several intermediates ({names}); choose one with --issuer")


def load_config(home: CaHome) -> HomeConfig:
    home.require_initialised()
    try:
        data = tomllib.loads(home.config_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{home.config_path}: not valid TOML ({exc})") from exc
    config = HomeConfig()
    ca = data.pop("ca", {})
    config.default_issuer = ca.get("default_issuer")
    config.claims_oid = ca.get("claims_oid")
    config.public_url = ca.get("public_url")
    for name, raw in data.pop("authorities", {}).items():
        try:
            config.authorities[name] = AuthorityEntry(
                name=name,
                role=raw["role"],
                key_uri=raw["key"],
                cert_path=raw["cert"],
                parent=raw.get("parent"),
                trust_domain=raw.get("trust_domain"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"{home.config_path}: authority {name!r} lacks {exc}") from exc
    config.extra = data
    return config


def save_config(home: CaHome, config: HomeConfig) -> None:
    import tomli_w

    ca: dict[str, Any] = {"config_version": CONFIG_VERSION}
    if config.default_issuer:
        ca["default_issuer"] = config.default_issuer
    if config.claims_oid:
        ca["claims_oid"] = config.claims_oid
    if config.public_url:
        ca["public_url"] = config.public_url
    document: dict[str, Any] = {"ca": ca, **config.extra}
    document["authorities"] = {n: e.to_toml() for n, e in sorted(config.authorities.items())}
    atomic_write(home.config_path, tomli_w.dumps(document).encode(), mode=PRIVATE_FILE)
