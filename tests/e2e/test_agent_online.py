"""The agent against a real ``cyphrs serve`` process on 127.0.0.1: enroll with tokens,
mTLS between enrolled agents, online renewal, revocation (OCSP, CRL), and the renewal
daemon feeding a running TLS server that follows the rotated files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cyphrs_cli.client.tls import client_context
from tests.e2e.test_agent_tls import TlsServer, servers, spiffe_of, talk  # noqa: F401
from tests.helpers import Hierarchy, cli, openssl_verify, run_cyphrs, tool
from tests.server_process import ServerProcess, start_server


@pytest.fixture
def ca(fresh_hierarchy: Hierarchy) -> Iterator[ServerProcess]:
    server = start_server(fresh_hierarchy.home, fresh_hierarchy.inter_pass)
    try:
        yield server
    finally:
        server.stop()


def serial_of(directory: Path) -> str:
    cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    return f"{cert.serial_number:040x}"


def status(h: Hierarchy, serial: str) -> str:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        row = conn.execute("SELECT status FROM certificates WHERE serial = ?", (serial,)).fetchone()
    return str(row[0])


def issue_agent(h: Hierarchy, out: Path, *args: str) -> Path:
    done = h.issue("agent", "--workflow", "payments-recon", *args, "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return out


def renew(url: str, directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cyphrs("renew", "--ca-url", url, str(directory), "--json", *args)


def test_online_renewal_keeps_the_identity_with_a_new_key(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a", "--permission", "ledger:read")
    old_serial, old_key = serial_of(agent), (agent / "key.pem").read_bytes()
    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["schema"] == "cyphrs.agent-renew/v1" and answer["replaces"] == old_serial
    assert serial_of(agent) == answer["serial"] != old_serial
    assert (agent / "key.pem").read_bytes() != old_key
    assert (agent / "key.pem").stat().st_mode & 0o777 == 0o600
    assert answer["spiffe_id"] == spiffe_of(agent)
    verified = openssl_verify(
        agent / "ca.pem", agent / "chain.pem", agent / "cert.pem", "sslclient"
    )
    assert verified.returncode == 0, verified.stderr
    assert status(h, old_serial) == "superseded" and status(h, answer["serial"]) == "valid"


def test_online_renewal_refusals_come_back_with_the_servers_code(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("key.pem", "cert.pem", "chain.pem", "fullchain.pem", "ca.pem"):
        (stale / name).write_bytes((agent / name).read_bytes())
    assert renew(ca.url, agent).returncode == 0
    # The superseded certificate cannot renew again (exit 7, the server's message).
    done = renew(ca.url, stale)
    assert done.returncode == 7, done.stderr
    error = json.loads(done.stderr)["error"]
    assert error["slug"] == "conflict" and "already renewed" in error["message"]
    # A root that did not sign the CA's TLS certificate: refused before anything is sent.
    other = issue_other_root(tmp_path)
    before = (agent / "cert.pem").read_bytes()
    done = renew(ca.url, agent, "--root", str(other))
    assert done.returncode == 8 and json.loads(done.stderr)["error"]["slug"] == "ca-untrusted"
    assert (agent / "cert.pem").read_bytes() == before
    # Revoked by the CA's operator: refused (exit 7), nothing written.
    assert cli("revoke", str(agent / "cert.pem"), "--home", str(h.home)).exit_code == 0
    done = renew(ca.url, agent)
    assert done.returncode == 7 and "revoked" in json.loads(done.stderr)["error"]["message"]
    assert (agent / "cert.pem").read_bytes() == before


def issue_other_root(tmp_path: Path) -> Path:
    from tests.helpers import build_hierarchy

    return build_hierarchy(tmp_path / "other").root_cert


def test_renewal_daemon_rotates_a_running_tls_server_and_exits_when_revoked(
    ca: ServerProcess,
    fresh_hierarchy: Hierarchy,
    tmp_path: Path,
    servers: Callable[..., TlsServer],  # noqa: F811
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a", "--ttl", "2m")
    peer = h.issue("agent", "--workflow", "billing", "--out-dir", str(tmp_path / "b"))
    assert peer.exit_code == 0, peer.stderr
    tls_server = servers(agent, "--workflow", "billing")
    client = client_context(tmp_path / "b", workflow="payments-recon")
    first_serial = serial_of(agent)
    assert f"{talk(client, tls_server.port)[1].serial_number:040x}" == first_serial
    hook_log = tmp_path / "hook.log"
    # A 2-minute certificate whose notBefore is backdated 60 s (it lives 59 s from issue):
    # 2/3 of its 119 s is 19 s after issue; each renewal asks for 2 minutes again.
    daemon = subprocess.Popen(
        [
            tool("cyphrs"),
            "renew",
            "--ca-url",
            ca.url,
            str(agent),
            "--daemon",
            "--json",
            "--ttl",
            "2m",
            "--jitter",
            "0",
            "--exec",
            f'echo "$CYPHRS_SERIAL" >> {hook_log}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )
    try:
        deadline = time.monotonic() + 45
        while not hook_log.exists() and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.2)
        assert hook_log.exists(), "the daemon did not renew in time"
        new_serial = serial_of(agent)
        assert new_serial != first_serial
        assert f"{int(hook_log.read_text().split()[0], 16):040x}" == new_serial
        # The running TLS server (same process) now presents the renewed certificate.
        reply, served = talk(client, tls_server.port)
        assert f"{served.serial_number:040x}" == new_serial and reply["reloads"] >= 1
        assert status(h, first_serial) == "superseded"
        # The operator revokes the current certificate: the next renewal is refused and the
        # daemon exits with the server's code (7), without touching the files.
        assert cli("revoke", str(agent / "cert.pem"), "--home", str(h.home)).exit_code == 0
        code = daemon.wait(timeout=45)
        out, err = daemon.communicate(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert code == 7, err
    assert serial_of(agent) == new_serial
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["serial"] for line in lines] == [new_serial]
    assert lines[0]["schema"] == "cyphrs.agent-renew/v1" and lines[0]["replaces"] == first_serial
    assert b"revoked" in err


def test_daemon_stops_cleanly_on_sigterm(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    agent = issue_agent(fresh_hierarchy, tmp_path / "a", "--ttl", "1h")
    before = (agent / "cert.pem").read_bytes()
    daemon = subprocess.Popen(
        [tool("cyphrs"), "renew", "--ca-url", ca.url, str(agent), "--daemon"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )
    try:
        time.sleep(2)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=20)
        _, err = daemon.communicate(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert code == 0, err
    assert b"renews at" in err and b"stopped" in err
    assert (agent / "cert.pem").read_bytes() == before


def test_daemon_backs_off_while_the_ca_is_down_and_gives_up_at_expiry(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    import socket

    agent = issue_agent(fresh_hierarchy, tmp_path / "a", "--ttl", "2m")
    with socket.create_server(("127.0.0.1", 0)) as probe:
        dead = f"https://127.0.0.1:{probe.getsockname()[1]}"
    # Lifetime 119 s, backdated 60 s: due at once with 0.5; no CA answers; the daemon
    # retries with backoff and exits 5 (expired) when the certificate runs out (~60 s).
    daemon = subprocess.run(
        [
            tool("cyphrs"),
            "renew",
            "--ca-url",
            dead,
            str(agent),
            "--daemon",
            "--due-fraction",
            "0.5",
            "--jitter",
            "0",
            "--timeout",
            "1",
        ],
        capture_output=True,
        timeout=120,
        env={**os.environ, "CI": "true"},
        check=False,
    )
    assert daemon.returncode == 5, daemon.stderr
    err = daemon.stderr.decode()
    assert err.count("retry in") >= 3 and "expired" in err
