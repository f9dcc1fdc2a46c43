"""A hostile or broken JWKS host (docs/threat-model.md, "Adversarial review of the online CA"): a real loopback HTTP server
(stdlib, in a thread, shut down in a finalizer) that is slow, answers a huge body, or
redirects. Each test attacks one promise of ``service.jwks.JwksFetcher``: a slow host costs
one timeout per back-off interval, not one per JWT (workers are not pinned); a huge answer
is refused, not buffered; a redirect is not followed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cyphrs_cli.errors import PolicyDenied
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest
from cyphrs_cli.service.jwks import JWKS_MAX_BYTES
from tests.enrollment_helpers import make_csr
from tests.unit.service.test_enrollment_jwt import Signer, _spec, claims

Respond = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def jwks_host() -> Iterator[tuple[str, list[str], dict[str, Respond]]]:
    """(base URL, paths asked for, path -> how to answer)."""
    asked: list[str] = []
    routes: dict[str, Respond] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            routes[self.path](self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked, routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _send(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _rule(ca: Authority, token: str) -> str:
    with pytest.raises(PolicyDenied) as caught:
        ca.enroll(EnrollRequest(csr_pem=make_csr()[0], jwt=token))
    return caught.value.rule


def test_a_slow_jwks_host_is_asked_once_per_back_off_not_once_per_jwt(
    ca: Authority, jwks_host: tuple[str, list[str], dict[str, Respond]]
) -> None:
    base, asked, routes = jwks_host
    release = threading.Event()

    def stall(handler: BaseHTTPRequestHandler) -> None:
        release.wait(20)  # longer than the fetch timeout

    routes["/slow.json"] = stall
    signer = Signer("ES256", "k-slow")
    ca.set_provisioner(_spec(None, jwks_url=base + "/slow.json"))
    try:
        started = time.monotonic()
        assert _rule(ca, signer.sign(claims())) == "jwt.jwks-unavailable"
        first = time.monotonic() - started
        # Ten more JWTs right after: refused at once, the host is not asked again.
        started = time.monotonic()
        for _ in range(10):
            assert _rule(ca, signer.sign(claims())) == "jwt.jwks-unavailable"
        assert time.monotonic() - started < 2.0, "each JWT waited for the slow host again"
        assert first >= 4.0 and asked == ["/slow.json"]
    finally:
        release.set()


def test_a_huge_jwks_is_refused_not_buffered(
    ca: Authority, jwks_host: tuple[str, list[str], dict[str, Respond]]
) -> None:
    base, _, routes = jwks_host
    signer = Signer("ES256", "k-big")
    padded = json.dumps({"keys": [signer.jwk]}).encode() + b" " * (JWKS_MAX_BYTES * 8)
    routes["/big.json"] = lambda handler: _send(handler, padded)
    ca.set_provisioner(_spec(None, jwks_url=base + "/big.json"))
    assert _rule(ca, signer.sign(claims())) == "jwt.jwks-unavailable"


def test_a_redirect_to_another_key_set_is_not_followed(
    ca: Authority, jwks_host: tuple[str, list[str], dict[str, Respond]]
) -> None:
    base, asked, routes = jwks_host
    attacker = Signer("ES256", "k-attacker")

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", base + "/attacker.json")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    routes["/jwks.json"] = redirect
    routes["/attacker.json"] = lambda h: _send(h, json.dumps({"keys": [attacker.jwk]}).encode())
    ca.set_provisioner(_spec(None, jwks_url=base + "/jwks.json"))
    assert _rule(ca, attacker.sign(claims())) == "jwt.jwks-unavailable"
    assert asked == ["/jwks.json"]
