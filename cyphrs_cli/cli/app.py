"""The ``cyphrs`` entry point: answers ``cyphrs --version`` before anything heavy loads.

``--version`` is asked by scripts and package managers in loops; it needs only the version
string, so it is answered with the standard library alone (no typer, click or Rich). Every
other invocation imports the Typer app (``cyphrs_cli.cli.root``) and runs it. ``app`` is
still importable from here (tests, ``scripts/gen_docs.py``); it is loaded on first access.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

#: The options that may come before ``--version`` without changing its answer.
_VERSION_ARGS = (["--version"],)


def __getattr__(name: str) -> Any:
    if name == "app":
        from cyphrs_cli.cli.root import app

        return app
    raise AttributeError(name)


def main() -> None:
    _open_standard_streams()
    try:
        _run()
    except BrokenPipeError:  # --version, completion: outside the commands' own handler
        if not stdout_reader_gone():
            raise
        leave_for_gone_reader()
    except SystemExit as done:
        # Typer's own EPIPE path (``--help`` into a closed pipe) exits 1 after wrapping
        # stdout; a reader that went away is 141 wherever it is noticed.
        wrapped = type(sys.stdout).__name__ == "PacifyFlushWrapper"
        if done.code == 1 and wrapped and stdout_reader_gone():
            leave_for_gone_reader()
        raise


def _run() -> None:
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


#: Exit code when stdout's reader went away (EPIPE): that of a process killed by SIGPIPE.
#: Not an ``ExitCode``: those are the codes of error classes, each with an HTTP status
#: (``server.problems``); this one is no error of the command.
EXIT_STDOUT_READER_GONE = 141


def stdout_reader_gone() -> bool:
    """Whether descriptor 1 is a pipe or socket whose reading end is closed (POLLERR):
    the broken pipe was stdout, not some other pipe or socket of the command."""
    import select

    poller = select.poll()
    poller.register(1, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def leave_for_gone_reader() -> NoReturn:
    """``cyphrs list | head``: the reader has what it wanted. Exit as a process killed by
    SIGPIPE would (128 + 13), quietly, with the work done; stdout goes to /dev/null so
    that the flush at exit does not fail again."""
    import os

    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    raise SystemExit(EXIT_STDOUT_READER_GONE)


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
            # Inherited, like any standard stream: a worker or a hook started from here
            # must not find it closed either (os.open's descriptors are close-on-exec).
            os.set_inheritable(fd, True)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


def _completing() -> bool:
    import os

    return "_CYPHRS_COMPLETE" in os.environ
