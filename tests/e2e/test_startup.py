"""Start-up stays lean: the CLI entry point must not import heavy modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Modules that cost start-up time and that only command bodies may import. rich is imported
# only to render output; pydantic is what typer >= 0.29 would pull in (see pyproject.toml).
HEAVY = (
    "cryptography",
    "sqlite3",
    "pkcs11",
    "asn1crypto",
    "platformdirs",
    "rich",
    "pydantic",
)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _imported_after(
    code: str, heavy: tuple[str, ...] = HEAVY, env: dict[str, str] | None = None
) -> list[str]:
    probe = (
        f"import sys\n{code}\nprint('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_importing_the_app_is_lean() -> None:
    assert _imported_after("import cyphrs_cli.cli.app") == []


def test_help_is_lean() -> None:
    code = (
        "from cyphrs_cli.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    app(['issue', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert _imported_after(code) == []


def test_version_is_static() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cyphrs_cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    import tomllib

    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert proc.stdout == f"cyphrs {declared}\n"


def _run_main(*argv: str) -> str:
    """Code that runs the console-script entry point with ``argv``, as the shell would."""
    return (
        "from cyphrs_cli.cli.app import main\n"
        f"sys.argv = ['cyphrs', *{list(argv)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )


def test_version_imports_no_typer_or_click() -> None:
    """``cyphrs --version`` is answered with the standard library only."""
    assert _imported_after(_run_main("--version"), ("typer", "click", *HEAVY)) == []


def test_subcommand_help_through_main_is_lean() -> None:
    for argv in (["--help"], ["list", "--help"], ["audit", "verify", "--help"]):
        assert _imported_after(_run_main(*argv)) == [], argv


def test_completion_is_lean(tmp_path: Path) -> None:
    """A TAB press (click's completion protocol, as the generated scripts call it) on a
    command, an option and an --issuer value imports nothing heavy."""
    for words, cword in (("cyphrs is", 1), ("cyphrs issue agent --w", 3), ("cyphrs list --iss", 2)):
        env = {
            "_CYPHRS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
            "CYPHRS_HOME": str(tmp_path),
        }
        assert _imported_after(_run_main(), env=env) == [], words
    assert "issue" in _completion("cyphrs is", 1, tmp_path)
    env = {
        "_CYPHRS_COMPLETE": "complete_bash",
        "COMP_WORDS": "cyphrs issue agent --issuer ",
        "COMP_CWORD": "4",
        "CYPHRS_HOME": str(tmp_path),
    }
    assert _imported_after(_run_main(), env=env) == []


def _completion(words: str, cword: int, home: Path) -> str:
    env = {
        **os.environ,
        "_CYPHRS_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "CYPHRS_HOME": str(home),
    }
    code = _run_main()
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return proc.stdout


def test_lazy_command_table_matches_the_commands() -> None:
    """The root help and name completion come from ``root.COMMANDS``: every command's
    module and first help paragraph there must be what loading the module defines."""
    import importlib

    import typer
    import typer.main

    from cyphrs_cli.cli.root import COMMANDS

    defined: dict[str, tuple[str, str]] = {}
    for module_name in dict.fromkeys(m for m, _ in COMMANDS.values()):
        module = importlib.import_module(f"cyphrs_cli.cli.commands.{module_name}")
        scratch = typer.Typer(rich_markup_mode=None)
        module.register(scratch)
        for name, command in typer.main.get_group(scratch).commands.items():
            assert not command.hidden and not command.deprecated and command.short_help is None
            defined[name] = (module_name, (command.help or "").split("\n\n")[0])
    assert defined == COMMANDS
    assert list(defined) == list(COMMANDS)  # help order = registration order


def test_root_help_and_one_command_load_only_their_modules() -> None:
    """``cyphrs --help`` loads no command module; ``cyphrs list --help`` only listing."""
    modules = tuple(
        f"cyphrs_cli.cli.commands.{m}"
        for m in ("audit", "authority", "homeconfig", "inspect", "issue", "keys", "lifecycle",
                  "listing", "profiles", "batch")
    )  # fmt: skip
    assert _imported_after(_run_main("--help"), modules) == []
    assert _imported_after(_run_main("list", "--help"), modules) == [
        "cyphrs_cli.cli.commands.listing"
    ]
