"""Output: data to stdout, talk to stderr; JSON for machines, Rich (created lazily) for people.

Rich honours ``NO_COLOR`` itself; we also drop colour when the stream is not a terminal.
Every string a human renderer prints goes through ``safe_text.terminal_safe`` here, in one
place (the console's string-to-text step and the error printer), so no command can forget
it: certificate names and ledger details are someone else's text and must not drive the
terminal. ``--json`` output is exact (the encoder escapes control characters itself).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.safe_text import terminal_safe

if TYPE_CHECKING:
    from rich.console import Console

_state = {"json": False, "quiet": False}
_consoles: dict[bool, Console] = {}


def set_json_mode(enabled: bool) -> bool:
    _state["json"] = _state["json"] or enabled
    return enabled


def set_quiet(enabled: bool) -> bool:
    _state["quiet"] = _state["quiet"] or enabled
    return enabled


def json_mode() -> bool:
    return _state["json"]


def quiet() -> bool:
    return _state["quiet"]


def reset() -> None:
    """Forget per-invocation state (in-process test runs invoke the app many times)."""
    _state["json"] = False
    _state["quiet"] = False
    _consoles.clear()


def _safe_console_class() -> type[Console]:
    """A Rich console whose every printed string (also table cells) is escaped first.

    ``render_str`` is where Rich turns any ``str`` -- a ``print`` argument, a table cell, a
    progress description -- into styled text, so overriding it covers all of them.
    """
    from rich.console import Console

    class SafeConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(terminal_safe(text), **kwargs)

    return SafeConsole


def console(*, stderr: bool = False) -> Console:
    if stderr not in _consoles:
        # --quiet silences human output on both streams; --json output bypasses Rich.
        stream = sys.stderr if stderr else sys.stdout
        _consoles[stderr] = _safe_console_class()(
            stderr=stderr,
            highlight=False,
            # Certificate names and labels are data: never let them be read as Rich markup.
            markup=False,
            soft_wrap=True,
            quiet=_state["quiet"],
            # Piped output is read by tools and people alike: never cut it at 80 columns.
            width=None if stream.isatty() else 250,
        )
    return _consoles[stderr]


def emit_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    """Raw data (PEM) to stdout, unstyled."""
    sys.stdout.write(text)
    sys.stdout.flush()


def note(message: str) -> None:
    """A human remark on stderr; silent under --quiet or --json."""
    if not _state["quiet"] and not _state["json"]:
        console(stderr=True).print(message)


def print_error(error: CyphrsError) -> None:
    """One line on stderr, or one JSON object on stderr under --json."""
    if _state["json"]:
        body: dict[str, Any] = {
            "schema": "cyphrs.error/v1",
            "error": {
                "code": int(error.exit_code),
                "slug": error.slug,
                "message": error.message,
                "hint": error.hint,
            },
        }
        rule = getattr(error, "rule", None)
        if rule is not None:
            body["error"]["rule"] = rule
        sys.stderr.write(json.dumps(body, ensure_ascii=False) + "\n")
        return
    hint = f" (hint: {error.hint})" if error.hint else ""
    # Messages quote what the user (or a file, or the ledger) gave: escape, keep one line.
    sys.stderr.write(terminal_safe(f"cyphrs: error: {error.message}{hint}") + "\n")


def print_raw_error(text: str) -> None:
    """Text from the argument parser (usage, hint, message), escaped line by line."""
    # split("\n"), not splitlines(): the latter would also break at U+2028, U+0085 ...
    # which must be escaped, not obeyed.
    for line in text.split("\n"):
        sys.stderr.write(terminal_safe(line) + "\n")
