"""The offline-root flow across two CA homes: the root key never sits on the issuing host."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import INTER_PASS, ROOT_PASS, cli, openssl_verify, pkilint_findings


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    root_pass, inter_pass = tmp_path / "root.pass", tmp_path / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    root_home, online = tmp_path / "root-host", tmp_path / "online"
    assert (
        cli(
            "init-root",
            "--name",
            "Vault Root",
            "--home",
            str(root_home),
            "--passphrase-file",
            str(root_pass),
        ).exit_code
        == 0
    )
    return root_home, online, root_pass, inter_pass


def test_request_sign_import_then_issue(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, online, root_pass, inter_pass = homes
    csr = tmp_path / "agents.csr"
    request = cli(
        "create-intermediate",
        "--name",
        "Agents CA",
        "--trust-domain",
        "acme.internal",
        "--home",
        str(online),
        "--passphrase-file",
        str(inter_pass),
        "--csr-out",
        str(csr),
        "--json",
    )
    assert request.exit_code == 0, request.stderr
    assert_valid(request.json())
    signed = cli(
        "sign-intermediate",
        str(csr),
        "--out",
        str(tmp_path / "agents.pem"),
        "--trust-domain",
        "acme.internal",
        "--name-constraints",
        "--home",
        str(root_home),
        "--passphrase-file",
        str(root_pass),
        "--json",
    )
    assert signed.exit_code == 0, signed.stderr
    assert_valid(signed.json())
    imported = cli(
        "import-intermediate",
        str(tmp_path / "agents.pem"),
        "--root",
        str(root_home / "certs" / "vault-root.pem"),
        "--home",
        str(online),
        "--json",
    )
    assert imported.exit_code == 0, imported.stderr
    assert_valid(imported.json())
    assert imported.json()["alias"] == "agents-ca" and imported.json()["root"] == "vault-root"
    # The online host can now issue, and what it issues chains to the offline root.
    out = tmp_path / "agent"
    issued = cli(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--out-dir",
        str(out),
        "--home",
        str(online),
        "--passphrase-file",
        str(inter_pass),
    )
    assert issued.exit_code == 0, issued.stderr
    proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "ca.pem").read_bytes() == (root_home / "certs" / "vault-root.pem").read_bytes()
    assert pkilint_findings("lint_pkix_cert", str(online / "certs" / "agents-ca.pem")) == []
    # Both ledgers verify; the root's ledger knows the intermediate it signed.
    for home in (root_home, online):
        assert cli("audit", "verify", "--home", str(home)).exit_code == 0
    with sqlite3.connect(root_home / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT profile FROM certificates ORDER BY id").fetchall() == [
            ("root",),
            ("intermediate",),
        ]
    with sqlite3.connect(online / "ledger.sqlite3") as conn:
        keys = conn.execute("SELECT name, key_uri FROM authorities ORDER BY id").fetchall()
    assert keys == [("vault-root", "offline:"), ("agents-ca", "file:keys/agents-ca.key.pem")]
    assert not (online / "keys" / "vault-root.key.pem").exists()
    # The root key is not here: anything needing it says so with the key-store exit code.
    refused = cli("crl", "--issuer", "vault-root", "--home", str(online))
    assert refused.exit_code == ExitCode.KEYSTORE and "offline" in refused.stderr


def test_import_refuses_a_certificate_for_another_key(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, online, root_pass, inter_pass = homes
    for name, csr in (("First CA", "a.csr"), ("Second CA", "b.csr")):
        home = online if name == "First CA" else tmp_path / "elsewhere"
        assert (
            cli(
                "create-intermediate",
                "--name",
                name,
                "--home",
                str(home),
                "--passphrase-file",
                str(inter_pass),
                "--csr-out",
                str(tmp_path / csr),
            ).exit_code
            == 0
        )
    assert (
        cli(
            "sign-intermediate",
            str(tmp_path / "b.csr"),
            "--out",
            str(tmp_path / "b.pem"),
            "--home",
            str(root_home),
            "--passphrase-file",
            str(root_pass),
        ).exit_code
        == 0
    )
    result = cli(
        "import-intermediate",
        str(tmp_path / "b.pem"),
        "--root",
        str(root_home / "certs" / "vault-root.pem"),
        "--home",
        str(online),
    )
    assert result.exit_code == ExitCode.NOT_FOUND and "pending" in result.stderr
    config = tomllib.loads((online / "config.toml").read_text())
    assert list(config["pending_intermediates"]) == ["first-ca"] and config["authorities"] == {}


def test_sign_intermediate_refuses_a_bad_csr(
    homes: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    root_home, _, root_pass, _ = homes
    bad = tmp_path / "bad.csr"
    bad.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    result = cli(
        "sign-intermediate",
        str(bad),
        "--out",
        str(tmp_path / "x.pem"),
        "--home",
        str(root_home),
        "--passphrase-file",
        str(root_pass),
        "--json",
    )
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert json.loads(result.stderr)["error"]["slug"] == "invalid-input"
    assert not (tmp_path / "x.pem").exists()
