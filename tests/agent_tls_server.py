"""A TLS echo server for tests, run as its own process: ``python -m tests.agent_tls_server
CERT_DIR [--workflow W] [--permission P] [--allowed-spiffe ID] [--asyncio]``.

It uses ``cyphrs_cli.client.tls.server_context`` (so it follows rotated files), prints
``{"port": N}`` on stdout when listening on 127.0.0.1, answers every connection with one
JSON line ``{"peer": <SPIFFE ID>, "workflow": ..., "reloads": N}`` and logs each refused
handshake as a JSON line on stdout. It stops on SIGTERM, or by itself after 120 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import ssl
import sys
import threading

from cyphrs_cli.client.tls import PeerRejected, ReloadingContext, check_peer, server_context
from cyphrs_cli.errors import PolicyDenied

LIFETIME = 120.0


def _say(document: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def _answer(tls: ssl.SSLSocket | ssl.SSLObject, ctx: ReloadingContext) -> bytes:
    peer = check_peer(tls)
    return (
        json.dumps({"peer": peer.spiffe_id, "workflow": peer.workflow, "reloads": ctx.reloads})
        + "\n"
    ).encode()


def serve_threads(ctx: ReloadingContext, listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(64)
                tls.sendall(_answer(tls, ctx))
        except PeerRejected as exc:
            _say({"rejected": exc.denial.rule, "message": exc.denial.message})
        except (ssl.SSLError, OSError, PolicyDenied) as exc:
            _say({"error": str(exc)})
        finally:
            conn.close()


async def serve_asyncio(ctx: ReloadingContext, listener: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(_answer(writer.get_extra_info("ssl_object"), ctx))
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, PeerRejected):
            _say({"rejected": exc.denial.rule, "message": exc.denial.message})
        elif exc is not None:
            _say({"error": str(exc)})

    loop.set_exception_handler(on_error)
    server = await asyncio.start_server(handle, sock=listener, ssl=ctx)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _say({"port": listener.getsockname()[1]})
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIFETIME)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cert_dir")
    parser.add_argument("--workflow")
    parser.add_argument("--permission", action="append", default=[])
    parser.add_argument("--allowed-spiffe", action="append")
    parser.add_argument("--asyncio", action="store_true")
    args = parser.parse_args()
    ctx = server_context(
        args.cert_dir,
        workflow=args.workflow,
        permissions=args.permission,
        allowed_spiffe=args.allowed_spiffe,
    )
    listener = socket.create_server(("127.0.0.1", 0))
    if args.asyncio:
        asyncio.run(serve_asyncio(ctx, listener))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timer = threading.Timer(LIFETIME, stop.set)
    timer.daemon = True
    timer.start()
    _say({"port": listener.getsockname()[1]})
    serve_threads(ctx, listener, stop)
    sys.exit(0)


if __name__ == "__main__":
    main()
