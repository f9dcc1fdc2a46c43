"""Start-up and single-issuance wall time of the cyphrs process.

Run: .venv/bin/python bench/bench_startup.py [runs]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy, time_command


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as tmp:
        ca = demo_hierarchy(Path(tmp))
        env = {"CYPHRS_HOME": ca["home"], "CI": "true"}
        out = Path(tmp) / "out"
        results = {
            "python -c pass": time_command([sys.executable, "-c", "pass"], runs),
            "cyphrs --version": time_command([CYPHRS, "--version"], runs),
            "cyphrs --help": time_command([CYPHRS, "--help"], runs),
            "cyphrs issue agent": time_command(
                [
                    CYPHRS,
                    "issue",
                    "agent",
                    "--workflow",
                    "bench",
                    "--out-dir",
                    str(out),
                    "--force",
                    "--passphrase-file",
                    ca["inter_pass"],
                ],
                runs,
                env,
            ),
            "cyphrs issue agent --json (no files)": time_command(
                [
                    CYPHRS,
                    "issue",
                    "agent",
                    "--workflow",
                    "bench",
                    "--json",
                    "--passphrase-file",
                    ca["inter_pass"],
                ],
                runs,
                env,
            ),
        }
        print(json.dumps({"runs": runs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
