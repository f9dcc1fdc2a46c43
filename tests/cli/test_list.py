"""``list`` filters, each checked against a ledger whose every row the test itself put there.

One private hierarchy per module: certificates in every status (valid, expired, revoked,
superseded), several SAN kinds, and two issuance windows one second apart, so each filter's
answer is an exact set of serials known in advance.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from cyphrs_cli.ledger.queries import REGISTER_COLUMNS
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, cli

# A home profile whose minimum TTL lets a certificate expire while the test runs: validity
# starts 60 s in the past (clock-skew backdating), so a 62 s TTL ends a second from now.
SHORT = """
description = "test: a certificate that expires within seconds"
extended_key_usage = ["clientAuth"]
default_ttl = "62s"
min_ttl = "1s"
max_ttl = "1h"
key_types = ["p256"]
[names]
require_common_name = true
"""


@dataclass
class Listed:
    h: Hierarchy
    serials: dict[str, str]  # role in this test -> serial
    ca_serials: set[str]
    boundary: str  # RFC 3339 second between the two issuance windows


def _list(h: Hierarchy, *args: str, expect: int = 0) -> list[dict[str, object]]:
    result = cli("list", *args, "--json", "--home", str(h.home))
    assert result.exit_code == expect, result.stderr
    if expect:
        return []
    document = result.json()
    assert_valid(document)
    assert document["count"] == len(document["certificates"])
    return list(document["certificates"])


def _serials(rows: list[dict[str, object]]) -> set[str]:
    return {str(r["serial"]) for r in rows}


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Listed:
    h = build_hierarchy(tmp_path_factory.mktemp("list"))
    source = tmp_path_factory.mktemp("profile") / "short.toml"
    source.write_text(SHORT)
    recorded = cli("profiles", "set", str(source), "--home", str(h.home))
    assert recorded.exit_code == 0, recorded.stderr
    ca_serials = _serials(_list(h))
    assert len(ca_serials) == 2  # root and intermediate
    s = {}
    s["early-agent"] = h.issue_serial("agent", "--workflow", "list-early", "--instance", "e1")
    s["server"] = h.issue_serial("server", "--dns", "api.acme.internal", "--ip", "10.0.0.7")
    s["expired"] = h.issue_serial("short", "--cn", "soon-expired", "--ttl", "62s")
    # issued_at has one-second resolution: put a whole second on each side of the boundary.
    time.sleep(1.1)
    boundary = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)
    s["revoked"] = h.issue_serial("agent", "--workflow", "list-revoked", "--instance", "r1")
    s["old"] = h.issue_serial("agent", "--workflow", "list-renewed", "--instance", "n1")
    s["soon"] = h.issue_serial("client", "--cn", "list-soon", "--ttl", "30m")
    revoke = cli("revoke", "--serial", s["revoked"], "--home", str(h.home))
    assert revoke.exit_code == 0, revoke.stderr
    renewed = cli(
        "renew",
        "--serial",
        s["old"],
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert renewed.exit_code == 0, renewed.stderr
    s["new"] = str(renewed.json()["certificate"]["serial"])
    expired = next(r for r in _list(h) if r["serial"] == s["expired"])
    while datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") <= str(expired["not_after"]):
        time.sleep(0.2)
    return Listed(h, s, ca_serials, boundary)


def test_status_filters_partition_the_ledger(listed: Listed) -> None:
    h, s = listed.h, listed.serials
    by_status = {
        status: _serials(_list(h, "--status", status))
        for status in ("valid", "expired", "revoked", "superseded")
    }
    assert by_status["revoked"] == {s["revoked"]}
    assert by_status["expired"] == {s["expired"]}
    assert by_status["superseded"] == {s["old"]}
    assert by_status["valid"] == listed.ca_serials | {
        s["early-agent"],
        s["server"],
        s["soon"],
        s["new"],
    }
    everything = _serials(_list(h))
    assert set().union(*by_status.values()) == everything  # every row has one status
    assert sum(len(v) for v in by_status.values()) == len(everything)
    for status, serials in by_status.items():
        rows = _list(h, "--status", status)
        assert {r["status"] for r in rows} == {status}, (status, rows)
        assert _serials(rows) == serials


def test_unknown_status_is_invalid_input(listed: Listed) -> None:
    result = cli("list", "--status", "active", "--home", str(listed.h.home))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert result.stderr.startswith("cyphrs: error: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("san", "role"),
    [
        ("api.acme.internal", "server"),
        ("10.0.0.7", "server"),
        ("spiffe://acme.internal/agent/list-early/e1", "early-agent"),
    ],
)
def test_san_matches_a_whole_name(listed: Listed, san: str, role: str) -> None:
    assert _serials(_list(listed.h, "--san", san)) == {listed.serials[role]}


@pytest.mark.parametrize(
    "san",
    [
        "api.acme.interna",  # a prefix is not the name
        "pi.acme.internal",  # nor a suffix
        "%",  # LIKE wildcards are literal characters here
        "api_acme.internal",
        "10.0.0.70",
    ],
)
def test_san_does_not_match_parts_or_wildcards(listed: Listed, san: str) -> None:
    assert _list(listed.h, "--san", san) == []


def test_issued_after_and_before_split_at_the_boundary(listed: Listed) -> None:
    h, s = listed.h, listed.serials
    before = _serials(_list(h, "--issued-before", listed.boundary))
    after = _serials(_list(h, "--issued-after", listed.boundary))
    assert before == listed.ca_serials | {s["early-agent"], s["server"], s["expired"]}
    assert after == {s["revoked"], s["old"], s["soon"], s["new"]}
    assert _list(h, "--issued-after", listed.boundary, "--issued-before", listed.boundary) == []
    both = _list(h, "--issued-after", "2000-01-01", "--issued-before", listed.boundary)
    assert _serials(both) == before
    bad = cli("list", "--issued-after", "last tuesday", "--home", str(h.home))
    assert bad.exit_code == ExitCode.INVALID_INPUT


def test_expiring_within(listed: Listed) -> None:
    h, s = listed.h, listed.serials
    # 30 minutes: only the client; neither the expired nor the revoked one, nor the CAs.
    assert _serials(_list(h, "--expiring-within", "1h")) == {s["soon"]}
    # The agents' 4 h default falls inside 5 h; the revoked agent is still left out.
    assert _serials(_list(h, "--expiring-within", "5h")) == {
        s["soon"],
        s["early-agent"],
        s["old"],
        s["new"],
    }
    assert cli("list", "--expiring-within", "soon", "--home", str(h.home)).exit_code == (
        ExitCode.INVALID_INPUT
    )


def test_limit_keeps_the_newest(listed: Listed) -> None:
    h = listed.h
    everything = _list(h)
    assert len(everything) == 9
    for n in (1, 3, 9, 50):
        assert _list(h, "--limit", str(n)) == everything[:n]
    issued = [str(r["issued_at"]) for r in everything]
    assert issued == sorted(issued, reverse=True)  # newest first
    assert _list(h, "--limit", "1")[0]["serial"] == listed.serials["new"]
    assert cli("list", "--limit", "0", "--home", str(h.home)).exit_code == ExitCode.USAGE


def test_filters_combine(listed: Listed) -> None:
    h, s = listed.h, listed.serials
    rows = _list(h, "--status", "valid", "--issued-after", listed.boundary, "--profile", "agent")
    assert _serials(rows) == {s["new"]}
    assert _list(h, "--status", "revoked", "--san", "api.acme.internal") == []


def test_csv_is_the_same_register_as_json(listed: Listed) -> None:
    h = listed.h
    result = cli("list", "--csv", "--status", "valid", "--home", str(h.home))
    assert result.exit_code == 0, result.stderr
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert tuple(reader.fieldnames or ()) == REGISTER_COLUMNS
    rows = list(reader)
    as_json = _list(h, "--status", "valid")
    assert [r["serial"] for r in rows] == [str(r["serial"]) for r in as_json]
    for text_row, json_row in zip(rows, as_json, strict=True):
        for column in ("fingerprint", "subject", "profile", "status", "not_after", "issuer"):
            assert text_row[column] == str(json_row[column]), column
    both = cli("list", "--csv", "--json", "--home", str(h.home))
    assert both.exit_code == ExitCode.USAGE and both.stdout == ""


def test_list_human_table_counts(listed: Listed) -> None:
    result = cli("list", "--status", "revoked", "--home", str(listed.h.home))
    assert result.exit_code == 0, result.stderr
    assert listed.serials["revoked"][:16] in result.stdout
    assert listed.serials["server"][:16] not in result.stdout


def test_list_without_a_home_is_not_found(tmp_path: Path) -> None:
    result = cli("list", "--home", str(tmp_path / "none"))
    assert result.exit_code == ExitCode.NOT_FOUND
    assert not (tmp_path / "none").exists()
