"""Issue 14, traps 5 and 6: hints that never mislead, global options in either position,
and ``audit events`` reading the log without signing anything."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import ROOT_PASS, Hierarchy, build_hierarchy, cli, run_cyphrs


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    h = build_hierarchy(tmp_path_factory.mktemp("frictions"))
    for workflow in ("triage", "payments"):
        assert h.issue("agent", "--workflow", workflow, "--json").exit_code == 0
    assert h.issue("agent", "--workflow", "x", "--ttl", "90d", "--json").exit_code == ExitCode.POLICY_DENIED
    return h


def test_no_ca_home_never_suggests_creating_a_ca(tmp_path: Path) -> None:
    """A CI runner without a CA home: point at the home, never "run init-root"."""
    for args in (("issue", "agent", "--workflow", "w", "--json"), ("list",), ("crl",)):
        proc = run_cyphrs(*args, "--home", str(tmp_path / "none"), env={"CI": "true"})
        assert proc.returncode == ExitCode.NOT_FOUND
        error = proc.stderr.decode()
        assert "init-root" not in error and "create-intermediate" not in error
        assert "--home" in error and "CYPHRS_HOME" in error


def test_root_only_home_hints_name_the_root(tmp_path: Path) -> None:
    root_pass = tmp_path / "root.pass"
    root_pass.write_text(ROOT_PASS)
    home = ("--home", str(tmp_path / "root-host"))
    assert cli("init-root", "--name", "Vault Root", *home, "--passphrase-file",
               str(root_pass)).exit_code == 0  # fmt: skip
    for args, hint in (
        (("crl",), "--issuer vault-root"),
        (("audit-export", "--since", "2000-01-01", "--out", str(tmp_path / "b")),
         "--sign-with vault-root"),
    ):  # fmt: skip
        refused = cli(*args, *home, "--passphrase-file", str(root_pass))
        assert refused.exit_code == ExitCode.NOT_FOUND
        assert hint in refused.stderr and "create-intermediate" not in refused.stderr
    # Following the hint works on the root's host.
    crl = cli("crl", "--issuer", "vault-root", "--out", str(tmp_path / "root.crl"), *home,
              "--passphrase-file", str(root_pass))  # fmt: skip
    assert crl.exit_code == 0, crl.stderr
    bundle = tmp_path / "bundle"
    exported = cli("audit-export", "--since", "2000-01-01", "--out", str(bundle), "--sign-with",
                   "vault-root", *home, "--passphrase-file", str(root_pass))  # fmt: skip
    assert exported.exit_code == 0, exported.stderr
    # The report's footer shows the anchored command, with this root's fingerprint.
    from cryptography import x509

    from cyphrs_cli.ca.issuance import fingerprint

    root = x509.load_pem_x509_certificate(
        (tmp_path / "root-host/certs/vault-root.pem").read_bytes()
    )
    report = (bundle / "report.html").read_text()
    assert f"cyphrs audit verify-export BUNDLE --root-fingerprint {fingerprint(root)}" in report
    assert "verify-export BUNDLE</code>" not in report


def test_global_options_work_before_the_subcommand(ca: Hierarchy) -> None:
    after = cli("list", "--json", "--home", str(ca.home))
    before = cli("--json", "-q", "--home", str(ca.home), "list")
    assert before.exit_code == after.exit_code == 0
    assert before.json()["count"] == after.json()["count"] == 4  # root, intermediate, 2 agents
    error = cli("--json", "list", "--status", "nonsense", "--home", str(ca.home))
    assert error.exit_code == ExitCode.INVALID_INPUT and error.error()["error"]["code"] == 3
    # -q before the subcommand silences human output as it does after it.
    loud = cli("profiles", "show", "agent", "--home", str(ca.home))
    assert loud.exit_code == 0 and loud.stdout.startswith("profile")
    for quiet in (cli("-q", "profiles", "show", "agent", "--home", str(ca.home)),
                  cli("profiles", "show", "agent", "-q", "--home", str(ca.home))):  # fmt: skip
        assert quiet.exit_code == 0 and quiet.stdout == ""


def test_audit_events_filters_and_signs_nothing(ca: Hierarchy) -> None:
    home = ("--home", str(ca.home))
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        before = conn.execute("SELECT count(*), max(seq) FROM events").fetchone()
    everything = cli("audit", "events", "--json", *home)
    assert everything.exit_code == 0, everything.stderr
    document = everything.json()
    assert_valid(document)
    assert document["count"] == before[0] == len(document["events"])
    assert [e["seq"] for e in document["events"]] == sorted(e["seq"] for e in document["events"])

    denied = cli("audit", "events", "--type", "policy.*", "--json", *home).json()
    assert [e["type"] for e in denied["events"]] == ["policy.denied"]
    assert denied["events"][0]["outcome"] == "denied"
    issued = cli("audit", "events", "--type", "certificate.issued", "--target", "certificate:*",
                 "--json", *home).json()  # fmt: skip
    assert issued["count"] == 2
    actor = issued["events"][0]["actor"]
    assert cli("audit", "events", "--actor", actor, "--json", *home).json()["count"] >= 2
    assert cli("audit", "events", "--actor", "nobody-such", "--json", *home).json()["count"] == 0
    newest = cli("audit", "events", "--limit", "1", "--json", *home).json()
    assert [e["seq"] for e in newest["events"]] == [before[1]]
    future = cli("audit", "events", "--since", "2999-01-01", "--json", *home).json()
    past = cli("audit", "events", "--until", "2000-01-01", "--json", *home).json()
    assert future["count"] == past["count"] == 0
    # Hostile text in the log is escaped in the table, exact in --json.
    table = cli("audit", "events", *home)
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:4] == [
        "seq", "at", "type", "actor",
    ]  # fmt: skip
    assert "policy.denied" in table.stdout
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT count(*), max(seq) FROM events").fetchone() == before
    assert json.loads(cli("audit", "verify", "--json", *home).stdout)["ok"] is True
