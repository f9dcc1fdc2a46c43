"""``cyphrs audit verify`` over a ledger of N events (default 1,000,000).

The ledger is built with the real record path of issuance: a real hierarchy and one real
agent certificate, then N-3 more certificates recorded exactly as ``ca.issuance`` records
one -- ``insert_certificate``'s INSERT and ``ledger.events.append_event`` with the
same ``certificate.issued`` details (``row_digest`` and all) -- in transactions of 10,000,
with fresh serials/fingerprints (signing a million certificates is not what this measures).
So verify checks N chained events and N certificate rows, every one of them intact.

Prints wall time (median of RUNS) and peak RSS of the verifying process.

Run: .venv/bin/python bench/bench_verify.py [N] [RUNS]
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy


def grow(ledger: Path, events: int) -> None:
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.events import LedgerEvent, append_event
    from cyphrs_cli.ledger.records import CERT_IMMUTABLE_COLUMNS, row_digest

    # insert_certificate's statement, fed a dict (its dataclasses.asdict costs more than
    # the insert itself at a million rows); row_digest takes the same dict.
    insert = (
        f"INSERT INTO certificates ({', '.join(CERT_IMMUTABLE_COLUMNS)})"  # noqa: S608
        f" VALUES ({', '.join('?' for _ in CERT_IMMUTABLE_COLUMNS)})"
    )

    with Ledger(ledger) as db:
        conn = db.conn
        template = conn.execute("SELECT * FROM certificates WHERE is_ca = 0 LIMIT 1").fetchone()
        base = {name: template[name] for name in CERT_IMMUTABLE_COLUMNS}
        (have,) = conn.execute("SELECT count(*) FROM events").fetchone()
        left = events - have
        while left > 0:
            conn.execute("BEGIN IMMEDIATE")
            for i in range(min(10_000, left)):
                row = {
                    **base,
                    "serial": secrets.token_hex(20),
                    "fingerprint": "sha256:" + secrets.token_hex(32),
                    "spiffe_id": f"{base['spiffe_id']}-{left}-{i}",
                }
                cursor = conn.execute(insert, [row[c] for c in CERT_IMMUTABLE_COLUMNS])
                record_id = cursor.lastrowid
                append_event(
                    conn,
                    LedgerEvent(
                        type="certificate.issued",
                        target=f"certificate:{row['serial']}",
                        details={
                            "certificate_id": record_id,
                            "serial": row["serial"],
                            "fingerprint": row["fingerprint"],
                            "profile": row["profile"],
                            "issuer": "bench-issuing",
                            "subject": row["subject"],
                            "spiffe_id": row["spiffe_id"],
                            "not_after": row["not_after"],
                            "replaces_id": None,
                            "row_digest": row_digest(row),
                        },
                    ),
                )
            conn.execute("COMMIT")
            left -= 10_000


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (MiB) of one child run; its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, (rss if rss > before else before) // 1024, proc.stdout


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as tmp:
        ca = demo_hierarchy(Path(tmp))
        env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true"}
        subprocess.run(
            [CYPHRS, "issue", "agent", "--workflow", "seed", "--json",
             "--passphrase-file", ca["inter_pass"]],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        start = time.perf_counter()
        grow(Path(ca["home"]) / "ledger.sqlite3", total)
        built = time.perf_counter() - start
        samples = []
        for _ in range(runs):
            wall, rss, out = measure([CYPHRS, "audit", "verify", "--json"], env)
            report = json.loads(out)
            assert report["ok"], report["first_problem"]
            samples.append((wall, rss))
        samples.sort()
        print(
            json.dumps(
                {
                    "events": report["events_checked"],
                    "certificates": report["certificates_checked"],
                    "build_s": round(built, 1),
                    "verify_median_s": round(samples[len(samples) // 2][0], 2),
                    "verify_min_s": round(samples[0][0], 2),
                    # ru_maxrss of children is a high-water mark over all of them: the
                    # largest verify run (the builders above run in this process).
                    "verify_peak_rss_mib": max(r for _, r in samples),
                    "goal": "<= 10 s and <= 300 MB at 1,000,000 events",
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
