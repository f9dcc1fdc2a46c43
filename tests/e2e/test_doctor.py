"""``cyphrs doctor``: each check finds its mistake planted in a real CA home (chmod, a CRL
that really passed its nextUpdate, an edited ledger row, a real RSA-2048 CA ...), and is
silent on a well-kept home (offline root, name constraints, fresh CRL, private files).

Times are pinned through the use case (``DoctorRequest.now``) only where the condition is
"later than now" (CA expiry, a stale checkpoint in days, a clock behind the ledger).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.checks.model import Severity, Thresholds
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.ledger.events import utc_now
from cyphrs_cli.service.doctor import DoctorRequest, run_doctor
from tests.cli.test_json_contract import assert_valid
from tests.helpers import INTER_PASS, ROOT_PASS, Hierarchy, build_hierarchy, cli


class GoodHome:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "online"
        self.inter_pass = base / "inter.pass"

    def doctor(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = cli("doctor", "--home", str(self.home), "--json", *args)
        document = __import__("json").loads(result.stdout)
        assert_valid(document)
        return result.exit_code, document

    def run(self, *args: str) -> None:
        done = cli(*args, "--home", str(self.home))
        assert done.exit_code == 0, done.stderr


def _build_good(base: Path) -> GoodHome:
    """Offline root (its key only in root-host/), a name-constrained intermediate, a
    fresh CRL, secrets and home private."""
    base.mkdir(parents=True, exist_ok=True)
    root_pass, inter_pass = base / "root.pass", base / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    root_pass.chmod(0o600)
    inter_pass.chmod(0o600)
    root_home, online = base / "root-host", base / "online"
    steps = [
        ("init-root", "--name", "Vault Root", "--home", str(root_home),
         "--passphrase-file", str(root_pass)),
        ("create-intermediate", "--name", "Agents CA", "--trust-domain", "acme.internal",
         "--name-constraints", "--home", str(online), "--passphrase-file", str(inter_pass),
         "--csr-out", str(base / "agents.csr")),
        # The request carries the trust domain and constraints to the root host.
        ("sign-intermediate", str(base / "agents.csr"), "--out", str(base / "agents.pem"),
         "--home", str(root_home), "--passphrase-file", str(root_pass)),
        ("import-intermediate", str(base / "agents.pem"), "--root",
         str(root_home / "certs" / "vault-root.pem"), "--home", str(online)),
        ("crl", "--home", str(online), "--passphrase-file", str(inter_pass)),
    ]  # fmt: skip
    for step in steps:
        done = cli(*step)
        assert done.exit_code == 0, (step[0], done.stderr)
    return GoodHome(base)


@pytest.fixture(scope="module")
def good_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_good(tmp_path_factory.mktemp("doctor-good")).base


@pytest.fixture
def good(good_template: Path, tmp_path: Path) -> GoodHome:
    """A private copy of the well-kept home (modes preserved) to plant one mistake in."""
    base = tmp_path / "good"
    shutil.copytree(good_template, base, symlinks=True)
    return GoodHome(base)


def _ids(document: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in document["findings"]}


def _service(home: Path, **kwargs: Any) -> dict[str, str]:
    report = run_doctor(DoctorRequest(home=CaHome(home), **kwargs))
    return {f.id: f.severity.label for f in report.findings}


def test_a_well_kept_home_has_no_findings(good: GoodHome) -> None:
    code, document = good.doctor("--passphrase-file", str(good.inter_pass), "--fail-on", "info")
    assert document["findings"] == [] and document["ok"] is True
    assert code == 0


def test_the_default_quickstart_home_is_told_its_root_key_is_online(tmp_path: Path) -> None:
    hierarchy = build_hierarchy(tmp_path)
    result = cli("doctor", "--home", str(hierarchy.home))
    assert result.exit_code == 10
    assert "keys.root_online" in result.stdout and "shred -u" in result.stdout
    assert "policy.no_name_constraints" in result.stdout  # built without --name-constraints
    # The same home passes when only critical findings fail it.
    assert cli("doctor", "--home", str(hierarchy.home), "--fail-on", "critical").exit_code == 0


def test_unknown_fail_on_is_a_usage_error(good: GoodHome) -> None:
    assert cli("doctor", "--home", str(good.home), "--fail-on", "severe").exit_code == 2


def test_missing_issuing_key_is_critical(good: GoodHome) -> None:
    (key,) = (good.home / "keys").iterdir()
    key.unlink()
    code, document = good.doctor()
    assert code == 10 and _ids(document)["keys.issuing_key_missing"] == "critical"


def test_rsa_2048_ca_is_found(tmp_path: Path) -> None:
    hierarchy = build_hierarchy(tmp_path)
    done = cli(
        "create-intermediate", "--name", "Weak CA", "--alias", "weak", "--key-type", "rsa2048",
        "--trust-domain", "weak.internal", "--home", str(hierarchy.home),
        "--passphrase-file", str(hierarchy.inter_pass),
        "--root-passphrase-file", str(hierarchy.root_pass),
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    found = [
        f
        for f in cli("doctor", "--home", str(hierarchy.home), "--json").json()["findings"]
        if f["id"] == "keys.weak_ca_rsa"
    ]
    assert [f["subject"] for f in found] == ["weak"]  # the P-256 CAs are not named


@pytest.mark.parametrize(
    ("target", "mode", "finding", "severity"),
    [
        ("", 0o755, "permissions.home", "medium"),
        ("keys", 0o750, "permissions.keys_dir", "high"),
        ("ledger.sqlite3", 0o640, "permissions.ledger", "medium"),
        ("config.toml", 0o644, "permissions.config", "low"),
        ("keys/*", 0o644, "permissions.key_file", "high"),
        ("keys/*", 0o666, "permissions.key_file", "critical"),
    ],
)
def test_loose_permissions_are_found(
    good: GoodHome, target: str, mode: int, finding: str, severity: str
) -> None:
    (path,) = good.home.glob(target) if target else [good.home]
    path.chmod(mode)
    code, document = good.doctor()
    assert _ids(document) == {finding: severity}
    assert code == (10 if severity in ("high", "critical") else 0)
    fix = next(f["fix"] for f in document["findings"])
    assert fix.startswith("chmod 7") or fix.startswith("chmod 6")


def test_a_passphrase_file_readable_by_others_is_found(good: GoodHome) -> None:
    good.inter_pass.chmod(0o644)
    code, document = good.doctor("--passphrase-file", str(good.inter_pass))
    assert code == 10 and _ids(document) == {"permissions.secret_file": "high"}
    good.inter_pass.chmod(0o600)
    code, document = good.doctor("--passphrase-file", str(good.inter_pass))
    assert code == 0 and document["findings"] == []


def test_a_crl_past_its_next_update_is_found(good: GoodHome) -> None:
    good.run("crl", "--validity", "1s", "--passphrase-file", str(good.inter_pass))
    time.sleep(2.1)
    code, document = good.doctor()
    assert code == 10 and _ids(document)["crl.past_next_update"] == "high"
    # A CRL close to its nextUpdate is a warning first.
    good.run("crl", "--validity", "1h", "--passphrase-file", str(good.inter_pass))
    code, document = good.doctor()
    assert code == 0 and _ids(document) == {"crl.expiring": "medium"}


def test_a_revocation_on_no_crl_is_found(good: GoodHome, tmp_path: Path) -> None:
    good.run(
        "issue", "agent", "--workflow", "w1", "--out-dir", str(tmp_path / "a"),
        "--passphrase-file", str(good.inter_pass),
    )  # fmt: skip
    good.run("revoke", str(tmp_path / "a" / "cert.pem"), "--reason", "key-compromise")
    _, document = good.doctor()
    assert _ids(document) == {"crl.revocations_unpublished": "medium"}
    good.run("crl", "--passphrase-file", str(good.inter_pass))
    assert good.doctor()[1]["findings"] == []


def test_a_profile_with_a_long_max_ttl_is_found(good: GoodHome, tmp_path: Path) -> None:
    profile = tmp_path / "legacy.toml"
    profile.write_text(
        'description = "legacy"\nextended_key_usage = ["clientAuth"]\n'
        'default_ttl = "24h"\nmin_ttl = "1m"\nmax_ttl = "365d"\n[names]\nspiffe = "optional"\n'
        "require_common_name = true\n"
    )
    good.run("profiles", "set", str(profile))
    code, document = good.doctor()
    assert code == 0 and _ids(document) == {"policy.long_max_ttl": "medium"}
    assert "'legacy'" in document["findings"][0]["title"]
    _, document = good.doctor("--max-ttl", "400d")
    assert document["findings"] == []


def test_an_edited_ledger_row_is_found(good: GoodHome) -> None:
    with sqlite3.connect(good.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE certificates SET subject = 'CN=Evil' WHERE is_ca = 1")
    conn.close()
    code, document = good.doctor()
    assert code == 10 and _ids(document).get("ledger.integrity") == "critical"


def test_checkpoint_age(good: GoodHome) -> None:
    # Event times have whole seconds: 1.1 s after a ledger written at x.9 s is "1 s old",
    # not over a 1 s limit. 2.1 s is over it whatever the fraction.
    time.sleep(2.1)
    _, document = good.doctor("--checkpoint-age", "1s")
    assert _ids(document) == {"ledger.checkpoint_stale": "medium"}
    assert "no checkpoint was ever handed out" in document["findings"][0]["title"]
    good.run("audit", "checkpoint", "--passphrase-file", str(good.inter_pass))
    assert good.doctor("--checkpoint-age", "1h")[1]["findings"] == []
    # Eight days later (pinned time), the same checkpoint is stale under the 7-day default.
    later = _service(good.home, now=utc_now() + timedelta(days=8))
    assert later.get("ledger.checkpoint_stale") == "medium"


def test_ca_expiry_horizon(good: GoodHome) -> None:
    not_after = (good.base / "agents.pem").read_bytes()
    from cryptography import x509

    end = x509.load_pem_x509_certificates(not_after)[0].not_valid_after_utc
    near = _service(good.home, now=end - timedelta(days=10))
    assert near["expiry.ca_expiring"] == "high"
    assert "expiry.ca_expiring" not in _service(
        good.home, now=end - timedelta(days=10), thresholds=Thresholds(ca_expiry=timedelta(days=5))
    )
    assert _service(good.home, now=end + timedelta(seconds=1))["expiry.ca_expired"] == "critical"


def test_clock_behind_the_ledger(good: GoodHome) -> None:
    found = _service(good.home, now=utc_now() - timedelta(hours=2))
    assert found["clock.behind_ledger"] == "high"
    assert "clock.behind_ledger" not in _service(good.home, now=utc_now())


def test_fail_on_threshold_orders_severities() -> None:
    assert Severity.parse("HIGH") == Severity.HIGH
    assert Severity.CRITICAL > Severity.HIGH > Severity.MEDIUM > Severity.LOW > Severity.INFO


def test_hierarchy_fixture_type_is_used(hierarchy: Hierarchy) -> None:
    # The shared session hierarchy (root key online) fails the default threshold.
    assert cli("doctor", "--home", str(hierarchy.home)).exit_code == 10
