"""Running ``cyphrs serve``: open the Authority once, issue the server's own TLS certificate,
listen, renew the certificate before it expires, and stop gracefully.

Life of the process:
1. ``Authority.open(..., unlock=True)``: a wrong passphrase fails here (exit 4), before
   anything listens; ``start_group_commit`` batches every online issuance from now on.
2. The server's TLS certificate (profile ``server``) is issued through ``commit_leaf`` and
   recorded like any other; its key exists in memory only (``server.tls``).
3. The socket is bound (port 0: a free one) and one JSON line ``cyphrs.serve/v1`` is printed
   on stdout: the URL, the pid, the TLS certificate's serial. Logs go to stderr.
4. At 2/3 of its lifetime (or on SIGHUP) a new TLS certificate is issued and loaded into the
   live context: new handshakes get it, open connections keep theirs.
5. SIGTERM or SIGINT: stop accepting, let in-flight requests finish (their certificates
   are committed before their responses, as always), drain the group committer, close the
   Authority, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cyphrs_cli.errors import UsageError
from cyphrs_cli.numerals import is_decimal
from cyphrs_cli.server.app import ServerState, build_app, trust_bundle
from cyphrs_cli.server.limits import Rate, RateLimiter
from cyphrs_cli.server.metrics import ServerMetrics
from cyphrs_cli.server.sites import HandedSite, ListeningSite, log, write_log_line
from cyphrs_cli.server.tls import load_certificate, server_context

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.keystore.base import SecretProvider
    from cyphrs_cli.service.acme import AcmeSettings
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import IssueResult

RENEW_AT = 2 / 3


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    issuer: str | None = None
    public_url: str | None = None
    dns_names: tuple[str, ...] = ()
    tls_ttl: str = "24h"
    admin_profile: str = "admin"
    max_body: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    token_rate: Rate = field(default_factory=lambda: Rate(10, 60.0))
    identity_rate: Rate = field(default_factory=lambda: Rate(60, 60.0))
    failure_rate: Rate = field(default_factory=lambda: Rate(20, 60.0))
    workers: int = 16
    max_connections: int = 1024
    shutdown_timeout: float = 30.0
    acme: AcmeSettings | None = None  # ACME (RFC 8555) at /acme/... when set
    acme_rate: Rate | None = None  # requests per ACME account (None: the default)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not is_decimal(port) or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host, int(port)


def _tls_names(options: ServeOptions) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DNS names and IP addresses of the server certificate: --dns, else the listen host."""
    dns = list(options.dns_names)
    ips: list[str] = []
    try:
        address = ipaddress.ip_address(options.host)
    except ValueError:
        dns.append(options.host)
    else:
        if not address.is_unspecified:
            ips.append(str(address))
    if not dns and not ips:
        raise UsageError(
            f"listening on {options.host} names no host for the TLS certificate",
            hint="add --dns ca.example.internal",
        )
    return tuple(dict.fromkeys(dns)), tuple(ips)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process of ``--processes N`` gets from its supervisor
    (``server.supervisor``): the channel its connections arrive on (``sites.HandedSite``),
    the URL the supervisor listens on, the supervisor's pid (a worker whose supervisor is
    gone stops by itself), and the directory where prometheus-client's multiprocess mode
    keeps every worker's counters."""

    channel: socket.socket
    listening: str
    supervisor_pid: int
    metrics_dir: str


