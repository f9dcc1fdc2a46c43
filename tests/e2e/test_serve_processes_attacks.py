"""``cyphrs serve --processes N`` attacked where its supervisor and workers meet: descriptors
running out in a worker or in the supervisor, a stalled worker, the supervisor killed during
start-up, a port already taken. Real server processes on 127.0.0.1 (free ports), real TLS,
resource limits lowered with ``prlimit(2)`` on the running processes; every process is
stopped by its PID."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, tool
from tests.serve_clients import client_context, new_csr, request
from tests.server_process import ServerProcess, kill_worker, start_server, wait_until, worker_alive

pytestmark = pytest.mark.slow


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def _descriptor_limit(pid: int, soft: int) -> Iterator[None]:
    """Lower ``pid``'s RLIMIT_NOFILE soft limit to ``soft`` (restored afterwards)."""
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, before)


def _silent_connections(server: ServerProcess, count: int) -> list[socket.socket]:
    """TCP connections that never start the TLS handshake (a slowloris client)."""
    return [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(count)]


def _healthz_by_worker(server: ServerProcess) -> list[int]:
    return [int(e["pid"]) for e in server.log_events() if e.get("operation") == "healthz"]


def _healthz_on_held_connections(server: ServerProcess, count: int) -> list[int]:
    """``count`` connections made one after another, each answering one ``/healthz`` and
    held open until all are made: the pid of the worker each reached. Held, because the
    supervisor hands a connection to the worker with the fewest open ones, ties going to
    the one handed fewer in all: with sequential short requests, whether a worker's close
    report arrives before the next accept decides who gets it (a flood that left one
    worker with more hand-overs then sends every short request to the other)."""
    held = []
    try:
        for _ in range(count):
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=client_context(server), timeout=20
            )
            connection.request("GET", "/healthz")
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200, server.log()[-2000:]
            held.append(connection)
        return _healthz_by_worker(server)[-count:]
    finally:
        for connection in held:
            connection.close()


