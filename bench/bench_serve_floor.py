"""A floor for ``bench_serve.py``: how fast can *any* Python HTTPS server on this stack
(aiohttp, the ssl module, pyca/cryptography, SQLite WAL with ``synchronous=FULL``) answer a
CSR with a signed certificate that is durably recorded first? The floor server does the
least that still deserves the name: parse the JSON body, load the CSR and check its
signature, sign a P-256 leaf, insert one row and COMMIT (one fsync) before answering; no
ledger chain, no tokens, no policy, no self-check, no thread hand-offs (everything runs on
the event loop). ``--processes N`` starts N such servers on one port (``SO_REUSEPORT``).
Measured against ``cfssl serve`` in the same run, rounds alternating which goes first,
exactly as ``bench_serve.py`` does. If the floor itself is below cfssl at a level, a
cyphrs that also keeps its hash-chained ledger cannot be above it there on this machine.

Run: .venv/bin/python bench/bench_serve_floor.py [--total N] [--rounds R] [--levels 1,4,16]
     [--processes N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import _cfssl, bench_ca, csrs, run_level, start, stop, wait_port

FLOOR_SERVER = r"""
import datetime, json, os, socket, sqlite3, ssl, sys
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

port, tls_dir, db_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "floor CA")])
conn = sqlite3.connect(db_path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS certs (serial TEXT PRIMARY KEY, pem TEXT NOT NULL)")

async def sign(request):
    body = json.loads(await request.read())
    csr = x509.load_pem_x509_csr(body["csr"].encode())
    if not csr.is_signature_valid:
        raise web.HTTPBadRequest()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=4))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO certs VALUES (?, ?)", (format(cert.serial_number, "x"), pem))
    conn.execute("COMMIT")
    return web.json_response({"certificate": pem})

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(f"{tls_dir}/fullchain.pem", f"{tls_dir}/key.pem")
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", port))
app = web.Application()
app.router.add_post("/sign", sign)
print("ready", flush=True)
web.run_app(app, sock=sock, ssl_context=context, access_log=None, print=None)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--total", type=int, default=1500, help="requests per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        _, _, context = bench_ca(work)
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        for _ in range(args.processes):
            server = start(
                [sys.executable, "-c", FLOOR_SERVER, str(port), str(work / "tls"),
                 str(work / "floor.sqlite3")]
            )  # fmt: skip
            servers.append(server)
            assert server.stdout is not None
            server.stdout.readline()
        cfssl, cf_port, _ = _cfssl(work, work / "tls")
        servers.append(cfssl)
        wait_port(cf_port, context)
        per_level = {c: max(args.total // c, 1) for c in levels}
        pool = csrs(max(c * per_level[c] for c in levels))
        rows: dict[int, dict[str, list[dict[str, float]]]] = {
            c: {"floor": [], "cfssl": []} for c in levels
        }
        for r in range(args.rounds):
            for c in levels:
                n = per_level[c]
                runs = [
                    ("floor", port, "/sign", "csr"),
                    ("cfssl", cf_port, "/api/v1/cfssl/sign", "certificate_request"),
                ]
                for name, to_port, path, field in runs if r % 2 == 0 else runs[::-1]:

                    def body(
                        i: int, k: int, n: int = n, p: str = path, f: str = field
                    ) -> tuple[str, bytes]:
                        return p, json.dumps({f: pool[i * n + k]}).encode()

                    rows[c][name].append(run_level("127.0.0.1", to_port, context, c, n, body))
        with sqlite3.connect(work / "floor.sqlite3") as conn:
            recorded = conn.execute("SELECT count(*) FROM certs").fetchone()[0]
        print(
            f"machine: {os.cpu_count()} CPUs; floor servers: {args.processes};"
            f" {args.rounds} rounds of {args.total} requests per level;"
            f" load average {os.getloadavg()[0]:.2f} at the end; floor rows {recorded}"
        )
        print("| clients | floor /s | p50 ms | p99 ms | cfssl /s | ratio (median of rounds) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in levels:
            ours, theirs = rows[c]["floor"], rows[c]["cfssl"]
            ratios = [a["per_second"] / b["per_second"] for a, b in zip(ours, theirs, strict=True)]
            print(
                f"| {c} | {statistics.median(x['per_second'] for x in ours):.1f}"
                f" | {statistics.median(x['p50_ms'] for x in ours):.2f}"
                f" | {statistics.median(x['p99_ms'] for x in ours):.2f}"
                f" | {statistics.median(x['per_second'] for x in theirs):.1f}"
                f" | {statistics.median(ratios):.2f}x |"
            )
    finally:
        for server in servers:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