def serve(
    home: CaHome,
    secrets: SecretProvider,
    options: ServeOptions,
    ready: Callable[[dict[str, Any]], None],
    *,
    worker: WorkerSetup | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; ``ready`` gets the ready document once listening."""
    from cyphrs_cli.service.authority import Authority

    check_listen_names(options)  # refuse a nameless listen address before unlocking anything
    with Authority.open(home, issuer=options.issuer, secrets=secrets, unlock=True) as authority:
        # Bound before the TLS certificate is issued: a port in use records nothing.
        sock = listening_socket(options) if worker is None else None
        try:
            # uvloop: the same asyncio API, with its transports and TLS in C (libuv,
            # Cython): 7 % less server CPU per enrollment, measured (docs/design-notes.md,
            # "The event loop: uvloop").
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_serve(authority, options, ready, worker, sock))
            # Only once the loop is closed: while it ran down its last tasks, a request
            # that reached a closing connection could still be refused (503) and logged.
            log("stopped", pid=os.getpid())
        finally:
            if sock is not None:
                sock.close()


def listening_socket(options: ServeOptions) -> socket.socket:
    """The bound, listening socket of ``--listen`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.host, options.port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {options.host}:{options.port}: {exc.strerror}") from exc
    return sock


def listening_url(options: ServeOptions, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    host = f"[{options.host}]" if sock.family == socket.AF_INET6 else options.host
    return f"https://{host}:{port}"


def check_listen_names(options: ServeOptions) -> None:
    """Refuse a listen address that names no host for the TLS certificate (exit 2)."""
    _tls_names(options)


async def _serve(
    authority: Authority,
    options: ServeOptions,
    ready: Callable[[dict[str, Any]], None],
    worker: WorkerSetup | None,
    sock: socket.socket | None,
) -> None:
    from cyphrs_cli.ledger.events import rfc3339

    loop = asyncio.get_running_loop()
    metrics = ServerMetrics(multiprocess_dir=worker.metrics_dir if worker else None)
    authority.start_group_commit(observer=metrics.observe_commit)
    executor = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="cyphrs-req")
    state = ServerState(
        authority=authority,
        executor=executor,
        token_limiter=RateLimiter(options.token_rate),
        identity_limiter=RateLimiter(options.identity_rate),
        failure_limiter=RateLimiter(options.failure_rate),
        max_body=options.max_body,
        body_timeout=options.body_timeout,
        admin_profile=options.admin_profile,
        metrics=metrics,
        log=write_log_line,
    )
    dns, ips = _tls_names(options)

    def issue_tls() -> IssueResult:
        return authority.server_certificate(dns_names=dns, ip_addresses=ips, ttl=options.tls_ttl)

    current = await state.call(issue_tls)
    bundle = await state.call(lambda: trust_bundle(authority))
    context = server_context(bundle.decode())
    load_certificate(context, current)

    app = build_app(state)
    if options.acme is not None:
        from cyphrs_cli.server.acme.routes import AcmeState, mount
        from cyphrs_cli.service.acme import reset_unfinished_challenges

        await state.call(lambda: reset_unfinished_challenges(authority))
        acme_state = AcmeState(options.acme, options.public_url)
        if options.acme_rate is not None:
            acme_state.limiter = RateLimiter(options.acme_rate)
        mount(app, acme_state)
    protocol_options: dict[str, Any] = {
        "access_log": None,
        # aiohttp 3.14 arms this timer when a connection opens and closes the connection
        # when it fires while no complete request has arrived: a header-read timeout.
        "keepalive_timeout": options.header_timeout,
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 64,
    }
    runner = web.AppRunner(app, shutdown_timeout=options.shutdown_timeout, **protocol_options)
    await runner.setup()
    stop, renew_now = asyncio.Event(), asyncio.Event()
    stop_reasons: list[str] = []

    def stop_for(reason: str) -> Callable[[], None]:
        def stopping() -> None:
            stop_reasons.append(reason)
            stop.set()

        return stopping
    site: web.BaseSite
    if worker is None:
        assert sock is not None
        listening = listening_url(options, sock)
        site = ListeningSite(
            runner,
            sock,
            ssl_context=context,
            handshake_timeout=options.header_timeout,
            protocol_options=protocol_options,
            max_connections=options.max_connections,
        )
    else:
        listening = worker.listening
        site = HandedSite(
            runner,
            worker.channel,
            ssl_context=context,
            handshake_timeout=options.header_timeout,
            protocol_options=protocol_options,
            max_connections=options.max_connections,
            name=listening,
            on_channel_closed=stop_for("supervisor-gone"),
        )
    await site.start()

    loop.add_signal_handler(signal.SIGTERM, stop_for("signal"))
    loop.add_signal_handler(signal.SIGINT, stop_for("signal"))
    loop.add_signal_handler(signal.SIGHUP, renew_now.set)

    ready(
        {
            "schema": "cyphrs.serve/v1",
            "listening": listening,
            "pid": os.getpid(),
            "issuer": authority.issuer_name,
            "public_url": options.public_url,
            "tls_serial": current.issued.serial,
            "tls_not_after": rfc3339(current.issued.not_after),
        }
    )

    async def keep_certificate_fresh() -> None:
        nonlocal current
        while True:
            issued = current.issued
            due = issued.not_before + (issued.not_after - issued.not_before) * RENEW_AT
            wait = max(1.0, (due - datetime.now(tz=due.tzinfo)).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(renew_now.wait(), wait)
            renew_now.clear()
            try:
                fresh = await state.call(issue_tls)
                load_certificate(context, fresh)
            except Exception as error:  # keep serving the current one; retry soon
                log("tls.renew-failed", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(min(60.0, max(1.0, wait / 10)))
                continue
            current = fresh
            log(
                "tls.renewed",
                serial=fresh.issued.serial,
                not_after=rfc3339(fresh.issued.not_after),
            )

    async def watch_supervisor(supervisor_pid: int) -> None:
        # A worker must not outlive its supervisor (kill -9 of the supervisor included):
        # orphans are re-parented, so a changed parent pid means the supervisor is gone.
        while os.getppid() == supervisor_pid:
            await asyncio.sleep(0.5)
        stop_for("supervisor-gone")()

    renewer = asyncio.create_task(keep_certificate_fresh())
    watcher = asyncio.create_task(watch_supervisor(worker.supervisor_pid)) if worker else None
    try:
        await stop.wait()
        log("shutdown", reason=stop_reasons[0])
    finally:
        if worker is not None:
            _ignore_further_stop_signals(loop)
        renewer.cancel()
        if watcher is not None:
            watcher.cancel()
        # Stop accepting, let the requests in flight finish (their bodies still arriving:
        # see ``app.RequestGate``), refuse the rest with 503, then aiohttp's own shutdown.
        for running in list(runner.sites):
            await running.stop()
        await state.gate.drained(options.shutdown_timeout)
        await runner.cleanup()
        executor.shutdown(wait=True)


def _ignore_further_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """A worker that is stopping ignores SIGTERM and SIGINT from now on. Ctrl-C and systemd
    signal the whole process group: the worker and its supervisor get the signal together,
    then the supervisor sends its own SIGTERM. Once the loop closes, asyncio restores the
    default action, and that second signal would kill the worker in its last clean-up: a
    crash to its supervisor (exit 8) after a clean stop. Blocked meanwhile, so no signal
    falls between asyncio's handler and ``SIG_IGN``; its supervisor SIGKILLs a worker that
    does not exit in time."""
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        for signum in stopping:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)


__all__ = ["ServeOptions", "WorkerSetup", "parse_listen", "serve"]
