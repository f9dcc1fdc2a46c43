"""``cyphrs acme eab create|list|revoke``: JSON documents match their schemas, the HMAC key
is shown once (never listed, never in an event), refusals carry their exit codes, and the
name policy matches exactly what it says (``*`` is one label)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.service.acme_eab import name_allowed
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, cli


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(tmp_path_factory.mktemp("eab"))


def _eab(ca: Hierarchy, *args: str, expect: int = 0) -> dict[str, object]:
    result = cli("acme", "eab", *args, "--home", str(ca.home), "--json")
    assert result.exit_code == expect, result.stderr
    return json.loads(result.stdout if expect == 0 else result.stderr)  # type: ignore[no-any-return]


def test_create_list_revoke_and_the_key_is_shown_once(ca: Hierarchy) -> None:
    created = _eab(ca, "create", "--profile", "server", "--dns-pattern", "*.svc.acme.internal",
                   "--ip-network", "10.20.0.0/16")
    assert_valid(created)
    assert created["status"] == "active" and created["profile"] == "server"
    hmac_key = str(created["hmac_key"])
    listed = _eab(ca, "list")
    assert_valid(listed)
    assert created["kid"] in {k["kid"] for k in listed["keys"]}  # type: ignore[attr-defined]
    assert hmac_key not in json.dumps(listed)
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        events = " ".join(r[0] for r in conn.execute("SELECT details FROM events"))
    assert hmac_key not in events
    revoked = _eab(ca, "revoke", str(created["kid"]))
    assert_valid(revoked)
    assert revoked["status"] == "revoked"
    again = _eab(ca, "revoke", str(created["kid"]), expect=7)
    assert again["error"]["code"] == 7


def test_refusals_have_their_exit_codes(ca: Hierarchy) -> None:
    assert _eab(ca, "create", expect=2)["error"]["code"] == 2  # no name policy at all
    assert _eab(ca, "create", "--dns-pattern", "a.*.example", expect=3)["error"]["code"] == 3
    assert _eab(ca, "create", "--dns-pattern", "*.com", expect=3)["error"]["code"] == 3
    assert _eab(ca, "create", "--ip-network", "10.0.0.300/8", expect=3)["error"]["code"] == 3
    assert _eab(ca, "create", "--profile", "nope", "--dns-pattern", "a.example",
                expect=6)["error"]["code"] == 6
    assert _eab(ca, "revoke", "eab_000000000000000000000000", expect=6)["error"]["code"] == 6


@pytest.mark.parametrize(
    ("kind", "value", "allowed"),
    [
        ("dns", "api.svc.acme.internal", True),
        ("dns", "API.svc.acme.internal", True),
        ("dns", "a.b.svc.acme.internal", False),  # '*' is exactly one label
        ("dns", "svc.acme.internal", False),
        ("dns", "api.svc.acme.internal.evil", False),
        ("dns", "apisvc.acme.internal", False),
        ("dns", "exact.acme.internal", True),
        ("ip", "10.20.3.4", True),
        ("ip", "10.21.0.1", False),
        ("ip", "not-an-ip", False),
        ("email", "a@b", False),
    ],
)
def test_name_policy(kind: str, value: str, allowed: bool) -> None:
    patterns = ("*.svc.acme.internal", "exact.acme.internal")
    assert name_allowed(patterns, ("10.20.0.0/16",), kind, value) is allowed


def test_listing_never_reads_a_secret(ca: Hierarchy, tmp_path: Path) -> None:
    # The command opens the ledger only: no passphrase is asked or needed.
    result = cli("acme", "eab", "list", "--home", str(ca.home), "--json")
    assert result.exit_code == 0, result.stderr


def test_audit_verify_catches_edited_eab_rows(tmp_path: Path) -> None:
    fresh = build_hierarchy(tmp_path)
    created = _eab(fresh, "create", "--dns-pattern", "*.svc.acme.internal")
    kid = str(created["kid"])

    def problems(home: Path) -> list[str]:
        result = cli("audit", "verify", "--json", "--home", str(home))
        return list(json.loads(result.stdout)["problems"])

    assert problems(fresh.home) == []
    attacks = [
        ("UPDATE acme_eab_keys SET dns_patterns = '[\"*.acme.internal\"]'", "edited"),
        ("UPDATE acme_eab_keys SET profile = 'admin'", "edited"),
        ("UPDATE acme_eab_keys SET hmac_key = 'QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE'",
         "swapped"),
        ("UPDATE acme_eab_keys SET account_id = 'acct_x'", "bound account"),
        ("DELETE FROM acme_eab_keys", "deleted"),
    ]
    for number, (statement, expected) in enumerate(attacks):
        home = tmp_path / f"attack-{number}"
        shutil.copytree(fresh.home, home)
        with sqlite3.connect(home / "ledger.sqlite3") as conn:
            conn.execute(statement)
        found = problems(home)
        assert any(expected in p and kid in p for p in found), (statement, found)
    assert problems(fresh.home) == []
