"""The CA home: one directory holding config, ledger, encrypted keys, certificates and CRLs.

Resolution order: ``--home`` > ``CYPHRS_HOME`` > the platform's user data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cyphrs_cli.errors import NotFoundError

HOME_ENV = "CYPHRS_HOME"


@dataclass(frozen=True)
class CaHome:
    """Paths inside one CA home; creating the object touches nothing on disk."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite3"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def crls_dir(self) -> Path:
        return self.root / "crls"

    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    def is_initialised(self) -> bool:
        return self.config_path.is_file()

    def require_initialised(self) -> None:
        """Raise a clear not-found error instead of letting a later open create files."""
        if not self.is_initialised():
            raise NotFoundError(
                f"no CA home at {self.root}",
                hint="run 'cyphrs init-root' first, or point --home / CYPHRS_HOME at one",
            )

    def resolve(self, relative: str) -> Path:
        """Turn a home-relative path from config into an absolute one."""
        path = Path(relative)
        return path if path.is_absolute() else self.root / path


def resolve_home(flag: str | None) -> CaHome:
    """Apply the documented precedence; platformdirs is imported only when needed."""
    if flag:
        return CaHome(Path(flag).expanduser().absolute())
    env = os.environ.get(HOME_ENV)
    if env:
        return CaHome(Path(env).expanduser().absolute())
    import platformdirs

    return CaHome(Path(platformdirs.user_data_dir("cyphrs", appauthor=False)))
