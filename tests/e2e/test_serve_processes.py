"""``cyphrs serve --processes N`` attacked as a fleet, a replayer and an unlucky operator
would: enrollments spread over workers land in one ledger with one hash chain; a one-use
token replayed by 20 clients over 2 workers issues once; rate limits hold for the server as
a whole; kill -9 of a worker is repaired, kill -9 of the supervisor stops every worker, and
kill -9 of everything under load loses no delivered certificate. Real server processes on
127.0.0.1, real TLS, every process stopped by its PID."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_serve_crash import RenewalLoad, _ledger_serials
from tests.helpers import Hierarchy, cli
from tests.serve_clients import new_csr, request
from tests.server_process import ServerProcess, start_server, wait_until, worker_alive

pytestmark = pytest.mark.slow


def _token(ca: Hierarchy, uses: int) -> str:
    done = cli(
        "token", "create", "--home", str(ca.home), "--workflow", "fleet",
        "--uses", str(uses), "--ttl", "10m", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return str(done.json()["token"])


def _enroll(server: ServerProcess, token: str) -> int:
    _, csr = new_csr()
    return request(server, "POST", "/v1/enroll", {"csr": csr.decode(), "token": token}).status


def _in_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def _answered_by(server: ServerProcess, operation: str) -> set[int]:
    return {
        int(e["pid"])
        for e in server.log_events()
        if e.get("operation") == operation and e.get("status") in (200, 201)
    }


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_workers_share_the_load_the_ledger_and_the_metrics(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    token = _token(ca, 100)
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--token-rate", "0/m") as server:
        workers = server.worker_pids
        assert len(set(workers)) == 2 and server.pid not in workers
        statuses: list[int] = []

        def client() -> None:
            for _ in range(5):
                statuses.append(_enroll(server, token))

        _in_threads(client, 4)
        assert statuses == [201] * 20
        # Both workers answered (the supervisor hands each connection to the least busy).
        assert _answered_by(server, "enroll") == set(workers)
        # /metrics sums every worker's counters, whichever worker answers it. Until both
        # have answered: ties go to the worker handed fewer connections so far, and the
        # enrollments may have left one ahead by several (bounded: 20 connections).
        seen = set()
        for _ in range(30):
            reply = request(server, "GET", "/metrics")
            assert reply.status == 200
            text = reply.body.decode()
            seen.add(_metric(text, "cyphrs_issuance_total", operation="enroll", outcome="issued"))
            if len(seen) == 1 and _answered_by(server, "metrics") == set(workers):
                break
        assert seen == {20.0}
        assert _answered_by(server, "metrics") == set(workers)
    assert server.process.returncode == 0
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (agents,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'"
        ).fetchone()
    assert agents == 20
    verified = cli("audit", "verify", "--home", str(ca.home))
    assert verified.exit_code == 0, verified.stderr  # one hash chain from two writers


def test_one_use_token_replayed_over_two_workers_issues_once(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    token = _token(ca, 1)
    with start_server(
        ca.home, ca.inter_pass, "--processes", "2", "--token-rate", "0/m", "--failure-rate", "0/m"
    ) as server:
        statuses: list[int] = []
        gate = threading.Barrier(20)

        def replay() -> None:
            gate.wait()
            statuses.append(_enroll(server, token))

        _in_threads(replay, 20)
        assert len(_answered_by(server, "enroll")) == 1  # the winner's worker
        replayed_on = {int(e["pid"]) for e in server.log_events() if e.get("operation") == "enroll"}
    assert replayed_on == set(server.worker_pids)  # the replays really reached both workers
    assert sorted(statuses).count(201) == 1, statuses
    assert all(s in (201, 403, 409) for s in statuses), statuses
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (issued,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'"
        ).fetchone()
    assert issued == 1
    assert cli("audit", "verify", "--home", str(ca.home)).exit_code == 0


def test_failure_rate_bounds_the_server_not_each_worker(fresh_hierarchy: Hierarchy) -> None:
    """--failure-rate 6/m over 2 workers: each enforces 3/m, so 12 made-up tokens from one
    address get at most 6 refusals (each one a ledger event) and the rest 429."""
    ca = fresh_hierarchy
    with start_server(
        ca.home, ca.inter_pass, "--processes", "2", "--failure-rate", "6/m"
    ) as server:
        statuses = [_enroll(server, "cyphrs_tok_" + "A" * 43) for _ in range(12)]
    assert statuses.count(429) >= 6, statuses
    assert 1 <= statuses.count(403) <= 6, statuses
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (refusals,) = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'token.refused'"
        ).fetchone()
    assert refusals == statuses.count(403) <= 6


def test_a_killed_worker_is_replaced_and_service_goes_on(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    token = _token(ca, 50)
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--token-rate", "0/m") as server:
        victim = server.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda: any(e.get("event") == "worker.started" for e in server.log_events()), 30
        ), server.log()[-2000:]
        exited = [e for e in server.log_events() if e.get("event") == "worker.exited"]
        assert exited[0]["worker"] == victim and exited[0]["code"] == -signal.SIGKILL
        replacement = next(
            int(e["worker"]) for e in server.log_events() if e.get("event") == "worker.started"
        )
        # Every request is answered meanwhile, and the replacement takes its share.
        assert [_enroll(server, token) for _ in range(8)] == [201] * 8
        assert wait_until(
            lambda: _enroll(server, token) == 201 and replacement in _answered_by(server, "enroll"),
            60,
        ), server.log()[-2000:]
        assert not worker_alive(victim)
    assert server.process.returncode == 0
    assert not any(worker_alive(pid) for pid in server.worker_pids)


def test_sigterm_stops_every_worker_gracefully(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    server = start_server(ca.home, ca.inter_pass, "--processes", "3")
    try:
        workers = server.worker_pids
        assert len(workers) == 3 and all(worker_alive(pid) for pid in workers)
        assert request(server, "GET", "/readyz").status == 200
        assert server.terminate() == 0
        assert not any(worker_alive(pid) for pid in workers)
        stopped = {e.get("pid") for e in server.log_events() if e.get("event") == "stopped"}
        assert stopped == set(workers)  # each drained its committer and closed its ledger
    finally:
        server.stop()


def test_workers_stop_when_their_supervisor_is_killed(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    server = start_server(ca.home, ca.inter_pass, "--processes", "2")
    try:
        workers = server.worker_pids
        server.kill()  # SIGKILL: no chance to stop anyone
        assert wait_until(lambda: not any(worker_alive(pid) for pid in workers), 15)
        reasons = {e.get("reason") for e in server.log_events() if e.get("event") == "shutdown"}
        assert reasons <= {"supervisor-gone"} and reasons
    finally:
        server.stop()


def test_kill_9_of_every_process_under_load_loses_no_delivered_certificate(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = fresh_hierarchy
    server = start_server(ca.home, ca.inter_pass, "--processes", "2", "--identity-rate", "0/m")
    try:
        load = RenewalLoad(ca, server, tmp_path)
        load.start()
        time.sleep(2.0)
        for pid in [server.pid, *server.worker_pids]:
            os.kill(pid, signal.SIGKILL)
        load.stop()
    finally:
        server.stop()
    assert len(load.received) >= 4, load.errors
    ledger = _ledger_serials(ca)
    missing = [s for s in load.received if s not in ledger]
    assert not missing, f"{len(missing)} delivered certificates are not in the ledger"
    verified = cli("audit", "verify", "--home", str(ca.home))
    assert verified.exit_code == 0, verified.stderr
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as again:
        assert request(again, "GET", "/readyz").status == 200


def test_wrong_passphrase_is_refused_before_any_worker_starts(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = fresh_hierarchy
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the passphrase\n")
    with pytest.raises(RuntimeError, match=r"exit 4"):
        start_server(ca.home, wrong, "--processes", "2")


def test_acme_is_refused_with_several_processes(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    with pytest.raises(RuntimeError, match=r"exit 2\).*--acme serves from one process"):
        start_server(ca.home, ca.inter_pass, "--processes", "2", "--acme")


def test_ready_line_names_the_supervisor_and_each_worker(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        ready = server.ready
        assert ready["pid"] == server.pid
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", ready["listening"])
        serials = [w["tls_serial"] for w in ready["processes"]]
        assert len(set(serials)) == 2  # each worker has its own TLS certificate
        assert ready["tls_serial"] == serials[0]
        recorded = _ledger_serials(ca)
        assert all(recorded[serial] == "valid" for serial in serials)


def test_secrets_reach_workers_over_a_pipe_only(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    passphrase = ca.inter_pass.read_bytes().strip()
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        for pid in [server.pid, *server.worker_pids]:
            for part in ("cmdline", "environ"):
                assert passphrase not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)


def test_sighup_renews_every_workers_tls_certificate(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        before = {w["tls_serial"] for w in server.ready["processes"]}
        server.process.send_signal(signal.SIGHUP)

        def renewed() -> list[str]:
            return [e["serial"] for e in server.log_events() if e.get("event") == "tls.renewed"]

        assert wait_until(lambda: len(renewed()) == 2, 30), server.log()[-2000:]
        assert len(set(renewed()) | before) == 4
        assert request(server, "GET", "/readyz").status == 200


def test_a_worker_dying_again_and_again_stops_the_server(fresh_hierarchy: Hierarchy) -> None:
    """The 6th death within 60 s (5 replacements) stops the server: exit 8, no worker left."""
    ca = fresh_hierarchy
    server = start_server(ca.home, ca.inter_pass, "--processes", "2")
    try:
        for round_ in range(6):
            alive = [pid for pid in server.worker_pids if worker_alive(pid)]
            assert alive, server.log()[-2000:]
            os.kill(alive[-1], signal.SIGKILL)
            if round_ < 5:
                assert wait_until(
                    lambda r=round_: (
                        sum(1 for e in server.log_events() if e.get("event") == "worker.started")
                        == r + 1
                    ),
                    30,
                ), server.log()[-2000:]
        assert server.process.wait(timeout=60) == 8
        assert not any(worker_alive(pid) for pid in server.worker_pids)
    finally:
        server.stop()


def test_connection_cap_is_per_worker_and_refusals_keep_the_balance(
    fresh_hierarchy: Hierarchy,
) -> None:
    """--max-connections 2 over 2 workers: one each. Two idle clients fill both; a third is
    closed at once. Once they leave, sequential requests alternate between the workers
    again: the turned-away connection was reported closed too, or the supervisor would
    count it open forever and send everything to the other worker."""
    import socket
    import ssl

    ca = fresh_hierarchy
    with start_server(
        ca.home, ca.inter_pass, "--processes", "2", "--max-connections", "2"
    ) as server:
        context = ssl.create_default_context(cafile=str(server.root_pem))

        def connect() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            return context.wrap_socket(raw, server_hostname="127.0.0.1")

        idle = [connect(), connect()]
        try:
            refused = connect()
            try:
                refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert refused.recv(1024) == b""  # closed without an answer
            except (ssl.SSLError, ConnectionError):
                pass  # closed while the request was still being written
            finally:
                refused.close()
        finally:
            for conn in idle:
                conn.close()
        time.sleep(0.5)  # the workers report the closes
        for _ in range(6):
            assert request(server, "GET", "/healthz").status == 200
        healthy = [int(e["pid"]) for e in server.log_events() if e.get("operation") == "healthz"]
        assert sorted(healthy.count(pid) for pid in server.worker_pids) == [3, 3]


def test_workers_sign_with_a_pkcs11_token_key(tmp_path: Path) -> None:
    """The issuing key in SoftHSM2: the supervisor asks for the PIN once, each worker opens
    its own session with it, and both sign certificates that openssl verifies. The PIN is
    in no worker's argv or environment."""
    import subprocess

    from tests.e2e.test_hsm import PIN, _hsm_hierarchy, make_tokens

    (tmp_path / "hsm").mkdir()
    tokens = make_tokens(tmp_path / "hsm", "root-token", "issuing-token")
    hsm = _hsm_hierarchy(tokens, tmp_path, "p256")
    done = cli(
        "token", "create", "--home", str(hsm.home), "--workflow", "fleet", "--uses", "10",
        "--ttl", "10m", "--json",
    )  # fmt: skip
    token = str(done.json()["token"])
    with start_server(
        hsm.home, tokens.pin_file, "--pin-file", str(tokens.pin_file), "--processes", "2",
        "--token-rate", "0/m", env=tokens.env(),
    ) as server:  # fmt: skip
        issued = []
        for _ in range(6):
            _, csr = new_csr()
            reply = request(server, "POST", "/v1/enroll", {"csr": csr.decode(), "token": token})
            assert reply.status == 201, reply.body
            issued.append(reply.json())
        assert _answered_by(server, "enroll") == set(server.worker_pids)
        for pid in server.worker_pids:
            for part in ("cmdline", "environ"):
                assert PIN.encode() not in Path(f"/proc/{pid}/{part}").read_bytes()
    for n, one in enumerate(issued):
        (tmp_path / f"leaf{n}.pem").write_text(one["certificate"])
        (tmp_path / f"chain{n}.pem").write_text(one["chain"])
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(server.root_pem), "-untrusted",
             str(tmp_path / f"chain{n}.pem"), str(tmp_path / f"leaf{n}.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_during_start_up_stops_at_once(fresh_hierarchy: Hierarchy) -> None:
    """SIGTERM while the workers are still starting (their TLS certificate's signing slowed
    to 3 s): the supervisor stops them and exits 0 without waiting for them to be ready
    and without announcing a server that is going away."""
    import subprocess

    from tests.helpers import tool

    ca = fresh_hierarchy
    process = subprocess.Popen(
        [
            tool("cyphrs"), "serve", "--home", str(ca.home), "--listen", "127.0.0.1:0",
            "--passphrase-file", str(ca.inter_pass), "--processes", "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CI": "true", "CYPHRS_TEST_DELAY": "after-sign=3"},
    )  # fmt: skip
    workers: list[int] = []
    try:

        def children() -> list[int]:
            found = []
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and worker_alive(int(entry.name)):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == process.pid:
                        found.append(int(entry.name))
            return found

        assert wait_until(lambda: len(children()) == 2, 30)
        workers = children()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 2.5  # not after the 3 s start-up
        assert process.stdout is not None and process.stdout.read() == b""
        assert wait_until(lambda: not any(worker_alive(pid) for pid in workers), 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in workers:
            if worker_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _concurrent_enrollments_and_a_refusal(server: ServerProcess, ca: Hierarchy) -> None:
    """Groups written by the loop (several at once), then a refused replay (the blocking
    path on an executor thread)."""
    token = _token(ca, 8)
    codes: list[int] = []
    _in_threads(lambda: codes.extend([_enroll(server, token), _enroll(server, token)]), 4)
    assert sorted(codes) == [201] * 8, codes
    assert _enroll(server, token) == 403


def _actors_since_the_token(ca: Hierarchy) -> list[tuple[str, str]]:
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        return conn.execute(  # what the server recorded once the CLI made the token
            "SELECT type, actor FROM events WHERE seq >"
            " (SELECT max(seq) FROM events WHERE type = 'token.created')"
        ).fetchall()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_every_event_the_server_records_names_its_actor(
    fresh_hierarchy: Hierarchy, processes: str
) -> None:
    """``cyphrs --actor X serve``: every event names X, whichever thread or worker wrote
    it. The actor is a context variable; it used to reach neither the workers of
    ``--processes 2`` nor, in one process, the request executor's threads and the loop
    callbacks the commit thread schedules (5 of 11 certificate events named X)."""
    ca = fresh_hierarchy
    with start_server(
        ca.home, ca.inter_pass, "--processes", processes, root_args=("--actor", "ops:ca-7")
    ) as server:
        _concurrent_enrollments_and_a_refusal(server, ca)
    rows = _actors_since_the_token(ca)
    kinds = sorted(kind for kind, _ in rows)
    assert kinds == sorted(["certificate.issued"] * 8 + ["token.used"] * 8 + ["token.refused"])
    assert {who for _, who in rows} == {"ops:ca-7"}, rows


def test_events_recorded_by_workers_name_the_environments_actor(
    fresh_hierarchy: Hierarchy,
) -> None:
    """Without ``--actor``, ``CYPHRS_ACTOR`` in the server's environment names them."""
    ca = fresh_hierarchy
    with start_server(
        ca.home, ca.inter_pass, "--processes", "2", env={"CYPHRS_ACTOR": "svc:ca-prod-7"}
    ) as server:
        _concurrent_enrollments_and_a_refusal(server, ca)
    assert {who for _, who in _actors_since_the_token(ca)} == {"svc:ca-prod-7"}
