"""``cyphrs serve --processes N``: one supervisor, N worker processes sharing one socket.

One Python process signs, parses and speaks TLS on one core at a time (the GIL); a machine
with more cores serves more enrollments with more processes. Each worker is a whole
``cyphrs serve`` (``server.run.serve``): its own ``Authority``, group committer, TLS
certificate and OCSP responder certificate. What they share, and how:

- the listening socket: only the supervisor accepts; it hands each new connection to the
  ready worker with the fewest open connections (``server.sites``: a descriptor over a
  ``SOCK_SEQPACKET`` pair; the worker reports each close). A worker that has not answered
  a ping over that pair for ``STALL_AFTER`` seconds (stopped, a frozen loop) is handed
  nothing while another worker can take the connection. TLS handshakes and requests run
  in the workers;
- the ledger: every write takes the ledger's writer lock (``ledger.writelock``) and SQLite's
  ``BEGIN IMMEDIATE``; the hash chain is read inside that lock, so the workers' events form
  one chain, and a token use or JWT ``jti`` is spent once across all workers;
- metrics: prometheus-client's multiprocess files in a private directory, summed by
  ``/metrics`` in whichever worker answers;
- rate limits: each worker enforces ``ceil(R / N)`` of every configured rate ``R`` (and of
  ``--max-connections``), so the server as a whole never allows more than ``N * ceil(R / N)``
  (exactly ``R`` when ``N`` divides it); a client spreading its connections over the
  workers meets the same bound.

ACME keeps its nonces in the memory of one process, so ``--acme`` runs with one process.

Secrets: the supervisor opens the ``Authority`` once before starting anything (a wrong
passphrase or PIN fails here, exit 4, like a single process), records what the key store
asked for, and hands it to each worker on the worker's stdin pipe: never on argv or in the
environment. Workers that die after start-up are replaced (at most ``RESTART_LIMIT`` in
``RESTART_WINDOW`` seconds, then the server stops with the worker's exit code); SIGTERM and
SIGINT stop every worker gracefully; SIGHUP is passed on (each renews its TLS certificate);
a worker whose supervisor disappears (kill -9) stops by itself.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import CyphrsError, ExitCode, StorageError, UsageError
from cyphrs_cli.ledger.events import default_actor
from cyphrs_cli.server.limits import Rate
from cyphrs_cli.server.run import (
    ServeOptions,
    check_listen_names,
    listening_socket,
    listening_url,
)
from cyphrs_cli.server.sites import (
    CLOSED_MARK,
    PING,
    send_connection,
    worker_reports,
    write_log_line,
)

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.keystore.base import SecretProvider

MAX_PROCESSES = 64
READY_TIMEOUT = 120.0
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
POLL_INTERVAL = 0.2  # seconds between checks for signals and dead workers; and pings
#: A worker that has not answered a ping for this long is stalled: handed nothing (unless
#: every worker is) until it answers.
STALL_AFTER = 1.0
ACCEPT_PER_WAKEUP = 64
#: What sending on a hand-over channel fails with once the worker's end is closed.
_CHANNEL_GONE = {errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET, errno.ENOTCONN}
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def per_process(options: ServeOptions, processes: int) -> ServeOptions:
    """The options of one worker: every rate and the connection cap divided up (rounded
    up), so the workers together allow at most what one process would (see above)."""

    def share(rate: Rate) -> Rate:
        return Rate(math.ceil(rate.count / processes), rate.period) if rate.count else rate

    return replace(
        options,
        token_rate=share(options.token_rate),
        identity_rate=share(options.identity_rate),
        failure_rate=share(options.failure_rate),
        max_connections=max(1, math.ceil(options.max_connections / processes)),
    )


def options_document(options: ServeOptions) -> dict[str, Any]:
    if options.acme is not None:
        raise UsageError("--acme serves from one process (its nonces live in memory)")
    return asdict(options)


def options_from_document(document: dict[str, Any]) -> ServeOptions:
    rates = ("token_rate", "identity_rate", "failure_rate")
    fields: dict[str, Any] = {k: Rate(**v) if k in rates else v for k, v in document.items()}
    fields["dns_names"] = tuple(fields["dns_names"])
    return ServeOptions(**fields)


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    channel: socket.socket  # the supervisor's end of the connection hand-over pair
    ready: dict[str, Any] | None = None
    pending: bytes = b""
    open: int = 0  # connections handed and not reported closed
    handed: int = 0  # connections handed in all (ties go to the least used)
    ping_sent: float | None = None  # monotonic time of the ping not answered yet

    def stalled(self, now: float) -> bool:
        return self.ping_sent is not None and now - self.ping_sent > STALL_AFTER

    @property
    def stdout(self) -> int:
        assert self.process.stdout is not None
        return self.process.stdout.fileno()


class _Supervisor:
    def __init__(
        self,
        home: CaHome,
        secrets: dict[str, bytes],
        options: ServeOptions,
        sock: socket.socket,
        metrics_dir: str,
    ) -> None:
        self._home = home
        self._secrets = secrets
        self._options = options
        self._sock = sock
        self._metrics_dir = metrics_dir
        self._listening = listening_url(options, sock)
        self.workers: list[_Worker] = []
        self._restarts: list[float] = []
        self._starting = True  # until every first worker is ready: a failure stops all
        self._accepting = False  # whether the listening socket is watched
        self._accept_again_at = 0.0  # after an accept error, not before this time
        self._selector = selectors.DefaultSelector()
        sock.setblocking(False)

    def start_worker(self) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {
            "home": str(self._home.root),
            "options": options_document(self._options),
            "secrets": {k: base64.b64encode(v).decode() for k, v in self._secrets.items()},
            "channel_fd": theirs.fileno(),
            "listening": self._listening,
            "supervisor_pid": os.getpid(),
            "metrics_dir": self._metrics_dir,
            # Who the worker's events name: ``cyphrs --actor`` is a context variable of
            # this process, which a worker (a new interpreter) would not otherwise have.
            "actor": default_actor(),
        }
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir}
        try:
            # ``-P``: ``python -m`` would put the working directory first on the worker's
            # ``sys.path``, so a ``cyphrs_cli/``, ``json.py`` or ``ssl.py`` there (a
            # server started from /tmp, a shared checkout) would run inside the process
            # that holds the unlocked CA key, and replace the installed code. The worker
            # finds its modules where the supervisor did (``PYTHONPATH``, site-packages).
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "cyphrs_cli.server.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode() + b"\n")
        process.stdin.close()
        ours.setblocking(False)
        worker = _Worker(process, ours)
        self.workers.append(worker)
        self._selector.register(worker.stdout, selectors.EVENT_READ, ("stdout", worker))
        self._selector.register(ours, selectors.EVENT_READ, ("closed", worker))
        return worker

    def wait_ready(self) -> bool:
        """Every worker's ready document (True), or its start-up error raised here; False
        when SIGTERM or SIGINT came first (the signals are blocked, so they are looked
        for here: start-up must not defer a stop for up to ``READY_TIMEOUT``)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while any(w.ready is None for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(f"a worker did not start within {READY_TIMEOUT:g} s")
            self._poll(min(left, POLL_INTERVAL), accept=False)
            info = signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, 0)
            if info is not None:
                _log("shutdown", {"reason": "signal", "signal": info.si_signo})
                return False
        self._starting = False
        return True

    def _read_ready(self, worker: _Worker) -> None:
        chunk = os.read(worker.stdout, 65536)
        worker.pending += chunk
        if b"\n" not in worker.pending and chunk:
            return
        self._selector.unregister(worker.stdout)
        line = worker.pending.split(b"\n", 1)[0]
        try:
            document: dict[str, Any] = json.loads(line)
        except ValueError:
            document = {}
        if document.get("schema") == "cyphrs.serve/v1":
            worker.ready = document
            return
        if not self._starting:  # a replacement that failed: ``replace_dead`` counts it
            error = document.get("error") or {}
            _log("worker.failed", {"worker": worker.process.pid, "error": error.get("message")})
            return
        code = worker.process.wait(timeout=30)
        raise worker_error(document.get("error"), code)

    def _poll(self, timeout: float, *, accept: bool) -> None:
        for key, _ in self._selector.select(timeout):
            kind, worker = key.data
            if kind == "accept":
                if accept:
                    self._accept()
            elif kind == "stdout":
                self._read_ready(worker)
            else:
                reports = worker_reports(worker.channel)
                if reports is None:  # the worker is gone; reaped by ``replace_dead``
                    self._selector.unregister(worker.channel)
                    worker.ready = None
                else:
                    worker.open = max(0, worker.open - reports.count(CLOSED_MARK))
                    if PING in reports:
                        worker.ping_sent = None

    def _accept(self) -> None:
        for _ in range(ACCEPT_PER_WAKEUP):
            try:
                connection, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: log, pause, keep serving
                # The connection stays queued and the socket readable: retrying at once
                # would spin. Accept again at the next tick (``serve_forever``).
                _log("accept.failed", {"error": exc.strerror})
                self._selector.unregister(self._sock)
                self._accepting = False
                self._accept_again_at = time.monotonic() + POLL_INTERVAL
                return
            with connection:
                self._hand(connection)

    def _hand(self, connection: socket.socket) -> None:
        """To the ready worker with the fewest open connections; closed (refused) when every
        worker is gone or has a full channel."""
        ready = (w for w in self.workers if w.ready)
        now = time.monotonic()
        for worker in sorted(ready, key=lambda w: (w.stalled(now), w.open, w.handed)):
            try:
                send_connection(worker.channel, connection)
            except BlockingIOError:
                continue  # its channel is full (a stalled worker): try the next one
            except OSError as exc:
                if exc.errno in _CHANNEL_GONE:
                    worker.ready = None  # its end is closed: it died; do not try it again
                else:  # e.g. ETOOMANYREFS (descriptors in flight): the worker may recover
                    _log("handover.failed", {"worker": worker.process.pid, "error": exc.strerror})
                continue
            worker.open += 1
            worker.handed += 1
            return

    def serve_forever(self) -> None:
        """Accept and hand over connections, replace dead workers, pass SIGHUP on; return on
        SIGTERM or SIGINT."""
        last_reap = time.monotonic()
        while True:
            if not self._accepting and time.monotonic() >= self._accept_again_at:
                self._selector.register(self._sock, selectors.EVENT_READ, ("accept", None))
                self._accepting = True
            self._poll(POLL_INTERVAL, accept=True)
            info = signal.sigtimedwait(_SIGNALS, 0)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                _log("shutdown", {"reason": "signal", "signal": info.si_signo})
                if self._accepting:
                    self._selector.unregister(self._sock)
                return
            if info is not None and info.si_signo == signal.SIGHUP:
                self.signal_all(signal.SIGHUP)
            if time.monotonic() - last_reap >= POLL_INTERVAL:
                last_reap = time.monotonic()
                self.replace_dead()
                self.ping()

    def ping(self) -> None:
        """Ask every ready worker that answered its last ping whether its loop runs."""
        for worker in self.workers:
            if worker.ready and worker.ping_sent is None:
                with contextlib.suppress(OSError):  # full: not reading; gone: reaped later
                    worker.channel.send(PING)
                worker.ping_sent = time.monotonic()

    def replace_dead(self) -> None:
        """Reap exited workers and start replacements (bounded, see the module docstring)."""
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self._forget(worker)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW]
            _log("worker.exited", {"worker": worker.process.pid, "code": code})
            if len(self._restarts) >= RESTART_LIMIT:
                deaths = f"workers exited {RESTART_LIMIT + 1} times in {RESTART_WINDOW:g} s"
                raise worker_error({"message": deaths}, code)
            self._restarts.append(now)
            fresh = self.start_worker()
            _log("worker.started", {"worker": fresh.process.pid, "replaces": worker.process.pid})

    def _forget(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        for fd in (worker.stdout, worker.channel.fileno()):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        worker.channel.close()
        assert worker.process.stdout is not None
        worker.process.stdout.close()

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def stop_all(self, grace: float) -> list[int]:
        """SIGTERM every worker, wait ``grace`` seconds, SIGKILL what is left; exit codes."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes = []
        for worker in list(self.workers):
            try:
                codes.append(worker.process.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                codes.append(worker.process.wait(timeout=10))
            self._forget(worker)
        return codes


def worker_error(error: dict[str, Any] | None, code: int) -> CyphrsError:
    """The CyphrsError a worker died of (its exit code decides the class)."""
    message = (error or {}).get("message") or f"a server worker exited with code {code}"
    # Killed by a signal (negative code: OOM killer, kill -9): the environment, not a bug.
    wanted = int(ExitCode.STORAGE) if code < 0 else code
    if wanted not in {int(c) for c in ExitCode}:
        wanted = int(ExitCode.INTERNAL)
    for cls in _error_classes(CyphrsError):
        if int(cls.exit_code) == wanted and cls.__init__ is CyphrsError.__init__:
            return cls(message, hint=(error or {}).get("hint"))
    return CyphrsError(message)


def _error_classes(base: type[CyphrsError]) -> list[type[CyphrsError]]:
    found = [base]
    for sub in base.__subclasses__():
        found.extend(_error_classes(sub))
    return found


def supervise(
    home: CaHome,
    secrets: SecretProvider,
    options: ServeOptions,
    processes: int,
    ready: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``processes`` workers until SIGTERM/SIGINT; ``ready`` gets one ready document
    (the supervisor's pid, every worker's pid and TLS serial) once all of them listen.

    Raises:
        CyphrsError: 2 bad options (``--acme`` with several processes, a nameless listen
            address, an unusable port), and whatever a worker failed to start with.
    """
    from cyphrs_cli.service.authority import Authority

    if not 2 <= processes <= MAX_PROCESSES:
        raise UsageError(f"--processes must be between 1 and {MAX_PROCESSES}")
    if options.acme is not None:
        raise UsageError(
            "--acme serves from one process (its nonces live in memory)",
            hint="run ACME on its own `cyphrs serve --acme` without --processes",
        )
    check_listen_names(options)
    asked: dict[str, bytes] = {}

    def recording(purpose: str) -> bytes:
        asked[purpose] = secrets(purpose)
        return asked[purpose]

    with Authority.open(home, issuer=options.issuer, secrets=recording, unlock=True):
        pass  # a wrong passphrase, a home that fails its checks: refused before any worker
    # Signals are taken synchronously below; workers unblock them first thing.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    sock = listening_socket(options)
    metrics_dir = tempfile.mkdtemp(prefix="cyphrs-metrics-")
    supervisor = _Supervisor(home, asked, per_process(options, processes), sock, metrics_dir)
    try:
        for _ in range(processes):
            supervisor.start_worker()
        if not supervisor.wait_ready():
            return  # stopped during start-up: ``finally`` stops the workers
        first = supervisor.workers[0].ready
        assert first is not None
        ready(
            {
                **first,
                "pid": os.getpid(),
                "processes": [
                    {"pid": w.process.pid, "tls_serial": (w.ready or {}).get("tls_serial")}
                    for w in supervisor.workers
                ],
            }
        )
        supervisor.serve_forever()
        sock.close()  # what waits in the kernel's queue is refused, not left hanging
        failed = [c for c in supervisor.stop_all(options.shutdown_timeout + 5) if c != 0]
        if failed:
            raise worker_error(None, failed[0])
    finally:
        supervisor.stop_all(options.shutdown_timeout + 5)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def _log(event: str, details: dict[str, Any]) -> None:
    write_log_line(json.dumps({"event": event, "pid": os.getpid(), **details}))


__all__ = ["options_from_document", "per_process", "supervise"]
