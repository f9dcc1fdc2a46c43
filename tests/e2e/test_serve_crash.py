"""``cyphrs serve`` stopped under load: SIGTERM finishes in-flight requests and exits 0;
SIGKILL loses nothing a client received (every certificate delivered is in the ledger), the
hash chain verifies, and the server starts again. Load is bounded: 4 client threads renewing
in a loop for at most a few seconds."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, cli
from tests.serve_clients import issue_offline, new_csr, request, write_identity
from tests.server_process import ServerProcess, start_server

CLIENTS = 4


class RenewalLoad:
    """4 threads, each renewing its own identity over mTLS until the server goes away."""

    def __init__(self, ca: Hierarchy, server: ServerProcess, base: Path) -> None:
        self.server = server
        self.received: list[str] = []  # serials of every 201 any client got
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._identities = [
            issue_offline(ca.home, ca.inter_pass, base / f"c{n}" / "0") for n in range(CLIENTS)
        ]
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _run(self, n: int) -> None:
        identity, generation = self._identities[n], 0
        deadline = time.monotonic() + 15  # bound even if nobody stops us
        while not self._stop.is_set() and time.monotonic() < deadline:
            key_pem, csr = new_csr()
            try:
                reply = request(
                    self.server, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=identity,
                    timeout=10,
                )  # fmt: skip
            except (OSError, ssl.SSLError, http.client.HTTPException):
                return  # the server is gone (or going)
            if reply.status == 503 and reply.json().get("slug") == "shutting-down":
                return  # a request that started after SIGTERM: refused, nothing issued
            if reply.status != 201:
                with self._lock:
                    self.errors.append(f"{reply.status} {reply.body[:200]!r}")
                return
            issued = reply.json()
            with self._lock:
                self.received.append(issued["serial"])
            generation += 1
            identity = write_identity(identity.parent / str(generation), issued, key_pem)


def _ledger_serials(ca: Hierarchy) -> dict[str, str]:
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        return dict(conn.execute("SELECT serial, status FROM certificates").fetchall())


@pytest.mark.slow
def test_sigterm_under_load_exits_cleanly_and_loses_nothing(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass) as server:
        load = RenewalLoad(ca, server, tmp_path)
        load.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()[-2000:]
        load.stop()
    assert len(load.received) >= CLIENTS, load.errors
    assert not load.errors, load.errors
    ledger = _ledger_serials(ca)
    missing = [s for s in load.received if s not in ledger]
    assert not missing
    events = [e.get("event") for e in server.log_events()]
    assert "shutdown" in events and events[-1] == "stopped"
    assert cli("audit", "verify", "--home", str(ca.home)).exit_code == 0


@pytest.mark.slow
def test_sigkill_under_load_every_delivered_certificate_is_recorded(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = fresh_hierarchy
    server = start_server(ca.home, ca.inter_pass)
    try:
        load = RenewalLoad(ca, server, tmp_path)
        load.start()
        time.sleep(2.0)
        server.kill()  # SIGKILL by PID, mid-load
        load.stop()
    finally:
        server.stop()
    assert len(load.received) >= CLIENTS, load.errors
    ledger = _ledger_serials(ca)
    missing = [s for s in load.received if s not in ledger]
    assert not missing, f"{len(missing)} delivered certificates are not in the ledger"
    verified = cli("audit", "verify", "--home", str(ca.home))
    assert verified.exit_code == 0, verified.stderr
    # The server starts again on the same home and serves.
    with start_server(ca.home, ca.inter_pass) as again:
        assert request(again, "GET", "/readyz").status == 200
        fresh = issue_offline(ca.home, ca.inter_pass, tmp_path / "after")
        _, csr = new_csr()
        assert (
            request(again, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=fresh).status == 201
        )


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A renewal that is being signed when SIGTERM arrives (signing slowed to 1 s) still
    gets its 201 and its certificate is recorded; new connections are refused."""
    ca = fresh_hierarchy
    agent = issue_offline(ca.home, ca.inter_pass, tmp_path / "slow")
    with start_server(
        ca.home, ca.inter_pass, env={"CYPHRS_TEST_DELAY": "after-sign=1.0"}
    ) as server:
        replies: list[int] = []
        serials: list[str] = []

        def renew() -> None:
            _, csr = new_csr()
            reply = request(server, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=agent)
            replies.append(reply.status)
            serials.append(reply.json().get("serial", ""))

        thread = threading.Thread(target=renew)
        thread.start()
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(OSError):
            request(server, "GET", "/healthz", timeout=5)
        thread.join(timeout=30)
        assert server.process.wait(timeout=30) == 0
    assert replies == [201]
    assert _ledger_serials(ca)[serials[0]] == "valid"


def _token(ca: Hierarchy) -> str:
    done = cli(
        "token", "create", "--home", str(ca.home), "--workflow", "late-body",
        "--uses", "1", "--ttl", "10m", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return str(done.json()["token"])


def _response(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    reply = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
    reply.begin()
    return reply.status, reply.read()


@pytest.mark.slow
def test_sigterm_waits_for_a_body_still_on_its_way_and_refuses_new_requests(
    fresh_hierarchy: Hierarchy,
) -> None:
    """A request whose headers arrived before SIGTERM and its body after: the body is read
    and the request answered (201), not cut off with 408 after the body timeout (aiohttp's
    own shutdown drops every byte that arrives once it starts), and the server exits at
    once afterwards; a request that starts on a kept-alive connection meanwhile gets 503
    (``shutting-down``) and the connection is closed."""
    ca = fresh_hierarchy
    token = _token(ca)
    _, csr = new_csr()
    body = json.dumps({"csr": csr.decode(), "token": token}).encode()
    with start_server(ca.home, ca.inter_pass) as server:
        context = ssl.create_default_context(cafile=str(server.root_pem))
        raw = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in "ab"]
        slow, idle = (context.wrap_socket(r, server_hostname="127.0.0.1") for r in raw)
        try:
            ask = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            idle.sendall(ask)
            assert _response(idle)[0] == 200  # kept alive
            slow.sendall(
                b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            time.sleep(0.3)  # the handler runs and waits for the body
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            signalled = time.monotonic()
            idle.sendall(ask)
            status, answer = _response(idle)
            assert status == 503, answer
            assert json.loads(answer)["slug"] == "shutting-down"
            slow.sendall(body)
            status, answer = _response(slow)
            assert status == 201, answer
            serial = json.loads(answer)["serial"]
            assert server.process.wait(timeout=30) == 0
            assert time.monotonic() - signalled < 5  # not the 10 s body timeout
        finally:
            slow.close()
            idle.close()
    assert _ledger_serials(ca)[serial] == "valid"
    assert cli("audit", "verify", "--home", str(ca.home)).exit_code == 0
