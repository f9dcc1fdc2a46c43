"""One worker process of ``cyphrs serve --processes N`` (``python -m cyphrs_cli.server.worker``).

Started by ``server.supervisor`` only. It reads one JSON line on stdin (the CA home, the
serve options already divided per process, the secrets the key store asked the supervisor
for, the inherited descriptor of the channel its connections arrive on, the URL the
supervisor listens on, the supervisor's pid and the metrics directory), then runs
``server.run.serve`` on the connections it is handed (``server.sites.HandedSite``). Its
first stdout line is its ready document, or ``{"error": {...}}`` when it could not start;
logs go to stderr, shared with the supervisor's.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from cyphrs_cli.errors import CyphrsError, ExitCode, UsageError


def main() -> int:
    # The supervisor blocks these to take them synchronously; a child inherits its mask.
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
    )
    try:
        line = sys.stdin.buffer.readline()
        if not line:  # the supervisor died before it wrote the configuration
            raise UsageError("no configuration on stdin: the supervisor is gone")
        return _serve(json.loads(line))
    except CyphrsError as error:
        _say({"error": {"message": error.message, "hint": error.hint, "slug": error.slug}})
        return int(error.exit_code)


def _serve(config: dict[str, Any]) -> int:
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.events import ACTOR_OVERRIDE
    from cyphrs_cli.server.run import WorkerSetup, serve
    from cyphrs_cli.server.supervisor import options_from_document

    secrets = {k: base64.b64decode(v) for k, v in config["secrets"].items()}
    ACTOR_OVERRIDE.set(str(config["actor"]))  # the supervisor's (``start_worker``)

    def provide(purpose: str) -> bytes:
        if purpose not in secrets:
            raise UsageError(f"the supervisor was not given the {purpose}")
        return secrets[purpose]

    channel = socket.socket(fileno=int(config["channel_fd"]))
    setup = WorkerSetup(
        channel, str(config["listening"]), int(config["supervisor_pid"]), str(config["metrics_dir"])
    )
    serve(
        CaHome(Path(config["home"])),
        provide,
        options_from_document(config["options"]),
        _say,
        worker=setup,
    )
    return int(ExitCode.OK)


def _say(document: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The supervisor died (kill -9) while this worker started: carry on, and stop as
        # its closed channel and changed parent pid say, instead of a traceback (exit 1).
        # stdout now points nowhere, so the exit's own flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
