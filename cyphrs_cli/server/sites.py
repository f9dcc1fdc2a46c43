"""How connections reach the HTTP application of ``cyphrs serve``.

- ``ListeningSite``: one process accepts from its own listening socket (``--processes 1``).
- ``HandedSite``: a worker of ``--processes N`` gets connections its supervisor accepted,
  one descriptor per ``SOCK_SEQPACKET`` message (``SCM_RIGHTS``), and writes one byte back
  when such a connection closes, so the supervisor can hand the next one to the worker with
  the fewest open connections (``send_connection`` / ``worker_reports`` are the
  supervisor's side). A ``PING`` message (no descriptor) is answered with ``PING`` at once:
  a worker whose event loop is stopped (SIGSTOP, a blocking call) answers nothing, and its
  supervisor hands it nothing until it does. A kernel-shared listening socket instead let
  whichever worker woke first accept every pending connection: with keep-alive clients one
  worker did all the work while the other idled.

Both build connections with ``ProblemRequestHandler``, which answers aiohttp's own parser
errors as problem+json and caps open connections (``ConnectionGate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from cyphrs_cli.errors import ExitCode
from cyphrs_cli.server.problems import problem

#: Descriptors taken from the channel per wake-up at most (the rest wait for the next).
_HANDED_PER_WAKEUP = 64
#: What a worker writes back per closed connection.
CLOSED_MARK = b"c"
#: What a supervisor sends to ask "is your event loop running?", and the worker's answer.
PING = b"p"


def log(event: str, **details: Any) -> None:
    """One JSON line on stderr (the server's log)."""
    write_log_line(json.dumps({"event": event, **details}))


def write_log_line(line: str) -> None:
    """``line`` and its newline on stderr in one write(2). The supervisor and every worker of
    ``--processes N`` share one stderr, which Python leaves unbuffered on a file or pipe:
    ``print`` would write the text and the newline separately, and another process's line
    could land between them."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class ConnectionGate:
    """How many HTTP connections are open, and how many may be (one per listening site)."""

    limit: int
    open: int = 0
    #: Called when a connection closes, admitted or not (a worker tells its supervisor).
    on_close: Callable[[], None] | None = None


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection protocol, but its own errors (a request line or header over the
    parser's limits, a forbidden byte, a bad method) answer problem+json like every other
    error, and never echo the request: aiohttp's text/plain answer and its logged
    traceback quote the offending bytes, which may be an ``Authorization`` header or a
    token. One JSON log line names the status and the error type only.

    Connections past the gate's limit are closed as soon as they are made (after the TLS
    handshake, which its own timeout bounds), so a client opening thousands of connections
    cannot exhaust the process's file descriptors for everyone."""

    def __init__(self, *args: Any, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._gate.open >= self._gate.limit:
            transport.close()
            return
        self._gate.open += 1
        self._admitted = True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._gate.open -= 1
        # Every connection that was made reports its close, admitted or turned away: the
        # supervisor counts what it handed, not what the gate let in.
        if self._gate.on_close is not None:
            self._gate.on_close()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        slug, exit_code = (
            ("bad-request", ExitCode.USAGE) if status < 500 else ("internal", ExitCode.INTERNAL)
        )
        detail = "the HTTP request could not be parsed" if status < 500 else "internal error"
        log("http.rejected", status=status, type=type(exc).__name__ if exc else None)
        response = web.Response(
            status=status,
            text=json.dumps(problem(status, slug, detail, exit_code)),
            content_type="application/problem+json",
        )
        response.force_close()
        return response


class ListeningSite(web.SockSite):
    """A socket site whose TLS handshakes must finish within ``handshake_timeout`` and whose
    connections answer parser errors as problem+json (``ProblemRequestHandler``)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        protocol_options: dict[str, Any],
        max_connections: int,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self._handshake_timeout = handshake_timeout
        self._protocol_options = protocol_options
        self._gate = ConnectionGate(max_connections)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            _protocol_factory(self._runner, self._gate, self._protocol_options),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout,
        )


def _protocol_factory(
    runner: web.BaseRunner, gate: ConnectionGate, options: dict[str, Any]
) -> Callable[[], RequestHandler]:
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()

    def connection() -> RequestHandler:
        return ProblemRequestHandler(server, loop=loop, gate=gate, **options)

    return connection


class HandedSite(web.BaseSite):
    """The connections a supervisor hands over ``channel`` (see the module docstring).

    ``on_channel_closed`` is called when the supervisor closes its end (it is gone)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        channel: socket.socket,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        protocol_options: dict[str, Any],
        max_connections: int,
        name: str,
        on_channel_closed: Callable[[], None],
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._channel = channel
        self._handshake_timeout = handshake_timeout
        self._protocol_options = protocol_options
        self._gate = ConnectionGate(max_connections, on_close=self._tell_closed)
        self._name = name
        self._on_channel_closed = on_channel_closed
        self._reading = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return self._name

    def _tell_closed(self) -> None:
        # OSError: the supervisor is gone, and the channel's EOF stops this worker.
        with contextlib.suppress(OSError):
            self._channel.send(CLOSED_MARK)

    async def start(self) -> None:
        await super().start()
        self._channel.setblocking(False)
        factory = _protocol_factory(self._runner, self._gate, self._protocol_options)
        loop = asyncio.get_running_loop()

        def receive() -> None:
            for _ in range(_HANDED_PER_WAKEUP):
                try:
                    message, fds, _, _ = socket.recv_fds(self._channel, 16, 1)
                except BlockingIOError:
                    return
                except OSError:
                    message, fds = b"", []
                if not message:  # EOF: the supervisor closed the channel
                    self._stop_reading()
                    self._on_channel_closed()
                    return
                if message == PING:
                    with contextlib.suppress(OSError):
                        self._channel.send(PING)
                    continue
                if not fds:
                    # A message without its descriptor: this process is out of descriptors
                    # (EMFILE) and the kernel closed the connection (MSG_CTRUNC). Not the
                    # supervisor's EOF; count it closed so the balance stays true.
                    log("connection.dropped", pid=os.getpid(), reason="out of file descriptors")
                    self._tell_closed()
                    continue
                connection = socket.socket(fileno=fds[0])
                connection.setblocking(False)
                task = loop.create_task(
                    loop.connect_accepted_socket(
                        factory,
                        connection,
                        ssl=self._ssl_context,
                        ssl_handshake_timeout=self._handshake_timeout,
                    )
                )
                self._tasks.add(task)
                task.add_done_callback(self._handshake_done)

        loop.add_reader(self._channel.fileno(), receive)
        self._reading = True

    def _handshake_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed handshake never reached the gate; the supervisor counted it.
            self._tell_closed()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._channel.fileno())

    async def stop(self) -> None:
        self._stop_reading()
        await super().stop()


def send_connection(channel: socket.socket, connection: socket.socket) -> None:
    """Hand ``connection`` to the worker at the other end of ``channel`` (supervisor side).

    Raises:
        OSError: the worker is gone (its end is closed).
    """
    socket.send_fds(channel, [b"h"], [connection.fileno()])


def worker_reports(channel: socket.socket) -> bytes | None:
    """What the worker wrote since the last call: one ``CLOSED_MARK`` per handed connection
    it closed, ``PING`` per ping answered; None when the worker's end is closed (supervisor
    side, ``channel`` non-blocking)."""
    reports = b""
    while True:
        try:
            data = channel.recv(4096)
        except BlockingIOError:
            return reports
        except OSError:
            return None
        if not data:
            return None
        reports += data
