"""Every option of every command explains itself: a test walks the whole command tree
(issue 14: options without help text leave a team guessing what a flag does)."""

from __future__ import annotations

from typing import Any

import typer.main

from cyphrs_cli.cli.app import app


def _commands(command: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(None):
            found += _commands(command.get_command(None, name), f"{path} {name}")
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    from typer.core import TyperOption

    missing = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in _commands(typer.main.get_command(app), "cyphrs")
        for param in command.params
        if isinstance(param, TyperOption) and not (param.help or "").strip()
    ]
    assert missing == []


def test_the_walk_sees_the_whole_tree() -> None:
    paths = {p for p, _ in _commands(typer.main.get_command(app), "cyphrs")}
    assert {"cyphrs sign-intermediate", "cyphrs audit verify", "cyphrs profiles show"} <= paths