def test_a_worker_out_of_descriptors_drops_connections_but_keeps_serving(
    fresh_hierarchy: Hierarchy,
) -> None:
    """A worker that cannot receive a handed descriptor (EMFILE: the kernel drops it and
    truncates the message) must not take that for its supervisor's EOF and stop: a client
    flooding connections would otherwise stop every worker in turn, and after 5 replacements
    in 60 s the whole server. The lost connection is reported closed, so the supervisor's
    count of the worker's open connections stays true and the balance holds afterwards."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--timeout", "3") as server:
        victim = server.worker_pids[0]
        with _descriptor_limit(victim, _open_fds(victim) + 4):
            flood = _silent_connections(server, 40)
            time.sleep(1.0)
            for conn in flood:
                conn.close()
            time.sleep(1.0)
        assert worker_alive(victim), server.log()[-3000:]
        assert not [e for e in server.log_events() if e.get("event") == "worker.exited"]
        dropped = {
            e.get("pid") for e in server.log_events() if e.get("event") == "connection.dropped"
        }
        assert dropped == {victim}  # the limit really was met
        # Handshakes that never came are timed out and reported closed by the other worker.
        time.sleep(3.5)
        # Had the lost connections not been reported closed, the supervisor would count
        # them open for ever and hand the victim nothing.
        answered = _healthz_on_held_connections(server, 6)
        assert victim in answered and len(answered) == 6, answered


def _start_without_resource_capabilities(
    home: Path, passphrase_file: Path, *args: str
) -> ServerProcess:
    """``cyphrs serve`` as ``start_server`` runs it, but without CAP_SYS_RESOURCE and
    CAP_SYS_ADMIN (``setpriv``), so the kernel's limit on descriptors in flight over Unix
    sockets (ETOOMANYREFS past RLIMIT_NOFILE) applies even when the tests run as root, as it
    does for any unprivileged operator account."""
    # Only root has the capabilities (and only root may drop them from the bounding set).
    prefix = ("setpriv", "--bounding-set", "-sys_resource,-sys_admin", "--")
    return _start_own_session(
        home, passphrase_file, *args, prefix=prefix if os.geteuid() == 0 else ()
    )


def _start_own_session(
    home: Path, passphrase_file: Path, *args: str, prefix: tuple[str, ...] = ()
) -> ServerProcess:
    """``cyphrs serve`` (after ``prefix``) in a process group of its own, ready."""
    log_file = Path(tempfile.mkstemp(prefix="cyphrs-serve-", suffix=".log")[1])
    command = [
        *prefix, tool("cyphrs"), "serve", "--home", str(home), "--listen", "127.0.0.1:0",
        "--passphrase-file", str(passphrase_file), *args,
    ]  # fmt: skip
    with log_file.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CI": "true"},
            start_new_session=True,
        )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    if not ready:
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(f"not ready: {log_file.read_text()[-2000:]}")
    line = process.stdout.readline()
    return ServerProcess(process, json.loads(line), home, log_file)


def test_a_hand_over_error_does_not_retire_a_live_worker_for_good(
    fresh_hierarchy: Hierarchy,
) -> None:
    """A worker stalled (SIGSTOP) while the supervisor keeps handing it connections: the
    descriptors pile up in flight until the kernel refuses more (ETOOMANYREFS, past the
    supervisor's RLIMIT_NOFILE) for every worker. That is not a dead worker: once the
    stalled one resumes and the flood is gone, both workers must be handed connections
    again (before the fix, any send error marked a worker gone for good, and a live worker
    is never replaced: the server accepted and closed every connection, forever)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's CAP_SYS_RESOURCE")
    ca = fresh_hierarchy
    server = _start_without_resource_capabilities(
        ca.home, ca.inter_pass, "--processes", "2", "--timeout", "3"
    )
    stalled = server.worker_pids[0]
    try:
        os.kill(stalled, signal.SIGSTOP)
        with _descriptor_limit(server.pid, _open_fds(server.pid) + 8):
            flood = _silent_connections(server, 60)
            time.sleep(1.0)
        os.kill(stalled, signal.SIGCONT)
        for conn in flood:
            conn.close()
        time.sleep(4.0)  # the stalled worker times its backlog of handshakes out
        assert not [e for e in server.log_events() if e.get("event") == "worker.exited"]
        answered = _healthz_on_held_connections(server, 6)
        assert set(answered) == set(server.worker_pids), answered  # both back in rotation
        # The kernel's limit really was met (and is logged, not taken for a death).
        assert any(e.get("event") == "handover.failed" for e in server.log_events())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGCONT)
        server.stop()


