"""The batch use case called directly (no CLI): groups are committed before they are
handed out, a group's size is honoured, and requests that make no sense are refused.

A real hierarchy (built by the real CLI), a real SQLite ledger read through a second
connection as the oracle for "recorded before output".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cyphrs_cli.ca.hierarchy import issuer_facts, load_issuer, open_ledger
from cyphrs_cli.ca.models import Issuer
from cyphrs_cli.config.home import CaHome, resolve_home
from cyphrs_cli.config.settings import HomeConfig, load_config
from cyphrs_cli.errors import UsageError
from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.policy.decide import PolicyIssuer
from cyphrs_cli.profiles.model import Profile, load_profiles
from cyphrs_cli.service.batch import BatchRequest, ItemResult, check_batch, run_batch
from tests.helpers import Hierarchy


@dataclass(frozen=True)
class _Authority:
    home: CaHome
    config: HomeConfig
    ledger: Ledger
    facts: PolicyIssuer
    profiles: Mapping[str, Profile]
    issuer: Issuer


def _open(h: Hierarchy, ledger: Ledger) -> _Authority:
    home = resolve_home(str(h.home))
    config = load_config(home)
    secret = h.inter_pass.read_bytes().strip()
    issuer = load_issuer(home, config, ledger, None, lambda _prompt: secret)
    facts = issuer_facts(home, config, None)
    return _Authority(home, config, ledger, facts, load_profiles(home.profiles_dir), issuer)


def _request(tmp_path: Path, n: int, **options: object) -> BatchRequest:
    data = b"".join(b'{"workflow": "svc", "instance": "i%d"}\n' % i for i in range(n))
    return BatchRequest(
        data=data,
        source="svc.jsonl",
        base_dir=tmp_path,
        default_profile="agent",
        stdout=True,
        **options,  # type: ignore[arg-type]
    )


def test_each_group_is_recorded_before_any_of_its_items_is_emitted(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    oracle = sqlite3.connect(h.home / "ledger.sqlite3")
    before = h.ledger_rows()
    seen: list[tuple[int, int]] = []  # (index, certificates recorded when it was emitted)

    def emit(result: ItemResult) -> None:
        assert result.error is None and result.issued is not None
        assert result.bundle is not None and result.bundle.private_key is not None
        (recorded,) = oracle.execute(
            "SELECT count(*) FROM certificates WHERE serial = ?", (result.issued.serial,)
        ).fetchone()
        assert recorded == 1  # committed (visible to another connection) before output
        (total,) = oracle.execute("SELECT count(*) FROM certificates").fetchone()
        seen.append((result.index, total - before))

    with open_ledger(resolve_home(str(h.home))) as ledger:
        authority = _open(h, ledger)
        checked = check_batch(authority, _request(tmp_path, 7, group_size=3))
        assert checked.count == 7
        summary = run_batch(authority, checked, emit=emit)
    assert (summary.items, summary.issued, summary.failed, summary.not_attempted) == (7, 7, 0, 0)
    # Groups of 3: the whole group is in the ledger when its first item is emitted.
    assert seen == [(1, 3), (2, 3), (3, 3), (4, 6), (5, 6), (6, 6), (7, 7)]


@pytest.mark.parametrize("options", [{"group_size": 0}, {"group_size": 5000}, {"group_seconds": 0}])
def test_a_group_that_cannot_work_is_refused(
    fresh_hierarchy: Hierarchy, tmp_path: Path, options: dict[str, object]
) -> None:
    h = fresh_hierarchy
    before = h.ledger_rows("events")
    with open_ledger(resolve_home(str(h.home))) as ledger, pytest.raises(UsageError):
        check_batch(_open(h, ledger), _request(tmp_path, 1, **options))
    assert h.ledger_rows("events") == before


def test_the_batch_view_of_an_item_is_the_full_summary_of_its_certificate(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``issued_summary`` (no re-parse of what was just signed) says what
    ``certificate_summary`` (a full decode) says, for agents with and without
    permissions, and for a server with DNS and IP names and no claims."""
    from cyphrs_cli.ca.parsing import certificate_summary, issued_summary

    h = fresh_hierarchy
    data = (
        b'{"workflow": "view", "instance": "a", "permissions": ["read:x", "write:y"]}\n'
        b'{"workflow": "view", "instance": "b"}\n'
        b'{"workflow": "other", "instance": "c", "requester": "alice@example.com"}\n'
        b'{"profile": "server", "dns": ["api.view.internal"], "ip": ["10.1.2.3"]}\n'
    )
    request = BatchRequest(
        data=data, source="v.jsonl", base_dir=tmp_path, default_profile="agent", stdout=True
    )
    seen: list[ItemResult] = []
    with open_ledger(resolve_home(str(h.home))) as ledger:
        authority = _open(h, ledger)
        run_batch(authority, check_batch(authority, request), emit=seen.append)
    assert len(seen) == 4 and all(r.error is None for r in seen), seen
    for result in seen:
        assert result.issued is not None
        full = certificate_summary(result.issued.certificate)
        lean = issued_summary(result.issued.certificate, result.issued.claims)
        assert lean == {k: full[k] for k in ("subject", "sans", "agent_claims", "key")}
    assert [r.issued.claims is not None for r in seen if r.issued] == [True, True, True, False]
    # Claims that are not the signed ones are never shown: the extension is decoded.
    first = seen[0].issued
    assert first is not None and seen[1].issued is not None
    other = issued_summary(first.certificate, seen[1].issued.claims)
    assert other["agent_claims"] == certificate_summary(first.certificate)["agent_claims"]
