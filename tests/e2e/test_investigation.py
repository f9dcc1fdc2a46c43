"""Incident reconstruction through the real CLI on a real ledger built with a set clock.

One CA home is built once (module fixture) with ``CYPHRS_TEST_NOW`` fixing each command's
time, so every instant below is known:

    2030-01-01T00:00:00Z  root, intermediates test-inter and test-inter2
    10:00  A1  pay/a1        (4 h: notAfter 13:58:59)
    10:05  B1  pay/b1        (1 h: notAfter 11:03:59)
    10:10  C1  other/c1      by a hostile actor name (output escaping)
    10:15  E1  pay/e1        (so that two serials share a first hex digit: 9 certificates)
    10:20  D1  pay/d1        signed by test-inter2
    12:00  A2  renews A1     (A1 superseded)
    12:30  A2  revoked, key-compromise
    12:40  CRL #1 of test-inter
    12:50  pay/a1 asks for 30 h: policy denied
    13:00  test-inter2 revoked (D1's issuer)

The tests then ask what a responder asks: what was valid at an instant, what is this
fingerprint/serial/SPIFFE ID/certificate, what happened to this identity -- and they edit
the ledger with the sqlite3 shell to prove a tampered event is reported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, cli, run_cyphrs

DAY = "2030-01-01"
TD = "spiffe://acme.internal/agent"
HOSTILE_ACTOR = "=HYPERLINK(1)\x1b[2J"


def at(clock: str) -> dict[str, str]:
    return {"CYPHRS_TEST_NOW": f"{DAY}T{clock}Z"}


@dataclass
class Scenario:
    h: Hierarchy
    serials: dict[str, str]

    def run(self, *args: str, clock: str = "23:00:00", **kw: Any) -> Any:
        return cli(*args, "--home", str(self.h.home), env=at(clock), **kw)

    def json(self, *args: str, expect: int = 0, clock: str = "23:00:00") -> dict[str, Any]:
        result = self.run(*args, "--json", clock=clock)
        assert result.exit_code == expect, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        assert_valid(document)
        return document

    def valid_at(self, clock: str, *extra: str) -> dict[str, dict[str, Any]]:
        doc = self.json("list", "--valid-at", f"{DAY}T{clock}Z", *extra)
        names = {v: k for k, v in self.serials.items()}
        return {names.get(c["serial"], c["serial"]): c for c in doc["certificates"]}


def _issue(
    h: Hierarchy, clock: str, workflow: str, instance: str, *extra: str, actor: str | None = None
) -> str:
    result = cli(
        "issue",
        "agent",
        "--workflow",
        workflow,
        "--instance",
        instance,
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--json",
        *extra,
        env={**at(clock), **({"CYPHRS_ACTOR": actor} if actor else {})},
    )
    assert result.exit_code == 0, result.stderr
    return str(result.json()["certificate"]["serial"])


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    base = tmp_path_factory.mktemp("incident")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYPHRS_TEST_NOW", f"{DAY}T00:00:00Z")
        h = build_hierarchy(base)
        second = cli(
            "create-intermediate",
            "--name",
            "Second Issuing CA",
            "--alias",
            "test-inter2",
            "--trust-domain",
            "acme.internal",
            "--home",
            str(h.home),
            "--passphrase-file",
            str(h.inter_pass),
            "--root-passphrase-file",
            str(h.root_pass),
        )
        assert second.exit_code == 0, second.stderr
    s: dict[str, str] = {}
    s["A1"] = _issue(h, "10:00:00", "pay", "a1")
    s["B1"] = _issue(h, "10:05:00", "pay", "b1", "--ttl", "1h")
    s["C1"] = _issue(h, "10:10:00", "other", "c1", "--requester", "deploy-bot", actor=HOSTILE_ACTOR)
    s["E1"] = _issue(h, "10:15:00", "pay", "e1")
    s["D1"] = _issue(h, "10:20:00", "pay", "d1", "--issuer", "test-inter2")
    pw = ("--passphrase-file", str(h.inter_pass))
    home = ("--home", str(h.home))
    renewed = cli("renew", "--serial", s["A1"], "--json", "--force", *pw, *home, env=at("12:00:00"))
    assert renewed.exit_code == 0, renewed.stderr
    s["A2"] = renewed.json()["certificate"]["serial"]
    revoked = cli(
        "revoke", "--serial", s["A2"], "--reason", "key-compromise", *home, env=at("12:30:00")
    )
    assert revoked.exit_code == 0, revoked.stderr
    crl = cli("crl", "--out", str(base / "i.crl"), *pw, *home, env=at("12:40:00"))
    assert crl.exit_code == 0, crl.stderr
    denied = cli(
        "issue", "agent", "--workflow", "pay", "--instance", "a1", "--ttl", "30h", "--json", *pw, *home,
        env=at("12:50:00"),
    )  # fmt: skip
    assert denied.exit_code == 5, denied.stderr
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (inter2,) = conn.execute(
            "SELECT c.serial FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
            " WHERE a.name = 'test-inter2'"
        ).fetchone()
    s["INTER2"] = inter2
    gone = cli("revoke", "--serial", inter2, "--reason", "ca-compromise", *home, env=at("13:00:00"))
    assert gone.exit_code == 0, gone.stderr
    yield Scenario(h, s)


# -- list --valid-at ---------------------------------------------------------------------


def test_valid_at_before_any_issuance_lists_only_the_cas(scenario: Scenario) -> None:
    assert scenario.valid_at("09:00:00", "--workflow", "pay") == {}
    everything = scenario.valid_at("09:00:00")
    assert sorted(c["profile"] for c in everything.values()) == [
        "intermediate",
        "intermediate",
        "root",
    ]


def test_valid_at_the_issuing_second_counts_and_the_second_before_does_not(
    scenario: Scenario,
) -> None:
    assert "A1" not in scenario.valid_at("09:59:59", "--workflow", "pay")
    assert "A1" in scenario.valid_at("10:00:00", "--workflow", "pay")


def test_valid_at_during_validity(scenario: Scenario) -> None:
    found = scenario.valid_at("10:30:00", "--workflow", "pay")
    assert set(found) == {"A1", "B1", "E1", "D1"}
    assert {c["status"] for c in found.values()} == {"valid"}
    assert found["D1"]["issuer_revoked_at"] == f"{DAY}T13:00:00Z"  # flagged: revoked later
    assert found["A1"]["issuer_revoked_at"] is None


def test_valid_at_after_expiry_drops_the_expired_one(scenario: Scenario) -> None:
    assert "B1" in scenario.valid_at("11:03:59", "--workflow", "pay")  # notAfter is inclusive
    assert "B1" not in scenario.valid_at("11:04:00", "--workflow", "pay")


def test_valid_at_across_a_renewal_shows_both_with_their_status_then(scenario: Scenario) -> None:
    before = scenario.valid_at("11:59:59", "--spiffe-id", f"{TD}/pay/a1")
    assert set(before) == {"A1"}
    assert before["A1"]["replaced_by"] is None  # the renewal had not happened yet
    during = scenario.valid_at("12:10:00", "--spiffe-id", f"{TD}/pay/a1")
    assert set(during) == {"A1", "A2"}
    assert during["A1"]["status"] == "superseded"  # still usable until its notAfter
    assert during["A1"]["replaced_by"] == scenario.serials["A2"]
    assert during["A2"]["replaces"] == scenario.serials["A1"]


def test_a_certificate_revoked_later_was_valid_then_and_says_when(scenario: Scenario) -> None:
    then = scenario.valid_at("12:29:59", "--workflow", "pay")["A2"]
    assert then["status"] == "valid"
    assert then["revoked_at"] is None
    assert then["revoked_later_at"] == f"{DAY}T12:30:00Z"
    assert then["revoked_later_reason"] == "key-compromise"
    assert "A2" not in scenario.valid_at("12:30:00", "--workflow", "pay")  # revoked at once


def test_after_the_issuer_is_revoked_its_certificates_are_not_valid(scenario: Scenario) -> None:
    assert "D1" in scenario.valid_at("12:59:59", "--workflow", "pay")
    assert "D1" not in scenario.valid_at("13:00:00", "--workflow", "pay")
    later = scenario.valid_at("13:30:00", "--workflow", "pay")
    assert set(later) == {"A1", "E1"}  # A2 revoked, B1 expired, D1's issuer revoked


def test_valid_at_combines_with_issuer_and_human_output_says_revoked_later(
    scenario: Scenario,
) -> None:
    found = scenario.valid_at("10:30:00", "--issuer", "test-inter2")
    assert set(found) == {"D1"}
    table = scenario.run("list", "--valid-at", f"{DAY}T12:10:00Z", "--workflow", "pay")
    assert table.exit_code == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith(scenario.serials["A2"]))
    assert f"valid (revoked {DAY}T12:30:00Z)" in line
    assert "issuer revoked" in next(
        x for x in table.stdout.splitlines() if x.startswith(scenario.serials["D1"])
    )


def test_valid_at_refuses_status_filters_and_bad_times(scenario: Scenario) -> None:
    both = scenario.run("list", "--valid-at", f"{DAY}T10:00:00Z", "--status", "valid")
    assert both.exit_code == 2
    bad = scenario.run("list", "--valid-at", "yesterday-ish")
    assert bad.exit_code == 3


# -- find --------------------------------------------------------------------------------


def _pem(scenario: Scenario, name: str) -> str:
    with sqlite3.connect(scenario.h.home / "ledger.sqlite3") as conn:
        (pem,) = conn.execute(
            "SELECT pem FROM certificates WHERE serial = ?", (scenario.serials[name],)
        ).fetchone()
    return str(pem)


def _openssl_fingerprint(pem: str, digest: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", f"-{digest}"],
        input=pem,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()  # "sha1 Fingerprint=AB:CD:..." (openssl's own spelling)


def _found(doc: dict[str, Any]) -> list[str]:
    return [c["certificate"]["serial"] for c in doc["certificates"]]


def test_find_by_sha256_in_every_spelling(scenario: Scenario) -> None:
    a2 = scenario.serials["A2"]
    openssl_form = _openssl_fingerprint(_pem(scenario, "A2"), "sha256")
    bare = openssl_form.split("=", 1)[1].replace(":", "").lower()
    for spelling in (
        f"sha256:{bare}",
        bare,
        bare.upper(),
        openssl_form,
        openssl_form.split("=")[1],
    ):
        doc = scenario.json("find", "--fingerprint", spelling)
        assert _found(doc) == [a2], spelling


def test_find_by_sha1_as_openssl_prints_it(scenario: Scenario) -> None:
    openssl_form = _openssl_fingerprint(_pem(scenario, "B1"), "sha1")
    for spelling in (openssl_form, openssl_form.split("=", 1)[1]):
        doc = scenario.json("find", "--fingerprint", spelling)
        assert _found(doc) == [scenario.serials["B1"]], spelling
    digits = openssl_form.split("=", 1)[1].replace(":", "").lower()
    assert scenario.json("find", "--fingerprint", f"sha1:{digits}")["query"]["value"] == (
        f"sha1:{digits}"
    )


def test_find_refuses_a_malformed_fingerprint_and_reports_an_unknown_one(
    scenario: Scenario,
) -> None:
    assert scenario.run("find", "--fingerprint", "sha256:abc").exit_code == 3
    assert scenario.run("find", "--fingerprint", "sha1:" + "ab" * 32).exit_code == 3
    assert scenario.run("find", "--fingerprint", "00" * 32).exit_code == 6


def test_find_by_serial_hex_colons_decimal_and_prefix(scenario: Scenario) -> None:
    serial = scenario.serials["A1"]
    colons = ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)).upper()
    decimal = str(int(serial, 16))
    for spelling in (serial, colons, "0x" + serial, decimal):
        assert _found(scenario.json("find", "--serial", spelling)) == [serial], spelling
    # Every serial in the ledger, not only the scenario's named ones (the home has more).
    with closing(sqlite3.connect(scenario.h.home / "ledger.sqlite3")) as conn:
        others = [row[0] for row in conn.execute("SELECT serial FROM certificates")]
    others.remove(serial)
    length = next(n for n in range(1, 41) if not any(o.startswith(serial[:n]) for o in others))
    assert _found(scenario.json("find", "--serial", serial[:length])) == [serial]


def test_an_ambiguous_serial_prefix_exits_2_and_lists_the_candidates(scenario: Scenario) -> None:
    serials = list(scenario.serials.values())  # 9 serials, 8 possible first digits
    shared = next(s[0] for s in serials if sum(o[0] == s[0] for o in serials) > 1)
    candidates = [s for s in serials if s.startswith(shared)]
    result = scenario.run("find", "--serial", shared)
    assert result.exit_code == 2
    assert "ambiguous" in result.stderr
    for candidate in candidates:
        assert candidate in result.stderr


def test_find_by_spiffe_id_gives_every_certificate_with_chain_history_and_requester(
    scenario: Scenario,
) -> None:
    doc = scenario.json("find", "--spiffe-id", f"{TD}/pay/a1")
    a1, a2 = scenario.serials["A1"], scenario.serials["A2"]
    assert _found(doc) == [a1, a2]
    first, second = doc["certificates"]
    assert [link["serial"] for link in first["renewal_chain"]] == [a1, a2]
    assert [link["this"] for link in second["renewal_chain"]] == [False, True]
    assert [(h["at"], h["status"]) for h in first["history"]] == [
        (f"{DAY}T10:00:00Z", "valid"),
        (f"{DAY}T12:00:00Z", "superseded"),
        (f"{DAY}T13:58:59Z", "expired"),
    ]
    assert [(h["at"], h["status"], h["detail"]) for h in second["history"]][:2] == [
        (f"{DAY}T12:00:00Z", "valid", "issued as agent"),
        (f"{DAY}T12:30:00Z", "revoked", "key-compromise"),
    ]
    revoked = second["history"][1]
    assert revoked["event_seq"] is not None and revoked["actor"] and revoked["host"]
    by = first["obtained_by"]
    assert by["event_type"] == "certificate.issued"
    assert by["requester"] and by["actor"] and by["host"]
    assert by["details"]["serial"] == a1
    assert second["obtained_by"]["event_type"] == "certificate.renewed"
    assert second["certificate"]["status"] == "revoked"


def test_find_says_when_the_issuer_was_revoked(scenario: Scenario) -> None:
    doc = scenario.json("find", "--serial", scenario.serials["D1"])
    story = doc["certificates"][0]
    assert story["certificate"]["issuer"] == "test-inter2"
    assert story["certificate"]["issuer_revoked_at"] == f"{DAY}T13:00:00Z"
    assert ("issuer_revoked", f"{DAY}T13:00:00Z") in [
        (h["status"], h["at"]) for h in story["history"]
    ]
    human = scenario.run("find", "--serial", scenario.serials["D1"])
    assert "ISSUER REVOKED" in human.stdout


def test_find_by_certificate_file_der_and_stdin(scenario: Scenario, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = _pem(scenario, "E1")
    der = tmp_path / "peer.der"
    der.write_bytes(x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER))
    assert _found(scenario.json("find", "--cert", str(der))) == [scenario.serials["E1"]]
    proc = run_cyphrs(
        "find", "--cert", "-", "--json", "--home", str(scenario.h.home), input=pem.encode(),
        env=at("23:00:00"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _found(json.loads(proc.stdout)) == [scenario.serials["E1"]]


def test_find_calls_out_a_forged_certificate_reusing_a_recorded_serial(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Same serial, other bytes (an impostor CA's certificate): not ours, and said so."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(scenario.serials["A1"], 16))
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "forged.pem"
    path.write_bytes(forged.public_bytes(Encoding.PEM))
    result = scenario.run("find", "--cert", str(path))
    assert result.exit_code == 6
    assert "recorded, but with another fingerprint" in result.stderr


def test_find_needs_exactly_one_handle(scenario: Scenario) -> None:
    assert scenario.run("find").exit_code == 2
    assert scenario.run("find", "--serial", "ab", "--spiffe-id", "x").exit_code == 2
    assert scenario.run("find", "--serial", "not-hex").exit_code == 3
    assert scenario.run("find", "--spiffe-id", f"{TD}/pay/nobody").exit_code == 6


# -- timeline ----------------------------------------------------------------------------


def _kinds(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["at"][11:19], e["type"]) for e in doc["events"]]


def test_timeline_of_an_identity_lists_exactly_its_events_in_order(scenario: Scenario) -> None:
    doc = scenario.json(
        "timeline", "--spiffe-id", f"{TD}/pay/a1", "--since", f"{DAY}T09:00:00Z",
        "--until", f"{DAY}T15:00:00Z",
    )  # fmt: skip
    assert _kinds(doc) == [
        ("10:00:00", "certificate.issued"),
        ("12:00:00", "certificate.renewed"),
        ("12:30:00", "certificate.revoked"),
        ("12:40:00", "crl.published"),
        ("12:50:00", "policy.denied"),
    ]
    assert [e["seq"] for e in doc["events"]] == sorted(e["seq"] for e in doc["events"])
    assert all(e["actor"] and e["host"] for e in doc["events"])
    assert doc["events"][2]["serial"] == scenario.serials["A2"]
    assert doc["chain"]["verified"] is True
    assert doc["chain"]["checked"] >= len(doc["events"])


def test_timeline_window_bounds_are_since_inclusive_until_exclusive(scenario: Scenario) -> None:
    doc = scenario.json(
        "timeline", "--spiffe-id", f"{TD}/pay/a1", "--since", f"{DAY}T12:00:00Z",
        "--until", f"{DAY}T12:40:00Z",
    )  # fmt: skip
    assert _kinds(doc) == [("12:00:00", "certificate.renewed"), ("12:30:00", "certificate.revoked")]


def test_timeline_of_a_workflow_covers_every_instance_and_its_issuers(scenario: Scenario) -> None:
    doc = scenario.json("timeline", "--workflow", "pay", "--since", DAY)
    assert _kinds(doc) == [
        ("10:00:00", "certificate.issued"),
        ("10:05:00", "certificate.issued"),
        ("10:15:00", "certificate.issued"),
        ("10:20:00", "certificate.issued"),
        ("12:00:00", "certificate.renewed"),
        ("12:30:00", "certificate.revoked"),
        ("12:40:00", "crl.published"),
        ("12:50:00", "policy.denied"),
        ("13:00:00", "certificate.revoked"),  # D1's issuer
    ]
    assert scenario.serials["C1"] not in json.dumps(doc)  # another workflow


def test_timeline_of_an_issuer_and_of_a_serial(scenario: Scenario) -> None:
    inter2 = scenario.json("timeline", "--issuer", "test-inter2", "--since", f"{DAY}T01:00:00Z")
    assert _kinds(inter2) == [("10:20:00", "certificate.issued")]
    one = scenario.json("timeline", "--serial", scenario.serials["A1"])
    assert _kinds(one) == [
        ("10:00:00", "certificate.issued"),
        ("12:00:00", "certificate.renewed"),  # what superseded it
        ("12:40:00", "crl.published"),
    ]
    assert scenario.run("timeline", "--issuer", "nobody").exit_code == 6
    assert scenario.run("timeline").exit_code == 2
    assert (
        scenario.run("timeline", "--workflow", "pay", "--since", DAY, "--until", DAY).exit_code == 3
    )


def test_timeline_human_and_csv_outputs_are_safe(scenario: Scenario) -> None:
    human = scenario.run("timeline", "--workflow", "other", "--since", DAY)
    assert human.exit_code == 0, human.stderr
    assert "\x1b" not in human.stdout
    assert "=HYPERLINK(1)\\x1b[2J" in human.stdout  # shown, escaped
    assert "hash chain verified" in human.stdout
    table = scenario.run("timeline", "--workflow", "other", "--since", DAY, "--csv")
    assert table.exit_code == 0, table.stderr
    rows = table.stdout.splitlines()  # CliRunner turns CRLF into LF
    assert rows[0].startswith("seq,at,type,actor,host")
    assert "'=HYPERLINK(1)\x1b[2J" in rows[1]  # a formula becomes text
    raw = scenario.json("timeline", "--workflow", "other", "--since", DAY)
    assert raw["events"][0]["actor"] == HOSTILE_ACTOR  # JSON keeps the exact value


# -- tampering ---------------------------------------------------------------------------


@pytest.fixture
def copy(scenario: Scenario, tmp_path: Path) -> Scenario:
    """A private copy of the scenario's home to damage."""
    home = tmp_path / "home"
    shutil.copytree(scenario.h.home, home)
    h = Hierarchy(home, scenario.h.root_pass, scenario.h.inter_pass, scenario.h.key_type)
    return Scenario(h, scenario.serials)


