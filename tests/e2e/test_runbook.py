"""docs/runbook.md runs: every ```sh block, in order, in one shell, in an empty directory,
with a real SoftHSM2 token and real openssl (issue 14, the team runbook).

Blocks fenced as ```console are illustrations and are skipped; the test also checks that
they stay few, so the runbook cannot drift into untested prose."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN

pytestmark = pytest.mark.hsm

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def runbook_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(RUNBOOK.read_text())]


def test_only_sh_and_a_few_console_blocks() -> None:
    kinds = [kind for kind, _ in runbook_blocks()]
    assert set(kinds) <= {"sh", "console"}, kinds
    assert kinds.count("sh") >= 15 and kinds.count("console") <= 3


def test_every_sh_block_runs_in_order(tmp_path: Path) -> None:
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util missing; scripts/test installs the softhsm2 package")
    script = ["set -euo pipefail"]
    for number, (kind, body) in enumerate(runbook_blocks(), start=1):
        if kind == "sh":
            script += [f"echo '=== runbook block {number}' >&2", body]
    (tmp_path / "runbook.sh").write_text("\n".join(script) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CYPHRS_", "SOFTHSM2_"))
    }
    env.update({"PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", "CI": "true"})
    proc = subprocess.run(
        ["bash", str(tmp_path / "runbook.sh")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    blocks = re.findall(r"=== runbook block (\d+)", proc.stderr)
    assert proc.returncode == 0, (
        f"runbook block {blocks[-1] if blocks else '?'} failed:\n{proc.stderr[-4000:]}"
    )
    # What the runbook promises, checked on what it left behind.
    assert (work / "evidence" / "quarter.tar.gz").is_file()
    assert "CA:TRUE, pathlen:0" in proc.stdout and "URI:acme.internal" in proc.stdout
    secret = (work / "secrets" / "issuing.pin").read_text()
    for bundle in ("quarter", "root-quarter", "incident"):
        for path in (work / "evidence" / bundle).rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                assert secret not in text and "issuing.pin" not in text, path
