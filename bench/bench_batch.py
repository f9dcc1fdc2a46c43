"""Batch throughput and memory, with a peer and two floors measured in the same run.

Rows: ``cyphrs issue agent --batch`` of 1,000 and 10,000 agent certificates with
``--out-dir`` and with ``--json`` (peak RSS of each process); ``cfssl serve`` issuing from
the same intermediate to 4 concurrent HTTP clients (Debian ``golang-cfssl``, installed
with apt-get if missing; loopback only; stopped by PID); the floors: bare pyca
keygen + sign + PEM, and pyca + 2 files + SQLite with 100 rows per transaction; group
durability with one ``syncfs`` against one fsync per file and directory; SoftHSM2 against
the file key (``--hsm``).

Run: .venv/bin/python bench/bench_batch.py [--hsm] [--group-sweep] [--sizes 1000,10000]
Not a test: timings depend on the machine and its load (print ``uptime`` with them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy

CLIENTS = 4


def run_batch(
    ca: dict[str, str], n: int, base: Path, mode: str, env: dict[str, str], *extra: str
) -> dict:
    """One batch process: wall time, rate and its own peak RSS (wait4 rusage)."""
    batch = base / f"batch-{n}.jsonl"
    if not batch.exists():
        batch.write_text("".join(json.dumps({"workflow": f"wf{i % 20}"}) + "\n" for i in range(n)))
    out = base / f"out-{mode}-{n}-{time.monotonic_ns()}"
    where = ["--out-dir", str(out)] if mode == "out-dir" else ["--json"]
    argv = [CYPHRS, "issue", "agent", "--batch", str(batch), *where, *extra]
    argv += ["--passphrase-file", ca["inter_pass"]] if "inter_pass" in ca else []
    full_env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true", **env}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(
            f"batch failed ({status}): {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    shutil.rmtree(out, ignore_errors=True)
    return {"n": n, "s": elapsed, "rate": n / elapsed, "rss_mb": usage.ru_maxrss / 1024}


def pyca_floor(ca_key, ca_cert, n: int) -> float:
    """Bare pyca: P-256 keygen + sign (same extensions shape) + PEM, in one process."""
    start = time.perf_counter()
    for i in range(n):
        _sign_one(ca_key, ca_cert, i)
    return n / (time.perf_counter() - start)


def _sign_one(ca_key, ca_cert, i: int) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://bench.internal/agent/wf/{i}")]
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def io_floor(ca_key, ca_cert, n: int, base: Path) -> float:
    """pyca + cert.pem and key.pem per certificate + a SQLite (WAL) row, 100 rows per
    transaction, files made durable with one syncfs per 100."""
    import ctypes

    syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    out = base / f"floor-{time.monotonic_ns()}"
    out.mkdir()
    db = sqlite3.connect(out / "l.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, serial TEXT, pem TEXT)")
    start = time.perf_counter()
    for first in range(0, n, 100):
        rows = []
        for i in range(first, min(n, first + 100)):
            cert, key = _sign_one(ca_key, ca_cert, i)
            rows.append((str(i), cert.decode()))
            d = out / f"{i:05d}"
            d.mkdir()
            (d / "cert.pem").write_bytes(cert)
            fd = os.open(d / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, key)
            os.close(fd)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO c (serial, pem) VALUES (?, ?)", rows)
        db.execute("COMMIT")
        fd = os.open(out, os.O_RDONLY)
        syncfs(fd)
        os.close(fd)
    rate = n / (time.perf_counter() - start)
    db.close()
    shutil.rmtree(out)
    return rate


def sync_compare(base: Path, group: int = 128) -> dict[str, float]:
    """Milliseconds to make one group durable: 5 files per item, fsync each file and
    directory as written, against writing them all and then fsyncing each once
    ("deferred"), against writing them all and one syncfs."""
    import ctypes

    syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    result = {}
    for how in ("fsync", "deferred", "syncfs"):
        out = base / f"sync-{how}"
        out.mkdir()
        start = time.perf_counter()
        for i in range(group):
            d = out / str(i)
            d.mkdir()
            for name in ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem"):
                fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b"x" * 700)
                if how == "fsync":
                    os.fsync(fd)
                os.close(fd)
            if how == "fsync":
                dfd = os.open(d, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
        if how == "syncfs":
            fd = os.open(out, os.O_RDONLY)
            syncfs(fd)
            os.close(fd)
        if how == "deferred":  # all written first, then each file and directory once
            for i in range(group):
                d = out / str(i)
                for name in ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem"):
                    fd = os.open(d / name, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                dfd = os.open(d, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
            dfd = os.open(out, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        result[how] = (time.perf_counter() - start) * 1000
        shutil.rmtree(out)
    return result


def ensure_cfssl() -> str | None:
    found = shutil.which("cfssl")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "golang-cfssl"], env=env, check=False,
                   capture_output=True)  # fmt: skip
    return shutil.which("cfssl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cfssl_rate(cfssl: str, ca_cert_pem: Path, ca_key_pem: Path, n: int, base: Path) -> float:
    """``cfssl serve`` on loopback, CLIENTS threads POSTing /api/v1/cfssl/newcert (key
    generated and certificate signed by cfssl, as cyphrs does), keep-alive connections."""
    config = base / "cfssl.json"
    usages = ["digital signature", "client auth", "server auth"]
    config.write_text(json.dumps({"signing": {"default": {"expiry": "1h", "usages": usages}}}))
    port = _free_port()
    proc = subprocess.Popen(
        [cfssl, "serve", "-address", "127.0.0.1", "-port", str(port),
         "-ca", str(ca_cert_pem), "-ca-key", str(ca_key_pem), "-config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("cfssl serve did not start")
            time.sleep(0.1)
        errors: list[str] = []

        def client(count: int, worker: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in range(count):
                body = json.dumps({"request": {
                    "CN": f"wf-{worker}-{i}", "hosts": [f"a{worker}-{i}.bench.internal"],
                    "key": {"algo": "ecdsa", "size": 256}}})  # fmt: skip
                conn.request("POST", "/api/v1/cfssl/newcert", body,
                             {"Content-Type": "application/json"})  # fmt: skip
                reply = conn.getresponse()
                data = reply.read()
                if reply.status != 200 or not json.loads(data).get("success"):
                    errors.append(data[:200].decode(errors="replace"))
                    return
            conn.close()

        client(10, 99)  # warm-up
        threads = [threading.Thread(target=client, args=(n // CLIENTS, w)) for w in range(CLIENTS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise SystemExit(f"cfssl serve failed: {errors[0]}")
        return (n // CLIENTS) * CLIENTS / elapsed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    sizes = [1000, 10000]
    if "--sizes" in sys.argv:
        sizes = [int(v) for v in sys.argv[sys.argv.index("--sizes") + 1].split(",")]
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"# uptime: {load}  ({os.cpu_count()} cores, shared)")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp)
        ca = demo_hierarchy(base / "file")
        home = Path(ca["home"])
        ca_cert = x509.load_pem_x509_certificate(
            (home / "certs" / "bench-issuing.pem").read_bytes()
        )
        ca_key = serialization.load_pem_private_key(
            (home / "keys" / "bench-issuing.key.pem").read_bytes(),
            Path(ca["inter_pass"]).read_bytes(),
        )
        plain_cert, plain_key = base / "ica.pem", base / "ikey.pem"
        plain_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        plain_key.write_bytes(ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))  # fmt: skip
        results: dict[str, dict] = {}
        for n in sizes:
            for mode in ("out-dir", "json"):
                results[f"{mode}-{n}"] = r = run_batch(ca, n, base / "file", mode, {})
                rows.append((f"cyphrs batch {n:,} `--{mode}`", f"{r['rate']:.0f}/s",
                             f"{r['s']:.2f} s, peak RSS {r['rss_mb']:.0f} MB"))  # fmt: skip
        if "--group-sweep" in sys.argv:  # the default group size, chosen by measurement
            for group in (16, 64, 128, 512):
                sized = ("--group-size", str(group))
                r = run_batch(ca, sizes[0], base / "file", "out-dir", {}, *sized)
                rows.append((f"cyphrs batch {sizes[0]:,} `--out-dir --group-size {group}`",
                             f"{r['rate']:.0f}/s", f"peak RSS {r['rss_mb']:.0f} MB"))  # fmt: skip
        floor_n = sizes[0]
        pyca = pyca_floor(ca_key, ca_cert, floor_n)
        rows.append((f"floor: pyca keygen+sign+PEM ({floor_n:,})", f"{pyca:.0f}/s", ""))
        io = io_floor(ca_key, ca_cert, floor_n, base)
        rows.append(
            (f"floor: pyca + 2 files + SQLite 100 rows/txn ({floor_n:,})", f"{io:.0f}/s", "")
        )
        cfssl = ensure_cfssl()
        peer = None
        if cfssl:
            peer = cfssl_rate(cfssl, plain_cert, plain_key, floor_n, base)
            rows.append(
                (f"peer: cfssl serve, {CLIENTS} clients ({floor_n:,})", f"{peer:.0f}/s", "")
            )
        else:
            rows.append(("peer: cfssl serve", "n/a", "golang-cfssl not installable"))
        sync = sync_compare(base)
        rows.append(
            ("durability of one 128-item group: fsync per file+dir", f"{sync['fsync']:.0f} ms", "")
        )
        rows.append(
            ("durability of one 128-item group: one syncfs", f"{sync['syncfs']:.0f} ms", "")
        )
        rows.append(
            (
                "durability of one 128-item group: write all, then fsync each once",
                f"{sync['deferred']:.0f} ms",
                "",
            )
        )
        hsm = None
        if "--hsm" in sys.argv:
            from bench_issue import hsm_rates

            got = hsm_rates(base, floor_n)
            hsm = next(iter(got.values()))["certs_per_second"]
            rows.append((f"cyphrs batch {floor_n:,} `--out-dir`, SoftHSM2 key", f"{hsm:.0f}/s", ""))
    print("| job | rate | notes |\n|---|---|---|")
    for job, rate, note in rows:
        print(f"| {job} | {rate} | {note} |")
    first, last = sizes[0], sizes[-1]
    out_rate = results[f"out-dir-{first}"]["rate"]
    print("\n| goal | reached |\n|---|---|")
    last_rate = results[f"out-dir-{last}"]["rate"]
    print(f"| --out-dir >= 2,000/s | {out_rate:.0f}/s ({last:,}: {last_rate:.0f}/s) |")
    if peer:
        print(f"| --out-dir >= 1.5x cfssl serve | {out_rate / peer:.2f}x |")
    print(f"| --json >= 2,500/s | {results[f'json-{first}']['rate']:.0f}/s |")
    print(f"| --out-dir vs floors | {out_rate / pyca:.2f}x pyca, {out_rate / io:.2f}x I/O floor |")
    ratio = results[f"json-{last}"]["rss_mb"] / results[f"json-{first}"]["rss_mb"]
    print(f"| peak RSS {last:,} / {first:,} (--json) <= 1.2 | {ratio:.2f} |")
    if hsm:
        print(f"| HSM >= 0.9x file key | {hsm / out_rate:.2f}x |")


if __name__ == "__main__":
    main()
