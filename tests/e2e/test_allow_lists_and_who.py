"""Issue 14, traps 2 and 3: permissions are allow-listed per workflow, and "who asked"
(requester, a claim) is kept apart from "who ran it" (actor, an audit fact)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, cli

AGENTS = """
description = "Agents of the triage and payments workflows"
extended_key_usage = ["clientAuth"]
default_ttl = "1h"
min_ttl = "5m"
max_ttl = "4h"
key_types = ["p256"]
[names]
spiffe = "required"
[workflows.triage]
permissions = ["tickets:read", "tickets:comment"]
[workflows.payments]
permissions = ["payments:write", "ledger:read"]
requesters = ["deploy-bot"]
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    h = build_hierarchy(tmp_path_factory.mktemp("allow"))
    source = h.home.parent / "agents.toml"
    source.write_text(AGENTS)
    assert cli("profiles", "set", str(source), "--home", str(h.home)).exit_code == 0
    return h


def _events(h: Hierarchy, kind: str) -> list[tuple[str, dict[str, object]]]:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        rows = conn.execute(
            "SELECT actor, details FROM events WHERE type = ? ORDER BY seq", (kind,)
        ).fetchall()
    return [(actor, json.loads(details)) for actor, details in rows]


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["--workflow", "triage", "-p", "payments:write"], "agents.workflows.triage.permissions"),
        (["--workflow", "marketing", "-p", "tickets:read"], "agents.workflows"),
        (
            ["--workflow", "payments", "-p", "ledger:read", "--requester", "intruder"],
            "agents.workflows.payments.requesters",
        ),
    ],
)
def test_outside_the_allow_list_is_denied_recorded_and_explained(
    ca: Hierarchy, args: list[str], rule: str
) -> None:
    home = ("--home", str(ca.home))
    denied_before = len(_events(ca, "policy.denied"))
    refused = cli("issue", "agents", *args, "--json", "--passphrase-file", str(ca.inter_pass),
                  *home)  # fmt: skip
    assert refused.exit_code == ExitCode.POLICY_DENIED, refused.stderr
    assert refused.error()["error"]["rule"] == rule
    denials = _events(ca, "policy.denied")
    assert len(denials) == denied_before + 1 and denials[-1][1]["rule"] == rule
    # --dry-run names the same rule and records nothing.
    dry = cli("issue", "agents", *args, "--dry-run", "--json", *home)
    assert dry.exit_code == ExitCode.POLICY_DENIED and dry.error()["error"]["rule"] == rule
    assert len(_events(ca, "policy.denied")) == denied_before + 1


def test_inside_the_allow_list_is_issued_and_dry_run_names_the_rule(ca: Hierarchy) -> None:
    home = ("--home", str(ca.home))
    dry = cli("issue", "agents", "--workflow", "triage", "-p", "tickets:read", "--dry-run",
              "--json", *home)  # fmt: skip
    assert dry.exit_code == 0, dry.stderr
    assert any(
        r.startswith("agents.workflows.triage.permissions: ") for r in dry.json()["allowed_by"]
    )
    issued = cli("issue", "agents", "--workflow", "payments", "-p", "payments:write",
                 "--requester", "deploy-bot", "--json", "--passphrase-file", str(ca.inter_pass),
                 *home)  # fmt: skip
    assert issued.exit_code == 0, issued.stderr
    shown = cli("profiles", "show", "agents", *home)
    assert shown.exit_code == 0 and not shown.stdout.lstrip().startswith("{")
    assert "payments:write, ledger:read" in shown.stdout and "deploy-bot" in shown.stdout
    document = cli("profiles", "show", "agents", "--json", *home).json()
    assert_valid(document)
    assert document["profile"]["workflows"]["payments"]["requesters"] == ["deploy-bot"]


def test_an_unknown_field_in_a_workflow_table_is_refused(ca: Hierarchy, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(AGENTS.replace('requesters = ["deploy-bot"]', 'requester = ["deploy-bot"]'))
    refused = cli("profiles", "set", str(bad), "--home", str(ca.home))
    assert refused.exit_code == ExitCode.INVALID_INPUT
    assert "workflows.payments.requester" in refused.stderr


def test_renewal_keeps_the_requester_and_records_the_renewing_actor(
    ca: Hierarchy, tmp_path: Path
) -> None:
    home = ("--home", str(ca.home))
    out = tmp_path / "agent"
    issued = cli(
        "--actor", "alice", "issue", "agent", "--workflow", "recon", "--requester", "deploy-bot",
        "--out-dir", str(out), "--passphrase-file", str(ca.inter_pass), *home,
        env={"CYPHRS_ACTOR": "ignored-env"},
    )  # fmt: skip
    assert issued.exit_code == 0, issued.stderr
    # CYPHRS_ACTOR names the actor only; it is not the requester of a renewal.
    renewed = cli(
        "renew", str(out / "cert.pem"), "--out-dir", str(out), "--force", "--json",
        "--passphrase-file", str(ca.inter_pass), *home, env={"CYPHRS_ACTOR": "renew-bot"},
    )  # fmt: skip
    assert renewed.exit_code == 0, renewed.stderr
    claims = cli("inspect", str(out / "cert.pem"), "--json").json()
    text = json.dumps(claims)
    assert '"requester": "deploy-bot"' in text and "renew-bot" not in text
    issue_actor, issue_event = _events(ca, "certificate.issued")[-1]
    renew_actor, renew_event = _events(ca, "certificate.renewed")[-1]
    assert (issue_actor, issue_event["requester"]) == ("alice", "deploy-bot")
    assert (renew_actor, renew_event["requester"]) == ("renew-bot", "deploy-bot")
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        requesters = conn.execute(
            "SELECT requester FROM certificates WHERE spiffe_id LIKE '%/recon/%'"
        ).fetchall()
    assert requesters == [("deploy-bot",), ("deploy-bot",)]


def test_requester_defaults_to_the_actor_but_never_reads_cyphrs_actor_as_an_option(
    ca: Hierarchy, tmp_path: Path
) -> None:
    home = ("--home", str(ca.home))
    issued = cli(
        "issue", "agent", "--workflow", "solo", "--json", "--passphrase-file",
        str(ca.inter_pass), *home, env={"CYPHRS_ACTOR": "carol", "CYPHRS_REQUESTER": "dave"},
    )  # fmt: skip
    assert issued.exit_code == 0, issued.stderr
    actor, event = _events(ca, "certificate.issued")[-1]
    assert (actor, event["requester"]) == ("carol", "dave")
