"""Before/after on a loaded, shared machine: the commands are run *interleaved*, round by
round (floor, after, before, floor, after, before, ...), so a load spike hits all of them
alike; each figure is a median over rounds, and each ratio the median of per-round ratios.

"before" is an older cyphrs tree put first on ``PYTHONPATH`` (for example
``git archive a86a6ad cyphrs_cli | tar -x -C /tmp/before``), and "after" a copy of this
tree put there the same way (``common.copy_of_this_tree``); both trees are byte-compiled
first, as a regular install is.

Rows: one ``issue agent --out-dir`` process against ``python -c pass``; a 1,000-item
``--batch --json`` (CPU-bound, no files); ``list --san`` over 100,000 rows (the same ledger
file for both: the before tree has no SAN table and scans with LIKE).

Run: .venv/bin/python bench/bench_ab.py /tmp/before [ROUNDS]
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_list import grow
from common import CYPHRS, copy_of_this_tree, demo_hierarchy, ensure_bytecode


def _wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def _rounds(named: dict[str, tuple[list[str], dict[str, str]]], rounds: int) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in named}
    for argv, env in named.values():  # warm-up
        _wall(argv, env)
    for _ in range(rounds):
        for name, (argv, env) in named.items():
            samples[name].append(_wall(argv, env))
    return samples


def main() -> None:
    before = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    ensure_bytecode()
    compileall.compile_dir(str(before / "cyphrs_cli"), quiet=1)
    here = copy_of_this_tree(Path(tempfile.mkdtemp(prefix="bench-ab-after-")))
    compileall.compile_dir(str(here / "cyphrs_cli"), quiet=1)
    try:
        _measure(before, here, rounds)
    finally:
        shutil.rmtree(here, ignore_errors=True)


def _measure(before: Path, here: Path, rounds: int) -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    print(f"# {load.strip()}")
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = demo_hierarchy(base)
        env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true"}
        old = {**env, "PYTHONPATH": str(before)}
        new = {**env, "PYTHONPATH": str(here)}
        issue = [CYPHRS, "issue", "agent", "--workflow", "ab", "--out-dir", str(base / "o"),
                 "--force", "--passphrase-file", ca["inter_pass"]]  # fmt: skip
        s = _rounds(
            {"floor": ([sys.executable, "-c", "pass"], env), "after": (issue, new),
             "before": (issue, old)},
            rounds,
        )  # fmt: skip
        out["issue agent --out-dir (ms)"] = {
            "floor_python_c_pass": round(statistics.median(s["floor"]), 1),
            "after": round(statistics.median(s["after"]), 1),
            "before": round(statistics.median(s["before"]), 1),
            "after_x_floor": round(statistics.median(
                [a / f for a, f in zip(s["after"], s["floor"], strict=True)]), 2),
            "before_x_floor": round(statistics.median(
                [b / f for b, f in zip(s["before"], s["floor"], strict=True)]), 2),
        }  # fmt: skip
        batch = base / "b.jsonl"
        batch.write_text(
            "".join(json.dumps({"workflow": f"wf{i % 20}"}) + "\n" for i in range(1000))
        )
        argv = [CYPHRS, "issue", "agent", "--batch", str(batch), "--json",
                "--passphrase-file", ca["inter_pass"]]  # fmt: skip
        s = _rounds({"after": (argv, new), "before": (argv, old)}, max(3, rounds // 3))
        out["batch 1,000 --json (certs/s)"] = {
            "after": round(1000 / statistics.median(s["after"]) * 1000),
            "before": round(1000 / statistics.median(s["before"]) * 1000),
            "after_over_before": round(statistics.median(
                [b / a for a, b in zip(s["after"], s["before"], strict=True)]), 2),
        }  # fmt: skip
        grow(Path(ca["home"]) / "ledger.sqlite3", 100_000)
        san = [CYPHRS, "list", "--san", "spiffe://bench.internal/agent/wf3/53", "--limit",
               "10", "--json"]  # fmt: skip
        s = _rounds(
            {"floor": ([sys.executable, "-c", "pass"], env), "after": (san, new),
             "before": (san, old)},
            rounds,
        )  # fmt: skip
        out["list --san over 100k (ms)"] = {
            "floor_python_c_pass": round(statistics.median(s["floor"]), 1),
            "after": round(statistics.median(s["after"]), 1),
            "before": round(statistics.median(s["before"]), 1),
            "after_minus_floor": round(statistics.median(
                [a - f for a, f in zip(s["after"], s["floor"], strict=True)]), 1),
        }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
