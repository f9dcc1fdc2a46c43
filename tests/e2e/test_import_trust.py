"""``import-intermediate`` trusts this home's root or ``--root``, never the file's own root.

The forgery: an attacker who can alter the file coming back from the root's host makes a
root with the genuine root's name but their own key, signs a certificate for the pending
key with it, and returns both. Before the fix, the import adopted that root even with
``--root genuine.pem``, so every certificate the home issued chained to the attacker.
"""

from __future__ import annotations

import sqlite3
import subprocess
import tomllib
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.helpers import INTER_PASS, ROOT_PASS, cli, run_cyphrs


@pytest.fixture
def flow(tmp_path: Path) -> dict[str, Path]:
    """A root host, an online home with a pending request, and the genuine signed file."""
    root_pass, inter_pass = tmp_path / "root.pass", tmp_path / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    root_home, online = tmp_path / "root-host", tmp_path / "online"
    common = ("--passphrase-file",)
    made = cli(
        "init-root", "--name", "Vault Root", "--home", str(root_home), *common, str(root_pass)
    )
    assert made.exit_code == 0, made.stderr
    csr = tmp_path / "agents.csr"
    requested = cli(
        "create-intermediate",
        "--name",
        "Agents CA",
        "--trust-domain",
        "acme.internal",
        "--home",
        str(online),
        *common,
        str(inter_pass),
        "--csr-out",
        str(csr),
    )
    assert requested.exit_code == 0, requested.stderr
    signed = cli(
        "sign-intermediate",
        str(csr),
        "--out",
        str(tmp_path / "genuine.pem"),
        "--home",
        str(root_home),
        *common,
        str(root_pass),
    )
    assert signed.exit_code == 0, signed.stderr
    return {
        "tmp": tmp_path,
        "online": online,
        "csr": csr,
        "root": root_home / "certs" / "vault-root.pem",
        "genuine": tmp_path / "genuine.pem",
    }


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _forge(flow: dict[str, Path], *, include_root: bool) -> Path:
    """Root "CN=Vault Root" with another key; it signs the pending CSR as a CA."""
    tmp = flow["tmp"]
    key, root = tmp / "forged-root.key", tmp / "forged-root.pem"
    _openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
        "-nodes", "-keyout", str(key), "-out", str(root), "-subj", "/CN=Vault Root",
        "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ext = tmp / "ca.ext"
    ext.write_text(
        "basicConstraints=critical,CA:TRUE,pathlen:0\n"
        "keyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    cert = tmp / "forged-inter.pem"
    _openssl(
        "x509", "-req", "-in", str(flow["csr"]), "-CA", str(root), "-CAkey", str(key),
        "-set_serial", "0x4242", "-days", "365", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    bundle = tmp / ("forged-bundle.pem" if include_root else "forged-alone.pem")
    bundle.write_bytes(cert.read_bytes() + (root.read_bytes() if include_root else b""))
    return bundle


def _import(flow: dict[str, Path], source: Path, *extra: str) -> tuple[int, str]:
    """The import as a real ``cyphrs`` process."""
    proc = run_cyphrs("import-intermediate", str(source), "--home", str(flow["online"]), *extra)
    return proc.returncode, proc.stderr.decode()


def _assert_nothing_recorded(flow: dict[str, Path]) -> None:
    online = flow["online"]
    with sqlite3.connect(online / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM authorities").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM certificates").fetchone() == (0,)
        types = [t for (t,) in conn.execute("SELECT type FROM events")]
    assert "authority.imported" not in types
    config = tomllib.loads((online / "config.toml").read_text())
    assert config.get("authorities", {}) == {}
    assert list(config["pending_intermediates"]) == ["agents-ca"]
    assert not (online / "certs").exists() or list((online / "certs").iterdir()) == []


def test_forged_root_in_the_file_is_refused_even_with_genuine_root(
    flow: dict[str, Path],
) -> None:
    code, err = _import(flow, _forge(flow, include_root=True), "--root", str(flow["root"]))
    assert code == ExitCode.INVALID_INPUT, err
    assert "not the trusted root" in err
    _assert_nothing_recorded(flow)
    # The genuine file still imports afterwards, and the home's root is the genuine one.
    code, err = _import(flow, flow["genuine"], "--root", str(flow["root"]))
    assert code == 0, err
    assert (flow["online"] / "certs" / "vault-root.pem").read_bytes() == flow["root"].read_bytes()


def test_forged_chain_without_its_root_is_refused(flow: dict[str, Path]) -> None:
    code, err = _import(flow, _forge(flow, include_root=False), "--root", str(flow["root"]))
    assert code == ExitCode.INVALID_INPUT, err
    assert "not signed by the trusted root" in err
    _assert_nothing_recorded(flow)


def test_a_file_root_alone_is_not_a_trust_anchor(flow: dict[str, Path]) -> None:
    """Without --root (and no root in the home yet) nothing is imported: the forged file
    would otherwise bring its own anchor, and so would the genuine one."""
    for source in (_forge(flow, include_root=True), flow["genuine"]):
        code, err = _import(flow, source)
        assert code == ExitCode.USAGE and "--root" in err, err
    _assert_nothing_recorded(flow)


def test_forged_root_as_the_root_option_is_refused_once_the_home_has_its_root(
    flow: dict[str, Path],
) -> None:
    """After the first import the home's root is the anchor; a --root naming another one
    is a conflict, and a second request signed by the forger is refused."""
    assert _import(flow, flow["genuine"], "--root", str(flow["root"]))[0] == 0
    tmp = flow["tmp"]
    second = cli(
        "create-intermediate",
        "--name",
        "Second CA",
        "--home",
        str(flow["online"]),
        "--passphrase-file",
        str(tmp / "inter.pass"),
        "--csr-out",
        str(tmp / "second.csr"),
    )
    assert second.exit_code == 0, second.stderr
    flow = {**flow, "csr": tmp / "second.csr"}
    forged = _forge(flow, include_root=True)
    code, err = _import(flow, forged, "--root", str(tmp / "forged-root.pem"))
    assert code == ExitCode.CONFLICT and "not this home's root" in err, err
    code, err = _import(flow, forged)
    assert code == ExitCode.INVALID_INPUT and "not the trusted root" in err, err
    config = tomllib.loads((flow["online"] / "config.toml").read_text())
    assert sorted(config["authorities"]) == ["agents-ca", "vault-root"]
    assert list(config["pending_intermediates"]) == ["second-ca"]


def test_root_option_must_be_one_self_signed_ca(flow: dict[str, Path]) -> None:
    both = flow["tmp"] / "two.pem"
    both.write_bytes(flow["root"].read_bytes() * 2)
    code, err = _import(flow, flow["genuine"], "--root", str(both))
    assert code == ExitCode.INVALID_INPUT and "one root certificate" in err, err
    inter_only = flow["tmp"] / "inter-only.pem"
    inter_only.write_bytes(flow["genuine"].read_bytes().split(b"-----END CERTIFICATE-----")[0])
    inter_only.write_bytes(inter_only.read_bytes() + b"-----END CERTIFICATE-----\n")
    code, err = _import(flow, flow["genuine"], "--root", str(inter_only))
    assert code == ExitCode.INVALID_INPUT and "self-signed" in err, err
    _assert_nothing_recorded(flow)


def test_concurrent_imports_of_one_request_record_it_once(flow: dict[str, Path]) -> None:
    """Several imports of the same signed file at once: one records it, the others find
    it imported (exit 7) or no longer pending (exit 6); the ledger holds it once."""
    from tests.e2e.test_creation_races import run_together

    args = ["import-intermediate", str(flow["genuine"]), "--root", str(flow["root"])]
    results = run_together([[*args, "--home", str(flow["online"])]] * 4)
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and set(codes[1:]) <= {ExitCode.CONFLICT, ExitCode.NOT_FOUND}, [
        r.stderr for r in results
    ]
    with sqlite3.connect(flow["online"] / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT name FROM authorities ORDER BY id").fetchall()
    assert rows == [("vault-root",), ("agents-ca",)]
    again = run_cyphrs(*args, "--home", str(flow["online"]))
    assert again.returncode == ExitCode.CONFLICT and b"already imported" in again.stderr
    assert cli("audit", "verify", "--home", str(flow["online"])).exit_code == 0


def test_swapped_root_file_cannot_anchor_a_second_import(flow: dict[str, Path]) -> None:
    """Once the home has its root, the anchor is the root the ledger records: replacing
    certs/vault-root.pem with the forger's root (same name) neither lets the forged chain
    in nor goes unnoticed (exit 8, naming the file)."""
    assert _import(flow, flow["genuine"], "--root", str(flow["root"]))[0] == 0
    tmp = flow["tmp"]
    second = cli(
        "create-intermediate", "--name", "Second CA", "--home", str(flow["online"]),
        "--passphrase-file", str(tmp / "inter.pass"), "--csr-out", str(tmp / "second.csr"),
    )  # fmt: skip
    assert second.exit_code == 0, second.stderr
    forged = _forge({**flow, "csr": tmp / "second.csr"}, include_root=True)
    (flow["online"] / "certs" / "vault-root.pem").write_bytes(
        (tmp / "forged-root.pem").read_bytes()
    )
    code, err = _import(flow, forged)
    assert code == ExitCode.STORAGE and "vault-root.pem" in err, err
    config = tomllib.loads((flow["online"] / "config.toml").read_text())
    assert sorted(config["authorities"]) == ["agents-ca", "vault-root"]
