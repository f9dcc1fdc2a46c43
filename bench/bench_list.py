"""``cyphrs list`` over a ledger of 100,000 certificates.

The rows are real certificates issued through the issuance path for a sample, then the
ledger is grown to N rows by copying that sample with fresh serials/fingerprints and spread
issue times (signing 100,000 certificates one by one is not what this measures).

Run: .venv/bin/python bench/bench_list.py [N]
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
            "--san ... --limit 10 --json (LIKE scan)": [
                "--san",
                "spiffe://bench.internal/agent/wf3/53",
                "--limit",
                "10",
                "--json",
            ],
        }
        results = {
            name: time_command([CYPHRS, "list", *args], 10, env) for name, args in queries.items()
        }
        print(json.dumps({"certificates": total + 3, "results": results}, indent=2))


if __name__ == "__main__":
    main()
