"""``crl --all``: every CA's CRL in one file (leaf issuers first) or one file per CA, as
chain CRL checking needs -- proved with ``openssl verify -crl_check_all`` and a real
Python ``ssl`` mTLS server process (VERIFY_CRL_CHECK_CHAIN) that admits a valid agent and
refuses a revoked one; ``doctor --crl-file`` catches a deployed file that went stale or
lacks a CA's CRL."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, cli
from tests.processes import free_port, stop_process, wait_for_port

SERVER = textwrap.dedent(
    """
    import socket, ssl, sys
    cert, key, root, crls, port = sys.argv[1:6]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(root)
    context.load_verify_locations(crls)
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    with socket.create_server(("127.0.0.1", int(port))) as listener:
        while True:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok\\n")
            except (ssl.SSLError, OSError):
                pass
    """
)


@pytest.fixture
def revoked_setup(fresh_hierarchy: Hierarchy, tmp_path: Path) -> tuple[Hierarchy, Path, Path]:
    h = fresh_hierarchy
    for name in ("good", "bad"):
        done = h.issue(
            "agent", "--workflow", name, "--dns", "localhost", "--out-dir", str(tmp_path / name)
        )
        if done.exit_code != 0:  # the agent profile may forbid DNS names
            done = h.issue("agent", "--workflow", name, "--out-dir", str(tmp_path / name))
        assert done.exit_code == 0, done.stderr
    home = ("--home", str(h.home))
    assert (
        cli(
            "revoke", str(tmp_path / "bad" / "cert.pem"), "--reason", "key-compromise", *home
        ).exit_code
        == 0
    )
    assert cli("crl", "--passphrase-file", str(h.inter_pass), *home).exit_code == 0
    return h, tmp_path / "good", tmp_path / "bad"


def _publish_root(h: Hierarchy) -> None:
    done = cli("crl", "--issuer", "test-root", "--passphrase-file", str(h.root_pass),
               "--home", str(h.home))  # fmt: skip
    assert done.exit_code == 0, done.stderr


def _verify(h: Hierarchy, crls: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-CAfile", str(h.root_cert), "-untrusted",
         str(h.inter_cert), "-CRLfile", str(crls), str(leaf)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_bundle_needs_every_cas_crl(
    revoked_setup: tuple[Hierarchy, Path, Path], tmp_path: Path
) -> None:
    h, good, bad = revoked_setup
    missing = cli("crl", "--all", "--out", str(tmp_path / "b.pem"), "--home", str(h.home))
    assert missing.exit_code == 10 and "test-root" in missing.stderr
    # The intermediate's CRL alone: chain checking cannot work for anyone.
    alone = _verify(h, h.home / "crls" / "test-inter.crl.pem", good / "cert.pem")
    assert alone.returncode != 0 and "unable to get certificate CRL" in alone.stdout + alone.stderr
    _publish_root(h)
    made = cli("crl", "--all", "--out", str(tmp_path / "b.pem"), "--home", str(h.home), "--json")
    assert made.exit_code == 0, made.stderr
    document = made.json()
    assert_valid(document)
    assert [c["role"] for c in document["crls"]] == ["intermediate", "root"]
    text = (tmp_path / "b.pem").read_text()
    assert text.count("BEGIN X509 CRL") == 2
    first = subprocess.run(["openssl", "crl", "-noout", "-issuer"], input=text, text=True,
                           capture_output=True, check=True).stdout  # fmt: skip
    assert "Test Issuing CA" in first  # Node reads only this one: the leaves' issuer
    assert _verify(h, tmp_path / "b.pem", good / "cert.pem").returncode == 0
    refused = _verify(h, tmp_path / "b.pem", bad / "cert.pem")
    assert refused.returncode != 0 and "error 23" in refused.stdout + refused.stderr


def test_out_dir_writes_one_crl_per_ca(
    revoked_setup: tuple[Hierarchy, Path, Path], tmp_path: Path
) -> None:
    h, _, _ = revoked_setup
    _publish_root(h)
    out = tmp_path / "crls"
    assert cli("crl", "--all", "--out-dir", str(out), "--home", str(h.home)).exit_code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["test-inter.crl.pem", "test-root.crl.pem"]
    assert all(p.read_text().count("BEGIN X509 CRL") == 1 for p in out.iterdir())
    assert cli("crl", "--out-dir", str(out), "--home", str(h.home)).exit_code == 2
    assert cli("crl", "--all", "--home", str(h.home)).exit_code == 2


@pytest.fixture
def python_server(
    revoked_setup: tuple[Hierarchy, Path, Path], tmp_path: Path
) -> Iterator[tuple[int, Path, Path, Hierarchy]]:
    h, good, bad = revoked_setup
    _publish_root(h)
    bundle = tmp_path / "bundle.pem"
    assert cli("crl", "--all", "--out", str(bundle), "--home", str(h.home)).exit_code == 0
    server_out = tmp_path / "server"
    assert h.issue("server", "--dns", "localhost", "--out-dir", str(server_out)).exit_code == 0
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(server_out / "fullchain.pem"), str(server_out / "key.pem"),
         str(h.root_cert), str(bundle), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield port, good, bad, h
    finally:
        process.kill()
        process.wait(timeout=10)


def _mtls(port: int, agent: Path, h: Hierarchy) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(h.root_cert))
    context.check_hostname = False
    context.load_cert_chain(str(agent / "fullchain.pem"), str(agent / "key.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return tls.recv(16)


def test_python_ssl_server_with_the_bundle_refuses_only_the_revoked(
    python_server: tuple[int, Path, Path, Hierarchy],
) -> None:
    port, good, bad, h = python_server
    assert _mtls(port, good, h) == b"ok\n"
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        if _mtls(port, bad, h) != b"ok\n":  # TLS 1.3: the refusal arrives on read
            raise ssl.SSLError("refused")


def test_doctor_watches_a_deployed_crl_file(
    revoked_setup: tuple[Hierarchy, Path, Path], tmp_path: Path
) -> None:
    h, _, _ = revoked_setup
    home = ("--home", str(h.home))
    inter_only = h.home / "crls" / "test-inter.crl.pem"
    found = cli("doctor", *home, "--crl-file", str(inter_only), "--json").json()["findings"]
    assert [f["id"] for f in found if f["id"].startswith("crl.deployed")] == [
        "crl.deployed_missing_ca"
    ]
    _publish_root(h)
    assert (
        cli("crl", "--validity", "3s", "--passphrase-file", str(h.inter_pass), *home).exit_code == 0
    )
    deployed = tmp_path / "deployed.pem"
    assert cli("crl", "--all", "--out", str(deployed), *home).exit_code == 0
    time.sleep(3.2)
    result = cli("doctor", *home, "--crl-file", str(deployed), "--json")
    ids = {f["id"]: f["severity"] for f in result.json()["findings"]}
    assert ids["crl.deployed_past_next_update"] == "critical" and result.exit_code == 10
    assert "crl.deployed_missing_ca" not in ids
    # And the bundle command refuses to deploy the stale CRL again.
    again = cli("crl", "--all", "--out", str(tmp_path / "again.pem"), *home)
    assert again.exit_code == 10 and "nextUpdate" in again.stderr


NGINX_CONF = """\
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
  fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {server}/fullchain.pem;
    ssl_certificate_key {server}/key.pem;
    ssl_client_certificate {root};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_crl {crls};
    location / {{ return 200 "agent $ssl_client_verify\\n"; }}
  }}
}}
"""


@pytest.fixture
def nginx(
    revoked_setup: tuple[Hierarchy, Path, Path], tmp_path: Path
) -> Iterator[tuple[Any, Hierarchy, Path, Path]]:
    """Starts nginx (loopback, free port) with a given CRL file; every process started
    here is stopped by its PID."""
    h, good, bad = revoked_setup
    server = tmp_path / "nginx-server"
    assert h.issue("server", "--dns", "localhost", "--out-dir", str(server)).exit_code == 0
    processes: list[subprocess.Popen[bytes]] = []

    def start(crls: Path) -> tuple[int, Path]:
        prefix = tmp_path / f"nginx{len(processes)}"
        (prefix / "tmp").mkdir(parents=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(prefix=prefix, port=port, server=server, root=h.root_cert, crls=crls)
        )
        process = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        wait_for_port(port, process)
        return port, prefix / "error.log"

    try:
        yield start, h, good, bad
    finally:
        for process in processes:
            stop_process(process)  # SIGTERM first: SIGKILL would orphan nginx's workers


def _curl(port: int, agent: Path, h: Hierarchy) -> tuple[str, str]:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--resolve", f"localhost:{port}:127.0.0.1",
         "--cacert", str(h.root_cert), "--cert", str(agent / "fullchain.pem"),
         "--key", str(agent / "key.pem"), "-w", "\\n%{http_code}", f"https://localhost:{port}/"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return code, body.strip()


def test_nginx_with_the_bundle_refuses_only_the_revoked_agent(nginx: Any, tmp_path: Path) -> None:
    start, h, good, bad = nginx
    _publish_root(h)
    bundle = tmp_path / "crls.pem"
    assert cli("crl", "--all", "--out", str(bundle), "--home", str(h.home)).exit_code == 0
    port, log = start(bundle)
    code, body = _curl(port, good, h)
    assert (code, body) == ("200", "agent SUCCESS")
    code, _ = _curl(port, bad, h)
    assert code == "400"
    assert "(23:certificate revoked)" in log.read_text()


def test_nginx_with_only_the_issuers_crl_refuses_everyone(nginx: Any) -> None:
    start, h, good, _ = nginx
    port, log = start(h.home / "crls" / "test-inter.crl.pem")
    code, _ = _curl(port, good, h)
    assert code == "400"
    assert "(3:unable to get certificate CRL)" in log.read_text()


def test_nginx_with_a_crl_past_next_update_refuses_everyone(nginx: Any, tmp_path: Path) -> None:
    start, h, good, _ = nginx
    _publish_root(h)
    home = ("--home", str(h.home))
    assert (
        cli("crl", "--validity", "3s", "--passphrase-file", str(h.inter_pass), *home).exit_code == 0
    )
    bundle = tmp_path / "crls.pem"
    assert cli("crl", "--all", "--out", str(bundle), *home).exit_code == 0
    time.sleep(3.2)
    port, log = start(bundle)
    code, _ = _curl(port, good, h)
    assert code == "400"
    assert "(12:CRL has expired)" in log.read_text()
    found = cli("doctor", *home, "--crl-file", str(bundle), "--json").json()["findings"]
    assert "crl.deployed_past_next_update" in {f["id"] for f in found}
