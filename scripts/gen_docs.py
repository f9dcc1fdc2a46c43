"""Generate shell completions (completions/) and man pages (man/) from the CLI itself.

Run after changing commands or help text:  .venv/bin/python scripts/gen_docs.py
tests/cli/test_generated_docs.py fails when the committed files are stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHELLS = {"bash": "cyphrs.bash", "zsh": "_cyphrs", "fish": "cyphrs.fish"}


def completion_script(shell: str) -> str:
    env = {**os.environ, "_CYPHRS_COMPLETE": f"source_{shell}"}
    proc = subprocess.run(
        [sys.executable, "-m", "cyphrs_cli"], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout


def _roff(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        line = line.replace("-", "\\-")
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _leaves(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    subcommands = getattr(command, "commands", None)
    out = [(path, command)]
    if subcommands:
        for name in sorted(subcommands):
            out += _leaves(subcommands[name], [*path, name])
    return out


def man_page(path: list[str], command: Any, version: str) -> str:
    title = "-".join(path)
    help_text = (command.help or "").strip()
    short = help_text.splitlines()[0] if help_text else ""
    parts = [
        f'.TH {title.upper()} 1 "" "cyphrs {version}" "cyphrs manual"',
        ".SH NAME",
        f"{_roff(title)} \\- {_roff(short)}",
        ".SH SYNOPSIS",
        f".B {_roff(' '.join(path))}",
    ]
    arguments = [p for p in command.params if getattr(p, "param_type_name", "") == "argument"]
    synopsis = "[OPTIONS]" + "".join(f" {p.name.upper()}" for p in arguments)
    if getattr(command, "commands", None):
        synopsis += " COMMAND [ARGS]..."
    parts.append(_roff(synopsis))
    parts += [".SH DESCRIPTION", _roff(help_text)]
    if getattr(command, "commands", None):
        parts.append(".SH COMMANDS")
        for name in sorted(command.commands):
            sub = command.commands[name]
            parts += [
                ".TP",
                f".B {_roff(name)}",
                _roff((sub.help or "").strip().splitlines()[0] if sub.help else ""),
            ]
    options = [
        p for p in command.params if getattr(p, "param_type_name", "") == "option" and not p.hidden
    ]
    if options:
        parts.append(".SH OPTIONS")
        for option in options:
            names = ", ".join(option.opts + option.secondary_opts)
            metavar = "" if option.is_flag else f" {option.type.name.upper()}"
            parts += [".TP", f".B {_roff(names)}{_roff(metavar)}", _roff(option.help or "")]
    epilog = (command.epilog or "").strip()
    if epilog:
        parts += [".SH EXAMPLES AND EXIT STATUS", ".nf", _roff(epilog), ".fi"]
    parts += [".SH SEE ALSO", "\\fBcyphrs\\fR(1)"]
    return "\n".join(parts) + "\n"


def generate(target: Path) -> dict[Path, str]:
    """Every generated file's path (relative to ``target``) and content."""
    import typer.main

    from cyphrs_cli import __version__
    from cyphrs_cli.cli.app import app

    files: dict[Path, str] = {}
    for shell, name in SHELLS.items():
        files[target / "completions" / name] = completion_script(shell)
    root = typer.main.get_command(app)
    root.load_all()  # type: ignore[attr-defined]  # subcommands are loaded lazily
    for path, command in _leaves(root, ["cyphrs"]):
        files[target / "man" / f"{'-'.join(path)}.1"] = man_page(path, command, __version__)
    return files


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    for folder in ("completions", "man"):
        for stale in (target / folder).glob("*"):
            stale.unlink()
    for path, content in generate(target).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    # The OpenAPI document of `cyphrs serve`, from its route table (server/spec.py).
    from cyphrs_cli.server.spec import openapi_text

    (target / "docs").mkdir(exist_ok=True)
    (target / "docs" / "openapi.json").write_text(openapi_text())
    print(f"wrote completions, man pages and docs/openapi.json under {target}")


if __name__ == "__main__":
    main()
