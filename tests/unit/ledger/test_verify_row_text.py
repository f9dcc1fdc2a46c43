"""``audit verify`` digests certificate rows from text SQLite builds (``json_object``).

That text must be, byte for byte, ``canonical_json`` of the row's covered columns, or
verify would accept an edited row or reject an intact one. Hypothesis throws every kind
of TEXT (control characters, quotes, backslashes, NUL, non-BMP, U+2028), 64-bit INTEGER
and NULL at it; REAL and BLOB values (which cyphrs never writes) must take the reference
path and still be judged by ``row_digest``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.events import LedgerEvent, append_event, canonical_json
from cyphrs_cli.ledger.records import CERT_IMMUTABLE_COLUMNS, row_digest
from cyphrs_cli.ledger.verify import _ROW_CANONICAL_SQL, verify_ledger
from tests.unit.ledger.certificate_rows import certificate_row, insert_row

# Every code point SQLite can store as UTF-8 (lone surrogates cannot be bound at all).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
VALUE = st.one_of(TEXT, st.integers(-(2**63), 2**63 - 1), st.none())
ROW = st.fixed_dictionaries({column: VALUE for column in CERT_IMMUTABLE_COLUMNS})

_CONN = sqlite3.connect(":memory:")
_PROBE = (
    f"SELECT {_ROW_CANONICAL_SQL} FROM (SELECT "  # noqa: S608 - fixed names
    + ", ".join(f"? AS {column}" for column in CERT_IMMUTABLE_COLUMNS)
    + ")"
)


def _sqlite_text(row: dict[str, Any]) -> str | None:
    (text,) = _CONN.execute(_PROBE, [row[c] for c in CERT_IMMUTABLE_COLUMNS]).fetchone()
    return text  # type: ignore[no-any-return]


@settings(max_examples=3000, deadline=None)
@given(ROW)
def test_sqlite_text_is_canonical_json(row: dict[str, Any]) -> None:
    text = _sqlite_text(row)
    assert text is not None
    assert text.encode() == canonical_json(row)


@given(
    ROW,
    st.sampled_from(CERT_IMMUTABLE_COLUMNS),
    st.one_of(st.floats(allow_nan=False), st.binary(max_size=8)),
)
def test_real_and_blob_values_take_the_reference_path(
    row: dict[str, Any], column: str, odd: Any
) -> None:
    assert _sqlite_text({**row, column: odd}) is None


def _ledger_with_rows(tmp_path: Path, n: int) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite3", create=True)
    with ledger.transaction() as conn:
        for i in range(1, n + 1):
            row = certificate_row(
                i,
                subject=f'CN=c{i} "\\\n\x00é\U0001f600',
                sans='["DNS:a.example"]',
                pem="-----BEGIN CERTIFICATE-----\nAAAA\n",
            )
            row_id = insert_row(conn, row)
            details = {
                "certificate_id": row_id,
                "serial": row["serial"],
                "row_digest": row_digest(row),
            }
            append_event(conn, LedgerEvent("certificate.issued", details=details))
    return ledger


def test_a_ledger_of_awkward_text_verifies(tmp_path: Path) -> None:
    with _ledger_with_rows(tmp_path, 5) as ledger:
        report = verify_ledger(ledger.conn)
        assert report.problems == [] and report.certificates == 5


def test_a_value_changed_to_real_or_blob_is_still_caught(tmp_path: Path) -> None:
    with _ledger_with_rows(tmp_path, 3) as ledger:
        # A REAL (0.5: an INTEGER column keeps 0.0 as the integer 0) and a BLOB (which has
        # no JSON form at all: a reported mismatch, not a crash).
        ledger.conn.execute("UPDATE certificates SET is_ca = 0.5 WHERE id = 2")
        ledger.conn.execute("UPDATE certificates SET pem = CAST(pem AS BLOB) WHERE id = 3")
        problems = verify_ledger(ledger.conn).problems
    assert [p for p in problems if "does not match its issuance event" in p] == [
        f"certificate id 2 (serial {2:040x}) does not match its issuance event seq 2",
        f"certificate id 3 (serial {3:040x}) does not match its issuance event seq 3",
    ]
