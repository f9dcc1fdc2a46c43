"""``trust-bundle``: the root(s) as PEM that ``openssl verify`` accepts as the anchor for
an agent's chain, fingerprints that match openssl's, and a ledger row edited to plant a
stranger's root refused (exit 8) with nothing written."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, cli


def _openssl_fingerprint(pem: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(pem), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return "sha256:" + out.split("=", 1)[1].strip().replace(":", "").lower()


def test_bundle_is_the_anchor_an_agent_chain_verifies_against(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    home = ("--home", str(hierarchy.home))
    done = cli("trust-bundle", "--out", str(tmp_path / "ca.pem"), "--json", *home)
    assert done.exit_code == 0, done.stderr
    document = done.json()
    assert_valid(document)
    assert [r["authority"] for r in document["roots"]] == ["test-root"]
    bundle = tmp_path / "ca.pem"
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 1
    assert document["roots"][0]["fingerprint_sha256"] == _openssl_fingerprint(bundle)
    assert bundle.stat().st_mode & 0o777 == 0o644
    agent = tmp_path / "agent"
    assert hierarchy.issue("agent", "--workflow", "tb", "--out-dir", str(agent)).exit_code == 0
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), "-untrusted", str(hierarchy.inter_cert),
         str(agent / "cert.pem")], capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The intermediate is not an anchor: without the chain the agent does not verify.
    alone = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), str(agent / "cert.pem")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert alone.returncode != 0


def test_stdout_carries_only_pem_and_outputs_are_not_clobbered(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    home = ("--home", str(hierarchy.home))
    piped = cli("trust-bundle", "--out", "-", *home)
    assert piped.exit_code == 0
    assert piped.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert piped.stdout.strip().endswith("-----END CERTIFICATE-----")
    assert piped.stdout == hierarchy.root_cert.read_text().strip() + "\n"
    assert cli("trust-bundle", "--json", *home).exit_code == 2  # JSON and PEM on one stdout
    target = tmp_path / "ca.pem"
    target.write_text("keep")
    assert cli("trust-bundle", "--out", str(target), *home).exit_code == 7
    assert target.read_text() == "keep"
    assert cli("trust-bundle", "--out", str(target), "--force", *home).exit_code == 0
    assert "BEGIN CERTIFICATE" in target.read_text()
    missing = cli("trust-bundle", "--home", str(tmp_path / "nothing"))
    assert missing.exit_code == 6


def test_an_edited_root_row_is_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k.pem"), "-subj", "/CN=Test Root CA",
         "-days", "30", "-out", str(stranger)], capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    with sqlite3.connect(fresh_hierarchy.home / "ledger.sqlite3") as conn:
        conn.execute(
            "UPDATE certificates SET pem = ? WHERE id ="
            " (SELECT certificate_id FROM authorities WHERE role = 'root')",
            (stranger.read_text(),),
        )
    out = tmp_path / "ca.pem"
    done = cli("trust-bundle", "--out", str(out), "--home", str(fresh_hierarchy.home))
    assert done.exit_code == 8, done.stderr
    assert "fingerprint" in done.stderr and not out.exists()
