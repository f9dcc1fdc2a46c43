"""Start-up stays lean: the CLI entry point must not import heavy modules."""

from __future__ import annotations

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


def _imported_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\nprint('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
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