def test_log_lines_of_several_workers_never_interleave(fresh_hierarchy: Hierarchy) -> None:
    """Every worker and the supervisor write to one shared stderr. Each log line must reach
    it in one write(2): Python's stderr on a file or pipe is unbuffered, so ``print`` writes
    the text and the newline separately, and another process's line can land between them
    (two JSON documents on one line, then an empty line), which breaks every log shipper."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:

        def client() -> None:
            for _ in range(150):
                request(server, "GET", "/healthz")

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert server.terminate() == 0
    lines = server.log().split("\n")
    assert lines[-1] == ""  # the log ends with a newline
    broken = [line for line in lines[:-1] if not _is_json_object(line)]
    assert not broken, broken[:5]
    assert len(_healthz_by_worker(server)) == 600


def _json_or_empty(line: str) -> dict[str, object]:
    try:
        document = json.loads(line)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _certificates(ca: Hierarchy) -> int:
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (count,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    return int(count)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_exits_2_and_records_nothing(
    fresh_hierarchy: Hierarchy, processes: str
) -> None:
    """One process or several: the same exit code and line, and no TLS certificate issued
    (and recorded for ever) for a server that never listened."""
    ca = fresh_hierarchy
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    before = _certificates(ca)
    try:
        done = subprocess.run(
            [
                tool("cyphrs"), "serve", "--home", str(ca.home),
                "--listen", f"127.0.0.1:{taken.getsockname()[1]}",
                "--passphrase-file", str(ca.inter_pass), "--processes", processes,
            ],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**os.environ, "CI": "true"},
        )  # fmt: skip
    finally:
        taken.close()
    assert done.returncode == 2, done.stderr
    assert b"cannot listen on 127.0.0.1:" in done.stderr and b"in use" in done.stderr
    assert done.stdout == b""
    assert _certificates(ca) == before


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            found.append(int(entry.name))
    return found


def test_supervisor_killed_during_start_up_leaves_no_worker(fresh_hierarchy: Hierarchy) -> None:
    """SIGKILL of the supervisor while its workers are still starting (opening the
    Authority, issuing their TLS certificates): no worker may live on, unsupervised."""
    ca = fresh_hierarchy
    process = subprocess.Popen(
        [
            tool("cyphrs"), "serve", "--home", str(ca.home), "--listen", "127.0.0.1:0",
            "--passphrase-file", str(ca.inter_pass), "--processes", "3",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip
    workers: list[int] = []
    try:
        assert wait_until(lambda: len(_children(process.pid)) == 3, 30)
        time.sleep(0.2)  # each has its configuration; none is ready yet (imports alone take longer)
        workers = [pid for pid in _children(process.pid) if worker_alive(pid)]
        assert len(workers) == 3
        process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None and process.stdout.read() == b""  # not ready yet
        assert wait_until(lambda: not any(worker_alive(pid) for pid in workers), 30)
        assert process.stderr is not None
        log = process.stderr.read().decode()  # every writer is gone: read to the end
        # Each stopped as a worker without a supervisor does, not with a traceback.
        assert "Traceback" not in log, log[-3000:]
        events = [_json_or_empty(line) for line in log.splitlines()]
        stopped = {e.get("pid") for e in events if e.get("event") == "stopped"}
        assert set(workers) <= stopped, log[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in workers:
            kill_worker(pid)


def test_silent_connections_leak_no_descriptor_in_the_supervisor(
    fresh_hierarchy: Hierarchy,
) -> None:
    """300 connections that never start TLS: the supervisor hands each over and keeps no
    descriptor of its own; the workers time the handshakes out (--timeout 2) and keep
    answering others meanwhile."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--timeout", "2") as server:
        baseline = _open_fds(server.pid)
        flood = _silent_connections(server, 300)
        try:
            assert request(server, "GET", "/healthz", timeout=10).status == 200
            assert _open_fds(server.pid) <= baseline + 2
            # The workers hung up on every silent client after the handshake timeout.
            assert wait_until(lambda: all(not c.recv(1) for c in flood), 10)
        finally:
            for conn in flood:
                conn.close()
        assert _open_fds(server.pid) <= baseline + 2
        for pid in server.worker_pids:
            assert _open_fds(pid) < 100, pid


def test_metrics_keep_a_dead_workers_counts(fresh_hierarchy: Hierarchy) -> None:
    """/metrics sums every worker's files, a worker killed with SIGKILL included: the
    counts it made before it died are not lost from the total."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        for _ in range(10):
            assert request(server, "GET", "/healthz").status == 200
        answered = _healthz_by_worker(server)
        victim = answered[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda: any(e.get("event") == "worker.started" for e in server.log_events()), 30
        )
        for _ in range(4):
            text = request(server, "GET", "/metrics").body.decode()
            count = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("cyphrs_request_seconds_count") and 'operation="healthz"' in line
            )
            assert count == 10.0, text


def test_supervisor_stopped_and_continued_loses_no_connection(fresh_hierarchy: Hierarchy) -> None:
    """SIGSTOP of the supervisor (a debugger, a paused container): connections wait in the
    kernel's queue, the workers do not take the pause for their supervisor's death, and on
    SIGCONT every waiting client is answered."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        os.kill(server.pid, signal.SIGSTOP)
        statuses: list[int] = []
        try:
            threads = [
                threading.Thread(
                    target=lambda: statuses.append(request(server, "GET", "/healthz").status)
                )
                for _ in range(4)
            ]
            for thread in threads:
                thread.start()
            time.sleep(2.0)
            assert statuses == []  # nobody accepts while the supervisor is stopped
            assert all(worker_alive(pid) for pid in server.worker_pids)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        for thread in threads:
            thread.join(timeout=30)
        assert statuses == [200] * 4
        assert all(worker_alive(pid) for pid in server.worker_pids)
        assert not [
            e for e in server.log_events() if e.get("event") in ("worker.exited", "shutdown")
        ]
    assert server.process.returncode == 0


