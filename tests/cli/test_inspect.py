"""``inspect`` on files, stdin, CSRs and ledger serials; human and --json views."""

from __future__ import annotations

from pathlib import Path

from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, build_hierarchy, cli, openssl_csr


def _agent(h: Hierarchy, out: Path) -> Path:
    result = h.issue(
        "agent",
        "--workflow",
        "payments-recon",
        "--instance",
        "i-1",
        "--allow-duplicate",  # several tests issue this instance on the shared hierarchy
        "--permission",
        "ledger:read",
        "--permission",
        "queue:write",
        "--out-dir",
        str(out),
    )
    assert result.exit_code == 0, result.stderr
    return out


def test_inspect_json_decodes_identity_and_claims(hierarchy: Hierarchy, tmp_path: Path) -> None:
    out = _agent(hierarchy, tmp_path / "a")
    result = cli("inspect", str(out / "fullchain.pem"), "--json", "--home", str(hierarchy.home))
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cyphrs.inspect/v1"
    leaf, inter = doc["objects"]
    assert leaf["spiffe_id"] == "spiffe://acme.internal/agent/payments-recon/i-1"
    assert leaf["agent_claims"]["permissions"] == ["ledger:read", "queue:write"]
    assert leaf["agent_claims"]["workflow"] == "payments-recon"
    assert leaf["chains_to_home_root"] is True
    assert leaf["ledger"]["recorded"] is True and leaf["ledger"]["status"] == "valid"
    assert leaf["fingerprints"]["sha256"].startswith("sha256:")
    assert 0 < leaf["seconds_left"] <= 4 * 3600
    assert inter["is_ca"] is True and inter["chains_to_home_root"] is True


def test_inspect_foreign_certificate_does_not_chain(hierarchy: Hierarchy, tmp_path: Path) -> None:
    stranger = build_hierarchy(tmp_path / "stranger")
    out = _agent(stranger, tmp_path / "a")
    doc = cli("inspect", str(out / "cert.pem"), "--json", "--home", str(hierarchy.home)).json()
    assert doc["objects"][0]["chains_to_home_root"] is False
    assert doc["objects"][0]["ledger"] == {"recorded": False}


def test_inspect_human_and_stdin(hierarchy: Hierarchy, tmp_path: Path) -> None:
    out = _agent(hierarchy, tmp_path / "a")
    result = cli(
        "inspect", "-", "--home", str(hierarchy.home), input=(out / "cert.pem").read_bytes()
    )
    assert result.exit_code == 0, result.stderr
    assert "spiffe://acme.internal/agent/payments-recon/i-1" in result.stdout
    assert "chains here  yes" in result.stdout
    assert "queue:write" in result.stdout


def test_inspect_by_serial(hierarchy: Hierarchy, tmp_path: Path) -> None:
    out = _agent(hierarchy, tmp_path / "a")
    serial = cli("inspect", str(out / "cert.pem"), "--json").json()["objects"][0]["serial"]
    doc = cli("inspect", "--serial", serial.upper(), "--json", "--home", str(hierarchy.home)).json()
    assert doc["objects"][0]["serial"] == serial
    missing = cli("inspect", "--serial", "abcdef", "--home", str(hierarchy.home))
    assert missing.exit_code == ExitCode.NOT_FOUND


def test_inspect_csr(tmp_path: Path) -> None:
    _, csr = openssl_csr(tmp_path, "/CN=api", "-addext", "subjectAltName=DNS:api.acme.internal")
    doc = cli("inspect", str(csr), "--json", "--home", str(tmp_path / "none")).json()
    assert doc["objects"] == [
        {
            "type": "csr",
            "subject": "CN=api",
            "key": {"type": "ec", "curve": "secp256r1", "bits": 256},
            "requested_sans": ["DNS:api.acme.internal"],
            "signature_valid": True,
        }
    ]


def test_inspect_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "x.pem"
    bad.write_text("hello")
    result = cli("inspect", str(bad), "--home", str(tmp_path))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert result.stderr.startswith("cyphrs: error: ") and result.stderr.count("\n") == 1


def test_colour_only_when_allowed(hierarchy: Hierarchy, tmp_path: Path) -> None:
    """A foreign certificate's "NO" is red when colour is forced, and plain under NO_COLOR."""
    import os
    import subprocess

    from tests.helpers import tool

    stranger = build_hierarchy(tmp_path / "stranger")
    out = _agent(stranger, tmp_path / "a")
    base = {**os.environ, "CYPHRS_HOME": str(hierarchy.home), "FORCE_COLOR": "1"}
    base.pop("NO_COLOR", None)

    def run(env: dict[str, str]) -> str:
        return subprocess.run(
            [tool("cyphrs"), "inspect", str(out / "cert.pem")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "\x1b[31mNO" in run(base)
    plain = run({**base, "NO_COLOR": "1"})
    assert "chains here  NO" in plain and "\x1b[31m" not in plain


def test_markup_in_certificate_data_is_printed_verbatim(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    result = hierarchy.issue("client", "--cn", "[bold red]x[/]", "--out-dir", str(tmp_path / "c"))
    assert result.exit_code == 0, result.stderr
    shown = cli("inspect", str(tmp_path / "c" / "cert.pem"), "--home", str(hierarchy.home))
    assert "CN=[bold red]x[/]" in shown.stdout
