"""``cyphrs token`` and ``cyphrs provisioner``: exit codes, the stdout/stderr split, every
``--json`` document against its schema, and the promise that a token's secret is printed
once and never stored or listed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cyphrs_cli.service.enrollment import EnrollRequest
from tests.cli.test_json_contract import assert_valid
from tests.enrollment_helpers import make_csr
from tests.helpers import Hierarchy, cli


def _run(hierarchy: Hierarchy, *args: str, expect: int = 0) -> Any:
    done = cli(*args, "--home", str(hierarchy.home))
    assert done.exit_code == expect, (done.stdout, done.stderr)
    return done


def test_token_create_list_revoke_json(fresh_hierarchy: Hierarchy) -> None:
    created = _run(
        fresh_hierarchy,
        "token", "create", "--workflow", "payments-recon", "--permission", "ledger:read",
        "--uses", "2", "--ttl", "10m", "--max-ttl", "1h", "--json",
    ).json()  # fmt: skip
    assert_valid(created)
    assert created["uses_allowed"] == 2 and created["max_ttl_seconds"] == 3600
    secret = created["token"]
    listed = _run(fresh_hierarchy, "token", "list", "--json")
    assert_valid(listed.json())
    assert [t["token_id"] for t in listed.json()["tokens"]] == [created["token_id"]]
    assert secret not in listed.stdout and secret.removeprefix("cyphrs_tok_") not in listed.stdout
    # The token enrolls on the use-case API (what the server calls).
    with fresh_hierarchy.authority() as ca:
        ca.enroll(EnrollRequest(csr_pem=make_csr()[0], token=secret))
    revoked = _run(fresh_hierarchy, "token", "revoke", created["token_id"], "--json").json()
    assert_valid(revoked)
    assert revoked["status"] == "revoked" and revoked["uses"] == 1
    assert _run(fresh_hierarchy, "token", "list", "--json").json()["tokens"] == []
    every = _run(fresh_hierarchy, "token", "list", "--all", "--json").json()
    assert_valid(every)
    assert [t["status"] for t in every["tokens"]] == ["revoked"]
    again = _run(fresh_hierarchy, "token", "revoke", created["token_id"], "--json", expect=7)
    assert json.loads(again.stderr)["error"]["slug"] == "conflict"
    _run(fresh_hierarchy, "token", "revoke", "tok_0000000000000000", expect=6)


def test_token_create_human_output_prints_only_the_secret_on_stdout(
    fresh_hierarchy: Hierarchy,
) -> None:
    done = _run(fresh_hierarchy, "token", "create", "--workflow", "w")
    assert done.stdout.startswith("cyphrs_tok_") and done.stdout.count("\n") == 1
    assert "stored only as a hash" in done.stderr
    with sqlite3.connect(fresh_hierarchy.home / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT * FROM tokens").fetchall()
        events = conn.execute("SELECT details FROM events").fetchall()
    assert done.stdout.strip() not in repr(rows) + repr(events)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--workflow", "w", "--uses", "0"), 2),
        (("--workflow", "w", "--ttl", "40d"), 2),
        (("--workflow", "w", "--ttl", "soon"), 3),
        (("--workflow", "bad/name"), 3),
        (("--workflow", "w", "--profile", "nope"), 6),
        (("--workflow", "w", "--max-ttl", "30d"), 5),
        ((), 2),
    ],
)
def test_token_create_refusals(hierarchy: Hierarchy, args: tuple[str, ...], code: int) -> None:
    done = _run(hierarchy, "token", "create", *args, "--json", expect=code)
    assert done.stdout == ""


def test_provisioner_add_list_remove_json(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    args = (
        "provisioner", "add", "ci", "--jwt-issuer", "https://ci.example", "--audience", "cyphrs",
        "--jwks-file", str(jwks), "--workflow-claim", "job", "--algorithm", "ES256",
        "--require-claim", "project=acme/payments", "--max-ttl", "1h",
    )  # fmt: skip
    added = _run(fresh_hierarchy, *args, "--json").json()
    assert_valid(added)
    assert added["changed"] is True and added["required_claims"] == {"project": "acme/payments"}
    assert _run(fresh_hierarchy, *args, "--json").json()["changed"] is False
    _run(fresh_hierarchy, *args[:-2], "--max-ttl", "2h", expect=7)  # exists: needs --replace
    listed = _run(fresh_hierarchy, "provisioner", "list", "--json").json()
    assert_valid(listed)
    assert [p["name"] for p in listed["provisioners"]] == ["ci"]
    removed = _run(fresh_hierarchy, "provisioner", "remove", "ci", "--json").json()
    assert_valid(removed)
    _run(fresh_hierarchy, "provisioner", "remove", "ci", expect=6)
    bad = (*args[:3], "--jwt-issuer", "x", "--audience", "y", "--jwks-file", str(jwks))
    _run(fresh_hierarchy, *bad, "--workflow", "w", "--algorithm", "HS256", expect=2)
    _run(fresh_hierarchy, *bad, "--workflow", "w", "--require-claim", "novalue", expect=2)
    jwks.write_text("{not json")
    _run(fresh_hierarchy, *bad, "--workflow", "w", expect=3)
