"""Timing helpers for the benchmarks (never run as tests)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CYPHRS = str(BIN / "cyphrs")


def ensure_bytecode() -> str:
    """Byte-compile the package, as ``pip install`` does for a regular install.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this machine's test harness
    sets it) recompiles every cyphrs module from source on each run, about 45 modules per
    ``issue``: that is not what users run. Returns a note for the results."""
    import compileall

    package = Path(__file__).resolve().parent.parent / "cyphrs_cli"
    compileall.compile_dir(str(package), quiet=1)
    return "cyphrs_cli byte-compiled before timing (as a regular pip install)"


def copy_of_this_tree(parent: Path) -> Path:
    """Copy this checkout's ``cyphrs_cli`` (no bytecode) into ``parent`` and return
    ``parent``, to put first on ``PYTHONPATH``: the before/after scripts run both trees
    that way, as run from the editable install instead, identical code measured
    differently (``bench_serve_ab.py``'s A/A runs, docs/benchmarks.md)."""
    import shutil

    shutil.copytree(
        Path(__file__).resolve().parent.parent / "cyphrs_cli",
        parent / "cyphrs_cli",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return parent


def time_command(argv: list[str], runs: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall-clock milliseconds over ``runs`` runs after one warm-up: median, p95, min."""
    full_env = {**os.environ, **(env or {})}
    subprocess.run(argv, env=full_env, check=True, capture_output=True)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=full_env, check=True, capture_output=True)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 1),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 1),
        "min_ms": round(samples[0], 1),
    }


def demo_hierarchy(base: Path, key_type: str = "p256") -> dict[str, str]:
    """A root and intermediate in ``base``; returns env and passphrase paths."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "root.pass").write_text("bench-root-passphrase")
    (base / "inter.pass").write_text("bench-inter-passphrase")
    env = {**os.environ, "CYPHRS_HOME": str(base / "home"), "CI": "true"}
    subprocess.run(
        [
            CYPHRS,
            "init-root",
            "--name",
            "Bench Root",
            "--key-type",
            key_type,
            "--passphrase-file",
            str(base / "root.pass"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            CYPHRS,
            "create-intermediate",
            "--name",
            "Bench Issuing",
            "--key-type",
            key_type,
            "--trust-domain",
            "bench.internal",
            "--passphrase-file",
            str(base / "inter.pass"),
            "--root-passphrase-file",
            str(base / "root.pass"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return {"home": str(base / "home"), "inter_pass": str(base / "inter.pass")}
