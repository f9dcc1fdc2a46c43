"""Completions and man pages are generated from the CLI; committed copies must be current."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_completions_and_man_pages_are_current(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)  # type: ignore[attr-defined]
    stale = []
    for path, content in generated.items():
        committed = REPO / path.relative_to(tmp_path)
        if not committed.exists() or committed.read_text() != content:
            stale.append(str(committed.relative_to(REPO)))
    extra = {p.relative_to(REPO) for f in ("completions", "man") for p in (REPO / f).iterdir()}
    extra -= {p.relative_to(tmp_path) for p in generated}
    assert not stale and not extra, f"run scripts/gen_docs.py (stale: {stale}, extra: {extra})"
    assert len([p for p in generated if p.suffix == ".1"]) >= 15


def test_every_man_page_documents_exit_codes_and_examples() -> None:
    for page in (REPO / "man").glob("cyphrs-*.1"):
        text = page.read_text()
        if "COMMANDS" in text:  # command groups list their subcommands instead
            continue
        assert "Exit codes" in text and "Examples" in text, page.name


def _complete(words: str, cword: int, home: Path) -> list[str]:
    env = {
        **os.environ,
        "_CYPHRS_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "CYPHRS_HOME": str(home),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cyphrs_cli"], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.split()


def test_completion_of_profiles_and_issuers_reads_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / "batch-worker.toml").write_text("")
    (home / "config.toml").write_text(
        '[authorities.acme-agents]\nrole = "intermediate"\nkey = "file:k"\ncert = "c"\n'
        '[authorities.acme-root]\nrole = "root"\nkey = "file:k"\ncert = "c"\n'
    )
    assert _complete("cyphrs issue ", 2, home) == ["agent", "batch-worker", "client", "server"]
    assert _complete("cyphrs issue agent --issuer acme-a", 4, home) == ["acme-agents"]


def test_show_completion_prints_the_committed_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cyphrs_cli", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "_cyphrs_completion" in proc.stdout
    committed = (REPO / "completions" / "cyphrs.bash").read_text()
    assert "complete -o default -F _cyphrs_completion cyphrs" in committed
