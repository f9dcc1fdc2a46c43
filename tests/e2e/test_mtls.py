"""Real mutual-TLS handshakes over loopback with the certificates we issue."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, build_hierarchy


def _issue(h: Hierarchy, out: Path, *args: str) -> Path:
    result = h.issue(*args, "--key-type", h.key_type, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    return out


def _serve_once(
    server_ctx: ssl.SSLContext, sock: socket.socket, outcome: dict[str, object]
) -> None:
    conn, _ = sock.accept()
    try:
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            outcome["peer"] = tls.getpeercert()
            tls.sendall(b"hello " + tls.recv(64))
    except (ssl.SSLError, OSError) as exc:
        outcome["error"] = exc


def _handshake(
    server_dir: Path, client_dir: Path, trust_dir: Path
) -> tuple[dict[str, object], bytes]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_dir / "fullchain.pem", server_dir / "key.pem")
    server_ctx.load_verify_locations(trust_dir / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    client_ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(trust_dir / "ca.pem")
    )
    client_ctx.load_cert_chain(client_dir / "fullchain.pem", client_dir / "key.pem")

    outcome: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=_serve_once, args=(server_ctx, listener, outcome))
        thread.start()
        reply = b""
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname="api.acme.internal") as tls,
            ):
                tls.sendall(b"agent")
                reply = tls.recv(64)
        except (ssl.SSLError, OSError) as exc:
            outcome["client_error"] = exc
        thread.join(10)
    return outcome, reply


@pytest.mark.parametrize("key_type", ["p256", "rsa3072"])
def test_mtls_agent_to_server(
    key_type: str,
    hierarchy: Hierarchy,
    tmp_path: Path,
    hierarchies: dict[str, Hierarchy],
    session_dir: Path,
) -> None:
    if key_type not in hierarchies:
        hierarchies[key_type] = build_hierarchy(session_dir / key_type, key_type)
    h = hierarchies[key_type]
    server = _issue(h, tmp_path / "server", "server", "--dns", "api.acme.internal")
    agent = _issue(h, tmp_path / "agent", "agent", "--workflow", "payments-recon")
    outcome, reply = _handshake(server, agent, server)
    assert "error" not in outcome and "client_error" not in outcome, outcome
    assert reply == b"hello agent"
    peer = outcome["peer"]
    assert isinstance(peer, dict)
    uris = [v for k, v in peer["subjectAltName"] if k == "URI"]
    assert len(uris) == 1 and uris[0].startswith("spiffe://acme.internal/agent/payments-recon/")


def test_mtls_rejects_client_from_another_root(hierarchy: Hierarchy, tmp_path: Path) -> None:
    stranger = build_hierarchy(tmp_path / "stranger")
    server = _issue(hierarchy, tmp_path / "server", "server", "--dns", "api.acme.internal")
    intruder = _issue(stranger, tmp_path / "intruder", "agent", "--workflow", "payments-recon")
    outcome, reply = _handshake(server, intruder, server)
    assert reply == b""
    assert "error" in outcome
    assert "certificate" in str(outcome["error"]).lower()
