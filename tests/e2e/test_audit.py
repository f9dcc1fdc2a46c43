"""Tamper evidence of the ledger, and audit export bundles that reconcile and verify."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509

from cyphrs_cli.ca.serials import serial_hex
from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, cli


@pytest.fixture
def busy(fresh_hierarchy: Hierarchy, tmp_path: Path) -> Hierarchy:
    """A ledger with issuance, renewal, revocation, a denial and a CRL in it."""
    h = fresh_hierarchy
    for i in range(4):
        assert (
            h.issue(
                "agent", "--workflow", f"wf{i % 2}", "--out-dir", str(tmp_path / f"a{i}")
            ).exit_code
            == 0
        )
    assert (
        cli(
            "revoke",
            str(tmp_path / "a0" / "cert.pem"),
            "--reason",
            "key-compromise",
            "--home",
            str(h.home),
        ).exit_code
        == 0
    )
    assert (
        cli(
            "renew",
            str(tmp_path / "a1" / "cert.pem"),
            "--json",
            "--home",
            str(h.home),
            "--passphrase-file",
            str(h.inter_pass),
        ).exit_code
        == 0
    )
    assert (
        h.issue("agent", "--workflow", "wf0", "--ttl", "48h", "--json").exit_code
        == ExitCode.POLICY_DENIED
    )
    assert cli("crl", "--home", str(h.home), "--passphrase-file", str(h.inter_pass)).exit_code == 0
    return h


def _verify(h: Hierarchy, *extra: str) -> tuple[int, dict[str, object]]:
    result = cli("audit", "verify", "--json", "--home", str(h.home), *extra)
    return result.exit_code, json.loads(result.stdout)


def _sql(h: Hierarchy, statement: str, *args: object) -> None:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute(statement, args)


def test_untouched_ledger_verifies(busy: Hierarchy) -> None:
    code, report = _verify(busy)
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["certificates_checked"] == 7 and report["events_checked"] >= 10


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (
            "UPDATE events SET actor = 'mallory' WHERE seq = 3",
            "event seq 3: hash does not match its content",
        ),
        (
            "UPDATE events SET details = replace(details, 'agent', 'client') WHERE seq = 4",
            "event seq 4: details do not match params_hash",
        ),
        ("DELETE FROM events WHERE seq = 5", "event seq 5 is missing"),
        (
            "UPDATE certificates SET not_after = '2099-01-01T00:00:00Z' WHERE id = 3",
            "certificate id 3 (serial",
        ),
        ("DELETE FROM certificates WHERE id = 4", "certificate id 4 (serial"),
        (
            "UPDATE certificates SET status = 'valid' WHERE status = 'revoked'",
            "its events say 'revoked'",
        ),
        ("DELETE FROM revocations", "does not match its event"),
    ],
)
def test_tampering_is_detected(busy: Hierarchy, tamper: str, expected: str) -> None:
    if "DELETE FROM certificates" in tamper:
        _sql(busy, "PRAGMA foreign_keys = OFF")
    with sqlite3.connect(busy.home / "ledger.sqlite3") as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(tamper)
    code, report = _verify(busy)
    assert code == ExitCode.CHECK_NOT_MET
    assert any(expected in p for p in report["problems"]), report["problems"]


def test_truncated_tail_is_caught_by_a_checkpoint(busy: Hierarchy, tmp_path: Path) -> None:
    cp = tmp_path / "cp.json"
    made = cli(
        "audit",
        "checkpoint",
        "--out",
        str(cp),
        "--home",
        str(busy.home),
        "--passphrase-file",
        str(busy.inter_pass),
    )
    assert made.exit_code == 0, made.stderr
    seq = json.loads(cp.read_text())["seq"]
    assert _verify(busy, "--root", str(busy.root_cert), "--checkpoint", str(cp))[0] == 0
    # An attacker drops the newest events, the rows they recorded and the stored
    # checkpoint alike.
    with sqlite3.connect(busy.home / "ledger.sqlite3") as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM events WHERE seq >= ?", (seq - 1,))
        conn.execute("DELETE FROM checkpoints")
        conn.execute("DELETE FROM crls")
    code, report = _verify(busy)
    assert code == 0, report["problems"]
    code, report = _verify(busy, "--root", str(busy.root_cert), "--checkpoint", str(cp))
    assert code == ExitCode.CHECK_NOT_MET
    assert any("truncated or rewritten" in p for p in report["problems"])


def test_forged_checkpoint_is_rejected(busy: Hierarchy, tmp_path: Path) -> None:
    cp = tmp_path / "cp.json"
    assert (
        cli(
            "audit",
            "checkpoint",
            "--out",
            str(cp),
            "--home",
            str(busy.home),
            "--passphrase-file",
            str(busy.inter_pass),
        ).exit_code
        == 0
    )
    doc = json.loads(cp.read_text())
    doc["head_hash"] = "00" * 32
    cp.write_text(json.dumps(doc))
    code, report = _verify(busy, "--root", str(busy.root_cert), "--checkpoint", str(cp))
    assert code == ExitCode.CHECK_NOT_MET and "signature does not verify" in report["problems"][0]


def _export(h: Hierarchy, out: Path, *window: str) -> dict[str, object]:
    result = cli(
        "audit-export",
        "--out",
        str(out),
        *window,
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_export_reconciles_and_verifies(busy: Hierarchy, tmp_path: Path) -> None:
    summary = _export(busy, tmp_path / "bundle", "--since", "2000-01-01")
    bundle = tmp_path / "bundle"
    with sqlite3.connect(busy.home / "ledger.sqlite3") as conn:
        certs = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
        revoked = {
            r[0] for r in conn.execute("SELECT serial FROM certificates WHERE status = 'revoked'")
        }
    counts = summary["counts"]
    assert (
        counts["certificates"]
        == certs
        == len((bundle / "certificates.jsonl").read_text().splitlines())
    )
    assert counts["revocations"] == len(revoked) == 1 and counts["policy_denials"] == 1
    crl = x509.load_pem_x509_crl((bundle / "crls" / "test-inter.crl.pem").read_bytes())
    assert revoked <= {serial_hex(r.serial_number) for r in crl}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"] == counts and manifest["ledger_verified"] is True
    report = (bundle / "report.html").read_text()
    for section in (
        "Ledger integrity",
        "Lifetime distribution",
        "Revocations",
        "Policy denials",
        "NIS2 Art. 21(2)(h)",
        "DORA RTS (EU) 2024/1774 Art. 7",
        "PCI DSS 4.0 Req. 4.2.1.1",
    ):
        assert section in report
    ok = cli("audit", "verify-export", str(bundle), "--root", str(busy.root_cert), "--json")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    # The export itself is an audited event.
    with sqlite3.connect(busy.home / "ledger.sqlite3") as conn:
        assert (
            conn.execute("SELECT count(*) FROM events WHERE type = 'audit.exported'").fetchone()[0]
            == 1
        )


@pytest.mark.parametrize(
    "victim",
    ["certificates.csv", "events.jsonl", "report.html", "manifest.json", "checkpoint.json"],
)
def test_modified_bundle_fails_verification(busy: Hierarchy, tmp_path: Path, victim: str) -> None:
    bundle = tmp_path / "bundle"
    _export(busy, bundle, "--since", "2000-01-01")
    path = bundle / victim
    path.write_bytes(path.read_bytes().replace(b"a", b"b", 1))
    result = cli("audit", "verify-export", str(bundle), "--root", str(busy.root_cert))
    assert result.exit_code == ExitCode.CHECK_NOT_MET
    assert result.stderr.startswith("cyphrs: error: bundle verification failed")


def test_bundle_from_another_ca_fails_against_our_root(busy: Hierarchy, tmp_path: Path) -> None:
    from tests.helpers import build_hierarchy

    other = build_hierarchy(tmp_path / "other")
    _export(busy, tmp_path / "bundle", "--since", "2000-01-01")
    result = cli("audit", "verify-export", str(tmp_path / "bundle"), "--root", str(other.root_cert))
    assert result.exit_code == ExitCode.CHECK_NOT_MET and "does not chain" in result.stderr


def test_exports_of_a_window_are_deterministic(busy: Hierarchy, tmp_path: Path) -> None:
    window = ("--since", "2000-01-01", "--until", "2099-01-01")
    # Exports append events, so a window ending in the past is the deterministic case.
    _export(busy, tmp_path / "probe", *window)
    with sqlite3.connect(busy.home / "ledger.sqlite3") as conn:
        end = conn.execute(
            "SELECT max(at) FROM events WHERE type != 'audit.exported'"
            " AND type != 'audit.checkpoint'"
        ).fetchone()[0]
    fixed = ("--since", "2000-01-01", "--until", end.replace("Z", "+00:00"))
    _export(busy, tmp_path / "one", *fixed)
    _export(busy, tmp_path / "two", *fixed)
    names = [
        "manifest.json",
        "certificates.csv",
        "certificates.jsonl",
        "keys.csv",
        "events.jsonl",
        "report.html",
    ]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), (
            name
        )
    assert (tmp_path / "one" / "signature.json").read_bytes() != (
        tmp_path / "two" / "signature.json"
    ).read_bytes()


def test_archive_is_reproducible_and_verifies(busy: Hierarchy, tmp_path: Path) -> None:
    end = "2099-01-01"
    first = cli(
        "audit-export",
        "--out",
        str(tmp_path / "one"),
        "--since",
        "2000-01-01",
        "--until",
        end,
        "--archive",
        "--json",
        "--home",
        str(busy.home),
        "--passphrase-file",
        str(busy.inter_pass),
    )
    assert first.exit_code == 0, first.stderr
    archive = Path(first.json()["archive"]["path"])
    assert archive.name == "one.tar.gz"
    assert cli("audit", "verify-export", str(archive), "--root", str(busy.root_cert)).exit_code == 0
    # Re-archiving the same directory gives the same bytes (sorted, no times, no owners).
    from cyphrs_cli.audit.export import write_archive

    assert (
        write_archive(tmp_path / "one", tmp_path / "again.tar.gz")
        == first.json()["archive"]["sha256"]
    )
    # A tampered archive fails like a tampered directory.
    import tarfile

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("keys.csv"):
                data = data.replace(b"file", b"disk", 1)
                member.size = len(data)
            import io

            dst.addfile(member, io.BytesIO(data))
    result = cli("audit", "verify-export", str(tampered), "--root", str(busy.root_cert))
    assert result.exit_code == ExitCode.CHECK_NOT_MET and "keys.csv was modified" in result.stderr
