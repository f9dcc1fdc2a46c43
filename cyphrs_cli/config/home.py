"""The CA home: one directory holding config, ledger, encrypted keys, certificates and CRLs.

Resolution order: ``--home`` > ``CYPHRS_HOME`` > the platform's user data directory.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from cyphrs_cli.errors import NotFoundError, StorageError
from cyphrs_cli.fsutil import writable_by_others

HOME_ENV = "CYPHRS_HOME"
#: ``1`` downgrades the refusal of a group/world-writable (or foreign-owned) home to a
#: warning.
INSECURE_HOME_ENV = "CYPHRS_ALLOW_INSECURE_HOME"
#: ``cyphrs --allow-insecure-home``: the same for one invocation (set and reset by the CLI's
#: root command), never through the process environment.
ALLOW_INSECURE_HOME: ContextVar[bool] = ContextVar("cyphrs_allow_insecure_home", default=False)


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

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    def is_initialised(self) -> bool:
        return self.config_path.is_file()

    def require_initialised(self) -> None:
        """Raise a clear not-found error instead of letting a later open create files, and
        refuse a home that others can write (``check_home_permissions``)."""
        if not self.is_initialised():
            raise NotFoundError(
                f"no CA home at {self.root}",
                # Never "run init-root": on a CI runner or an agent host that would invite a
                # second, rogue CA. A new CA is a deliberate act (docs/runbook.md).
                hint="point --home or CYPHRS_HOME at the CA home this machine should use",
            )
        check_home_permissions(self)

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


def check_home_permissions(home: CaHome) -> None:
    """Refuse (exit 8) a home whose directory, config, ledger, keys/, certs/, profiles/ or
    the files in them can be written by another user: whoever can write them decides what
    this CA signs. ``CYPHRS_ALLOW_INSECURE_HOME=1`` makes it a warning on stderr."""
    paths = [home.root, home.config_path, home.ledger_path]
    for folder in (home.keys_dir, home.certs_dir, home.profiles_dir, home.crls_dir):
        paths.append(folder)
        try:
            paths.extend(sorted(folder.iterdir()))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {exc.strerror}") from exc
    problems = [p for p in (writable_by_others(path) for path in paths) if p is not None]
    if not problems:
        return
    first = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    if ALLOW_INSECURE_HOME.get() or os.environ.get(INSECURE_HOME_ENV, "") not in ("", "0"):
        sys.stderr.write(f"cyphrs: warning: insecure CA home: {first}\n")
        return
    raise StorageError(
        f"refusing an insecure CA home: {first}",
        hint="chmod go-w (and chown) it, or accept the risk with --allow-insecure-home"
        f" / {INSECURE_HOME_ENV}=1",
    )


def prepare_home_dir(home: CaHome) -> None:
    """Before a command creates a home: an existing directory must be safe (same rule as
    ``check_home_permissions``) and is made 0700; a new one is made 0700 by the creating
    code."""
    if not home.root.exists():
        return
    check_home_permissions(home)
    # The directory may vanish at any step below: a concurrent creation that failed
    # removes the fresh home it made (``fsutil.HomeLock.abandon_fresh_home``). Then it is
    # a missing home again, which the creating code makes, under the home's lock.
    try:
        adopt = (
            home.root.is_dir()
            and not home.is_initialised()
            and home.root.stat().st_uid == os.getuid()
        )
        if adopt:  # an existing directory becomes a CA home: private, like a new one
            home.root.chmod(0o700)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot make {home.root} private: {exc.strerror}") from exc
