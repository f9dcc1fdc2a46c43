"""Adversarial review of ``cyphrs serve`` (docs/threat-model.md, "Adversarial review of the online CA"): each test replays
one attack against a real server process on 127.0.0.1 and checks the defence holds."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helpers import Hierarchy, build_hierarchy, cli
from tests.serve_clients import Reply, client_context, new_csr, request
from tests.server_process import ServerProcess, start_server


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(tmp_path_factory.mktemp("sec-ca"))


@pytest.fixture(scope="module")
def server(ca: Hierarchy) -> object:
    # Per-credential limit off: the attacker varies the credential anyway.
    running = start_server(ca.home, ca.inter_pass, "--token-rate", "0/m", "--failure-rate", "5/m")
    yield running
    running.stop()


def _refusal_events(ca: Hierarchy) -> int:
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE type = 'token.refused'").fetchone()[0]
        )


def _enroll_from(server: ServerProcess, source: str, body: dict[str, Any]) -> Reply:
    """POST /v1/enroll from the loopback address ``source`` (127.0.0.0/8 is all ours)."""
    context: ssl.SSLContext = client_context(server)
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=context, timeout=20, source_address=(source, 0)
    )
    try:
        connection.request(
            "POST",
            "/v1/enroll",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return Reply(response.status, response.read(), dict(response.getheaders()))
    finally:
        connection.close()


def test_flood_of_made_up_tokens_is_cut_off_per_address(
    ca: Hierarchy, server: ServerProcess
) -> None:
    """Every made-up token differs (the per-token limit never sees the same key twice) and
    every refusal costs a ledger event; the per-address refusal budget (5/m here) answers
    429 before any ledger work, while another client's good token still enrolls."""
    _, csr = new_csr()
    before = _refusal_events(ca)
    made_up = [{"csr": csr.decode(), "token": f"cyphrs_tok_{i:043d}"} for i in range(12)]
    statuses = [_enroll_from(server, "127.0.0.3", body).status for body in made_up]
    assert statuses[:5] == [403] * 5 and statuses[5:] == [429] * 7, statuses
    assert _refusal_events(ca) - before == 5
    # The refused tokens are in neither the ledger (events name rules, not secrets) nor
    # the server's log.
    ledger_bytes = b"".join(
        path.read_bytes() for path in ca.home.glob("ledger.sqlite3*") if path.is_file()
    )
    assert b"token.refused" in ledger_bytes  # the check reads where the events are
    for body in made_up[:5]:
        assert body["token"].encode() not in ledger_bytes
        assert body["token"] not in server.log()
    blocked = _enroll_from(server, "127.0.0.3", made_up[0])
    assert blocked.json()["slug"] == "rate-limited" and int(blocked.headers["Retry-After"]) >= 1
    # A concurrent burst from the same address is refused without ledger writes either.
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda b: _enroll_from(server, "127.0.0.3", b).status, made_up))
    assert burst == [429] * 12
    assert _refusal_events(ca) - before == 5

    # Another address (another client) with a real token is not affected.
    created = cli(
        "token", "create", "--workflow", "payments-recon", "--json", "--home", str(ca.home)
    )
    assert created.exit_code == 0, created.stderr
    good = {"csr": csr.decode(), "token": json.loads(created.stdout)["token"]}
    reply = _enroll_from(server, "127.0.0.4", good)
    assert reply.status == 201, reply.body
    metrics = request(server, "GET", "/metrics").body.decode()
    assert 'cyphrs_rate_limited_total{limit="address"}' in metrics


def test_a_concurrent_burst_from_a_fresh_address_stays_within_the_refusal_budget(
    ca: Hierarchy, server: ServerProcess
) -> None:
    """The attack an adversarial review found (eighth stop): open many connections
    first, then send a made-up token on each at once. The budget (5/m) used to be only
    looked at before the work and spent after the refusal, so every request in flight
    passed the look: 200 of them wrote 200 ledger events. Requests in flight now count
    against it."""
    _, csr = new_csr()
    before = _refusal_events(ca)
    context = client_context(server)
    sockets = [
        context.wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.6", 0)),
            server_hostname="127.0.0.1",
        )
        for _ in range(30)
    ]
    try:
        for index, sock in enumerate(sockets):
            body = json.dumps({"csr": csr.decode(), "token": f"cyphrs_tok_{index:043d}"})
            sock.sendall(
                b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
        statuses = []
        for sock in sockets:
            sock.settimeout(30)
            answer = b""
            while b"\r\n" not in answer:
                answer += sock.recv(65536)
            statuses.append(int(answer.split(b" ", 2)[1]))
    finally:
        for sock in sockets:
            sock.close()
    assert sorted(set(statuses)) == [403, 429], statuses
    assert statuses.count(403) <= 5
    assert _refusal_events(ca) - before == statuses.count(403)


def test_successful_enrollments_do_not_spend_the_refusal_budget(
    ca: Hierarchy, server: ServerProcess
) -> None:
    """Only refusals count: a CI runner enrolling many agents from one address is fine."""
    for _ in range(7):
        created = cli("token", "create", "--workflow", "ci-fleet", "--json", "--home", str(ca.home))
        _, csr = new_csr()
        body = {"csr": csr.decode(), "token": json.loads(created.stdout)["token"]}
        reply = _enroll_from(server, "127.0.0.5", body)
        assert reply.status == 201, reply.body


def _raw_exchange(server: ServerProcess, payload: bytes) -> bytes:
    context = client_context(server)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


SECRET = "cyphrs_tok_" + "S3cr3t" * 7 + "x"


@pytest.mark.parametrize(
    "payload",
    [
        # A header line over the parser's limit, carrying a token.
        b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"A" * 9000
        + b"\r\n\r\n",
        # A header value with a forbidden control character next to a token.
        b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\x01\r\n\r\n",
        # A request line over the limit with a token in the query string.
        b"GET /healthz?token=" + SECRET.encode() + b"B" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["long-header", "control-char", "long-request-line"],
)
def test_requests_the_parser_rejects_leak_no_token(server: ServerProcess, payload: bytes) -> None:
    """aiohttp answers its own parser errors (before any middleware): the answer is a 4xx
    and neither it nor the server's log may echo the credential the request carried."""
    answer = _raw_exchange(server, payload)
    assert answer.startswith((b"HTTP/1.0 4", b"HTTP/1.1 4")), answer[:200]
    assert SECRET.encode() not in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower()
    assert json.loads(body)["slug"] == "bad-request"
    time.sleep(0.3)  # the log line is written after the answer
    assert SECRET not in server.log()
    assert '"event": "http.rejected"' in server.log()
    assert request(server, "GET", "/healthz").status == 200


def test_connections_past_the_limit_are_closed_and_service_resumes(ca: Hierarchy) -> None:
    """A client holding many idle connections cannot take them all: past
    ``--max-connections`` new ones are closed at once; when one frees, service resumes."""
    limited = start_server(ca.home, ca.inter_pass, "--max-connections", "3", "--timeout", "20")
    try:
        context = client_context(limited)
        held = []
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", limited.port), timeout=10)
            held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises((ConnectionError, ssl.SSLError, OSError, http.client.HTTPException)):
            request(limited, "GET", "/healthz", timeout=10)
        assert time.monotonic() - started < 5  # closed at once, not after a timeout
        held.pop().close()
        time.sleep(0.3)
        assert request(limited, "GET", "/healthz").status == 200
        for sock in held:
            sock.close()
    finally:
        limited.stop()
