"""Output: data to stdout, talk to stderr; JSON for machines, plain text for pipes, Rich
(imported lazily) only for tables and progress on a terminal.

Every string a human renderer prints goes through ``safe_text.terminal_safe`` here, in one
place (the plain console, Rich's string-to-text step and the error printer), so no command
can forget it: certificate names and ledger details are someone else's text and must not
drive the terminal. ``--json`` output is exact (the encoder escapes control characters
itself).

Settings (``--json``, ``--quiet``, ``--debug``) live in one :class:`Output` per invocation,
kept in the click context's ``meta`` (shared by the root and every subcommand context), so
two invocations in one process -- ``CliRunner`` tests, a future server -- never see each
other's flags. Outside a click invocation a fresh default ``Output`` is used.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.safe_text import terminal_safe

if TYPE_CHECKING:
    from rich.console import Console

META_KEY = "cyphrs.output"


@dataclass
class Output:
    """One invocation's settings (output flags, root --home) and its (lazily made) consoles."""

    json: bool = False
    quiet: bool = False
    debug: bool = False
    #: ``cyphrs --home``: the home for every command whose own --home was not given.
    home: str | None = None
    consoles: dict[bool, PlainConsole] = field(default_factory=dict)


def _current_context() -> Any:
    """The click context of the running invocation, or None (no click imported or running).

    Looked up through ``sys.modules`` so that this module never imports click itself: the
    ``--version`` fast path and core-only callers stay free of it.
    """
    for name in ("typer._click.globals", "click.globals"):
        module = sys.modules.get(name)
        if module is not None:
            ctx = module.get_current_context(silent=True)
            if ctx is not None:
                return ctx
    return None


def output(ctx: Any = None) -> Output:
    """This invocation's ``Output`` (created on first use, in the context's shared meta)."""
    ctx = ctx if ctx is not None else _current_context()
    if ctx is None:
        return Output()
    found = ctx.meta.get(META_KEY)
    if not isinstance(found, Output):
        found = Output()
        ctx.meta[META_KEY] = found
    return found


def set_json_mode(enabled: bool) -> bool:
    """Option callback for ``--json`` (it is eager, so errors after it are JSON too)."""
    state = output()
    state.json = state.json or enabled
    return enabled


def set_quiet(enabled: bool) -> bool:
    state = output()
    state.quiet = state.quiet or enabled
    return enabled


def json_mode() -> bool:
    return output().json


def quiet() -> bool:
    return output().quiet


def debug() -> bool:
    return output().debug


def reset() -> None:
    """Start this invocation's settings afresh (kept for callers; the context is new anyway)."""
    ctx = _current_context()
    if ctx is not None:
        ctx.meta[META_KEY] = Output()


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


class PlainConsole:
    """What commands get from :func:`console`: prints strings with the standard library.

    A string without a style (or any string when the stream is not a terminal, where Rich
    would drop the style anyway) is escaped and written directly; anything else -- a Rich
    table, a styled line on a terminal, a progress display asking for console attributes --
    goes to a Rich console created on first need. Rich costs ~30 ms to import and far more
    per row, and plain/piped output needs none of it.
    """

    def __init__(self, *, stderr: bool, quiet: bool) -> None:
        self._stderr = stderr
        self._quiet = quiet
        self._rich: Console | None = None

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stderr else sys.stdout

    @property
    def rich(self) -> Console:
        if self._rich is None:
            stream = self.stream
            self._rich = _safe_console_class()(
                stderr=self._stderr,
                highlight=False,
                # Certificate names and labels are data: never let them be read as markup.
                markup=False,
                emoji=False,
                soft_wrap=True,
                quiet=self._quiet,
                # Piped output is read by tools and people alike: never cut it at 80 columns.
                width=None if stream.isatty() else 250,
            )
        return self._rich

    def print(
        self, *objects: Any, sep: str = " ", end: str = "\n", style: Any = None, **kwargs: Any
    ) -> None:
        plain = all(isinstance(o, str) for o in objects) and not kwargs
        if plain and (style is None or not self._colour_possible()):
            if not self._quiet:
                stream = self.stream
                stream.write(terminal_safe(sep.join(objects)) + end)
                stream.flush()  # as Rich does: keeps stdout and stderr lines in order
            return
        self.rich.print(*objects, sep=sep, end=end, style=style, **kwargs)

    def _colour_possible(self) -> bool:
        """Rich would style this line: a terminal, or colour forced (FORCE_COLOR)."""
        import os

        return self.stream.isatty() or bool(os.environ.get("FORCE_COLOR"))

    def __getattr__(self, name: str) -> Any:
        # Rich's Progress/Live take a Console and read its attributes.
        return getattr(self.rich, name)


def console(*, stderr: bool = False) -> PlainConsole:
    state = output()
    if stderr not in state.consoles:
        # --quiet silences human output on both streams; --json output bypasses consoles.
        state.consoles[stderr] = PlainConsole(stderr=stderr, quiet=state.quiet)
    return state.consoles[stderr]


def emit_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    """Raw data (PEM) to stdout, unstyled."""
    sys.stdout.write(text)
    sys.stdout.flush()


def note(message: str) -> None:
    """A human remark on stderr; silent under --quiet or --json."""
    state = output()
    if not state.quiet and not state.json:
        sys.stderr.write(terminal_safe(message) + "\n")


def print_error(error: CyphrsError) -> None:
    """One line on stderr, or one JSON object on stderr under --json."""
    if output().json:
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