def test_a_stalled_worker_is_handed_no_connection(fresh_hierarchy: Hierarchy) -> None:
    """A worker stalled (SIGSTOP; or a frozen event loop) while alive: the supervisor must
    notice it answers nothing (it pings each worker over the hand-over channel) and hand
    the connections to the others; before, it got every connection on which it tied with a
    busy worker, and those clients waited for ever. Once it runs again it gets its share."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        stalled, other = server.worker_pids
        os.kill(stalled, signal.SIGSTOP)
        try:
            time.sleep(2.0)
            statuses: list[object] = []
            for _ in range(8):
                try:
                    statuses.append(request(server, "GET", "/healthz", timeout=5).status)
                except OSError as error:
                    statuses.append(type(error).__name__)

            def client() -> None:
                try:
                    statuses.append(request(server, "GET", "/healthz", timeout=5).status)
                except OSError as error:
                    statuses.append(type(error).__name__)

            threads = [threading.Thread(target=client) for _ in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert statuses == [200] * 20, statuses
        finally:
            os.kill(stalled, signal.SIGCONT)
        assert set(_healthz_by_worker(server)) == {other}
        time.sleep(1.0)
        for _ in range(6):
            assert request(server, "GET", "/healthz", timeout=5).status == 200
        assert stalled in _healthz_by_worker(server)  # back in the rotation


def _cli_process(ca: Hierarchy, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            tool("cyphrs"), "issue", "agent", "--workflow", "payments-recon",
            "--out-dir", str(out), "--json",
            "--home", str(ca.home), "--passphrase-file", str(ca.inter_pass),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "CI": "true"},
    )  # fmt: skip


def test_cli_writers_racing_a_multi_process_server_keep_one_chain(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``cyphrs issue`` and ``cyphrs revoke`` processes writing while two workers enroll:
    every writer takes the same writer lock, every command succeeds, nothing is lost and
    the ledger's events still form one hash chain."""
    from tests.e2e.test_serve_processes import _enroll, _token

    ca = fresh_hierarchy
    token = _token(ca, 40)
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--token-rate", "0/m") as server:
        statuses: list[int] = []

        def enroller() -> None:
            for _ in range(6):
                statuses.append(_enroll(server, token))

        threads = [threading.Thread(target=enroller) for _ in range(3)]
        for thread in threads:
            thread.start()
        issuers = [_cli_process(ca, tmp_path / f"agent{n}") for n in range(4)]
        outputs = [issuer.communicate(timeout=120) for issuer in issuers]
        assert [issuer.returncode for issuer in issuers] == [0] * 4, outputs[0][1]
        serial = json.loads(outputs[0][0])["certificate"]["serial"]
        revoked = subprocess.run(
            [
                tool("cyphrs"), "revoke", "--serial", serial, "--reason", "key-compromise",
                "--home", str(ca.home),
            ],
            capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "CI": "true"},
        )  # fmt: skip
        for thread in threads:
            thread.join(timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        assert statuses == [201] * 18
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (enrolled,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'"
        ).fetchone()
    assert enrolled == 18
    verified = subprocess.run(
        [tool("cyphrs"), "audit", "verify", "--home", str(ca.home)],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_supervisor_out_of_descriptors_pauses_accepting_instead_of_spinning(
    fresh_hierarchy: Hierarchy,
) -> None:
    """The supervisor at its descriptor limit (EMFILE on accept) with a connection waiting:
    the listening socket stays readable, so retrying at once is a busy loop that burns a
    core and writes a log line per try (over 100 000 a second, before the fix). It must
    pause accepting briefly, log the condition a few times, and accept again once a
    descriptor is free."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        used = {int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")}
        lowest_free = min(set(range(len(used) + 1)) - used)
        waiting = None
        with _descriptor_limit(server.pid, lowest_free):
            waiting = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            before = _cpu_ticks(server.pid)
            time.sleep(2.0)
            spent = _cpu_ticks(server.pid) - before
        try:
            failures = [e for e in server.log_events() if e.get("event") == "accept.failed"]
            assert 1 <= len(failures) <= 40, len(failures)
            assert spent < 50, spent  # clock ticks (1/100 s) in 2 s: not a spinning core
            assert request(server, "GET", "/healthz", timeout=10).status == 200
        finally:
            waiting.close()


def _metrics_dir(worker: int) -> Path:
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    entry = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(entry.split(b"=", 1)[1].decode())


def test_metrics_directory_removed_on_sigterm_left_on_sigkill(fresh_hierarchy: Hierarchy) -> None:
    """SIGTERM removes the workers' metrics directory; SIGKILL of the supervisor leaves it
    (0700, counters only; documented), and the workers still stop."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        directory = _metrics_dir(server.worker_pids[0])
        assert directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700
        assert server.terminate() == 0
    assert not directory.exists()
    server = start_server(ca.home, ca.inter_pass, "--processes", "2")
    try:
        directory = _metrics_dir(server.worker_pids[0])
        server.kill()
        assert wait_until(lambda: not any(worker_alive(p) for p in server.worker_pids), 15)
        assert directory.is_dir()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_ready_line_of_several_processes_meets_the_schema(fresh_hierarchy: Hierarchy) -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas/serve.v1.json").read_text())
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "3") as server:
        Draft202012Validator(schema).validate(server.ready)
        assert [w["pid"] for w in server.ready["processes"]] == server.worker_pids


def test_home_checks_are_not_confused_by_the_lock_file(fresh_hierarchy: Hierarchy) -> None:
    """After a multi-process server ran, the home holds ``ledger.sqlite3-lock`` (and
    SQLite's ``-wal``/``-shm``): ``audit verify`` and ``config check`` pass, ``doctor``
    names none of these files."""
    ca = fresh_hierarchy
    with start_server(ca.home, ca.inter_pass, "--processes", "2") as server:
        assert request(server, "GET", "/readyz").status == 200
    assert (ca.home / "ledger.sqlite3-lock").exists()
    home = ("--home", str(ca.home))
    for command in (("audit", "verify"), ("config", "check")):
        done = subprocess.run([tool("cyphrs"), *command, *home], capture_output=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    doctor = subprocess.run([tool("cyphrs"), "doctor", *home], capture_output=True, timeout=60)
    assert b"sqlite3-" not in doctor.stdout + doctor.stderr
    assert doctor.returncode in (0, 10), doctor.stderr  # findings about the test CA itself


def _lock_holder(lock_file: Path) -> int | None:
    """The pid holding the flock on ``lock_file`` (from /proc/locks), if any."""
    inode = lock_file.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def test_a_worker_killed_holding_the_writer_lock_frees_it_for_the_others(
    fresh_hierarchy: Hierarchy,
) -> None:
    """Under enrollment load, a worker is stopped at a moment /proc/locks shows it holding
    the ledger's writer lock (mid-transaction), then SIGKILLed: its transaction is rolled
    back, the lock is free at once (the next enrollment does not wait the 30 s busy
    timeout), and every certificate a client received is in a verifiable ledger."""
    from tests.e2e.test_serve_processes import _enroll, _token

    ca = fresh_hierarchy
    token = _token(ca, 400)
    lock_file = ca.home / "ledger.sqlite3-lock"
    with start_server(ca.home, ca.inter_pass, "--processes", "2", "--token-rate", "0/m") as server:
        statuses: list[int] = []
        running = threading.Event()
        running.set()

        def load() -> None:
            while running.is_set():
                with contextlib.suppress(OSError):
                    statuses.append(_enroll(server, token))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        victim = None
        try:
            deadline = time.monotonic() + 30
            while victim is None and time.monotonic() < deadline:
                for pid in server.worker_pids:
                    if not worker_alive(pid):
                        continue
                    os.kill(pid, signal.SIGSTOP)
                    if _lock_holder(lock_file) == pid:
                        victim = pid
                        os.kill(pid, signal.SIGKILL)
                        break
                    os.kill(pid, signal.SIGCONT)
            assert victim is not None, "never caught a worker holding the lock"
            time.sleep(0.5)
            assert _lock_holder(lock_file) != victim
            started = time.monotonic()
            assert _enroll(server, token) == 201
            assert time.monotonic() - started < 10
        finally:
            running.clear()
            for thread in threads:
                thread.join(timeout=60)
    assert statuses.count(201) >= 1
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        (enrolled,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE requester LIKE 'token:%'"
        ).fetchone()
    assert enrolled >= statuses.count(201) + 1  # each delivered one recorded (+ the probe)
    verified = subprocess.run(
        [tool("cyphrs"), "audit", "verify", "--home", str(ca.home)], capture_output=True
    )
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_stops_cleanly(
    fresh_hierarchy: Hierarchy, signum: int
) -> None:
    """Ctrl-C in a terminal (SIGINT) and systemd's stop (SIGTERM to the whole control
    group) reach the supervisor and every worker at once: the workers stopping by
    themselves must not be taken for deaths and replaced; exit 0, no worker left."""
    ca = fresh_hierarchy
    server = _start_own_session(ca.home, ca.inter_pass, "--processes", "3")
    try:
        workers = server.worker_pids
        os.killpg(server.pid, signum)
        assert server.process.wait(timeout=40) == 0, server.log()[-2000:]
        assert not any(worker_alive(pid) for pid in workers)
        events = {e.get("event") for e in server.log_events()}
        assert "worker.started" not in events and "worker.exited" not in events, events
    finally:
        server.stop()


def test_workers_import_nothing_from_the_working_directory(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A server started from a directory others can write into (``/tmp``, a shared
    checkout): ``python -m`` puts the working directory first on ``sys.path``, so a
    planted ``cyphrs_cli/`` or a module named like one of the standard library's would
    run inside a worker, which holds the unlocked CA key. Every planted module writes a
    marker when imported; none may be, and the workers serve with the installed code."""
    ca = fresh_hierarchy
    planted, marker = tmp_path / "shared", tmp_path / "imported"
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("cyphrs_cli/__init__.py", "cyphrs_cli/server/__init__.py", "json.py", "ssl.py",
                 "asyncio.py", "sqlite3.py", "base64.py", "aiohttp.py", "cryptography.py"):  # fmt: skip
        (planted / name).parent.mkdir(parents=True, exist_ok=True)
        (planted / name).write_text(payload)
    token = json.loads(
        subprocess.run(
            [tool("cyphrs"), "token", "create", "--home", str(ca.home), "--workflow", "w",
             "--uses", "2", "--ttl", "10m", "--json"],
            capture_output=True, check=True, env={**os.environ, "CI": "true"},
        ).stdout
    )["token"]  # fmt: skip
    with start_server(ca.home, ca.inter_pass, "--processes", "2", cwd=planted) as server:
        assert len(server.ready["processes"]) == 2
        for pid in server.worker_pids:
            assert Path(f"/proc/{pid}/cwd").resolve() == planted.resolve()
        for _ in range(2):  # over the keep-alive balance, both workers are likely to answer
            status = request(
                server, "POST", "/v1/enroll", {"csr": new_csr()[1].decode(), "token": token}
            ).status
            assert status == 201
    assert not marker.exists(), marker.read_text()
