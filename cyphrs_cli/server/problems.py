"""Errors as HTTP: one ``application/problem+json`` body (RFC 9457) per failure, carrying
the CLI's slug and exit code so that a client maps an HTTP answer to the same meaning as a
command's exit status. No aiohttp here."""

from __future__ import annotations

from typing import Any

from cyphrs_cli.errors import CyphrsError, ExitCode, PolicyDenied
from cyphrs_cli.server.spec import PROBLEM_TYPE_BASE

#: HTTP status by CLI exit code (API10.md).
STATUS_BY_EXIT = {
    ExitCode.INTERNAL: 500,
    ExitCode.USAGE: 400,
    ExitCode.INVALID_INPUT: 400,
    ExitCode.BAD_SECRET: 401,
    ExitCode.POLICY_DENIED: 403,
    ExitCode.NOT_FOUND: 404,
    ExitCode.CONFLICT: 409,
    ExitCode.STORAGE: 503,
    ExitCode.KEYSTORE: 503,
    ExitCode.CHECK_NOT_MET: 409,
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    405: "Method not allowed",
    413: "Request body too large",
    417: "Expectation failed",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}


class HttpProblem(Exception):
    """A refusal that exists only over HTTP (size, time, rate): its own status and slug."""

    def __init__(
        self, status: int, slug: str, detail: str, exit_code: ExitCode, *, retry_after: int = 0
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.exit_code = exit_code
        self.retry_after = retry_after


def problem(status: int, slug: str, detail: str, exit_code: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "slug": slug,
        "exit_code": int(exit_code),
        **{key: value for key, value in extra.items() if value is not None},
    }


def from_error(error: CyphrsError) -> tuple[int, dict[str, Any]]:
    """The status and body for a use case's error (its message, hint and policy rule)."""
    status = STATUS_BY_EXIT.get(error.exit_code, 500)
    rule = error.rule if isinstance(error, PolicyDenied) else None
    return status, problem(
        status, error.slug, error.message, error.exit_code, hint=error.hint, rule=rule
    )


def from_http(error: HttpProblem) -> tuple[int, dict[str, Any]]:
    return error.status, problem(error.status, error.slug, error.detail, error.exit_code)
