"""A generated private key is not printed to a terminal: --out - and --json alike.

stdout is a real pseudo-terminal (``pty.openpty``) given to a real ``cyphrs`` process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, tool
from tests.processes import on_terminal


def _run_on_pty(*args: str) -> tuple[int, str, str]:
    """Run cyphrs with stdout on a pty; return (exit code, what the terminal got, stderr)."""
    return on_terminal([tool("cyphrs"), *args], {**os.environ, "CI": "true"})


def _common(h: Hierarchy) -> tuple[str, ...]:
    return ("--home", str(h.home), "--passphrase-file", str(h.inter_pass))


@pytest.mark.parametrize("output", [("--json",), ("--out", "-")])
def test_issue_refuses_private_key_on_terminal(
    hierarchy: Hierarchy, output: tuple[str, ...]
) -> None:
    before = hierarchy.ledger_rows()
    code, terminal, stderr = _run_on_pty(
        "issue", "agent", "--workflow", "tty-test", *output, *_common(hierarchy)
    )
    assert code == 2, stderr
    assert "PRIVATE KEY" not in terminal
    assert "terminal" in stderr
    assert hierarchy.ledger_rows() == before  # refused before anything was signed


def test_issue_json_on_terminal_with_force_prints_the_key(hierarchy: Hierarchy) -> None:
    """The pty really is a terminal to cyphrs: with --force the key does reach it."""
    code, terminal, stderr = _run_on_pty(
        "issue", "agent", "--workflow", "tty-test", "--json", "--force", *_common(hierarchy)
    )
    assert code == 0, stderr
    assert "PRIVATE KEY" in terminal


def test_issue_json_with_out_dir_or_csr_is_fine_on_terminal(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    code, terminal, stderr = _run_on_pty(
        "issue",
        "agent",
        "--workflow",
        "tty-test",
        "--json",
        "--out-dir",
        str(tmp_path / "o"),
        *_common(hierarchy),
    )
    assert code == 0, stderr
    assert "PRIVATE KEY" not in terminal
    assert (tmp_path / "o" / "key.pem").exists()


def test_renew_json_refuses_new_key_on_terminal(hierarchy: Hierarchy) -> None:
    issued = hierarchy.issue("agent", "--workflow", "tty-renew", "--json")
    assert issued.exit_code == 0, issued.stderr
    serial = issued.json()["certificate"]["serial"]
    before = hierarchy.ledger_rows()
    code, terminal, stderr = _run_on_pty("renew", "--serial", serial, "--json", *_common(hierarchy))
    assert code == 2, stderr
    assert "PRIVATE KEY" not in terminal
    assert hierarchy.ledger_rows() == before
    # Reusing the key prints no private key: allowed on a terminal.
    code, terminal, stderr = _run_on_pty(
        "renew", "--serial", serial, "--json", "--reuse-key", *_common(hierarchy)
    )
    assert code == 0, stderr
    assert "PRIVATE KEY" not in terminal


def test_batch_json_refuses_private_key_on_terminal(hierarchy: Hierarchy, tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"profile": "agent", "workflow": "tty-batch"}\n')
    before = hierarchy.ledger_rows()
    code, terminal, stderr = _run_on_pty(
        "issue", "--batch", str(batch), "--json", *_common(hierarchy)
    )
    assert code == 2, stderr
    assert "PRIVATE KEY" not in terminal
    assert hierarchy.ledger_rows() == before
