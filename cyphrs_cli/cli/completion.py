"""Shell completion of profile and authority names.

Completion runs on every TAB press, so it reads only the CA home's TOML files (config and
profiles) and the built-in profile names: no ledger, no cryptography.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path


def _home() -> Path | None:
    env = os.environ.get("CYPHRS_HOME")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return None
    return Path(platformdirs.user_data_dir("cyphrs", appauthor=False))


def profile_names() -> list[str]:
    names = {
        entry.name.removesuffix(".toml")
        for entry in resources.files("cyphrs_cli.profiles").joinpath("builtin").iterdir()
        if entry.name.endswith(".toml")
    }
    home = _home()
    if home is not None and (home / "profiles").is_dir():
        names |= {p.stem for p in (home / "profiles").glob("*.toml")}
    return sorted(names)


def authority_names(role: str | None = None) -> list[str]:
    home = _home()
    if home is None:
        return []
    try:
        config = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    authorities = config.get("authorities", {})
    return sorted(n for n, a in authorities.items() if role is None or a.get("role") == role)


def complete_profiles(incomplete: str) -> list[str]:
    return [n for n in profile_names() if n.startswith(incomplete)]


def complete_authorities(incomplete: str) -> list[str]:
    return [n for n in authority_names() if n.startswith(incomplete)]
