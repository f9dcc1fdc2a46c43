"""The SAN lookup table (migration 0006) behind ``list --san``.

``certificate_sans`` is derived from ``certificates.sans``; these tests try to make the two
disagree and check that either the ledger keeps them equal or ``audit verify`` says so:

* the migration fills the table for rows written before it existed;
* a certificate row and its entries are written, and rolled back, together;
* the ``--san`` query answers exactly what a plain Python reading of every row answers
  (case, LIKE wildcards, IPv6 colons, a name that is only a suffix of another);
* an edited table (entry removed, stray entry, trigger dropped before an insert) is a
  verify problem.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.ledger.db import Ledger, _migrations
from cyphrs_cli.ledger.queries import CertificateFilter, iter_certificates
from cyphrs_cli.ledger.verify import verify_ledger
from tests.unit.ledger.certificate_rows import certificate_row, insert_row

SANS = [
    ["DNS:api.acme.internal", "IP:10.0.0.7"],
    ["URI:spiffe://acme.internal/agent/wf/a1"],
    ["DNS:API.Acme.Internal"],  # DNS names compare without ASCII case
    ["IP:2001:db8::1"],  # only the first colon separates the type
    ["DNS:x.api.acme.internal", "DNS:100%_.example"],
    [],
    ["DNS:é.example"],
]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _row(n: int, sans: list[str]) -> dict[str, Any]:
    return certificate_row(n, sans=json.dumps(sans), issued_at=f"2026-01-01T00:00:{n:02d}Z")


def _ascii_lower(text: str) -> str:
    return "".join(ch.lower() if ch.isascii() else ch for ch in text)


def _expected(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """The table's contents as a plain reading of every row says they must be."""
    out = set()
    for cert_id, sans in map(tuple, conn.execute("SELECT id, sans FROM certificates")):
        for san in json.loads(sans):
            name = san.split(":", 1)[1] if ":" in san else san
            out.add((_ascii_lower(name), cert_id))
    return out


def _stored(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    return {(r[0], r[1]) for r in conn.execute("SELECT name, certificate_id FROM certificate_sans")}


def _san_problems(conn: sqlite3.Connection) -> list[str]:
    return [p for p in verify_ledger(conn).problems if p.startswith("SAN index")]


def test_migration_fills_rows_written_before_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    earlier = [(n, sql) for n, sql in _migrations() if n < 6]
    for _, sql in earlier:
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {earlier[-1][0]}")
    for n, sans in enumerate(SANS, 1):
        insert_row(conn, _row(n, sans))
    conn.close()
    with Ledger(path) as ledger:
        assert _stored(ledger.conn) == _expected(ledger.conn)
        assert len(_stored(ledger.conn)) == 8
        assert _san_problems(ledger.conn) == []


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite3", create=True)
    with ledger.transaction() as conn:
        for n, sans in enumerate(SANS, 1):
            insert_row(conn, _row(n, sans))
    return ledger


def test_entries_are_written_and_rolled_back_with_their_row(ledger: Ledger) -> None:
    conn = ledger.conn
    assert _stored(conn) == _expected(conn)
    before = _stored(conn)
    with pytest.raises(RuntimeError), ledger.transaction() as tx:
        insert_row(tx, _row(50, ["DNS:rolled.back"]))
        assert ("rolled.back", 8) in _stored(tx)
        raise RuntimeError("crash between the row and the commit")
    assert _stored(conn) == before


@pytest.mark.parametrize(
    "query",
    [
        "api.acme.internal",
        "API.ACME.INTERNAL",
        "10.0.0.7",
        "spiffe://acme.internal/agent/wf/a1",
        "2001:db8::1",
        "db8::1",  # after a colon inside the name: not a whole name
        "acme.internal",  # a suffix of several names
        "100%_.example",
        "100%%.example",
        "%",
        "_",
        "é.example",
        "É.example",  # lower() folds ASCII only, as LIKE did
        "",
    ],
)
def test_query_answers_what_the_rows_say(ledger: Ledger, query: str) -> None:
    conn = ledger.conn
    want = {
        row_id
        for row_id, sans in map(tuple, conn.execute("SELECT id, sans FROM certificates"))
        for san in json.loads(sans)
        if _ascii_lower(san.split(":", 1)[1]) == _ascii_lower(query)
    }
    got = {r["serial"] for r in iter_certificates(conn, CertificateFilter(san=query), NOW)}
    assert got == {f"{n:040x}" for n in want}


def test_query_is_an_index_probe(ledger: Ledger) -> None:
    plan = " ".join(
        str(r[3])
        for r in ledger.conn.execute(
            "EXPLAIN QUERY PLAN SELECT certificate_id FROM certificate_sans WHERE name = ?",
            ("x",),
        )
    )
    assert "SCAN" not in plan, plan


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (
            "DELETE FROM certificate_sans WHERE name = 'api.acme.internal'",
            "SAN index: entry 'api.acme.internal' of certificate id 1 is missing",
        ),
        (
            "INSERT INTO certificate_sans VALUES ('evil.example', 2)",
            "SAN index: entry 'evil.example' of certificate id 2 is not among its SANs",
        ),
        (
            "UPDATE certificate_sans SET certificate_id = 3 WHERE certificate_id = 2",
            "of certificate id 2 is missing",
        ),
    ],
)
def test_an_edited_table_is_a_verify_problem(ledger: Ledger, tamper: str, expected: str) -> None:
    assert _san_problems(ledger.conn) == []
    ledger.conn.execute(tamper)
    problems = _san_problems(ledger.conn)
    assert any(p.startswith(expected) or expected in p for p in problems), problems


def test_a_dropped_trigger_is_caught_on_the_next_row(ledger: Ledger) -> None:
    ledger.conn.execute("DROP TRIGGER certificate_sans_insert")
    insert_row(ledger.conn, _row(60, ["DNS:hidden.example"]))
    assert _san_problems(ledger.conn) == [
        "SAN index: entry 'hidden.example' of certificate id 8 is missing"
    ]


def test_an_edited_sans_column_moves_its_entries(ledger: Ledger) -> None:
    """Editing a row is caught by its row digest; the derived table follows the row, so it
    never adds a second, confusing finding."""
    ledger.conn.execute("UPDATE certificates SET sans = ? WHERE id = 1", ('["DNS:new.example"]',))
    ledger.conn.execute("DELETE FROM certificates WHERE id = 2")
    ledger.conn.execute("UPDATE certificates SET sans = 'not json' WHERE id = 3")
    assert _stored(ledger.conn) == {(name, i) for name, i in _expected_tolerant(ledger.conn)}
    assert _san_problems(ledger.conn) == []


def _expected_tolerant(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    out = set()
    for cert_id, sans in map(tuple, conn.execute("SELECT id, sans FROM certificates")):
        try:
            names = json.loads(sans)
        except json.JSONDecodeError:
            continue
        for san in names:
            out.add((_ascii_lower(san.split(":", 1)[1] if ":" in san else san), cert_id))
    return out
