"""Online enrollment throughput: ``cyphrs serve`` (POST /v1/enroll, one-time-token uses
spent in the issuance transaction, durable hash-chained ledger, group commit) against
``cfssl serve`` (POST /api/v1/cfssl/sign, certificates recorded in its SQLite certdb) on
the same machine, in the same run, with the same client.

Each level runs C client threads, each with its own HTTPS keep-alive connection
(``http.client``, TLS 1.3, the same P-256 server certificate from the cyphrs CA for both
servers), sending pre-generated P-256 CSRs back to back. Reported: enrollments/s over the
level's wall time and the p50/p99 latency of single requests.

``--processes`` (default: one per CPU) runs ``cyphrs serve --processes N``; ``--processes 1``
the single-process server. cfssl (Go) uses every core by itself.

Both servers run side by side; every round runs each level on both, alternating which goes
first, and the ratio reported per level is the median of the per-round ratios (this shared
machine's speed drifts by 1.5x from one minute to the next). p50/p99 are medians over rounds;
"p99 all" is the p99 of every request of the level, all rounds pooled.

Run: .venv/bin/python bench/bench_serve.py [--total N] [--rounds R] [--levels 1,4,16]
     [--processes N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy

CFSSL_SCHEMA = """
CREATE TABLE certificates (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, ca_label blob,
  status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier));
CREATE TABLE ocsp_responses (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, body blob NOT NULL,
  expiry timestamp, PRIMARY KEY(serial_number, authority_key_identifier));
"""


def csrs(count: int) -> list[str]:
    from cyphrs_cli.client.credentials import KeyRequest

    return [KeyRequest.generate("p256").csr_pem.decode() for _ in range(count)]


def run_level(
    host: str,
    port: int,
    context: ssl.SSLContext,
    clients: int,
    per_client: int,
    make_body: Callable[[int, int], tuple[str, bytes]],
    *,
    pooled: list[float] | None = None,
) -> dict[str, float]:
    """One round: ``clients`` threads, ``per_client`` requests each. Its latencies are
    also appended to ``pooled`` (the p99 over every round of a level)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
        conn.connect()
        mine = []
        start_gate.wait()
        for n in range(per_client):
            path, body = make_body(index, n)
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            mine.append(time.perf_counter() - t0)
            if response.status not in (200, 201):
                with lock:
                    errors.append(f"{response.status} {data[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, first: {errors[0]}")
    latencies.sort()
    if pooled is not None:
        pooled.extend(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000, 2),
    }


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in an empty working directory of its own. Before ``cyphrs serve``
    started its workers with ``python -P``, they imported ``cyphrs_cli`` from the working
    directory first: run from a checkout, every worker ran the checkout's code whatever
    ``PYTHONPATH`` said (so ``bench_serve_ab.py --processes 2`` compared a tree with
    itself)."""
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=tempfile.mkdtemp(prefix="cyphrs-bench-cwd-"),
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SIGKILL after 20 s), then remove the empty working directory ``start``
    made for it."""
    try:
        cwd = os.readlink(f"/proc/{process.pid}/cwd")
    except OSError:
        cwd = None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if cwd is not None and Path(cwd).name.startswith("cyphrs-bench-cwd-"):
        with contextlib.suppress(OSError):
            os.rmdir(cwd)


def wait_port(port: int, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}")


def bench_ca(work: Path) -> tuple[dict[str, str], dict[str, str], ssl.SSLContext]:
    """A demo CA in ``work/ca``, the environment that selects it, a client context that
    trusts its root, and a server TLS certificate for 127.0.0.1 in ``work/tls`` (for the
    peer servers; cyphrs serve makes its own alike)."""
    ca = demo_hierarchy(work / "ca")
    env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true"}
    root = next(Path(ca["home"], "certs").glob("*root*.pem"))
    context = ssl.create_default_context(cafile=str(root))
    subprocess.run(
        [
            CYPHRS, "issue", "server", "--ip", "127.0.0.1", "--out-dir", str(work / "tls"),
            "--passphrase-file", ca["inter_pass"],
        ],
        env=env,
        check=True,
        capture_output=True,
    )  # fmt: skip
    return ca, env, context


