"""Permission checks: the home, its keys and ledger, and the secret files that unlock keys.

cyphrs refuses a home that others can *write* (``config.home``); these checks also find
what others can *read*: encrypted CA keys, the ledger (the register of every identity)
and passphrase/PIN files.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from cyphrs_cli.checks.model import CheckContext, Finding, Severity


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))


def _loose(
    path: Path, *, private: int, check_id: str, what: str, why: str, severity: Severity
) -> Finding | None:
    """A finding when ``path`` grants more than ``private`` (0700 / 0600) to others."""
    mode = _mode(path)
    if mode is None or not mode & 0o077:
        return None
    writable = bool(mode & (stat.S_IWGRP | stat.S_IWOTH))
    return Finding(
        id=check_id,
        severity=Severity.CRITICAL if writable else severity,
        title=f"{what} is {'writable' if writable else 'readable'} by other users"
        f" (mode {mode:04o})",
        why=why,
        fix=f"chmod {private:o} {_quoted(path)}",
        subject=str(path),
    )


def check(context: CheckContext) -> list[Finding]:
    home = context.home
    findings: list[Finding | None] = [
        _loose(
            home.root,
            private=0o700,
            check_id="permissions.home",
            what="the CA home directory",
            why="other users can list and read what the home holds; only the CA's operator"
            " account needs it",
            severity=Severity.MEDIUM,
        ),
        _loose(
            home.keys_dir,
            private=0o700,
            check_id="permissions.keys_dir",
            what="the keys directory",
            why="encrypted CA keys readable by others can be attacked offline, where no"
            " failed-passphrase event is ever recorded",
            severity=Severity.HIGH,
        ),
        _loose(
            home.ledger_path,
            private=0o600,
            check_id="permissions.ledger",
            what="the ledger",
            why="the ledger is the register of every identity and the audit trail; others"
            " must not read or change it",
            severity=Severity.MEDIUM,
        ),
        _loose(
            home.config_path,
            private=0o600,
            check_id="permissions.config",
            what="config.toml",
            why="config.toml names the keys and certificates this CA uses",
            severity=Severity.LOW,
        ),
    ]
    try:
        key_files = sorted(p for p in home.keys_dir.iterdir() if p.is_file())
    except OSError:
        key_files = []
    for key_file in key_files:
        findings.append(
            _loose(
                key_file,
                private=0o600,
                check_id="permissions.key_file",
                what=f"CA key file {key_file.name}",
                why="an encrypted CA key readable by others can be attacked offline,"
                " where no failed-passphrase event is ever recorded",
                severity=Severity.HIGH,
            )
        )
    for secret in _secret_files(context):
        findings.append(
            _loose(
                secret,
                private=0o600,
                check_id="permissions.secret_file",
                what=f"passphrase/PIN file {secret}",
                why="whoever reads it can unlock a CA key and sign certificates",
                severity=Severity.HIGH,
            )
        )
    return [f for f in findings if f is not None]


def _secret_files(context: CheckContext) -> list[Path]:
    """The files given with ``--passphrase-file``, and every ``pin-source=file:`` in the
    home's key URIs."""
    from urllib.parse import unquote

    seen: dict[str, Path] = {}
    for path in context.secret_files:
        seen.setdefault(os.path.abspath(path), path)
    for entry in context.config.authorities.values():
        for part in entry.key_uri.replace("?", "&").replace(";", "&").split("&"):
            name, _, value = part.partition("=")
            if name.lower() == "pin-source" and unquote(value).startswith("file:"):
                path = Path(unquote(value).removeprefix("file:"))
                seen.setdefault(os.path.abspath(path), path)
    return list(seen.values())
