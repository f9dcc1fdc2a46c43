"""Spending one use of an enrollment token under the write lock
(``service.tokens._spend_one_use``, run by ``consume_hook`` in the certificate's
savepoint): one conditional ``UPDATE ... RETURNING`` in the common case, the row read
and refused with its rule otherwise.

The promise attacked: the one-statement path decides exactly as the token's rules
(``TokenInfo.status`` on the parsed row) do, whatever happened to the token since the
early check (revoked, used up, expired, deleted), at the expiry instant itself, and with
stored times whose text does not sort as the time it names (an edited row: an offset
other than ``Z``), where a text comparison alone would misjudge it. Real ledger, real
tokens; the reference is ``_refusal(_info(row), now)`` on the row as it was.
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from cyphrs_cli.errors import PolicyDenied
from cyphrs_cli.ledger.events import rfc3339
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.tokens import (
    TokenInfo,
    TokenSpec,
    _info,
    _refusal,
    _spend_one_use,
    redeemable_token,
)


def _checked(ca: Authority, uses: int = 2) -> TokenInfo:
    """A fresh token as the early check (``redeemable_token``) returned it."""
    created = ca.create_token(TokenSpec(workflow="w", uses=uses, ttl=timedelta(hours=1)))
    return redeemable_token(ca.ledger.conn, created.token)


def _row(ca: Authority, info: TokenInfo) -> sqlite3.Row:
    row = ca.ledger.conn.execute("SELECT * FROM tokens WHERE id = ?", (info.row_id,)).fetchone()
    assert row is not None
    return row


def _spend(ca: Authority, info: TokenInfo, now: datetime) -> TokenInfo | str:
    """``_spend_one_use`` in a write transaction of its own, as its caller's savepoint
    would be: committed when it returns, rolled back when it refuses. The returned
    token, or the refusal's rule."""
    try:
        with ca.ledger.transaction(issuance=True) as conn:
            return _spend_one_use(conn, info, now)
    except PolicyDenied as refused:
        assert refused.rule is not None
        return refused.rule


def _edit(ca: Authority, info: TokenInfo, **columns: object) -> None:
    """Change the row behind the early check's back (another process, an operator)."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with ca.ledger.transaction() as conn:
        conn.execute(
            f"UPDATE tokens SET {assignments} WHERE id = ?",  # noqa: S608 - test's own names
            (*columns.values(), info.row_id),
        )


def test_a_use_is_spent_and_the_token_as_it_was_returned(ca: Authority) -> None:
    info = _checked(ca, uses=2)
    now = datetime.now(UTC)
    first = _spend(ca, info, now)
    assert isinstance(first, TokenInfo)
    assert (first.uses, first.uses_allowed, first.token_id) == (0, 2, info.token_id)
    assert _row(ca, info)["uses"] == 1
    second = _spend(ca, info, now)
    assert isinstance(second, TokenInfo) and second.uses == 1
    assert _spend(ca, info, now) == "token.used"
    assert _row(ca, info)["uses"] == 2


def test_what_changed_since_the_early_check_is_refused_with_its_rule(ca: Authority) -> None:
    now = datetime.now(UTC)
    revoked = _checked(ca)
    ca.revoke_token(revoked.token_id)
    assert _spend(ca, revoked, now) == "token.revoked"

    used_up = _checked(ca)
    _edit(ca, used_up, uses=2)
    assert _spend(ca, used_up, now) == "token.used"

    expiring = _checked(ca)
    expires = _info(_row(ca, expiring)).expires_at
    assert _spend(ca, expiring, expires) == "token.expired"  # the instant itself
    assert _row(ca, expiring)["uses"] == 0
    assert isinstance(_spend(ca, expiring, expires - timedelta(seconds=1)), TokenInfo)

    gone = _checked(ca)
    with ca.ledger.transaction() as conn:
        conn.execute("DELETE FROM tokens WHERE id = ?", (gone.row_id,))
    assert _spend(ca, gone, now) == "token.unknown"
    for refused in (revoked, used_up):
        assert _row(ca, refused)["uses"] == (2 if refused is used_up else 0)


def test_a_stored_time_that_does_not_sort_as_text_is_judged_by_its_meaning(
    ca: Authority,
) -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    # Sorts after "2030-01-01T12:00:00Z" as text, yet names 11:00 UTC: expired.
    expired = _checked(ca)
    _edit(ca, expired, expires_at="2030-01-01T13:00:00+02:00")
    assert _spend(ca, expired, now) == "token.expired"
    assert _row(ca, expired)["uses"] == 0  # the use the UPDATE spent was rolled back
    # Sorts before it as text, yet names 14:00 UTC: still active, so spent.
    active = _checked(ca)
    _edit(ca, active, expires_at="2030-01-01T11:00:00-03:00")
    spent = _spend(ca, active, now)
    assert isinstance(spent, TokenInfo)
    assert spent.expires_at == datetime(2030, 1, 1, 14, 0, tzinfo=UTC)
    assert _row(ca, active)["uses"] == 1


def _written(moment: datetime, hours: int) -> str:
    """``moment`` as stored text: ``rfc3339`` for 0, else with a ``+HH:00``/``-HH:00``
    offset (the same instant, text that sorts elsewhere)."""
    if hours == 0:
        return rfc3339(moment)
    local = (moment + timedelta(hours=hours)).replace(tzinfo=None).isoformat()
    return f"{local}{'+' if hours > 0 else '-'}{abs(hours):02d}:00"


@pytest.mark.parametrize("revoked", [False, True])
def test_every_state_decides_as_the_tokens_rules_do(ca: Authority, revoked: bool) -> None:
    """A grid of rows (uses against uses allowed, expiry around now, written with and
    without an offset, revoked or not): the outcome and the row's uses afterwards are
    what ``_refusal`` on the row as it was says."""
    now = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    offsets = (timedelta(seconds=-1), timedelta(0), timedelta(seconds=1), timedelta(hours=3))
    cases = itertools.product(((0, 1), (1, 1), (1, 3), (2, 3)), offsets, (0, 5, -3))
    for (uses, allowed), offset, hours in cases:
        info = _checked(ca, uses=allowed)
        _edit(
            ca,
            info,
            uses=uses,
            expires_at=_written(now + offset, hours),
            revoked_at=rfc3339(now) if revoked else None,
        )
        before = _info(_row(ca, info))
        assert before.expires_at == now + offset
        expected = _refusal(before, now)
        outcome = _spend(ca, info, now)
        case = (uses, allowed, offset, hours)
        if expected is None:
            assert isinstance(outcome, TokenInfo), case
            assert outcome.uses == uses
            assert _row(ca, info)["uses"] == uses + 1
        else:
            assert outcome == expected.rule, case
            assert _row(ca, info)["uses"] == uses
