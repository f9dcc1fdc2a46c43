"""``audit verify`` covers every table and the file itself: authorities, CRLs, stored
checkpoints, SQLite integrity, and a ledger that was emptied, wiped or recreated."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.e2e.audit_attacks import append_raw, connect
from tests.e2e.test_audit import busy  # noqa: F401 - shared fixture
from tests.helpers import Hierarchy, build_hierarchy, cli, run_cyphrs


def _verify(h: Hierarchy) -> tuple[int, list[str]]:
    result = cli("audit", "verify", "--json", "--home", str(h.home))
    return result.exit_code, json.loads(result.stdout)["problems"]


def _tamper(h: Hierarchy, *statements: str) -> None:
    conn = connect(h.home / "ledger.sqlite3")
    for statement in statements:
        conn.execute(statement)
    conn.close()


@pytest.fixture
def with_checkpoint(busy: Hierarchy) -> Hierarchy:  # noqa: F811
    made = cli(
        "audit", "checkpoint", "--home", str(busy.home), "--passphrase-file", str(busy.inter_pass)
    )
    assert made.exit_code == 0, made.stderr
    return busy


INTER = "authority 'test-inter' (id 2) does not match its event"


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        # authorities: every column the signing path trusts
        (["UPDATE authorities SET key_uri = 'pkcs11:token=evil' WHERE id = 2"], INTER),
        (["UPDATE authorities SET key_storage = 'pkcs11' WHERE id = 2"], INTER),
        (
            ["UPDATE authorities SET key_attributes = '{\"extractable\": true}' WHERE id = 2"],
            INTER,
        ),
        (["UPDATE authorities SET trust_domain = 'evil.example' WHERE id = 2"], INTER),
        (["UPDATE authorities SET trust_domain = NULL WHERE id = 2"], INTER),
        (["UPDATE authorities SET certificate_id = 1 WHERE id = 2"], INTER),
        (["UPDATE authorities SET parent_id = NULL WHERE id = 2"], INTER),
        (["DELETE FROM authorities WHERE id = 2"], "authority id 2 recorded by event seq"),
        (
            [
                "INSERT INTO authorities (name, role, ski, subject, key_uri, key_storage,"
                " key_algorithm, key_generated_in, created_at) VALUES ('rogue', 'intermediate',"
                " 'aa', 'CN=rogue', 'file:x', 'file', 'p256', 'software', '2026-01-01T00:00:00Z')"
            ],
            "authority 'rogue' (id 3) has no creation event",
        ),
        # crls
        (["DELETE FROM crls"], "CRL number 1 of 'test-inter' recorded by event seq"),
        (
            ["UPDATE crls SET next_update = '2099-01-01T00:00:00Z'"],
            "CRL number 1 of 'test-inter' does not match its event",
        ),
        (["UPDATE crls SET pem = NULL"], "CRL number 1 of 'test-inter' does not match its event"),
        (
            ["UPDATE crls SET number = 7"],
            "CRL number 1 of 'test-inter' recorded by event seq",
        ),
        (
            [
                "INSERT INTO crls (authority_id, number, this_update, next_update, pem)"
                " SELECT authority_id, number + 1, this_update, next_update, pem FROM crls"
            ],
            "CRL number 2 of 'test-inter' (row 2) has no crl.published event",
        ),
        # stored checkpoints
        (
            ["UPDATE checkpoints SET head_hash = '" + "0" * 64 + "'"],
            "stored checkpoint 1: its columns differ from its signed document",
        ),
        (
            ["UPDATE checkpoints SET document = replace(document, '\"seq\":', '\"seq\": ')"],
            "stored checkpoint 1 does not match its event seq",
        ),
        (["DELETE FROM checkpoints"], "stored checkpoint 1 recorded by event seq"),
        (
            [
                "INSERT INTO checkpoints (seq, head_hash, at, authority, document)"
                " SELECT seq, head_hash, at, authority, document FROM checkpoints"
            ],
            "stored checkpoint 2 has no audit.checkpoint event",
        ),
    ],
)
def test_edited_tables_are_detected(
    with_checkpoint: Hierarchy, statements: list[str], expected: str
) -> None:
    _tamper(with_checkpoint, *statements)
    code, problems = _verify(with_checkpoint)
    assert code == ExitCode.CHECK_NOT_MET
    assert any(expected in p for p in problems), problems


def test_deleted_crls_cannot_restart_numbering(busy: Hierarchy) -> None:  # noqa: F811
    """Deleting the CRL rows makes the next CRL number 1 again: a relying party that
    kept CRL #1 with a revocation could be fed a fresh #1 without it."""
    _tamper(busy, "DELETE FROM crls")
    again = cli("crl", "--home", str(busy.home), "--passphrase-file", str(busy.inter_pass))
    # The published file keeps its higher number (it never regresses), and the restarted
    # number is recorded for audit verify to name.
    assert again.exit_code == ExitCode.CONFLICT and "left in place" in again.stderr, again.stderr
    code, problems = _verify(busy)
    assert code == ExitCode.CHECK_NOT_MET
    assert any("CRL number 1 of 'test-inter'" in p and "does not increase" in p for p in problems)


