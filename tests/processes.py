"""Helpers for tests that run real processes: a free loopback port, a bounded wait for a
server to listen, a bounded stop, and the output of a command whose stdout is a real
pseudo-terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import NamedTuple


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], *, seconds: float = 15) -> None:
    """Return once 127.0.0.1:port accepts; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, f"server exited with {process.returncode}"
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 10) -> None:
    """SIGTERM (a server stops its workers), SIGKILL if it is still there after ``grace``
    seconds, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class TerminalRun(NamedTuple):
    code: int
    shown: str  # what the terminal (the command's stdout) got
    stderr: str


def on_terminal(command: list[str], env: dict[str, str]) -> TerminalRun:
    """Run ``command`` with stdout on a pseudo-terminal (stdin empty, stderr a pipe): its
    exit code, what the terminal showed and its stderr."""
    import pty

    primary, secondary = pty.openpty()
    with subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE
    ) as proc:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=120)
    os.close(primary)
    return TerminalRun(proc.returncode, b"".join(chunks).decode(), stderr)