def _cfssl(work: Path, tls: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``cfssl serve`` with its own P-256 CA (cfssl wants an unencrypted key file) and a
    SQLite certdb; the same TLS certificate as cyphrs's bench server."""
    import socket

    cf = work / "cfssl"
    cf.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(cf / "ca-key.pem"), "-out", str(cf / "ca.pem"),
            "-days", "30", "-subj", "/CN=cfssl bench CA",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    usages = ["digital signature", "client auth", "server auth"]
    (cf / "config.json").write_text(
        json.dumps({"signing": {"default": {"expiry": "4h", "usages": usages}}})
    )
    with sqlite3.connect(cf / "certs.db") as conn:
        conn.executescript(CFSSL_SCHEMA)
    (cf / "db.json").write_text(
        json.dumps({"driver": "sqlite3", "data_source": str(cf / "certs.db")})
    )
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    process = start(
        [
            "cfssl", "serve", "-address", "127.0.0.1", "-port", str(port),
            "-ca", str(cf / "ca.pem"), "-ca-key", str(cf / "ca-key.pem"),
            "-config", str(cf / "config.json"), "-db-config", str(cf / "db.json"),
            "-tls-cert", str(tls / "fullchain.pem"), "-tls-key", str(tls / "key.pem"),
        ]
    )  # fmt: skip
    return process, port, cf / "certs.db"


def _p99(latencies: list[float]) -> float:
    """The 99th percentile (ms) of every request of a level, all rounds pooled."""
    ordered = sorted(latencies)
    return round(ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000, 2)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--total", type=int, default=400, help="requests per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cyphrs_server = cfssl_server = None
    try:
        ca, env, context = bench_ca(work)
        per_level = {c: max(args.total // c, 1) for c in levels}
        slots = [(r, c) for r in range(args.rounds) for c in levels]
        offsets, size = {}, 0
        for slot in slots:
            offsets[slot] = size
            size += slot[1] * per_level[slot[1]]
        pool = csrs(size)

        # A token per client slot, with a use for each of its requests.
        tokens: dict[tuple[int, int, int], str] = {}
        for r, c in slots:
            for i in range(c):
                done = subprocess.run(
                    [
                        CYPHRS, "token", "create", "--workflow", "bench",
                        "--uses", str(per_level[c]), "--ttl", "1h", "--json",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                )  # fmt: skip
                tokens[(r, c, i)] = json.loads(done.stdout)["token"]
        cyphrs_server = start(
            [
                CYPHRS, "serve", "--listen", "127.0.0.1:0", "--passphrase-file", ca["inter_pass"],
                "--token-rate", "0/m", "--identity-rate", "0/m",
                "--processes", str(args.processes),
            ],
            env=env,
        )  # fmt: skip
        assert cyphrs_server.stdout is not None
        ready = json.loads(cyphrs_server.stdout.readline())
        port = int(ready["listening"].rsplit(":", 1)[1])
        cfssl_server, cf_port, cf_db = _cfssl(work, work / "tls")
        wait_port(cf_port, context)

        # Rounds alternate which server goes first, so a slow spell of this shared machine
        # falls on both; each level's ratio is the median of its per-round ratios.
        rows: dict[int, dict[str, list[dict[str, float]]]] = {
            c: {"cyphrs": [], "cfssl": []} for c in levels
        }
        pooled: dict[int, dict[str, list[float]]] = {
            c: {"cyphrs": [], "cfssl": []} for c in levels
        }
        for r, c in slots:
            n, base = per_level[c], offsets[(r, c)]

            def enroll_body(
                i: int, k: int, r: int = r, c: int = c, n: int = n, b: int = base
            ) -> tuple[str, bytes]:
                body = {"csr": pool[b + i * n + k], "token": tokens[(r, c, i)]}
                return "/v1/enroll", json.dumps(body).encode()

            def sign_body(i: int, k: int, n: int = n, b: int = base) -> tuple[str, bytes]:
                body = {"certificate_request": pool[b + i * n + k]}
                return "/api/v1/cfssl/sign", json.dumps(body).encode()

            runs: list[tuple[str, int, Callable[[int, int], tuple[str, bytes]]]] = [
                ("cyphrs", port, enroll_body),
                ("cfssl", cf_port, sign_body),
            ]
            for name, to_port, body in runs if r % 2 == 0 else runs[::-1]:
                rows[c][name].append(
                    run_level("127.0.0.1", to_port, context, c, n, body, pooled=pooled[c][name])
                )
    finally:
        for server in (cyphrs_server, cfssl_server):
            if server is not None:
                stop(server)
    try:
        with sqlite3.connect(Path(ca["home"]) / "ledger.sqlite3") as conn:
            recorded = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
        with sqlite3.connect(cf_db) as conn:
            cf_recorded = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
        print(
            f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]};"
            f" cyphrs serve --processes {args.processes}; {args.rounds} rounds of"
            f" {args.total} requests per level; load average {os.getloadavg()[0]:.2f} at the"
            f" end; cyphrs ledger rows {recorded}, cfssl certdb rows {cf_recorded}"
        )
        print(
            "| clients | cyphrs /s | p50 ms | p99 ms | p99 all ms | cfssl /s | p50 ms | p99 ms"
            " | p99 all ms | ratio (median of rounds) | per-round ratios |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for c in levels:
            ours, theirs = rows[c]["cyphrs"], rows[c]["cfssl"]
            ratios = [
                a["per_second"] / b["per_second"] for a, b in zip(ours, theirs, strict=True)
            ]
            print(
                f"| {c} | {_median([x['per_second'] for x in ours])}"
                f" | {_median([x['p50_ms'] for x in ours])}"
                f" | {_median([x['p99_ms'] for x in ours])}"
                f" | {_p99(pooled[c]['cyphrs'])}"
                f" | {_median([x['per_second'] for x in theirs])}"
                f" | {_median([x['p50_ms'] for x in theirs])}"
                f" | {_median([x['p99_ms'] for x in theirs])}"
                f" | {_p99(pooled[c]['cfssl'])}"
                f" | {statistics.median(ratios):.2f}x"
                f" | {' '.join(f'{x:.2f}' for x in ratios)} |"
            )
        print(json.dumps({str(c): rows[c] for c in levels}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
