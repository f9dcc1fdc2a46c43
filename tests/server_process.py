"""Start and stop a real ``cyphrs serve`` process for tests (127.0.0.1, a free port).

    server = start_server(hierarchy.home, hierarchy.inter_pass)
    request.addfinalizer(server.stop)      # or: with start_server(...) as server:

Waits are bounded: the ready line must come within ``ready_timeout`` seconds, ``stop``
sends SIGTERM, waits ``grace`` seconds, then SIGKILLs by PID and waits again. The server's
stderr (JSON log lines) is kept in a file; ``server.log()`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import tool


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    home: Path
    log_path: Path
    extra_stdout: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.ready["listening"])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def root_pem(self) -> Path:
        """The root certificate(s) clients trust (the home's own file)."""
        return next((self.home / "certs").glob("*root*.pem"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (bounded); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes of ``--processes N`` (empty for one process): those of the
        ready line, then the replacements the log names."""
        started = [
            int(e["worker"]) for e in self.log_events() if e.get("event") == "worker.started"
        ]
        return [int(w["pid"]) for w in self.ready.get("processes", [])] + started

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; never leaves the process behind
        (nor any worker of ``--processes N``: each is SIGKILLed by its PID if still there)."""
        try:
            self._stop_main(grace)
        finally:
            for pid in self.worker_pids:
                kill_worker(pid)

    def _stop_main(self, grace: float) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            if self.process.poll() is None:
                self.kill()
            if self.process.stdout is not None:
                self.process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    home: Path,
    passphrase_file: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    cwd: Path | None = None,
    root_args: tuple[str, ...] = (),
) -> ServerProcess:
    """Run ``cyphrs serve --listen 127.0.0.1:0`` on ``home`` and wait for its ready line.

    Raises:
        RuntimeError: the process exited or printed nothing in time (it is killed; the
            message carries its stderr).
    """
    log_file = Path(tempfile.mkstemp(prefix="cyphrs-serve-", suffix=".log")[1])
    with log_file.open("wb") as stderr:
        process = subprocess.Popen(
            [
                tool("cyphrs"),
                *root_args,  # options of ``cyphrs`` itself (``--actor``)
                "serve",
                "--home",
                str(home),
                "--listen",
                "127.0.0.1:0",
                "--passphrase-file",
                str(passphrase_file),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CI": "true", **(env or {})},
            cwd=cwd,
        )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    deadline = time.monotonic() + ready_timeout
    buffer = b""
    try:
        while time.monotonic() < deadline:
            chunk = process.stdout.read()
            if chunk:
                buffer += chunk
                if b"\n" in buffer:
                    line, _, _rest = buffer.partition(b"\n")
                    return ServerProcess(process, json.loads(line), home, log_file)
            elif process.poll() is not None:
                break
            time.sleep(0.02)
    except BaseException:
        _reap(process)
        raise
    _reap(process)
    raise RuntimeError(
        f"cyphrs serve did not become ready (exit {process.returncode}):"
        f" {log_file.read_text(errors='replace')[-2000:]}"
    )


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def worker_alive(pid: int) -> bool:
    """Whether ``pid`` is still a running cyphrs serve worker (not a reused pid, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"cyphrs_cli.server.worker" in cmdline and state != "Z"


def kill_worker(pid: int) -> None:
    if worker_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(condition: Callable[[], object], seconds: float) -> bool:
    """Poll ``condition`` every 50 ms for at most ``seconds``; whether it became true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
