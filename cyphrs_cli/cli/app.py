"""The ``cyphrs`` entry point: answers ``cyphrs --version`` before anything heavy loads.

``--version`` is asked by scripts and package managers in loops; it needs only the version
string, so it is answered with the standard library alone (no typer, click or Rich). Every
other invocation imports the Typer app (``cyphrs_cli.cli.root``) and runs it. ``app`` is
still importable from here (tests, ``scripts/gen_docs.py``); it is loaded on first access.
"""

from __future__ import annotations

import sys
from typing import Any

#: The options that may come before ``--version`` without changing its answer.
_VERSION_ARGS = (["--version"],)


def __getattr__(name: str) -> Any:
    if name == "app":
        from cyphrs_cli.cli.root import app

        return app
    raise AttributeError(name)


def main() -> None:
    _open_standard_streams()
    # Only an exact `cyphrs --version` outside completion takes the fast path: anything
    # else (other flags, completion requests) goes through the parser, unchanged.
    if sys.argv[1:] in _VERSION_ARGS and not _completing():
        from cyphrs_cli import __version__

        sys.stdout.write(f"cyphrs {__version__}\n")
        sys.stdout.flush()
        return
    from cyphrs_cli.cli.root import app

    # A fixed program name keeps completion (_CYPHRS_COMPLETE) and help identical whether
    # we run as the console script or as ``python -m cyphrs_cli``.
    app(prog_name="cyphrs")


def _open_standard_streams() -> None:
    """Give a closed stdin, stdout or stderr (``cyphrs ... >&-``) ``/dev/null``.

    Python leaves ``sys.stdout`` None for a closed descriptor 1, so the first output was
    an internal error (exit 1) after the work was done and recorded. Worse, the next file
    this process opened -- a key being written, a ledger -- would get descriptor 1 or 2,
    where a child process or a C library writing "to stdout" would land in it. Closing a
    stream means "discard it", as ``>/dev/null`` does.
    """
    import os

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free descriptor is this one, unless 0..fd-1 were
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


def _completing() -> bool:
    import os

    return "_CYPHRS_COMPLETE" in os.environ
