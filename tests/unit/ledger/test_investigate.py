"""Migration 0005 on a ledger that predates it, the test clock, and handle parsing."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
from datetime import UTC, datetime

import pytest

from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.ledger.db import Ledger, _migrations
from cyphrs_cli.ledger.events import utc_now
from cyphrs_cli.service.investigation import parse_fingerprint
from tests.helpers import Hierarchy


def _undo_migrations_from(first: int) -> str:
    """SQL that drops what migrations ``first`` and later created (read from their own
    files, newest first) and sets the version below ``first``: a ledger as it was before."""
    drops = []
    for number, sql in reversed(_migrations()):
        if number < first:
            continue
        created = re.findall(
            r"CREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|TRIGGER|VIEW)\s+(?:IF NOT EXISTS\s+)?(\w+)", sql
        )
        drops += [f"DROP {kind} IF EXISTS {name};" for kind, name in reversed(created)]
    return " ".join(drops) + f" PRAGMA user_version = {first - 1};"


ADDED = _undo_migrations_from(5)


def test_migrating_an_older_ledger_fills_the_sha1_of_every_certificate(
    fresh_hierarchy: Hierarchy,
) -> None:
    path = fresh_hierarchy.home / "ledger.sqlite3"
    subprocess.run(["sqlite3", str(path), ADDED], check=True)
    with Ledger(path) as ledger:
        rows = ledger.conn.execute(
            "SELECT c.pem, s.sha1 FROM certificates c"
            " LEFT JOIN certificate_sha1 s ON s.certificate_id = c.id"
        ).fetchall()
        (version,) = ledger.conn.execute("PRAGMA user_version").fetchone()
    assert version >= 5
    assert len(rows) == 2  # root and intermediate
    for pem, sha1 in rows:
        der = subprocess.run(
            ["openssl", "x509", "-outform", "DER"], input=pem.encode(), capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        assert sha1 == hashlib.sha1(der, usedforsecurity=False).hexdigest()


def test_a_details_column_that_is_not_json_stays_writable_under_the_spiffe_index(
    fresh_hierarchy: Hierarchy,
) -> None:
    with sqlite3.connect(fresh_hierarchy.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE events SET details = 'not json' WHERE seq = 1")
        (expr,) = conn.execute(
            "SELECT CASE WHEN json_valid(details) THEN json_extract(details, '$.spiffe_id') END"
            " FROM events WHERE seq = 1"
        ).fetchone()
    assert expr is None


def test_the_test_clock_fixes_utc_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYPHRS_TEST_NOW", "2031-02-03T04:05:06Z")
    assert utc_now() == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    monkeypatch.delenv("CYPHRS_TEST_NOW")
    assert abs((utc_now() - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sha256:" + "AB" * 32, ("sha256", "ab" * 32)),
        (":".join(["ab"] * 32), ("sha256", "ab" * 32)),
        ("SHA256 Fingerprint=" + ":".join(["0F"] * 32), ("sha256", "0f" * 32)),
        ("sha1 Fingerprint=" + ":".join(["0F"] * 20), ("sha1", "0f" * 20)),
        ("SHA-1:" + "1" * 40, ("sha1", "1" * 40)),
        ("  " + "c" * 40 + "\n", ("sha1", "c" * 40)),
    ],
)
def test_fingerprint_spellings(text: str, expected: tuple[str, str]) -> None:
    assert parse_fingerprint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "sha256:" + "ab" * 20, "sha1:" + "ab" * 32, "md5:" + "ab" * 16, "zz" * 32, "ab" * 31],
)
def test_fingerprints_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_fingerprint(text)