def _sqlite3(home: Path, sql: str) -> None:
    subprocess.run(["sqlite3", str(home / "ledger.sqlite3"), sql], check=True)


def _seq_of(home: Path, where: str) -> int:
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (seq,) = conn.execute(f"SELECT seq FROM events WHERE {where}").fetchone()  # noqa: S608
    return int(seq)


WINDOW = ("--since", f"{DAY}T09:00:00Z", "--until", f"{DAY}T15:00:00Z")


def test_an_edited_event_inside_the_window_is_reported_by_seq(copy: Scenario) -> None:
    seq = _seq_of(copy.h.home, "type = 'certificate.revoked' AND details LIKE '%key-compromise%'")
    _sqlite3(copy.h.home, f"UPDATE events SET actor = 'nobody' WHERE seq = {seq}")  # noqa: S608
    result = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW, "--json")
    assert result.exit_code == 10
    doc = json.loads(result.stdout)
    assert_valid(doc)
    assert doc["chain"]["verified"] is False
    assert doc["chain"]["problems"] == [
        {"seq": seq, "problem": "content does not match its hash (edited)"}
    ]
    shown = {e["seq"]: e for e in doc["events"]}
    assert shown[seq]["chain_ok"] is False and shown[seq]["actor"] == "nobody"
    assert f"seq {seq}" in json.loads(result.stderr)["error"]["message"]
    human = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW)
    assert human.exit_code == 10
    assert "HASH CHAIN DOES NOT VERIFY" in human.stdout and "CHAIN BROKEN HERE" in human.stdout


