"""``service.evidence.verify`` called directly (no CLI): a real hierarchy's ledger verifies,
an edited row does not, and an uninitialised home is refused before anything is read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.service.evidence import verify
from tests.helpers import Hierarchy


def test_a_real_ledger_verifies_and_an_edited_one_does_not(fresh_hierarchy: Hierarchy) -> None:
    h = fresh_hierarchy
    assert h.issue("agent", "--workflow", "svc", "--json").exit_code == 0
    report = verify(CaHome(h.home))
    assert report.ok and report.certificates == 3 and report.events >= 3
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE certificates SET subject = 'CN=mallory' WHERE id = 3")
    report = verify(CaHome(h.home))
    assert not report.ok
    assert any("certificate id 3" in p for p in report.problems), report.problems


def test_an_uninitialised_home_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CyphrsError):
        verify(CaHome(tmp_path / "nothing-here"))
