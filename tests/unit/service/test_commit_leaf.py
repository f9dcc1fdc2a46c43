"""``Authority.commit_leaf`` and the ``after_record`` hook of ``issue_leaves``: what a hook
writes commits with its certificate or not at all; a hook's refusal undoes exactly its
own item (no row, no event) while the rest of the group commits; the hash chain and
``audit verify`` stay intact. Real hierarchy, real SQLite ledger, real keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from cyphrs_cli.ca.issuance import issue_leaves
from cyphrs_cli.ca.models import IssuedCertificate, LeafRequest
from cyphrs_cli.ca.orders import LeafOrder, prepare_request
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import ConflictError, PolicyDenied
from cyphrs_cli.ledger.events import LedgerEvent, append_event
from cyphrs_cli.service.authority import Authority
from tests.enrollment_helpers import audit_problems, count


def _leaf(authority: Authority, instance: str) -> LeafRequest:
    profile = authority.profile("agent")
    order = LeafOrder(profile="agent", workflow="svc", instance=instance)
    request, _ = prepare_request(order, profile, authority.facts.trust_domain)
    return request


def _certs(home: CaHome, instance: str) -> int:
    return count(
        home,
        f"SELECT count(*) FROM certificates WHERE spiffe_id LIKE '%/{instance}'",  # noqa: S608
    )


def _events(home: CaHome, like: str) -> int:
    return count(
        home,
        f"SELECT count(*) FROM events WHERE target LIKE '{like}' OR details LIKE '%{like}%'",  # noqa: S608
    )


def _note(text: str) -> Callable[[sqlite3.Connection, IssuedCertificate], None]:
    """A hook that writes its own event in the item's transaction."""

    def hook(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        assert conn.in_transaction
        # The item's own row is visible to the hook: it runs after _record.
        row = conn.execute("SELECT serial FROM certificates WHERE id = ?", (issued.record_id,))
        assert row.fetchone()[0] == issued.serial
        append_event(
            conn, LedgerEvent("test.note", target=f"note:{text}", details={"s": issued.serial})
        )

    return hook


def _refuse_after_writing(text: str) -> Callable[[sqlite3.Connection, IssuedCertificate], None]:
    """A hook that writes an event and then refuses: its write must vanish too."""

    def hook(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        append_event(conn, LedgerEvent("test.note", target=f"note:{text}", details={}))
        raise PolicyDenied("refused by the hook", rule="test.hook")

    return hook


def test_commit_leaf_records_and_runs_the_hook_in_the_same_transaction(
    authority: Authority, home: CaHome
) -> None:
    issued = authority.commit_leaf(
        authority.profile("agent"), _leaf(authority, "ok1"), after_record=_note("ok1")
    )
    assert issued.spiffe_id == "spiffe://acme.internal/agent/svc/ok1"
    assert _certs(home, "ok1") == 1 and _events(home, "note:ok1") == 1
    # The hook's event follows the certificate's event directly: same transaction.
    with sqlite3.connect(home.ledger_path) as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq DESC LIMIT 2")]
    assert types == ["test.note", "certificate.issued"]
    assert audit_problems(home) == []


def test_commit_leaf_without_hook_and_by_issuer_name(authority: Authority, home: CaHome) -> None:
    issued = authority.commit_leaf(
        authority.profile("agent"), _leaf(authority, "plain"), issuer="test-inter"
    )
    assert issued.issuer_name == "test-inter" and _certs(home, "plain") == 1


def test_a_refusing_hook_leaves_no_row_and_no_event(authority: Authority, home: CaHome) -> None:
    events_before = count(home, "SELECT count(*) FROM events")
    with pytest.raises(PolicyDenied) as refused:
        authority.commit_leaf(
            authority.profile("agent"),
            _leaf(authority, "no1"),
            after_record=_refuse_after_writing("no1"),
        )
    assert refused.value.rule == "test.hook"
    assert _certs(home, "no1") == 0 and _events(home, "note:no1") == 0
    assert count(home, "SELECT count(*) FROM events") == events_before
    assert audit_problems(home) == []
    # The instance is free again: nothing of the refused item survived.
    authority.commit_leaf(authority.profile("agent"), _leaf(authority, "no1"))
    assert _certs(home, "no1") == 1


def test_a_refusing_hook_drops_only_its_item_from_the_group(
    authority: Authority, home: CaHome
) -> None:
    profile = authority.profile("agent")
    names = ["g1", "g2", "g3", "g4"]
    hooks = [_note("g1"), _refuse_after_writing("g2"), None, _note("g4")]
    results = issue_leaves(
        authority.ledger,
        authority.issuer,
        [(profile, _leaf(authority, name)) for name in names],
        after_record=hooks,
    )
    assert isinstance(results[0], IssuedCertificate)
    assert isinstance(results[1], PolicyDenied) and results[1].rule == "test.hook"
    assert isinstance(results[2], IssuedCertificate)
    assert isinstance(results[3], IssuedCertificate)
    assert [_certs(home, n) for n in names] == [1, 0, 1, 1]
    assert [_events(home, f"note:{n}") for n in names] == [1, 0, 0, 1]
    assert count(home, "SELECT count(*) FROM events WHERE details LIKE '%/svc/g2%'") == 0
    assert audit_problems(home) == []


def test_a_hook_that_crashes_aborts_the_whole_group(authority: Authority, home: CaHome) -> None:
    """A bug in a hook (not a CyphrsError) records nothing of the group."""

    def broken(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        raise RuntimeError("bug")

    profile = authority.profile("agent")
    with pytest.raises(RuntimeError):
        issue_leaves(
            authority.ledger,
            authority.issuer,
            [(profile, _leaf(authority, "b1")), (profile, _leaf(authority, "b2"))],
            after_record=[_note("b1"), broken],
        )
    assert _certs(home, "b1") == 0 and _certs(home, "b2") == 0 and _events(home, "note:b1") == 0
    assert audit_problems(home) == []


def test_a_conflict_with_a_hook_is_still_the_items_result(
    authority: Authority, home: CaHome
) -> None:
    authority.commit_leaf(authority.profile("agent"), _leaf(authority, "dup"))
    ran: list[str] = []
    with pytest.raises(ConflictError):
        authority.commit_leaf(
            authority.profile("agent"),
            _leaf(authority, "dup"),
            after_record=lambda conn, issued: ran.append(issued.serial),
        )
    assert ran == [] and _certs(home, "dup") == 1


def test_hooks_must_match_the_entries(authority: Authority) -> None:
    with pytest.raises(ValueError, match="one hook"):
        issue_leaves(
            authority.ledger,
            authority.issuer,
            [(authority.profile("agent"), _leaf(authority, "x"))],
            after_record=[None, None],
        )


def test_a_groups_hooks_run_with_the_journal_in_memory(authority: Authority) -> None:
    """``issue_leaves`` writes its group as an issuance transaction (savepoint journals in
    memory, ``Ledger.transaction(issuance=True)``); once it is over, the connection's
    temporary storage is files again, for the reads that follow."""
    seen: list[int] = []

    def temp_store(conn: sqlite3.Connection, issued: IssuedCertificate) -> None:
        seen.append(conn.execute("PRAGMA temp_store").fetchone()[0])

    profile = authority.profile("agent")
    results = issue_leaves(
        authority.ledger,
        authority.issuer,
        [(profile, _leaf(authority, name)) for name in ("m1", "m2")],
        after_record=[temp_store, temp_store],
    )
    assert all(isinstance(result, IssuedCertificate) for result in results)
    assert seen == [2, 2]  # 2: MEMORY
    assert authority.ledger.conn.execute("PRAGMA temp_store").fetchone()[0] == 0
