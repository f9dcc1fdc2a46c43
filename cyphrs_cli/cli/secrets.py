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


def _resolver(
    file: Path | None, env: str | None, flag: str, *, new: bool, no_input: bool
) -> SecretProvider:
    """Resolve one secret from its file, env var or TTY prompt, once."""
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
                f"no source for the {purpose} and no terminal to ask on",
                hint=f"pass {flag}-file PATH or {flag}-env VAR",
            )
        if not value:
            raise UsageError(f"empty {purpose}")
        cache.append(value)
        return value

    return provide


def secret_provider(
    *,
    file: Path | None,
    env: str | None,
    flag: str,
    new: bool = False,
    no_input: bool = False,
    pin_file: Path | None = None,
    pin_env: str | None = None,
) -> SecretProvider:
    """The secrets one CA key needs: a key-file passphrase, or a token PIN.

    Key stores ask with a purpose string; token PINs ("PIN for token X") come from
    ``--pin-file``/``--pin-env`` (or the URI's pin-source), passphrases from ``flag``'s
    options. Each resolves once, on first use.

    Args:
        file / env: the passphrase's --*-file and --*-env values.
        flag: the option prefix to name in messages, e.g. ``--passphrase``.
        new: ask twice on a TTY (a passphrase being set, not entered).
    """
    passphrase = _resolver(file, env, flag, new=new, no_input=no_input)
    pin = _resolver(pin_file, pin_env, "--pin", new=False, no_input=no_input)

    def provide(purpose: str) -> bytes:
        return pin(purpose) if purpose.startswith("PIN") else passphrase(purpose)

    return provide


def ca_key_secrets(
    passphrase_file: Path | None,
    passphrase_env: str | None,
    pin_file: Path | None,
    pin_env: str | None,
    no_input: bool,
    *,
    new: bool = False,
) -> SecretProvider:
    """The secrets of a CA key from a command's standard options: unlocking an existing
    key, or with ``new`` the passphrase of a key being created (asked twice on a TTY)."""
    return secret_provider(
        file=passphrase_file,
        env=passphrase_env,
        flag="--passphrase",
        new=new,
        no_input=no_input,
        pin_file=pin_file,
        pin_env=pin_env,
    )
