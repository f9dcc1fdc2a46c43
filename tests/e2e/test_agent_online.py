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
from cryptography.hazmat.primitives import serialization

from cyphrs_cli.client.api import CaClient
from cyphrs_cli.client.tls import client_context
from tests.cli.test_json_contract import assert_valid
from tests.e2e.test_agent_tls import TlsServer, servers, spiffe_of, talk  # noqa: F401
from tests.helpers import Hierarchy, cli, openssl_verify, run_cyphrs, tool
from tests.server_process import ServerProcess, start_server, wait_until


@pytest.fixture
def ca(fresh_hierarchy: Hierarchy) -> Iterator[ServerProcess]:
    server = start_server(fresh_hierarchy.home, fresh_hierarchy.inter_pass)
    try:
        yield server
    finally:
        server.stop()


def hex_serial(number: int) -> str:
    """The ledger's form: lowercase hex, an even number of digits."""
    text = f"{number:x}"
    return "0" * (len(text) % 2) + text


def serial_of(directory: Path) -> str:
    cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    return hex_serial(cert.serial_number)


def status(h: Hierarchy, serial: str) -> str:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        row = conn.execute("SELECT status FROM certificates WHERE serial = ?", (serial,)).fetchone()
    return str(row[0])


def issue_agent(h: Hierarchy, out: Path, *args: str) -> Path:
    done = h.issue("agent", "--workflow", "payments-recon", *args, "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return out


def stop_daemon(daemon: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """SIGTERM ``daemon`` (SIGKILL if it has not stopped in 20 s): its exit code and stderr."""
    try:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=20)
        _, err = daemon.communicate(timeout=10)
        return code, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def renew(
    url: str, directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return run_cyphrs("renew", "--ca-url", url, str(directory), "--json", *args, env=env)


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
    assert_valid(answer)
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
    assert hex_serial(talk(client, tls_server.port)[1].serial_number) == first_serial
    hook_log = tmp_path / "hook.log"
    # A 2-minute certificate whose notBefore is backdated 60 s (it lives 59 s from issue):
    # 2/3 of its 119 s is 19 s after issue; each renewal asks for 2 minutes again.
    daemon = subprocess.Popen(
        [
            tool("cyphrs"),
            "renew",
            "--ca-url",
            ca.url,
            str(agent / "cert.pem"),  # the directory, or its cert.pem (as the issue's example)
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
        assert hex_serial(int(hook_log.read_text().split()[0], 16)) == new_serial
        # The running TLS server (same process) now presents the renewed certificate.
        reply, served = talk(client, tls_server.port)
        assert hex_serial(served.serial_number) == new_serial and reply["reloads"] >= 1
        assert status(h, first_serial) == "superseded"
        # An administrator revokes the current certificate over the admin API (mTLS with an
        # admin-profile certificate): the next renewal is refused and the daemon exits with
        # the server's code (7), without touching the files.
        admin = h.issue("admin", "--cn", "ops-alice", "--out-dir", str(tmp_path / "admin"))
        assert admin.exit_code == 0, admin.stderr
        with CaClient(
            ca.url,
            ca.root_pem.read_bytes(),
            cert_file=tmp_path / "admin" / "fullchain.pem",
            key_file=tmp_path / "admin" / "key.pem",
        ) as operator:
            operator.call("POST", "/v1/admin/revoke", {"serial": new_serial})
        assert status(h, new_serial) == "revoked"
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
    assert_valid(lines[0])
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
    time.sleep(2)
    code, err = stop_daemon(daemon)
    assert code == 0, err
    assert b"renews at" in err and b"stopped" in err
    assert (agent / "cert.pem").read_bytes() == before


def test_a_daemon_whose_stdout_is_gone_still_reloads_and_goes_on(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A closed stdout (a restarted journald, a reader that went away) after the swap
    used to end the daemon with exit 1 before its --exec hook ran: the service kept a
    superseded certificate. The hook runs first, and the lost lines do not stop it."""
    agent = issue_agent(fresh_hierarchy, tmp_path / "a", "--ttl", "2m")
    first = serial_of(agent)
    marker = tmp_path / "reloaded"
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the daemon's stdout fails (EPIPE)
    daemon = subprocess.Popen(
        [tool("cyphrs"), "renew", "--ca-url", ca.url, str(agent), "--daemon", "--json",
         "--ttl", "2m", "--due-fraction", "0.5", "--jitter", "0",
         "--exec", f'echo "$CYPHRS_SERIAL" >> {marker}'],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    os.close(write_end)
    try:
        deadline = time.monotonic() + 45
        while not marker.exists() and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the hook did not run"
        time.sleep(1)
        assert daemon.poll() is None, "the daemon ended"
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0, err
    assert serial_of(agent) != first
    assert hex_serial(int(marker.read_text().split()[0], 16)) == serial_of(agent)


def test_a_one_shot_renewal_with_stdout_closed_swaps_and_exits_0(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``renew --json >&-`` used to swap the files and then exit 1 (internal error)."""
    agent = issue_agent(fresh_hierarchy, tmp_path / "a")
    first = serial_of(agent)
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" >&-', tool("cyphrs"), "renew", "--ca-url", ca.url,
         str(agent), "--json"],
        capture_output=True,
        env={**os.environ, "CI": "true"},
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert serial_of(agent) != first and status(fresh_hierarchy, first) == "superseded"


def test_sigterm_during_a_hanging_hook_stops_the_daemon_within_the_grace(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A hook that hangs (a reload waiting on a stuck service) used to hold SIGTERM for
    its whole 120 s timeout, longer than systemd waits before SIGKILL. The daemon now
    gives it ``HOOK_STOP_GRACE`` (5 s), kills it with its children and exits 0."""
    from cyphrs_cli.client.agent import HOOK_STOP_GRACE

    agent = issue_agent(fresh_hierarchy, tmp_path / "a", "--ttl", "2m")
    started, grandchild = tmp_path / "hook-started", tmp_path / "grandchild"
    daemon = subprocess.Popen(
        [tool("cyphrs"), "renew", "--ca-url", ca.url, str(agent), "--daemon",
         "--ttl", "2m", "--due-fraction", "0.5", "--jitter", "0",
         "--exec", f"sleep 300 & echo $! > {grandchild}; touch {started}; wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    try:
        assert wait_until(lambda: started.exists() or daemon.poll() is not None, 45)
        assert started.exists(), "the hook did not start"
        time.sleep(0.5)
        signalled = time.monotonic()
        code, err = stop_daemon(daemon)
        took = time.monotonic() - signalled
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert code == 0, err
    assert took < HOOK_STOP_GRACE + 5, took
    assert b"the daemon is stopping" in err
    pid = int(grandchild.read_text())
    assert wait_until(lambda: not _running(pid), 10), f"the hook's child {pid} outlived it"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


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


def create_token(h: Hierarchy, workflow: str, *args: str) -> str:
    done = cli("token", "create", "--workflow", workflow, *args, "--home", str(h.home), "--json")
    assert done.exit_code == 0, done.stderr
    return str(done.json()["token"])


def enroll(
    url: str,
    root: Path,
    out: Path,
    *args: str,
    token: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    via = ("--token", "-") if token is not None and env is None else ()
    return run_cyphrs(
        "enroll",
        "--ca-url",
        url,
        "--root",
        str(root),
        "--out-dir",
        str(out),
        "--json",
        *via,
        *args,
        input=token.encode() if token is not None and env is None else None,
        env=env,
    )


def test_enroll_mtls_renew_revoke_ocsp_crl(
    ca: ServerProcess,
    fresh_hierarchy: Hierarchy,
    tmp_path: Path,
    servers: Callable[..., TlsServer],  # noqa: F811
) -> None:
    from spiffe import X509Svid

    h = fresh_hierarchy
    root = ca.root_pem
    # Two agents enroll with one-time tokens: one by stdin, one by the environment.
    token_a = create_token(h, "payments-recon", "--permission", "ledger:read")
    done = enroll(ca.url, root, tmp_path / "a", token=token_a)
    assert done.returncode == 0, done.stderr
    a, enrolled = tmp_path / "a", json.loads(done.stdout)
    assert enrolled["schema"] == "cyphrs.enroll/v1" and enrolled["serial"] == serial_of(a)
    assert_valid(enrolled)
    assert token_a.encode() not in done.stdout + done.stderr
    token_b = create_token(h, "billing", "--permission", "queue:write")
    done = enroll(ca.url, root, tmp_path / "b", env={"CYPHRS_TOKEN": token_b})
    assert done.returncode == 0, done.stderr
    b = tmp_path / "b"
    for agent in (a, b):
        assert (agent / "key.pem").stat().st_mode & 0o777 == 0o600
        svid = X509Svid.load(
            str(agent / "fullchain.pem"), str(agent / "key.pem"), serialization.Encoding.PEM
        )
        assert str(svid.spiffe_id) == spiffe_of(agent)
        assert status(h, serial_of(agent)) == "valid"
    assert spiffe_of(a).startswith("spiffe://acme.internal/agent/payments-recon/")
    # The token is spent: a replay is refused (exit 5, rule token.used) and leaves nothing.
    done = enroll(ca.url, root, tmp_path / "replay", token=token_a)
    assert done.returncode == 5 and json.loads(done.stderr)["error"]["rule"] == "token.used"
    assert not (tmp_path / "replay").exists()
    # mTLS between the two enrolled agents, each checking the other's workflow.
    tls_server = servers(a, "--workflow", "billing")
    reply, served = talk(client_context(b, workflow="payments-recon"), tls_server.port)
    assert reply["peer"] == spiffe_of(b) and hex_serial(served.serial_number) == serial_of(a)
    s_client = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{tls_server.port}",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            str(b / "ca.pem"),
            "-cert",
            str(b / "cert.pem"),
            "-cert_chain",
            str(b / "chain.pem"),
            "-key",
            str(b / "key.pem"),
        ],
        input=b"hi",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert json.loads(s_client.stdout)["peer"] == spiffe_of(b), s_client.stderr
    # Renew online, then revoke itself over mTLS with the new certificate.
    first = serial_of(a)
    assert renew(ca.url, a).returncode == 0
    renewed = serial_of(a)
    assert renewed != first and status(h, first) == "superseded"
    with CaClient(
        ca.url, root.read_bytes(), cert_file=a / "fullchain.pem", key_file=a / "key.pem"
    ) as client:
        client.revoke_self("key-compromise")
    assert status(h, renewed) == "revoked"
    # OCSP from the server says revoked (and good for the other agent).
    for agent, expected in ((a, "revoked"), (b, "good")):
        ocsp = subprocess.run(
            [
                "openssl",
                "ocsp",
                "-issuer",
                str(agent / "chain.pem"),
                "-cert",
                str(agent / "cert.pem"),
                "-url",
                f"{ca.url}/ocsp",
                "-CAfile",
                str(agent / "ca.pem"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ocsp.returncode == 0, ocsp.stderr
        assert "Response verify OK" in ocsp.stderr + ocsp.stdout
        assert f"cert.pem: {expected}" in ocsp.stdout
    # The server's CRL makes openssl verify fail with error 23 (certificate revoked).
    crl_der = tmp_path / "inter.crl"
    with subprocess.Popen(
        [
            "curl",
            "-sf",
            "--cacert",
            str(root),
            f"{ca.url}/v1/crl/test-inter.crl",
            "-o",
            str(crl_der),
        ]
    ) as curl:
        assert curl.wait(30) == 0
    crl_pem = tmp_path / "inter.crl.pem"
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem)], check=True
    )
    verdict = openssl_verify(
        a / "ca.pem",
        a / "chain.pem",
        a / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(crl_pem),
    )
    assert verdict.returncode != 0 and "error 23" in verdict.stdout + verdict.stderr
    ok = openssl_verify(
        b / "ca.pem",
        b / "chain.pem",
        b / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(crl_pem),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A revoked certificate can neither renew nor revoke itself again.
    done = renew(ca.url, a)
    assert done.returncode == 7, done.stderr


def test_enroll_refusals_leave_no_files(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    # An unknown token: exit 5 from the server; a wrong --root: exit 8 before sending it.
    done = enroll(ca.url, ca.root_pem, tmp_path / "x", token="cyphrs_tok_" + "A" * 43)
    assert done.returncode == 5 and not (tmp_path / "x").exists()
    # Into a deep path: the parents it made go too; one that was there stays.
    (tmp_path / "kept").mkdir()
    deep = tmp_path / "kept" / "p" / "q" / "agent"
    done = enroll(ca.url, ca.root_pem, deep, token="cyphrs_tok_" + "A" * 43)
    assert done.returncode == 5 and list((tmp_path / "kept").iterdir()) == []
    token = create_token(h, "payments-recon", "--max-ttl", "1h")
    other = issue_other_root(tmp_path)
    done = enroll(ca.url, other, tmp_path / "y", token=token)
    assert done.returncode == 8 and json.loads(done.stderr)["error"]["slug"] == "ca-untrusted"
    assert not (tmp_path / "y").exists()
    # Over the token's TTL bound: refused by the server, and the token is not spent.
    done = enroll(ca.url, ca.root_pem, tmp_path / "z", "--ttl", "2h", token=token)
    assert done.returncode == 5, done.stderr
    assert not (tmp_path / "z").exists()
    done = enroll(ca.url, ca.root_pem, tmp_path / "z", "--ttl", "30m", token=token)
    assert done.returncode == 0, done.stderr
    # An existing directory is not overwritten without --force (checked before sending).
    token2 = create_token(h, "payments-recon")
    done = enroll(ca.url, ca.root_pem, tmp_path / "z", token=token2)
    assert done.returncode == 7
    done = enroll(ca.url, ca.root_pem, tmp_path / "z", "--force", token=token2)
    assert done.returncode == 0, done.stderr


def test_enroll_with_a_ci_jwt(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    h = fresh_hierarchy
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    added = cli(
        "provisioner",
        "add",
        "ci",
        "--jwt-issuer",
        "https://ci.example",
        "--audience",
        "https://ca.acme.internal",
        "--jwks-file",
        str(tmp_path / "jwks.json"),
        "--workflow",
        "payments-ci",
        "--instance-claim",
        "run_id",
        "--require-claim",
        "repository=acme/payments",
        "--home",
        str(h.home),
    )
    assert added.exit_code == 0, added.stderr

    def credential(name: str, **extra: object) -> Path:
        now = int(time.time())
        claims = {
            "iss": "https://ci.example",
            "aud": "https://ca.acme.internal",
            "sub": "job",
            "repository": "acme/payments",
            "run_id": f"run{time.time_ns()}",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": f"j{time.time_ns()}",
            **extra,
        }
        path = tmp_path / name
        path.write_text(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"}))
        return path

    good = credential("good.jwt")
    done = enroll(ca.url, ca.root_pem, tmp_path / "job", "--jwt-file", str(good))
    assert done.returncode == 0, done.stderr
    assert spiffe_of(tmp_path / "job").startswith("spiffe://acme.internal/agent/payments-ci/run")
    # The same JWT again, another audience, another repository: refused with their rules.
    for path, rule in (
        (good, "jwt.replay"),
        (credential("aud.jwt", aud="https://elsewhere"), "jwt.audience"),
        (credential("repo.jwt", repository="evil/fork"), "jwt.claims"),
    ):
        done = enroll(ca.url, ca.root_pem, tmp_path / "refused", "--jwt-file", str(path))
        assert done.returncode == 5, done.stderr
        assert json.loads(done.stderr)["error"]["rule"] == rule
        assert not (tmp_path / "refused").exists()
