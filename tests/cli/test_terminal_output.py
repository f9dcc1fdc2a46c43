"""Terminal output you can act on: ``list`` keeps SPIFFE IDs whole on an 80-column
terminal (a real pseudo-terminal given to a real process) and prints full serials when
piped or with ``--wide``; ``--serial`` takes an unambiguous prefix (and refuses an
ambiguous one); ``inspect`` says "revoked" with date and reason and shows extensions in
words."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.errors import ConflictError
from cyphrs_cli.ledger.records import find_certificate
from tests.helpers import Hierarchy, cli, tool
from tests.processes import on_terminal

LONG_INSTANCE = "reconciliation-worker-0001"


@pytest.fixture
def agents(fresh_hierarchy: Hierarchy, tmp_path: Path) -> tuple[Hierarchy, list[Path]]:
    paths = []
    for n in range(2):
        out = tmp_path / f"a{n}"
        done = fresh_hierarchy.issue(
            "agent", "--workflow", "payments", "--instance", f"{LONG_INSTANCE}{n}",
            "--out-dir", str(out),
        )  # fmt: skip
        assert done.exit_code == 0, done.stderr
        paths.append(out / "cert.pem")
    return fresh_hierarchy, paths


def _on_terminal(home: Path, columns: int, *args: str) -> str:
    env = {**os.environ, "CYPHRS_HOME": str(home), "COLUMNS": str(columns), "NO_COLOR": "1"}
    code, shown, _ = on_terminal([tool("cyphrs"), "list", *args], env)
    assert code == 0
    return shown


def _serials(home: Path) -> dict[str, str]:
    listed = cli("list", "--json", "--home", str(home)).json()["certificates"]
    return {c["spiffe_id"]: c["serial"] for c in listed if c["spiffe_id"]}


def test_spiffe_ids_are_whole_on_an_80_column_terminal(
    agents: tuple[Hierarchy, list[Path]],
) -> None:
    hierarchy, _ = agents
    shown = _on_terminal(hierarchy.home, 80)
    for spiffe_id in _serials(hierarchy.home):
        assert len(spiffe_id) > 60
        assert any(spiffe_id in line for line in shown.splitlines()), shown
    assert "…" in shown  # serials are cut for people by default


def test_wide_shows_full_serials_on_a_terminal(agents: tuple[Hierarchy, list[Path]]) -> None:
    hierarchy, _ = agents
    shown = _on_terminal(hierarchy.home, 200, "--wide")
    for serial in _serials(hierarchy.home).values():
        assert serial in shown
    assert "…" not in shown


def test_piped_list_has_full_serials_and_ids(agents: tuple[Hierarchy, list[Path]]) -> None:
    hierarchy, _ = agents
    piped = cli("list", "--home", str(hierarchy.home)).stdout
    for spiffe_id, serial in _serials(hierarchy.home).items():
        assert any(spiffe_id in line and serial in line for line in piped.splitlines())


def test_revoke_takes_an_unambiguous_serial_prefix(agents: tuple[Hierarchy, list[Path]]) -> None:
    hierarchy, _ = agents
    serial = next(iter(_serials(hierarchy.home).values()))
    home = ("--home", str(hierarchy.home))
    # Too short to be a prefix (fewer than 8 digits): an exact lookup, not found.
    assert cli("revoke", "--serial", serial[:6], *home).exit_code == 6
    # As copied from a terminal table: 16 digits and the ellipsis.
    done = cli("revoke", "--serial", serial[:16] + "…", "--reason", "key-compromise", *home)
    assert done.exit_code == 0, done.stderr
    shown = cli("inspect", "--serial", serial[:12], *home)
    assert shown.exit_code == 0 and serial in shown.stdout


def test_an_ambiguous_prefix_is_refused(agents: tuple[Hierarchy, list[Path]]) -> None:
    hierarchy, _ = agents
    first, second = list(_serials(hierarchy.home).values())
    # Plant a second serial sharing the first's first 10 digits (a real ledger file).
    with sqlite3.connect(hierarchy.home / "ledger.sqlite3") as conn:
        conn.execute(
            "UPDATE certificates SET serial = ? WHERE serial = ?",
            (first[:10] + second[10:], second),
        )
    conn.close()
    with sqlite3.connect(hierarchy.home / "ledger.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        with pytest.raises(ConflictError):
            find_certificate(conn, serial=first[:10], prefix=first[:10])
        assert find_certificate(conn, serial=first[:12], prefix=first[:12])["serial"] == first
    conn.close()
    result = cli("revoke", "--serial", first[:10], "--home", str(hierarchy.home))
    assert result.exit_code == 7 and "several" in result.stderr


def test_inspect_says_revoked_with_date_and_reason(agents: tuple[Hierarchy, list[Path]]) -> None:
    hierarchy, (cert, _) = agents
    home = ("--home", str(hierarchy.home))
    before = cli("inspect", str(cert), *home).stdout
    assert "left)" in before and "REVOKED" not in before
    assert cli("revoke", str(cert), "--reason", "key-compromise", *home).exit_code == 0
    after = cli("inspect", str(cert), *home).stdout
    headline = after.splitlines()[0]
    assert "REVOKED" in headline and "key" in headline and "20" in headline
    assert "left)" not in after and "(revoked)" in after


def test_inspect_extensions_are_words_and_chain_certs_are_apart(
    agents: tuple[Hierarchy, list[Path]],
) -> None:
    hierarchy, (cert, _) = agents
    shown = cli("inspect", str(cert.parent / "fullchain.pem"), "--home", str(hierarchy.home))
    text = shown.stdout
    assert shown.exit_code == 0
    for repr_mark in ("{'", "['", "': ", "False", "True", "None"):
        assert repr_mark not in text, repr_mark
    assert "CA: no" in text and "CA: yes, path length 0" in text
    blocks = text.split("\n\n")
    assert len(blocks) == 2 and blocks[1].startswith("CA certificate")