def test_an_event_rehashed_after_editing_breaks_the_next_link(copy: Scenario) -> None:
    """The forger recomputes the edited row's hash: the following event no longer links."""
    from cyphrs_cli.ledger.events import canonical_json, chain_hash, event_body, sha256_hex

    seq = _seq_of(copy.h.home, "type = 'certificate.renewed'")
    with sqlite3.connect(copy.h.home / "ledger.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone())
        details = json.loads(row["details"])
        details["spiffe_id"] = f"{TD}/pay/someone-else"
        row["details"] = canonical_json(details).decode()
        row["params_hash"] = sha256_hex(canonical_json(details))
        digest = chain_hash(row["prev_hash"], event_body(row))
        conn.execute(
            "UPDATE events SET details = ?, params_hash = ?, hash = ? WHERE seq = ?",
            (row["details"], row["params_hash"], digest, seq),
        )
    result = copy.run("timeline", "--workflow", "pay", *WINDOW, "--json")
    assert result.exit_code == 10
    problems = json.loads(result.stdout)["chain"]["problems"]
    assert problems == [{"seq": seq + 1, "problem": f"prev_hash does not link to event {seq}"}]


def test_a_deleted_event_inside_the_window_is_reported(copy: Scenario) -> None:
    seq = _seq_of(copy.h.home, "type = 'crl.published'")
    _sqlite3(copy.h.home, f"DELETE FROM events WHERE seq = {seq}")  # noqa: S608
    result = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW, "--json")
    assert result.exit_code == 10
    doc = json.loads(result.stdout)
    assert "crl.published" not in [e["type"] for e in doc["events"]]
    assert {"seq": seq, "problem": "event is missing (deleted?)"} in doc["chain"]["problems"]


