"""The --json contract: every command has it, and every document matches its schema in
``schemas/`` (versioned: a breaking change needs a new /v2 file, never an edit)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.helpers import Hierarchy, build_hierarchy, cli

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
# Formats of files inside an audit bundle rather than command output.
BUNDLE_FORMATS = {"audit-manifest", "audit-signature"}


@cache
def validator(schema_id: str) -> Draft202012Validator:
    name = schema_id.removeprefix("cyphrs.").removesuffix("/v1")
    schema = json.loads((SCHEMAS / f"{name}.v1.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(document: dict[str, Any]) -> None:
    errors = sorted(validator(document["schema"]).iter_errors(document), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_every_schema_id_in_the_code_has_a_schema_file() -> None:
    used = set()
    for path in (REPO / "cyphrs_cli").rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r'"cyphrs\.([a-z-]+)/v1"', text))
        # Documents built as f"cyphrs.{command}/v1" name their command at the call site.
        used |= set(re.findall(r'command="([a-z-]+)"', text))
        used |= set(re.findall(r'_render_created\("([a-z-]+)"', text))
    files = {p.name.removesuffix(".v1.json") for p in SCHEMAS.glob("*.v1.json")}
    assert used - BUNDLE_FORMATS == files


def test_every_command_offers_json_and_quiet() -> None:
    import typer.main

    from cyphrs_cli.cli.app import app

    def leaves(command: Any, path: str) -> list[tuple[str, Any]]:
        # click's group API (list_commands/get_command): the root loads commands lazily.
        if not hasattr(command, "list_commands"):
            return [(path, command)]
        return [
            leaf
            for name in command.list_commands(None)
            for leaf in leaves(command.get_command(None, name), f"{path} {name}")
        ]

    missing = [
        path
        for path, command in leaves(typer.main.get_command(app), "cyphrs")
        if not any("--json" in p.opts for p in command.params)
    ]
    assert missing == []


@pytest.fixture(scope="module")
def contract_ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(tmp_path_factory.mktemp("contract"))


def _json(*args: str, expect: int = 0) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == expect, result.stderr
    document: dict[str, Any] = (
        json.loads(result.stdout) if expect == 0 else json.loads(result.stderr)
    )
    assert_valid(document)
    return document


def test_command_outputs_match_their_schemas(contract_ca: Hierarchy, tmp_path: Path) -> None:
    h = contract_ca
    home = ("--home", str(h.home))
    secret = ("--passphrase-file", str(h.inter_pass))
    _json(
        "init-root",
        "--name",
        "Another Root",
        "--home",
        str(tmp_path / "h2"),
        "--passphrase-file",
        str(h.root_pass),
    )
    _json(
        "create-intermediate",
        "--name",
        "Second Issuing",
        "--trust-domain",
        "acme.internal",
        *home,
        *secret,
        "--root-passphrase-file",
        str(h.root_pass),
    )
    issued = _json(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--permission",
        "p:r",
        "--issuer",
        "test-inter",
        "--out-dir",
        str(tmp_path / "a"),
        *home,
        *secret,
    )
    _json("issue", "server", "--dns", "x.acme.internal", "--issuer", "test-inter", *home, *secret)
    _json("issue", "agent", "--workflow", "wf", "--dry-run", "--issuer", "test-inter", *home)
    serial = issued["certificate"]["serial"]
    _json("inspect", str(tmp_path / "a" / "fullchain.pem"), *home)
    renewed = _json("renew", "--serial", serial, *home, *secret)
    _json("renew", "--serial", renewed["certificate"]["serial"], "--check", *home, expect=10)
    _json("revoke", "--serial", renewed["certificate"]["serial"], *home)
    _json("crl", "--issuer", "test-inter", *home, *secret)
    _json("list", *home)
    _json("audit", "verify", *home)
    _json(
        "audit-export",
        "--since",
        "2000-01-01",
        "--out",
        str(tmp_path / "bundle"),
        "--sign-with",
        "test-inter",
        *home,
        *secret,
    )
    _json("audit", "verify-export", str(tmp_path / "bundle"), "--trust-bundle-root")
    checkpoint = json.loads((tmp_path / "bundle" / "checkpoint.json").read_text())
    assert_valid(checkpoint)
    _json("profiles", "list", *home)
    _json("profiles", "show", "agent", *home)
    profile = tmp_path / "contract.toml"
    profile.write_text(
        'default_ttl = "1h"\nmin_ttl = "1m"\nmax_ttl = "2h"\nextended_key_usage = ["clientAuth"]\n'
    )
    _json("profiles", "set", str(profile), *home)
    _json("profiles", "show", "contract", *home)
    _json("profiles", "remove", "contract", *home)
    _json("config", "check", *home)
    _json("config", "claims-oid", *home)
    _json("config", "public-url", *home)
    _json("config", "restore", *home)
    _json(
        "issue",
        "agent",
        "--workflow",
        "wf",
        "--ttl",
        "9d",
        "--issuer",
        "test-inter",
        *home,
        *secret,
        expect=5,
    )
    usage = _json("issue", "agent", "--no-such-flag", *home, expect=2)
    assert usage["error"]["slug"] == "usage"


def test_batch_lines_match_their_schemas(contract_ca: Hierarchy, tmp_path: Path) -> None:
    """Issued lines and the summary here; a failed item's line (only a delivery failure
    after the commit produces one now) is checked in tests/e2e/test_batch_hardening.py."""
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"workflow": "a"}\n{"workflow": "b"}\n')
    args = ["issue", "agent", "--batch", str(batch), "--keep-going", "--json"]
    home = ["--issuer", "test-inter", "--home", str(contract_ca.home)]
    secret = ["--passphrase-file", str(contract_ca.inter_pass)]
    result = cli(*args, *home, *secret)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["schema"] for line in lines] == ["cyphrs.issue-batch-item/v1"] * 2 + [
        "cyphrs.issue-batch-summary/v1"
    ]
    for line in lines:
        assert_valid(line)
    batch.write_text('{"workflow": "a"}\n{"workflow": "b", "ttl": "99d"}\n')
    refused = cli(*args, *home, *secret)
    assert refused.exit_code == 5 and refused.stdout == ""
    assert_valid(json.loads(refused.stderr))
