"""``cyphrs list`` over a ledger of 100,000 certificates.

The rows are real certificates issued through the issuance path for a sample, then the
ledger is grown to N rows by copying that sample with fresh serials/fingerprints and spread
issue times (signing 100,000 certificates one by one is not what this measures).

Besides the filtered queries it measures, in the same run:
* ``list --json`` over all N rows (wall time and peak RSS) against a bare floor: a Python
  script with only ``sqlite3`` + ``json`` that runs the same joined query and prints the
  same rows as one JSON document (``FLOOR`` below);
* the human table of the 50,000 valid rows, piped (plain aligned text) and on a
  pseudo-terminal (the Rich table, capped at ``TERMINAL_ROWS``).

Run: .venv/bin/python bench/bench_list.py [N] [RUNS]
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy, time_command

# The floor for `list --json`: the same query and row shape with nothing but sqlite3+json.
FLOOR = r"""
import json, sqlite3, sys
from cyphrs_cli.ledger.queries import _SELECT, _NAMES
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute(_SELECT + " ORDER BY c.issued_at DESC, c.id DESC")
out = []
for row in rows:
    d = dict(zip(_NAMES, row))
    d["sans"] = json.loads(d["sans"])
    d["permissions"] = json.loads(d["permissions"]) if d["permissions"] else []
    out.append(d)
sys.stdout.write(json.dumps({"schema": "cyphrs.list/v1", "count": len(out),
                             "certificates": out}, ensure_ascii=False) + "\n")
"""


def peak(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """One run: wall ms and peak RSS (MiB) of the child, measured by a small launcher (a
    child forked from this process would count this process's pages)."""
    import os
    import subprocess

    launcher = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print((time.perf_counter() - t) * 1000,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher, *argv],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {"wall_ms": round(float(out[0]), 1), "peak_rss_mib": round(float(out[1]), 1)}


def on_terminal(argv: list[str], env: dict[str, str]) -> float:
    """Wall ms of a run whose stdout is a pseudo-terminal (the Rich table path)."""
    import os
    import pty
    import subprocess
    import time

    primary, secondary = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env={**os.environ, **env, "COLUMNS": "200"}, stdout=secondary,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(secondary)
    while True:
        try:
            if not os.read(primary, 1 << 16):
                break
        except OSError:
            break
    proc.wait()
    os.close(primary)
    return round((time.perf_counter() - start) * 1000, 1)


def grow(ledger: Path, total: int) -> None:
    conn = sqlite3.connect(ledger)
    template = conn.execute("SELECT * FROM certificates WHERE is_ca = 0 LIMIT 1").fetchone()
    columns = [d[0] for d in conn.execute("SELECT * FROM certificates LIMIT 0").description]
    rows = []
    for i in range(total):
        row = dict(zip(columns, template, strict=True))
        del row["id"]
        row["serial"] = secrets.token_hex(20)
        row["fingerprint"] = "sha256:" + secrets.token_hex(32)
        row["workflow"] = f"wf{i % 50}"
        row["spiffe_id"] = f"spiffe://bench.internal/agent/wf{i % 50}/{i}"
        row["profile"] = ("agent", "server", "client")[i % 3]
        day = i % 28 + 1
        row["issued_at"] = f"2026-11-{day:02d}T{i % 24:02d}:00:00Z"
        row["not_after"] = f"2026-11-{day:02d}T{(i % 24 + 4) % 24:02d}:00:00Z"
        # Half of the rows expire in 2036 (valid), half in 2026-11 (expired by now).
        if i % 2 == 0:
            row["not_after"] = f"2036-11-{day:02d}T00:00:00Z"
        row["status"] = "revoked" if i % 97 == 0 else "valid"
        rows.append(row)
    names = list(rows[0])
    conn.executemany(
        f"INSERT INTO certificates ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",  # noqa: S608
        [tuple(r[n] for n in names) for r in rows],
    )
    conn.commit()
    conn.close()


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as tmp:
        ca = demo_hierarchy(Path(tmp))
        env = {"CYPHRS_HOME": ca["home"], "CI": "true"}
        import os
        import subprocess

        subprocess.run(
            [
                CYPHRS,
                "issue",
                "agent",
                "--workflow",
                "seed",
                "--json",
                "--passphrase-file",
                ca["inter_pass"],
            ],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        grow(Path(ca["home"]) / "ledger.sqlite3", total)
        queries = {
            "--workflow wf7 --json (2,000 rows)": ["--workflow", "wf7", "--json"],
            "--status revoked --json (~1,030 rows)": ["--status", "revoked", "--json"],
            "--spiffe-id ... --json (1 row)": [
                "--spiffe-id",
                "spiffe://bench.internal/agent/wf3/53",
                "--json",
            ],
            "--issued-after 2026-11-28 --limit 100 --json": [
                "--issued-after",
                "2026-11-28",
                "--limit",
                "100",
                "--json",
            ],
            "--profile server --limit 50 (table)": ["--profile", "server", "--limit", "50"],
            "--san ... --limit 10 --json (SAN index)": [
                "--san",
                "spiffe://bench.internal/agent/wf3/53",
                "--limit",
                "10",
                "--json",
            ],
        }
        results: dict[str, object] = {
            name: time_command([CYPHRS, "list", *args], runs, env) for name, args in queries.items()
        }
        # The interpreter floor in the same run: the filtered queries' goal is <= 0.2 s.
        results["python -c pass (floor)"] = time_command([sys.executable, "-c", "pass"], runs)
        ledger = str(Path(ca["home"]) / "ledger.sqlite3")
        full = [peak([CYPHRS, "list", "--json"], env) for _ in range(3)]
        floor = [peak([sys.executable, "-c", FLOOR, ledger], env) for _ in range(3)]
        table = [peak([CYPHRS, "list", "--status", "valid"], env) for _ in range(3)]
        terminal = [on_terminal([CYPHRS, "list", "--status", "valid"], env) for _ in range(3)]

        def median(samples: list[dict[str, float]], key: str) -> float:
            return sorted(s[key] for s in samples)[len(samples) // 2]

        results["list --json (all rows)"] = {
            "wall_ms": median(full, "wall_ms"),
            "peak_rss_mib": max(s["peak_rss_mib"] for s in full),
            "floor_sqlite3_json_ms": median(floor, "wall_ms"),
            "floor_peak_rss_mib": max(s["peak_rss_mib"] for s in floor),
            "ratio_to_floor": round(median(full, "wall_ms") / median(floor, "wall_ms"), 2),
            "goal": "<= 1.5x floor, <= 150 MB",
        }
        results["list --status valid, piped table (~50k rows)"] = {
            "wall_ms": median(table, "wall_ms"),
            "peak_rss_mib": max(s["peak_rss_mib"] for s in table),
            "goal": "<= 2 s",
        }
        results["list --status valid, on a terminal (Rich, capped)"] = {
            "wall_ms": sorted(terminal)[1],
            "goal": "<= 2 s",
        }
        print(json.dumps({"certificates": total + 3, "results": results}, indent=2))


if __name__ == "__main__":
    main()
