"""Before/after of ``cyphrs serve`` itself, side by side: two servers, each on a demo CA of
its own, one running a copy of this tree and one running an older ``cyphrs_cli`` tree, each
put first on ``PYTHONPATH`` (``git archive REV cyphrs_cli | tar -x -C /tmp/before``),
measured alternately round by round (which goes first alternates too), so a slow spell of
this shared machine falls on both. The ratio is the median of the per-round ratios. Pass
a copy of this very tree as the older one for an A/A run: it shows the harness's own
spread.

Operations:
- ``enroll``: ``POST /v1/enroll`` with a one-time-token use and a fresh P-256 CSR, each client
  on one HTTPS keep-alive connection (``bench_serve.run_level``, as in ``bench_serve.py``);
- ``renew``: ``POST /v1/renew`` over mTLS, each client renewing its own certificate again
  and again, presenting the newest one: a new TLS connection per renewal (the client
  certificate is part of the handshake), so handshakes are part of what is measured.

Run: .venv/bin/python bench/bench_serve_ab.py /tmp/before [--operation enroll|renew]
     [--rounds R] [--per-client N] [--clients C] [--processes P]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import CYPHRS, bench_ca, csrs, run_level, start, stop
from common import copy_of_this_tree

from cyphrs_cli.client.credentials import KeyRequest


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    context: ssl.SSLContext
    env: dict[str, str]
    root: Path
    work: Path
    rates: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per request

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its workers so far (``/proc``)."""
        pids = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.process.pid:
                        pids.append(int(entry.name))
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


def _token(env: dict[str, str], uses: int) -> str:
    done = subprocess.run(
        [CYPHRS, "token", "create", "--workflow", "bench", "--uses", str(uses), "--ttl", "1h",
         "--json"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return str(json.loads(done.stdout)["token"])


def _serve(name: str, work: Path, extra_env: dict[str, str], processes: int) -> Server:
    ca, env, context = bench_ca(work)
    env = {**env, **extra_env}
    process = start(
        [CYPHRS, "serve", "--listen", "127.0.0.1:0", "--passphrase-file", ca["inter_pass"],
         "--token-rate", "0/m", "--identity-rate", "0/m", "--processes", str(processes)],
        env=env,
    )  # fmt: skip
    assert process.stdout is not None
    port = int(json.loads(process.stdout.readline())["listening"].rsplit(":", 1)[1])
    root = next(Path(ca["home"], "certs").glob("*root*.pem"))
    return Server(name, process, port, context, env, root, work)


def _post(server: Server, path: str, body: dict[str, str], context: ssl.SSLContext) -> dict:  # type: ignore[type-arg]
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 201:
        raise SystemExit(f"{server.name} {path}: {response.status} {answer}")
    return answer  # type: ignore[no-any-return]


class Renewer:
    """One client's identity on one server: its newest certificate and key, on disk for
    ``load_cert_chain``."""

    def __init__(self, server: Server, index: int) -> None:
        self.dir = server.work / f"client{index}"
        self.dir.mkdir()
        request = KeyRequest.generate("p256")
        answer = _post(
            server, "/v1/enroll",
            {"csr": request.csr_pem.decode(), "token": _token(server.env, 1)}, server.context,
        )  # fmt: skip
        self._keep(answer, request)

    def _keep(self, answer: dict, request: KeyRequest) -> None:  # type: ignore[type-arg]
        (self.dir / "cert.pem").write_text(answer["certificate"] + answer["chain"])
        (self.dir / "key.pem").write_text(request.key_pem())

    def renew(self, server: Server, request: KeyRequest) -> float:
        context = ssl.create_default_context(cafile=str(server.root))
        context.load_cert_chain(str(self.dir / "cert.pem"), str(self.dir / "key.pem"))
        started = time.perf_counter()
        answer = _post(server, "/v1/renew", {"csr": request.csr_pem.decode()}, context)
        elapsed = time.perf_counter() - started
        self._keep(answer, request)
        return elapsed


def renew_level(server: Server, renewers: list[Renewer], per_client: int) -> tuple[float, float]:
    """(renewals/s, p99 ms) of every client renewing ``per_client`` times at once."""
    requests = [[KeyRequest.generate("p256") for _ in range(per_client)] for _ in renewers]
    latencies: list[float] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(renewers) + 1)

    def work(index: int) -> None:
        gate.wait()
        mine = [renewers[index].renew(server, r) for r in requests[index]]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(renewers))]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if len(latencies) != len(renewers) * per_client:
        raise SystemExit(f"{server.name}: a renewal failed")
    latencies.sort()
    return len(latencies) / elapsed, latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000


