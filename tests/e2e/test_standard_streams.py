"""Closed or broken standard streams, on real ``cyphrs`` processes.

A command whose stdout was closed (``>&-``) or whose reader went away (``| head``) has
usually done its work already: the certificate is recorded, the files are written. It
used to end with "internal error" (exit 1): ``sys.stdout`` is None for a closed
descriptor, and a broken pipe raised from the first write. A closed stream is now
``/dev/null``; a reader gone is exit 141 (what SIGPIPE would give), quietly.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cyphrs_cli.client.api import CaClient
from tests.helpers import Hierarchy, cli, tool
from tests.server_process import kill_worker


def _run_closing(closed: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``cyphrs ARGS`` with the shell redirections ``closed`` (e.g. ``>&- 2>&-``)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$0" "$@" {closed}', tool("cyphrs"), *args],
        capture_output=True,
        env={**os.environ, "CI": "true"},
        timeout=120,
        check=False,
    )


def _certificates(h: Hierarchy) -> int:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM certificates").fetchone()[0])


def test_issue_with_every_standard_stream_closed_records_and_exits_0(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """stdin, stdout and stderr closed: the files are written, the certificate recorded,
    and no file of the run took descriptor 0, 1 or 2 (the ledger still verifies)."""
    h = fresh_hierarchy
    before = _certificates(h)
    done = _run_closing(
        "<&- >&- 2>&-",
        "issue", "agent", "--workflow", "w", "--json", "--out-dir", str(tmp_path / "a"),
        "--home", str(h.home), "--passphrase-file", str(h.inter_pass),
    )  # fmt: skip
    assert done.returncode == 0
    assert _certificates(h) == before + 1
    assert (tmp_path / "a" / "key.pem").stat().st_mode & 0o777 == 0o600
    verified = cli("audit", "verify", "--json", "--home", str(h.home))
    assert verified.exit_code == 0, verified.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--json"),
        ("--version",),  # answered before the parser
        ("--help",),  # Typer's own EPIPE handling
        ("list", "--help"),
        ("completion",),  # the shell's completion request
    ],
)
def test_a_pipe_without_reader_exits_141_quietly(
    fresh_hierarchy: Hierarchy, args: tuple[str, ...]
) -> None:
    h = fresh_hierarchy
    assert h.issue("agent", "--workflow", "w", "--json").exit_code == 0
    env = {**os.environ, "CI": "true", "CYPHRS_HOME": str(h.home)}
    if args == ("completion",):
        args = ()
        env |= {"_CYPHRS_COMPLETE": "complete_bash", "COMP_WORDS": "cyphrs li", "COMP_CWORD": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [tool("cyphrs"), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == b""


def test_serve_with_stderr_closed_still_answers(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``serve --processes 2 2>&-``: the /dev/null put on the closed descriptor was
    close-on-exec, so every worker started with stderr closed and dropped every
    connection. The ready line is read from stdout, then a real TLS request is made."""
    h = fresh_hierarchy
    server = subprocess.Popen(
        ["sh", "-c", 'exec "$0" "$@" 2>&-', tool("cyphrs"), "serve", "--home", str(h.home),
         "--listen", "127.0.0.1:0", "--passphrase-file", str(h.inter_pass),
         "--processes", "2"],
        stdout=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    workers: list[int] = []
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        workers = [int(w["pid"]) for w in ready["processes"]]
        for _ in range(4):  # a connection each: both workers, whichever gets which
            with CaClient(ready["listening"], h.root_cert.read_bytes()) as client:
                assert client.call("GET", "/healthz")["status"] == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)
            for pid in workers:
                kill_worker(pid)


def test_an_error_with_stdout_closed_keeps_its_code_and_its_line(tmp_path: Path) -> None:
    done = _run_closing(">&-", "list", "--json", "--home", str(tmp_path / "none"))
    assert done.returncode == 6
    assert json.loads(done.stderr)["error"]["slug"] == "not-found"
