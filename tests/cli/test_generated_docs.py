"""Completions and man pages are generated from the CLI; committed copies must be current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tree(base: Path) -> dict[str, bytes]:
    """Every file under base/completions and base/man, by relative path, as raw bytes."""
    return {
        str(path.relative_to(base)): path.read_bytes()
        for folder in ("completions", "man")
        if (base / folder).is_dir()
        for path in sorted((base / folder).iterdir())
    }


def test_completions_and_man_pages_are_current(tmp_path: Path) -> None:
    """Run the real generator into an empty directory; the committed trees must be identical,
    byte for byte (no missing, extra or differing file, line endings included)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    fresh, committed = _tree(tmp_path), _tree(REPO)
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    stale = sorted(p for p in set(fresh) & set(committed) if fresh[p] != committed[p])
    assert not (missing or extra or stale), (
        f"run scripts/gen_docs.py (missing: {missing}, extra: {extra}, stale: {stale})"
    )
    assert len([p for p in fresh if p.endswith(".1")]) >= 15
    assert {"completions/cyphrs.bash", "completions/_cyphrs", "completions/cyphrs.fish"} <= set(
        fresh
    )


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
    assert _complete("cyphrs issue ", 2, home) == ["admin", "agent", "batch-worker", "client", "ocsp-responder", "server"]
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
