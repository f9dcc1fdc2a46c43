"""Where passphrases and PINs come from: a file, an environment variable, or a TTY prompt.

Never from argv (visible in ``ps``), and never a prompt without a terminal: CI jobs must fail
fast with a clear message instead of hanging.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cyphrs_cli.errors import NotFoundError, UsageError
from cyphrs_cli.keystore.base import SecretProvider


def interactive_allowed(no_input: bool) -> bool:
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return not no_input and not ci and sys.stdin.isatty() and sys.stderr.isatty()


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"secret file {path} does not exist") from exc
    except OSError as exc:
        raise UsageError(f"cannot read secret file {path}: {exc.strerror}") from exc
    # One trailing newline is an artefact of `echo > file`, not part of the secret.
    return data[:-1] if data.endswith(b"\n") else data


def secret_provider(
    *,
    file: Path | None,
    env: str | None,
    flag: str,
    new: bool = False,
    no_input: bool = False,
) -> SecretProvider:
    """A provider that resolves the secret once, on first use, and remembers it.

    Args:
        file / env: the --*-file and --*-env values for this secret.
        flag: the option prefix to name in messages, e.g. ``--passphrase``.
        new: ask twice on a TTY (a secret being set, not entered).
    """
    if file is not None and env is not None:
        raise UsageError(f"give {flag}-file or {flag}-env, not both")
    cache: list[bytes] = []

    def provide(purpose: str) -> bytes:
        if cache:
            return cache[0]
        if file is not None:
            value = _read_file(file)
        elif env is not None:
            if env not in os.environ:
                raise UsageError(f"environment variable {env} (from {flag}-env) is not set")
            value = os.environ[env].encode()
        elif interactive_allowed(no_input):
            import getpass

            value = getpass.getpass(f"{purpose}: ").encode()
            if new and getpass.getpass(f"{purpose} (again): ").encode() != value:
                raise UsageError("the two entries differ")
        else:
            raise UsageError(
                f"no {purpose.split(' for ')[0]} source and no terminal to ask on",
                hint=f"pass {flag}-file PATH or {flag}-env VAR",
            )
        if not value:
            raise UsageError(f"empty {purpose}")
        cache.append(value)
        return value

    return provide