def test_config_and_ca_files_must_match_the_ledger(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    other = build_hierarchy(tmp_path / "other")
    shutil.copy(other.inter_cert, busy.inter_cert)
    code, problems = _verify(busy)
    assert code == ExitCode.CHECK_NOT_MET
    assert "authority 'test-inter': its certificate file differs from the ledger's" in problems


def test_ledger_replaced_by_another_homes_ledger(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    """Same aliases, valid chain, different CAs: the home's files give it away."""
    other = build_hierarchy(tmp_path / "other")
    shutil.copy(other.home / "ledger.sqlite3", busy.home / "ledger.sqlite3")
    code, problems = _verify(busy)
    assert code == ExitCode.CHECK_NOT_MET
    assert any("certificate file differs from the ledger's" in p for p in problems)


def test_zero_byte_ledger_is_refused_not_recreated(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    ledger = busy.home / "ledger.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    ledger.write_bytes(b"")
    for args in (
        ("audit", "verify"),
        ("list",),
        (
            "issue",
            "agent",
            "--workflow",
            "w",
            "--out-dir",
            str(tmp_path / "o"),
            "--passphrase-file",
            str(busy.inter_pass),
        ),
    ):
        result = run_cyphrs(*args, "--home", str(busy.home))
        assert result.returncode == ExitCode.STORAGE, (args, result.stderr)
        assert result.stderr.decode().startswith("cyphrs: error: ledger ")
        assert b"is empty (0 bytes)" in result.stderr
        assert b"Traceback" not in result.stderr
        assert ledger.stat().st_size == 0, "the empty ledger was turned into a new one"


def test_schemaless_ledger_is_refused(busy: Hierarchy) -> None:  # noqa: F811
    ledger = busy.home / "ledger.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    with sqlite3.connect(ledger) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    result = run_cyphrs("audit", "verify", "--home", str(busy.home))
    assert result.returncode == ExitCode.STORAGE
    assert b"has no cyphrs schema" in result.stderr


def test_ledger_deleted_and_recreated_by_a_command(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    ledger = busy.home / "ledger.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger) + suffix).unlink(missing_ok=True)
    # An offline intermediate request creates a ledger when there is none.
    made = run_cyphrs(
        "create-intermediate", "--name", "Later CA", "--csr-out", str(tmp_path / "later.csr"),
        "--home", str(busy.home), "--passphrase-file", str(busy.inter_pass),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = run_cyphrs("audit", "verify", "--json", "--home", str(busy.home))
    assert result.returncode == ExitCode.CHECK_NOT_MET
    assert "the ledger records no CA but this home has CAs" in result.stdout.decode()


def test_emptied_ledger_is_refused_when_the_home_has_cas(busy: Hierarchy) -> None:  # noqa: F811
    _tamper(
        busy,
        "DELETE FROM revocations",
        "DELETE FROM crls",
        "DELETE FROM checkpoints",
        "DELETE FROM certificates",
        "DELETE FROM authorities",
        "DELETE FROM events",
    )
    result = run_cyphrs("audit", "verify", "--home", str(busy.home))
    assert result.returncode == ExitCode.CHECK_NOT_MET
    assert b"the ledger records no CA but this home has CAs" in result.stderr


def test_corrupted_page_fails_integrity(busy: Hierarchy) -> None:  # noqa: F811
    ledger = busy.home / "ledger.sqlite3"
    with sqlite3.connect(ledger) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = ledger.stat().st_size
    assert size >= 4 * 4096
    with ledger.open("r+b") as handle:
        # Overwrite a whole page in the middle (b-tree header and cells), not just free
        # space inside a page, which SQLite would never read.
        handle.seek((size // 4096 // 2) * 4096)
        handle.write(os.urandom(4096))
    result = run_cyphrs("audit", "verify", "--home", str(busy.home))
    assert result.returncode in (ExitCode.STORAGE, ExitCode.CHECK_NOT_MET), result.stderr
    assert b"corrupt" in result.stderr or b"malformed" in result.stderr
    assert b"Traceback" not in result.stderr


def test_foreign_key_violations_are_reported(busy: Hierarchy) -> None:  # noqa: F811
    _tamper(busy, "UPDATE revocations SET certificate_id = 999")
    code, problems = _verify(busy)
    assert code == ExitCode.CHECK_NOT_MET
    assert any("refers to a missing certificates row" in p for p in problems), problems


@pytest.mark.parametrize(
    ("event_type", "details"),
    [
        ("certificate.issued", []),
        ("certificate.issued", "text"),
        ("certificate.issued", None),
        ("certificate.issued", {"certificate_id": "7"}),
        ("certificate.issued", {"certificate_id": True}),
        ("certificate.revoked", {}),
        ("certificate.revoked", {"certificate_id": 3, "revoked_at": 5}),
        ("certificate.renewed", {"certificate_id": 99, "replaces_id": [1]}),
        ("crl.published", {"authority": "test-inter", "number": "2", "sha256": "x"}),
        ("crl.published", {"authority": ["x"], "number": 2}),
        ("authority.created", {"certificate_id": 1}),
        ("authority.imported", {"authority_id": "2", "authority_digest": 5}),
        ("audit.checkpoint", {"checkpoint_id": None}),
        ("something.else", {"authority_digest": "abc"}),
    ],
)
def test_odd_event_details_are_problems_not_crashes(
    busy: Hierarchy,  # noqa: F811
    event_type: str,
    details: object,
) -> None:
    conn = connect(busy.home / "ledger.sqlite3")
    seq = append_raw(conn, event_type, details)
    conn.close()
    result = run_cyphrs("audit", "verify", "--json", "--home", str(busy.home))
    assert result.returncode == ExitCode.CHECK_NOT_MET, result.stderr
    problems = json.loads(result.stdout)["problems"]
    assert any(f"event seq {seq}" in p for p in problems), problems


def test_deeply_nested_details_are_problems_not_crashes(tmp_path: Path) -> None:
    """A JSON "bomb" (nesting deeper than the parser's recursion limit) planted in the
    ledger is a finding for audit verify (exit 10) and a refused trust state for signing
    (exit 8), never an internal error."""
    h = build_hierarchy(tmp_path / "ca")
    bomb = "[" * 100_000 + "]" * 100_000
    conn = connect(h.home / "ledger.sqlite3")
    conn.execute(
        "UPDATE events SET details = ? WHERE seq = (SELECT max(seq) FROM events"
        " WHERE type = 'authority.created')",
        (bomb,),
    )
    conn.close()
    result = run_cyphrs("audit", "verify", "--json", "--home", str(h.home))
    assert result.returncode == ExitCode.CHECK_NOT_MET, result.stderr
    assert json.loads(result.stdout)["problems"]
    issued = h.issue("agent", "--workflow", "w", "--json")
    assert issued.exit_code == ExitCode.STORAGE, issued.stderr