class RenewLevel:
    """Each call: every client renews ``per_client`` times at once."""

    def __init__(self, server: Server, clients: int, per_client: int) -> None:
        self.server, self.per_client = server, per_client
        self.renewers = [Renewer(server, index) for index in range(clients)]

    def __call__(self) -> tuple[float, float]:
        return renew_level(self.server, self.renewers, self.per_client)


class EnrollLevel:
    """Each call: every client enrolls ``per_client`` times at once, on its keep-alive
    connection; the CSRs and token uses of every round are made up front."""

    def __init__(self, server: Server, clients: int, per_client: int, rounds: int) -> None:
        self.server, self.clients, self.per_client = server, clients, per_client
        self.pool = csrs(clients * per_client * rounds)
        self.tokens = [_token(server.env, per_client * rounds) for _ in range(clients)]
        self.used = 0

    def _body(self, client: int, n: int) -> tuple[str, bytes]:
        csr = self.pool[self.used + client * self.per_client + n]
        return "/v1/enroll", json.dumps({"csr": csr, "token": self.tokens[client]}).encode()

    def __call__(self) -> tuple[float, float]:
        s = self.server
        row = run_level("127.0.0.1", s.port, s.context, self.clients, self.per_client, self._body)
        self.used += self.clients * self.per_client
        return row["per_second"], row["p99_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="directory holding the older cyphrs_cli")
    parser.add_argument("--operation", choices=("enroll", "renew"), default="enroll")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    if not (args.before / "cyphrs_cli").is_dir():
        raise SystemExit(f"{args.before}/cyphrs_cli is not a directory")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-ab-"))
    servers: list[Server] = []
    try:
        here = copy_of_this_tree(work / "after-tree")
        servers = [
            _serve("after", work / "after", {"PYTHONPATH": str(here)}, args.processes),
            _serve("before", work / "before", {"PYTHONPATH": str(args.before)}, args.processes),
        ]
        per, clients = args.per_client, args.clients
        measure: dict[str, Callable[[], tuple[float, float]]] = {}
        for server in servers:
            if args.operation == "renew":
                measure[server.name] = RenewLevel(server, clients, per)
            else:
                measure[server.name] = EnrollLevel(server, clients, per, args.rounds + 1)
        for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for server in servers if r % 2 == 0 else servers[::-1]:
                cpu = server.cpu_seconds()
                rate, p99 = measure[server.name]()
                if r:
                    server.rates.append(rate)
                    server.p99s.append(p99)
                    cpu = server.cpu_seconds() - cpu
                    server.cpu_ms.append(cpu * 1000 / (clients * per))
        after, before = servers
        ratios = [a / b for a, b in zip(after.rates, before.rates, strict=True)]
        print(
            f"{args.operation}, {clients} clients, --processes {args.processes},"
            f" {args.rounds} rounds of {clients * per}; load average at the end"
            f" {os.getloadavg()[0]:.2f}"
        )
        print("| tree | /s (median) | p99 ms (median) | server CPU ms per request (median) |")
        print("|---|---:|---:|---:|")
        for server in (before, after):
            print(
                f"| {server.name} | {statistics.median(server.rates):.1f}"
                f" | {statistics.median(server.p99s):.2f}"
                f" | {statistics.median(server.cpu_ms):.3f} |"
            )
        print(
            f"after / before: {statistics.median(ratios):.3f}x (per round:"
            f" {' '.join(f'{x:.2f}' for x in ratios)})"
        )
    finally:
        for server in servers:
            stop(server.process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
