"""What one online enrollment costs the CA, without HTTP: CPU and bytes written.

Opens an ``Authority`` on a fresh demo CA the way ``cyphrs serve`` does (unlocked, group
commit on), enrolls N CSRs with one-time-token credentials from C threads through
``Authority.enroll``, and prints CPU milliseconds per enrollment (this process's user +
system time: the signing, the self-check, SQLite, the committer and checkpoint threads),
bytes written per enrollment (``/proc/self/io``: ``wchar`` every write call, ``disk``
what reached the block layer) and the group-commit statistics.

With ``--online``, C concurrent enrollments at a time go through ``enroll_online`` on one
event loop instead: the path ``cyphrs serve`` takes (signing on the loop, groups written
by the loop, the WAL synced by the commit thread), without HTTP or TLS.

The package measured is the one the running interpreter imports, so the same script
compares two checkouts in the same minute (or one interpreter, each tree first on
``PYTHONPATH``, run from a directory that has no ``cyphrs_cli``):
    .venv/bin/python bench/bench_enroll_cost.py [N] [C] [--online]
    /other/checkout/.venv/bin/python bench/bench_enroll_cost.py [N] [C] [--online]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_hierarchy

WARM_UP = 10  # enrollments per thread before measuring (imports, caches, first pages)


def _io() -> tuple[int, int]:
    fields = dict(
        line.split(": ") for line in Path("/proc/self/io").read_text().splitlines() if ": " in line
    )
    return int(fields["wchar"]), int(fields["write_bytes"])


def main() -> None:
    from cyphrs_cli.client.credentials import KeyRequest
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.enrollment import EnrollRequest

    online = "--online" in sys.argv
    numbers = [a for a in sys.argv[1:] if a != "--online"]
    total = int(numbers[0]) if numbers else 2000
    clients = int(numbers[1]) if len(numbers) > 1 else 4
    per_client = total // clients
    cyphrs = str(Path(sys.executable).parent / "cyphrs")
    with tempfile.TemporaryDirectory() as tmp:
        ca = demo_hierarchy(Path(tmp) / "ca")
        env = {**os.environ, "CYPHRS_HOME": ca["home"], "CI": "true"}
        tokens = [
            json.loads(
                subprocess.run(
                    [
                        cyphrs,
                        "token",
                        "create",
                        "--workflow",
                        "bench",
                        "--uses",
                        "10000",
                        "--ttl",
                        "1h",
                        "--json",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                ).stdout
            )["token"]
            for _ in range(clients)
        ]
        csrs = [
            KeyRequest.generate("p256").csr_pem for _ in range(clients * (per_client + WARM_UP))
        ]
        passphrase = Path(ca["inter_pass"]).read_bytes()
        authority = Authority.open(CaHome(Path(ca["home"])), secrets=lambda _: passphrase)
        committer = authority.start_group_commit()

        def run(client: int, first: int, count: int) -> None:
            for k in range(first, first + count):
                authority.enroll(EnrollRequest(csr_pem=csrs[k], token=tokens[client]))

        def on_loop(first: int, count: int) -> None:
            async def offload(call: Callable[[], Any]) -> Any:
                return await asyncio.get_running_loop().run_in_executor(None, call)

            async def turns() -> None:
                for k in range(count):
                    await asyncio.gather(
                        *(
                            authority.enroll_online(
                                EnrollRequest(csr_pem=csrs[first + c * count + k], token=tokens[c]),
                                offload=offload,
                            )
                            for c in range(clients)
                        )
                    )

            asyncio.run(turns())

        def in_threads(first: int, count: int) -> None:
            if online:
                on_loop(first, count)
                return
            threads = [
                threading.Thread(target=run, args=(c, first + c * count, count))
                for c in range(clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        in_threads(clients * per_client, WARM_UP)
        groups, items = committer.stats.groups, committer.stats.items
        io_before, cpu_before, wall_before = _io(), time.process_time(), time.perf_counter()
        in_threads(0, per_client)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        io_after = _io()
        authority.close()
        done = clients * per_client
        print(
            json.dumps(
                {
                    "enrollments": done,
                    "threads": clients,
                    "path": "enroll_online on one event loop" if online else "enroll in threads",
                    "cpu_ms_per_enrollment": round(cpu * 1000 / done, 3),
                    "wall_ms_per_enrollment": round(wall * 1000 / done, 3),
                    "written_kib_per_enrollment": round(
                        (io_after[0] - io_before[0]) / 1024 / done, 1
                    ),
                    "disk_kib_per_enrollment": round((io_after[1] - io_before[1]) / 1024 / done, 1),
                    "items_per_group": round(
                        (committer.stats.items - items) / max(1, committer.stats.groups - groups), 2
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()
