"""Agent identities at scale: batch issuance, claims, per-workflow queries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cryptography import x509

from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, decode_agent_claims
from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, cli

WORKFLOWS = {f"wf-{n}": [f"queue:{n}:read", f"ledger:{n}:write"] for n in range(5)}


def _batch(h: Hierarchy, source: Path, *extra: str) -> tuple[int, list[dict[str, object]], str]:
    result = cli(
        "issue",
        "agent",
        "--batch",
        str(source),
        "--json",
        *extra,
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    return (
        result.exit_code,
        [json.loads(line) for line in result.stdout.splitlines()],
        result.stderr,
    )


def test_fifty_agents_for_five_workflows_in_one_batch(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    lines = []
    for i in range(50):
        workflow = f"wf-{i % 5}"
        perms = ", ".join(json.dumps(p) for p in WORKFLOWS[workflow])
        lines.append(
            f'[[certificate]]\nname = "agent-{i:02d}"\nworkflow = "{workflow}"\n'
            f'permissions = [{perms}]\nrequester = "launcher-{i % 3}"\n'
        )
    batch = tmp_path / "agents.toml"
    batch.write_text("\n".join(lines))
    code, results, stderr = _batch(h, batch, "--out-dir", str(tmp_path / "out"))
    assert code == 0, stderr
    items, summary = results[:-1], results[-1]
    assert summary == {
        "schema": "cyphrs.issue-batch-summary/v1",
        "items": 50,
        "issued": 50,
        "failed": 0,
        "not_attempted": 0,
    }
    spiffe_ids, serials = set(), set()
    for i, item in enumerate(items):
        cert = x509.load_pem_x509_certificate(
            (tmp_path / "out" / f"agent-{i:02d}" / "cert.pem").read_bytes()
        )
        claims = decode_agent_claims(
            cert.extensions.get_extension_for_oid(
                x509.ObjectIdentifier(AGENT_CLAIMS_OID)
            ).value.value  # type: ignore[attr-defined]
        )
        workflow = f"wf-{i % 5}"
        assert claims.workflow == workflow and list(claims.permissions) == WORKFLOWS[workflow]
        assert claims.requester == f"launcher-{i % 3}"
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert len(uris) == 1 and uris[0].startswith(f"spiffe://acme.internal/agent/{workflow}/")
        spiffe_ids.add(uris[0])
        serials.add(cert.serial_number)
        assert item["certificate"]["spiffe_id"] == uris[0]  # type: ignore[index]
    assert len(spiffe_ids) == len(serials) == 50
    listing = cli("list", "--workflow", "wf-3", "--json", "--home", str(h.home)).json()
    assert listing["count"] == 10
    assert {c["workflow"] for c in listing["certificates"]} == {"wf-3"}
    assert all(c["permissions"] == WORKFLOWS["wf-3"] for c in listing["certificates"])
    assert {c["spiffe_id"] for c in listing["certificates"]} == {
        s for s in spiffe_ids if "/wf-3/" in s
    }


def test_a_policy_refused_item_refuses_the_whole_batch_before_signing(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        '{"workflow": "a"}\n{"workflow": "b"}\n{"workflow": "c", "ttl": "3d"}\n{"workflow": "d"}\n'
    )
    before = h.ledger_rows()
    code, results, stderr = _batch(h, batch, "--out-dir", str(tmp_path / "out"))
    assert code == ExitCode.POLICY_DENIED
    assert results == []
    assert "item 3 (00003): TTL 3d exceeds" in json.loads(stderr)["error"]["message"]
    assert h.ledger_rows() == before
    assert not (tmp_path / "out").exists()
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        assert (
            conn.execute("SELECT count(*) FROM events WHERE type = 'policy.denied'").fetchone()[0]
            == 1
        )


def test_bad_batch_file_issues_nothing(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"workflow": "a"}\n{"workflow": "b", "colour": "blue"}\n')
    before = h.ledger_rows()
    code, _, stderr = _batch(h, batch)
    assert code == ExitCode.INVALID_INPUT and "item 2: unknown field(s) colour" in stderr
    assert h.ledger_rows() == before


def test_batch_from_stdin_with_pem_in_json(fresh_hierarchy: Hierarchy) -> None:
    h = fresh_hierarchy
    result = cli(
        "issue",
        "--batch",
        "-",
        "--json",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        input=(
            '{"profile": "server", "dns": ["a.acme.internal"]}\n{"profile": "client", "cn": "ci"}\n'
        ),
    )
    assert result.exit_code == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["certificate"]["pem"]["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert first["certificate"]["profile"] == "server"


def test_a_ttl_within_the_backdate_is_invalid_input_not_an_expired_issuer(
    fresh_hierarchy: Hierarchy,
) -> None:
    """The agent profile allows 1m, but notBefore is backdated 60 s and the validity spans
    the TTL: such a certificate would end before it is issued. One clear line (exit 3)
    that names the backdate, nothing recorded; 2m is issued and ends after now."""
    h = fresh_hierarchy
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (before,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    args = ("--home", str(h.home), "--passphrase-file", str(h.inter_pass), "--json")
    refused = cli("issue", "agent", "--workflow", "short", "--ttl", "1m", *args)
    assert refused.exit_code == ExitCode.INVALID_INPUT, refused.stderr
    message = json.loads(refused.stderr)["error"]["message"]
    assert "backdated 60 s" in message and "expired" not in message
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (after,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    assert after == before
    issued = cli("issue", "agent", "--workflow", "short", "--ttl", "2m", *args)
    assert issued.exit_code == 0, issued.stderr
    pem = issued.json()["certificate"]["pem"]["certificate"]
    cert = x509.load_pem_x509_certificate(pem.encode())
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span.total_seconds() == 119  # inclusive: exactly 120 s