def test_a_damaged_details_column_is_shown_and_reported_not_a_crash(copy: Scenario) -> None:
    seq = _seq_of(copy.h.home, "type = 'policy.denied'")
    _sqlite3(copy.h.home, f"UPDATE events SET details = 'not json' WHERE seq = {seq}")  # noqa: S608
    result = copy.run("timeline", "--issuer", "test-inter", *WINDOW, "--json")
    assert result.exit_code == 10, result.stderr
    doc = json.loads(result.stdout)
    assert {"seq": seq, "problem": "details are not JSON (edited?)"} in doc["chain"]["problems"]


# -- audit-export --timeline ---------------------------------------------------------------


def test_audit_export_carries_a_signed_timeline_of_the_window(
    copy: Scenario, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = copy.run(
        "audit-export", "--since", f"{DAY}T09:00:00Z", "--until", f"{DAY}T15:00:00Z",
        "--out", str(out), "--timeline", f"spiffe-id={TD}/pay/a1", "--passphrase-file",
        str(copy.h.inter_pass), clock="23:00:00",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    document = json.loads((out / "timelines/1-spiffe-id.json").read_text())
    assert_valid(document)
    assert [e["type"] for e in document["events"]] == [
        "certificate.issued",
        "certificate.renewed",
        "certificate.revoked",
        "crl.published",
        "policy.denied",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("timelines/1-spiffe-id.json", "timelines/1-spiffe-id.csv"):
        data = (out / name).read_bytes()
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    verified = cli("audit", "verify-export", str(out), "--root", str(copy.h.root_cert))
    assert verified.exit_code == 0, verified.stderr
    (out / "timelines/1-spiffe-id.csv").write_bytes(b"seq\r\n")
    altered = cli("audit", "verify-export", str(out), "--root", str(copy.h.root_cert))
    assert altered.exit_code == 10
    bad = copy.run(
        "audit-export", "--since", DAY, "--out", str(tmp_path / "b2"), "--timeline", "colour=red",
        "--passphrase-file", str(copy.h.inter_pass),
    )  # fmt: skip
    assert bad.exit_code == 2
    assert not (tmp_path / "b2").exists()


def test_an_edit_between_shown_events_is_caught_by_the_window_walk(copy: Scenario) -> None:
    """C1's issuance (another workflow) sits between a1's events: not shown, still checked."""
    seq = _seq_of(copy.h.home, f"target = 'certificate:{copy.serials['C1']}'")
    _sqlite3(copy.h.home, f"UPDATE events SET host = 'elsewhere' WHERE seq = {seq}")  # noqa: S608
    result = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW, "--json")
    assert result.exit_code == 10
    doc = json.loads(result.stdout)
    assert doc["chain"]["scope"] == "range"
    assert doc["chain"]["problems"] == [
        {"seq": seq, "problem": "content does not match its hash (edited)"}
    ]


def test_past_the_walk_limit_the_events_shown_are_checked_and_it_says_so(
    copy: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cyphrs_cli.service.investigation as investigation

    monkeypatch.setattr(investigation, "CHAIN_WALK_LIMIT", 1)
    clean = copy.json("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW)
    assert clean["chain"]["scope"] == "events" and clean["chain"]["verified"]
    assert clean["chain"]["checked"] == len(clean["events"]) == 5
    human = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW)
    assert "around the 5 event(s) shown" in human.stdout
    shown = _seq_of(copy.h.home, "type = 'certificate.renewed'")
    _sqlite3(copy.h.home, f"UPDATE events SET actor = 'nobody' WHERE seq = {shown}")  # noqa: S608
    result = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW, "--json")
    assert result.exit_code == 10
    assert json.loads(result.stdout)["chain"]["problems"] == [
        {"seq": shown, "problem": "content does not match its hash (edited)"}
    ]
    deleted = _seq_of(copy.h.home, "type = 'crl.published'")
    _sqlite3(copy.h.home, f"DELETE FROM events WHERE seq = {deleted}")  # noqa: S608
    result = copy.run("timeline", "--spiffe-id", f"{TD}/pay/a1", *WINDOW, "--json")
    problems = json.loads(result.stdout)["chain"]["problems"]
    assert {"seq": deleted, "problem": "event is missing (deleted?)"} in problems


def test_valid_at_csv_carries_the_point_in_time_columns(scenario: Scenario) -> None:
    import csv
    import io

    table = scenario.run("list", "--valid-at", f"{DAY}T12:10:00Z", "--workflow", "pay", "--csv")
    assert table.exit_code == 0, table.stderr
    rows = {r["serial"]: r for r in csv.DictReader(io.StringIO(table.stdout))}
    a2 = rows[scenario.serials["A2"]]
    assert (a2["status"], a2["revoked_later_at"], a2["revoked_later_reason"]) == (
        "valid",
        f"{DAY}T12:30:00Z",
        "key-compromise",
    )
    assert rows[scenario.serials["D1"]]["issuer_revoked_at"] == f"{DAY}T13:00:00Z"
    assert a2["valid_at"] == f"{DAY}T12:10:00Z"


def test_find_shows_the_renewal_links_around_a_certificate_of_a_long_chain(
    fresh_hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cyphrs_cli.service.investigation as investigation

    monkeypatch.setattr(investigation, "CHAIN_NEIGHBOURS", 1)
    h = fresh_hierarchy
    serials = [_issue(h, "10:00:00", "long", "one")]
    for n in range(4):
        renewed = cli(
            "renew", "--serial", serials[-1], "--json", "--force", "--home", str(h.home),
            "--passphrase-file", str(h.inter_pass), env=at(f"1{n + 1}:00:00"),
        )  # fmt: skip
        assert renewed.exit_code == 0, renewed.stderr
        serials.append(renewed.json()["certificate"]["serial"])
    found = cli("find", "--serial", serials[2], "--json", "--home", str(h.home), env=at("14:30:00"))
    assert found.exit_code == 0, found.stderr
    story = found.json()["certificates"][0]
    assert story["renewal_chain_length"] == 5
    assert [link["serial"] for link in story["renewal_chain"]] == serials[1:4]
    assert [link["status"] for link in story["renewal_chain"]] == ["superseded"] * 3
    assert_valid(found.json())
