"""Where the slowest enrollments of ``cyphrs serve`` spend their time: a timeline of every
request, signing, group write, COMMIT, writer-lock wait and WAL checkpoint in each
serving process, then the slowest 2 % of requests set beside typical ones.

Runs a copy of this tree's ``cyphrs_cli`` (first on ``PYTHONPATH``, as
``bench_serve_ab.py`` does) with a ``sitecustomize`` module of this script's making in
front of it: at import it wraps a few functions of the serving path so that each call
appends (what, monotonic start, monotonic end) to a list, written to a file per process
when the process exits. The clock is ``CLOCK_MONOTONIC``, shared by every process, so one
worker's checkpoint can be set beside another worker's slow request. The wrappers cost a
few microseconds per call: the rates printed are a little below ``bench_serve.py``'s.

The clients are ``bench_serve.run_level``'s: C threads, each on one HTTPS keep-alive
connection, enrolling with one-time-token uses and fresh P-256 CSRs.

Run: .venv/bin/python bench/bench_serve_tail.py [--clients 4] [--processes 2]
     [--per-client 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import stop
from bench_serve_ab import EnrollLevel, _serve
from common import copy_of_this_tree

#: The tracer, imported by every Python process of the server (site imports
#: ``sitecustomize`` from ``PYTHONPATH``). It patches each listed function once its
#: module has finished importing, found through an import hook.
_TRACER = """
import builtins, functools, os, sys, time

_OUT = os.environ.get("CYPHRS_BENCH_TRACE")
_EVENTS = []
_TARGETS = {
    "cyphrs_cli.server.app": [("problems_and_log", "request")],
    "cyphrs_cli.service.enrollment": [("start_enrollment", "sign")],
    "cyphrs_cli.service.committer": [
        ("GroupCommitter._write_group", "group write"),
        ("GroupCommitter._commit_here", "commit and sync"),
    ],
    "cyphrs_cli.ledger.writelock": [("LockWaiter.wait", "writer-lock wait")],
    "cyphrs_cli.ledger.checkpoint": [("WalCheckpointer._checkpoint", "checkpoint")],
}


def _wrapped(function, label):
    if getattr(function, "__code__", None) and function.__code__.co_flags & 0x80:
        @functools.wraps(function)
        async def timed(*args, **kwargs):
            start = time.monotonic()
            try:
                return await function(*args, **kwargs)
            finally:
                _EVENTS.append((label, start, time.monotonic()))
    else:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                what = f"{label} {args[1]}" if label == "checkpoint" else label
                _EVENTS.append((what, start, time.monotonic()))
    return timed


def _patch():
    for name, targets in list(_TARGETS.items()):
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            for path, label in targets:
                owner, _, attribute = path.rpartition(".")
                holder = getattr(module, owner) if owner else module
                setattr(holder, attribute, _wrapped(getattr(holder, attribute), label))
        except AttributeError:  # still importing: next time
            continue
        del _TARGETS[name]


def _dump():
    with open(os.path.join(_OUT, f"trace-{os.getpid()}.txt"), "w") as out:
        for what, start, end in _EVENTS:
            out.write(f"{start:.6f} {end:.6f} {what}\\n")


if _OUT:
    import atexit

    _import = builtins.__import__

    def _importing(*args, **kwargs):
        module = _import(*args, **kwargs)
        if _TARGETS:
            _patch()
        return module

    builtins.__import__ = _importing
    atexit.register(_dump)
"""


@dataclass(frozen=True)
class Span:
    what: str
    start: float
    end: float
    process: str

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def read_spans(folder: Path, since: float) -> list[Span]:
    spans = []
    for path in folder.glob("trace-*.txt"):
        process = path.stem.removeprefix("trace-")
        for line in path.read_text().splitlines():
            start, end, what = line.split(" ", 2)
            if float(start) >= since:
                spans.append(Span(what, float(start), float(end), process))
    return spans


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def report(spans: list[Span]) -> None:
    """Durations by span, then the slowest 2 % of requests beside as many typical ones.
    Spans that start after the last request (the closing checkpoint) are left out."""
    last = max(s.end for s in spans if s.what == "request")
    spans = [s for s in spans if s.start < last]
    print("| span | count | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for what in sorted({s.what for s in spans}):
        ms = [s.ms for s in spans if s.what == what]
        print(
            f"| {what} | {len(ms)} | {_quantile(ms, 0.5):.2f} | {_quantile(ms, 0.9):.2f}"
            f" | {_quantile(ms, 0.99):.2f} | {max(ms):.2f} |"
        )
    requests = sorted((s for s in spans if s.what == "request"), key=lambda s: s.ms)
    count = max(1, len(requests) // 50)
    slow = requests[-count:]
    typical = requests[len(requests) // 2 - count // 2 :][:count]
    checkpoints = [s for s in spans if s.what.startswith("checkpoint")]
    print(f"\nthe slowest {count} requests (from {slow[0].ms:.2f} ms), {count} around the median:")
    print("| requests | overlap a checkpoint (any process) | longest writer-lock wait, median ms"
          " | signing in their process meanwhile, median ms |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for label, group in (("slowest", slow), ("median", typical)):
        near = sum(1 for r in group if any(r.overlaps(c) for c in checkpoints))
        waits, signing = [], []
        for r in group:
            mine = [s for s in spans if s.process == r.process and s.overlaps(r)]
            waits.append(max([s.ms for s in mine if s.what == "writer-lock wait"], default=0.0))
            signing.append(sum(s.ms for s in mine if s.what == "sign"))
        print(
            f"| {label} | {near}/{len(group)} | {statistics.median(waits):.2f}"
            f" | {statistics.median(signing):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cyphrs-bench-tail-"))
    tree = copy_of_this_tree(work / "tree")
    (tree / "sitecustomize.py").write_text(_TRACER)
    traces = work / "traces"
    traces.mkdir()
    env = {"PYTHONPATH": str(tree), "CYPHRS_BENCH_TRACE": str(traces)}
    server = _serve("traced", work / "server", env, args.processes)
    try:
        level = EnrollLevel(server, args.clients, args.per_client, args.rounds + 1)
        level()  # warm-up, not reported
        since = time.monotonic()
        for _ in range(args.rounds):
            rate, p99 = level()
            print(f"{args.clients} clients: {rate:.1f}/s, p99 {p99:.2f} ms (client side)")
    finally:
        stop(server.process)
    print(f"\n--processes {args.processes}; traces in {traces}\n")
    report(read_spans(traces, since))


if __name__ == "__main__":
    main()
