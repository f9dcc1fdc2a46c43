"""A worker of ``serve --processes N`` started by a supervisor that died before it wrote the
worker's configuration (a real ``python -m cyphrs_cli.server.worker`` process)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_worker_whose_supervisor_died_before_configuring_it_exits_2_quietly() -> None:
    """The supervisor killed between starting a worker and writing its configuration: the
    worker reads end-of-file, says so in its one error line and exits 2, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "cyphrs_cli.server.worker"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["message"] == "no configuration on stdin: the supervisor is gone"
