"""Start-up and single-issuance wall time of the cyphrs process.

Every figure is also given as a ratio to ``python -c pass`` measured in the same run
(goals: ``--version`` <= 2x; ``--help``, a subcommand's ``--help`` and a TAB completion
<= 6x; one ``issue agent --out-dir`` <= 9x).

Run: .venv/bin/python bench/bench_startup.py [runs]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CYPHRS, demo_hierarchy, ensure_bytecode, time_command


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as tmp:
        ca = demo_hierarchy(Path(tmp))
        env = {"CYPHRS_HOME": ca["home"], "CI": "true"}
        out = Path(tmp) / "out"
        issue_out_dir = [
            CYPHRS, "issue", "agent", "--workflow", "bench", "--out-dir", str(out), "--force",
            "--passphrase-file", ca["inter_pass"],
        ]  # fmt: skip
        # First without any bytecode cache (an empty PYTHONPYCACHEPREFIX, nothing written):
        # how an editable install runs under PYTHONDONTWRITEBYTECODE=1.
        empty = Path(tmp) / "no-pycache"
        empty.mkdir()
        uncached = time_command(
            issue_out_dir,
            runs,
            {**env, "PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        note = ensure_bytecode()
        results = {
            "python -c pass": time_command([sys.executable, "-c", "pass"], runs),
            "cyphrs --version": time_command([CYPHRS, "--version"], runs),
            "cyphrs --help": time_command([CYPHRS, "--help"], runs),
            "cyphrs issue agent --help": time_command([CYPHRS, "issue", "agent", "--help"], runs),
            "TAB: cyphrs issue agent --issuer <TAB>": time_command(
                [CYPHRS],
                runs,
                {
                    **env,
                    "_CYPHRS_COMPLETE": "complete_bash",
                    "COMP_WORDS": "cyphrs issue agent --issuer ",
                    "COMP_CWORD": "4",
                },
            ),
            "TAB: cyphrs i<TAB>": time_command(
                [CYPHRS],
                runs,
                {
                    **env,
                    "_CYPHRS_COMPLETE": "complete_bash",
                    "COMP_WORDS": "cyphrs i",
                    "COMP_CWORD": "1",
                },
            ),
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
        results["cyphrs issue agent, no bytecode cache (source compiled)"] = uncached
        floor = results["python -c pass"]["median_ms"]
        for result in results.values():
            result["x_python_c_pass"] = round(result["median_ms"] / floor, 2)
        print(json.dumps({"runs": runs, "note": note, "results": results}, indent=2))


if __name__ == "__main__":
    main()
