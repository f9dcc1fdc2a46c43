"""The server's log lines from several processes sharing one stderr (``serve --processes N``):
each line reaches the file whole. Real processes writing to one open file, as the supervisor
and its workers do with the stderr they inherit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_WRITER = """
from cyphrs_cli.server import sites, supervisor
for n in range(1500):
    sites.log("request", n=n, padding="x" * 100)
    supervisor._log("worker.check", {"n": n})
"""


def test_lines_of_concurrent_processes_never_interleave(tmp_path: Path) -> None:
    shared = tmp_path / "stderr.log"
    with shared.open("wb") as stderr:
        writers = [
            subprocess.Popen([sys.executable, "-c", _WRITER], stderr=stderr) for _ in range(3)
        ]
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    lines = shared.read_text().split("\n")
    assert lines[-1] == ""
    broken = [line for line in lines[:-1] if not line.startswith("{") or not line.endswith("}")]
    assert not broken, broken[:3]
    assert len([json.loads(line) for line in lines[:-1]]) == 3 * 2 * 1500
