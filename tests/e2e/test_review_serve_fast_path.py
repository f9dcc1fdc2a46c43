"""Adversarial review (h-review): ``cyphrs serve`` stopped by SIGTERM while token
enrollments are on the event loop's fast path, their group's COMMIT done but the futures
not yet resolved (``CYPHRS_TEST_DELAY=after-record=1.0`` sleeps on the commit thread right
after the COMMIT). Each in-flight client still gets its 201, every certificate it got is
in the ledger with its token use, and the server exits 0. Real server process, real TLS
client, real SQLite."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time

from tests.helpers import Hierarchy, cli
from tests.serve_clients import new_csr, request
from tests.server_process import start_server

CLIENTS = 3


def test_sigterm_lets_fast_path_enrollments_in_flight_finish(fresh_hierarchy: Hierarchy) -> None:
    ca = fresh_hierarchy
    tokens = []
    for _ in range(CLIENTS):
        created = cli("token", "create", "--workflow", "review", "--json", "--home", str(ca.home))
        assert created.exit_code == 0, created.stderr
        tokens.append(json.loads(created.stdout)["token"])
    with start_server(
        ca.home, ca.inter_pass, env={"CYPHRS_TEST_DELAY": "after-record=1.0"}
    ) as server:
        replies: list[tuple[int, str]] = []
        lock = threading.Lock()

        def enroll(token: str) -> None:
            _, csr = new_csr()
            body = {"csr": csr.decode(), "token": token}
            reply = request(server, "POST", "/v1/enroll", body, timeout=20)
            with lock:
                replies.append((reply.status, reply.json().get("serial", "")))

        threads = [threading.Thread(target=enroll, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # committed, sleeping on the commit thread before resolving
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=30)
        assert server.process.wait(timeout=30) == 0, server.log()[-2000:]
    assert sorted(status for status, _ in replies) == [201] * CLIENTS, replies
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        rows = dict(conn.execute("SELECT serial, status FROM certificates").fetchall())
        uses = [r[0] for r in conn.execute("SELECT uses FROM tokens WHERE workflow = 'review'")]
    assert all(rows.get(serial) == "valid" for _, serial in replies)
    assert uses == [1] * CLIENTS
    assert cli("audit", "verify", "--home", str(ca.home)).exit_code == 0
