""" "Durable ledger record before any output", watched in the kernel: ``strace`` on a real
``cyphrs serve`` (one process, and a supervisor with two workers) while a client enrolls
one agent after another. Every write of WAL frames (``pwrite64`` on ``ledger.sqlite3-wal``)
must be followed by a sync of that file (``fdatasync``/``fsync``, by any thread or
process) before the server writes anything to a client's TCP socket.

The serving processes' COMMITs do not sync the WAL themselves (``Ledger.defer_commit_sync``:
the writer lock is released before the disk's flush); the commit thread syncs it before
any caller hears of the certificate. This test states the guarantee, not the mechanism:
SQLite's own syncs inside COMMIT would pass it too, and dropping the sync fails it.

Sequential requests, so that no response of an earlier, synced group can be in flight
while a later group's frames are unsynced: at every socket write, nothing may be dirty.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, tool
from tests.serve_clients import new_csr, request
from tests.server_process import start_server

pytestmark = pytest.mark.slow

ENROLLMENTS = 12
# strace -f -o FILE: each line starts with the thread's id, then the call.
_CALL = re.compile(r"^(\d+)\s+(\w+)\((\d+)<")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")


def _traced(pids: list[int]) -> bool:
    """Whether every thread of every process in ``pids`` has a tracer attached."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            status = (task / "status").read_text()
            tracer = re.search(r"^TracerPid:\s+(\d+)", status, re.M)
            if tracer is None or tracer.group(1) == "0":
                return False
    return True


def _check_order(trace: str) -> tuple[int, int, int]:
    """Walk the trace: (WAL frame writes, WAL syncs, socket writes); asserts that no
    socket write happens while a WAL write is not yet followed by a completed sync."""
    dirty = False
    frames = syncs = sends = 0
    pending_sync: set[str] = set()
    for line in trace.splitlines():
        resumed = _RESUMED.match(line)
        if resumed is not None:
            key = f"{resumed.group(1)}:{resumed.group(2)}"
            if key in pending_sync and "= -1" not in line:
                pending_sync.discard(key)
                dirty, syncs = False, syncs + 1
            continue
        call = _CALL.match(line)
        if call is None:
            continue
        pid, name, target = call.group(1), call.group(2), line[call.end() :]
        if target.startswith(("TCP:", "TCPv6:")) and name in (
            "write",
            "sendto",
            "sendmsg",
            "writev",
        ):
            sends += 1
            assert not dirty, f"a client socket was written before the WAL was synced: {line}"
        elif target.split(">", 1)[0].endswith("ledger.sqlite3-wal"):
            if name in ("pwrite64", "pwritev", "write"):
                dirty, frames = True, frames + 1
            elif name in ("fdatasync", "fsync"):
                if "<unfinished ...>" in line:
                    pending_sync.add(f"{pid}:{name}")
                elif "= -1" not in line:
                    dirty, syncs = False, syncs + 1
    return frames, syncs, sends


@pytest.mark.parametrize("processes", [1, 2])
def test_no_client_hears_of_a_certificate_before_its_record_is_on_disk(
    fresh_hierarchy: Hierarchy, tmp_path: Path, processes: int
) -> None:
    strace = shutil.which("strace")
    assert strace is not None, "strace is installed by scripts/test"
    ca = fresh_hierarchy
    token = json.loads(
        subprocess.run(
            [tool("cyphrs"), "token", "create", "--home", str(ca.home), "--workflow", "w",
             "--uses", str(ENROLLMENTS), "--ttl", "10m", "--json"],
            capture_output=True, check=True,
        ).stdout
    )["token"]  # fmt: skip
    limits = ("--token-rate", "0/m", "--identity-rate", "0/m")
    with start_server(ca.home, ca.inter_pass, "--processes", str(processes), *limits) as server:
        serving = server.worker_pids or [server.pid]
        out = tmp_path / "trace.txt"
        tracer = subprocess.Popen(
            [strace, "-f", "-qq", "-s", "0", "-yy", "-o", str(out),
             "-e", "trace=pwrite64,pwritev,write,writev,sendto,sendmsg,fdatasync,fsync",
             *[arg for pid in serving for arg in ("-p", str(pid))]],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not _traced(serving):
                assert tracer.poll() is None, tracer.stderr.read() if tracer.stderr else ""
                assert time.monotonic() < deadline, "strace did not attach"
                time.sleep(0.05)
            for _ in range(ENROLLMENTS):
                reply = request(
                    server, "POST", "/v1/enroll", {"csr": new_csr()[1].decode(), "token": token}
                )
                assert reply.status == 201, reply.body
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
    frames, syncs, sends = _check_order(out.read_text())
    # The trace saw the work it judges: every enrollment's frames, syncs and answers.
    assert frames >= ENROLLMENTS and syncs >= ENROLLMENTS and sends >= ENROLLMENTS, (
        frames,
        syncs,
        sends,
    )
