"""Issuance throughput: one batch of N agent certificates, one `cyphrs issue agent` process,
and the openssl equivalent of the same job, for both file keys and (optionally) SoftHSM2.

Run: .venv/bin/python bench/bench_issue.py [N] [--hsm]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy, time_command


def batch_rate(
    ca: dict[str, str],
    n: int,
    base: Path,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> dict[str, float]:
    batch = base / "batch.jsonl"
    batch.write_text("".join(json.dumps({"workflow": f"wf{i % 20}"}) + "\n" for i in range(n)))
    env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true", **(extra_env or {})}
    out = base / f"out-{time.monotonic_ns()}"
    start = time.perf_counter()
    subprocess.run(
        [CYPHRS, "issue", "agent", "--batch", str(batch), "--out-dir", str(out), *extra_args],
        env=env,
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    return {
        "certificates": n,
        "seconds": round(elapsed, 2),
        "certs_per_second": round(n / elapsed, 1),
    }


def openssl_job(base: Path) -> list[str]:
    """The same job by hand: a P-256 key + CSR, then a signed cert with SAN and EKUs."""
    ext = base / "ext.cnf"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth,serverAuth\n"
        "subjectAltName=URI:spiffe://bench.internal/agent/wf/1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    return [
        "sh",
        "-c",
        f"openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=wf-1 "
        f"-keyout {base}/k.pem -out {base}/r.csr 2>/dev/null && "
        f"openssl x509 -req -in {base}/r.csr -CA {base}/ica.pem -CAkey {base}/ikey.pem "
        f"-passin file:{base}/inter.pass -days 1 -extfile {ext} "
        f"-set_serial 0x$(openssl rand -hex 19) "
        f"-out {base}/c.pem 2>/dev/null",
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1000
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = demo_hierarchy(base / "file")
        results["batch, file key"] = batch_rate(
            ca, n, base / "file", extra_args=("--passphrase-file", ca["inter_pass"])
        )
        env = {"CYPHRS_HOME": ca["home"], "CI": "true"}
        results["one `cyphrs issue agent` process"] = time_command(
            [
                CYPHRS,
                "issue",
                "agent",
                "--workflow",
                "bench",
                "--json",
                "--passphrase-file",
                ca["inter_pass"],
            ],
            20,
            env,
        )
        home = Path(ca["home"])
        shutil.copy(home / "certs" / "bench-issuing.pem", base / "ica.pem")
        shutil.copy(home / "keys" / "bench-issuing.key.pem", base / "ikey.pem")
        shutil.copy(ca["inter_pass"], base / "inter.pass")
        results["openssl req + openssl x509 -req"] = time_command(openssl_job(base), 20)
        if "--hsm" in sys.argv:
            results.update(hsm_rates(base, n))
    print(json.dumps(results, indent=2))


def hsm_rates(base: Path, n: int) -> dict[str, object]:
    """The same batch with the issuing key in a SoftHSM2 token."""
    module = "/usr/lib/softhsm/libsofthsm2.so"
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(conf),
        "CI": "true",
        "CYPHRS_HOME": str(base / "hsm" / "home"),
    }
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "246810",
            "--so-pin",
            "13579246",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    pin = base / "pin"
    pin.write_text("246810")
    uri = f"pkcs11:token=bench;object={{}}?module-path={module}&pin-source=file:{pin}"
    subprocess.run(
        [CYPHRS, "init-root", "--name", "HSM Bench Root", "--key-uri", uri.format("root")],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            CYPHRS,
            "create-intermediate",
            "--name",
            "HSM Bench Issuing",
            "--trust-domain",
            "bench.internal",
            "--key-uri",
            uri.format("issuing"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    ca = {"home": env["CYPHRS_HOME"]}
    (base / "hsm-run").mkdir()
    return {
        "batch, SoftHSM2 P-256 key": batch_rate(
            ca, n, base / "hsm-run", {"SOFTHSM2_CONF": str(conf)}
        )
    }


if __name__ == "__main__":
    main()
