"""The error tree: every failure a user can cause maps to one class, one exit code, one slug.

The CLI catches ``CyphrsError`` in exactly one place and turns it into a single stderr
line (or one JSON object) and the class's exit code. Anything else is a bug (exit 1).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; scripts depend on these, so they never change meaning."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    INVALID_INPUT = 3
    BAD_SECRET = 4
    POLICY_DENIED = 5
    NOT_FOUND = 6
    CONFLICT = 7
    STORAGE = 8
    KEYSTORE = 9
    CHECK_NOT_MET = 10


EXIT_CODE_HELP = """\
Exit codes: 0 ok · 1 internal error · 2 usage · 3 invalid input · 4 wrong passphrase/PIN ·
5 policy denied · 6 not found · 7 conflict · 8 ledger/storage · 9 key store/HSM ·
10 check not met · 141 stdout's reader gone."""


class CyphrsError(Exception):
    """Base of every expected failure.

    Args:
        message: one line saying what happened, in the user's terms.
        hint: optional next step ("use --force to overwrite").
    """

    exit_code: ExitCode = ExitCode.INTERNAL
    slug: str = "internal"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CyphrsError):
    """Flags that contradict each other or a missing secret source."""

    exit_code = ExitCode.USAGE
    slug = "usage"


class InvalidInputError(CyphrsError):
    """Malformed PEM/CSR/TOML, bad names, bad durations."""

    exit_code = ExitCode.INVALID_INPUT
    slug = "invalid-input"


class SecretError(CyphrsError):
    """Wrong passphrase or PIN."""

    exit_code = ExitCode.BAD_SECRET
    slug = "bad-secret"


class PolicyDenied(CyphrsError):
    """A request that a profile or issuer policy refuses; ``rule`` names the rule."""

    exit_code = ExitCode.POLICY_DENIED
    slug = "policy-denied"

    def __init__(self, message: str, *, rule: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule


class NotFoundError(CyphrsError):
    """Unknown serial, authority, profile, file or CA home."""

    exit_code = ExitCode.NOT_FOUND
    slug = "not-found"


class ConflictError(CyphrsError):
    """Something already exists or is already in the requested state."""

    exit_code = ExitCode.CONFLICT
    slug = "conflict"


class StorageError(CyphrsError):
    """The ledger or the file system refused a write."""

    exit_code = ExitCode.STORAGE
    slug = "storage"


class KeyStoreError(CyphrsError):
    """The key store (file or PKCS#11 token) is unavailable or lacks a capability."""

    exit_code = ExitCode.KEYSTORE
    slug = "keystore"


class CheckNotMet(CyphrsError):
    """A predicate command's answer is "no" (e.g. renewal not yet due)."""

    exit_code = ExitCode.CHECK_NOT_MET
    slug = "check-not-met"
