"""Profiles and policy from TOML: refusals name their rule and are audited; --dry-run explains."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cyphrs_cli.errors import ExitCode
from tests.helpers import INTER_PASS, Hierarchy, build_hierarchy, cli, openssl_verify

PAYMENTS = """
description = "Payments agents only"
extended_key_usage = ["clientAuth"]
default_ttl = "1h"
min_ttl = "5m"
max_ttl = "2h"
key_types = ["p256"]
issuers = ["test-inter"]
[names]
spiffe = "required"
trust_domains = ["acme.internal"]
spiffe_path_patterns = ["/agent/payments-*/*"]
"""
WEB = """
description = "Internal web servers"
extended_key_usage = ["serverAuth"]
default_ttl = "12h"
min_ttl = "1m"
max_ttl = "1d"
key_types = ["p256", "rsa3072"]
key_usage = ["digitalSignature", "keyEncipherment"]
[names]
dns = "optional"
ip = "optional"
require_one_of = ["dns", "ip"]
dns_patterns = ["*.acme.internal"]
ip_ranges = ["10.0.0.0/8"]
"""


@pytest.fixture(scope="module")
def policy_ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    h = build_hierarchy(tmp_path_factory.mktemp("policy"))
    for name, text in (("payments", PAYMENTS), ("internal-web", WEB)):
        source = h.home.parent / f"{name}.toml"
        source.write_text(text)
        recorded = cli("profiles", "set", str(source), "--home", str(h.home))
        assert recorded.exit_code == 0, recorded.stderr
    return h


CASES = [
    (
        "outside trust domain",
        "payments",
        ["--spiffe-id", "spiffe://evil.example/agent/payments-recon/1"],
        ["--spiffe-id", "spiffe://acme.internal/agent/payments-recon/1"],
        "payments.names.trust_domains",
    ),
    (
        "path pattern",
        "payments",
        ["--spiffe-id", "spiffe://acme.internal/agent/hr-sync/1"],
        ["--spiffe-id", "spiffe://acme.internal/agent/payments-sync/1"],
        "payments.names.spiffe_path_patterns",
    ),
    (
        "over max TTL",
        "payments",
        ["--workflow", "payments-recon", "--ttl", "3h"],
        ["--workflow", "payments-recon", "--ttl", "2h"],
        "payments.max_ttl",
    ),
    (
        "disallowed key type",
        "payments",
        ["--workflow", "payments-recon", "--key-type", "p384"],
        ["--workflow", "payments-recon", "--key-type", "p256"],
        "payments.key_types",
    ),
    (
        "DNS pattern",
        "internal-web",
        ["--dns", "www.example.com"],
        ["--dns", "www.acme.internal"],
        "internal-web.names.dns_patterns",
    ),
    (
        "IP range",
        "internal-web",
        ["--ip", "192.168.1.10"],
        ["--ip", "10.1.2.3"],
        "internal-web.names.ip_ranges",
    ),
]


@pytest.mark.parametrize(
    ("case", "profile", "denied", "allowed", "rule"), CASES, ids=[c[0] for c in CASES]
)
def test_refusal_names_the_rule_and_is_audited(
    policy_ca: Hierarchy,
    tmp_path: Path,
    case: str,
    profile: str,
    denied: list[str],
    allowed: list[str],
    rule: str,
) -> None:
    h = policy_ca
    home = ("--home", str(h.home))
    result = cli("issue", profile, *denied, "--json", "--passphrase-file", str(h.inter_pass), *home)
    assert result.exit_code == ExitCode.POLICY_DENIED, result.stderr
    error = json.loads(result.stderr)["error"]
    assert error["rule"] == rule and f"(rule {rule})" in error["message"]
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        event = conn.execute(
            "SELECT outcome, details FROM events WHERE type = 'policy.denied'"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert event[0] == "denied" and json.loads(event[1])["rule"] == rule
    # The dry run refuses the same way, without recording, and explains the allowed variant.
    events_before = _events(h)
    refused = cli("issue", profile, *denied, "--dry-run", "--json", *home)
    assert refused.exit_code == ExitCode.POLICY_DENIED and _events(h) == events_before
    explained = cli("issue", profile, *allowed, "--dry-run", "--json", *home)
    assert explained.exit_code == 0, explained.stderr
    doc = explained.json()
    assert doc["allowed"] is True and doc["would_issue"]["profile"] == profile
    assert any(r.startswith(f"{rule}: ") for r in doc["allowed_by"]), doc["allowed_by"]
    issued = cli(
        "issue", profile, *allowed, "--json", "--passphrase-file", str(h.inter_pass), *home
    )
    assert issued.exit_code == 0, issued.stderr


def _events(h: Hierarchy) -> int:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def test_profile_key_usage_follows_the_key(policy_ca: Hierarchy) -> None:
    h = policy_ca
    common = (
        "--dns",
        "a.acme.internal",
        "--json",
        "--passphrase-file",
        str(h.inter_pass),
        "--home",
        str(h.home),
    )
    for key_type, encipher in (("rsa3072", True), ("p256", False)):
        result = cli("issue", "internal-web", "--key-type", key_type, *common)
        cert = x509.load_pem_x509_certificate(
            result.json()["certificate"]["pem"]["certificate"].encode()
        )
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment is encipher


def test_profiles_list_and_show(policy_ca: Hierarchy) -> None:
    listing = cli("profiles", "list", "--json", "--home", str(policy_ca.home)).json()
    names = {p["name"]: p for p in listing["profiles"]}
    assert set(names) == {"admin", "agent", "client", "ocsp-responder", "server", "payments", "internal-web"}
    assert (
        names["payments"]["source"].endswith("payments.toml")
        and names["agent"]["source"] == "builtin"
    )
    shown = cli("profiles", "show", "payments", "--json", "--home", str(policy_ca.home)).json()
    assert shown["profile"]["max_ttl_seconds"] == 7200
    bad = policy_ca.home / "profiles" / "broken.toml"
    bad.write_text(
        'default_ttl = "1h"\nmin_ttl = "2h"\nmax_ttl = "3h"\nextended_key_usage = ["clientAuth"]\n'
    )
    try:
        result = cli("profiles", "list", "--home", str(policy_ca.home))
        assert result.exit_code == ExitCode.INVALID_INPUT and "broken" in result.stderr
    finally:
        bad.unlink()


@pytest.fixture(scope="module")
def constrained(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(
        tmp_path_factory.mktemp("nc"), extra=("--name-constraints", "--permit-dns", "acme.internal")
    )


def test_name_constraints_refused_by_policy(constrained: Hierarchy) -> None:
    h = constrained
    result = h.issue("server", "--dns", "api.evil.example", "--json")
    assert result.exit_code == ExitCode.POLICY_DENIED
    assert json.loads(result.stderr)["error"]["rule"] == "test-inter.name_constraints"
    ok = h.issue("server", "--dns", "api.acme.internal", "--json")
    assert ok.exit_code == 0


def _forge(h: Hierarchy, tmp_path: Path, name: x509.GeneralName) -> Path:
    """Sign past our own policy, with the intermediate's key, to ask openssl directly."""
    inter = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    key = serialization.load_pem_private_key(
        (h.home / "keys" / "test-inter.key.pem").read_bytes(), INTER_PASS.encode()
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = inter.not_valid_before_utc
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(inter.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(inter.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(inter.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = tmp_path / "forged.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("api.evil.example"),
        x509.UniformResourceIdentifier("spiffe://evil.example/agent/x/1"),
    ],
    ids=["dns", "spiffe"],
)
def test_name_constraints_enforced_by_openssl(
    constrained: Hierarchy, tmp_path: Path, name: x509.GeneralName
) -> None:
    forged = _forge(constrained, tmp_path, name)
    proc = openssl_verify(constrained.root_cert, constrained.inter_cert, forged, "any")
    assert proc.returncode != 0
    assert "error 47 at 0 depth" in proc.stdout + proc.stderr  # permitted subtree violation


def test_constrained_issuance_passes_openssl(constrained: Hierarchy, tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert constrained.issue("agent", "--workflow", "wf", "--out-dir", str(out)).exit_code == 0
    proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inter = x509.load_pem_x509_certificate(constrained.inter_cert.read_bytes())
    nc = inter.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert set(nc.value.permitted_subtrees or []) == {
        x509.UniformResourceIdentifier("acme.internal"),
        x509.DNSName("acme.internal"),
    }


def test_no_prompt_without_a_terminal(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """stdin is not a TTY and CI is unset: a clear error at once, never a hang."""
    import os

    from tests.helpers import tool

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CYPHRS_PASSPHRASE_FILE")}
    proc = subprocess.run(
        [
            tool("cyphrs"),
            "issue",
            "agent",
            "--workflow",
            "w",
            "--json",
            "--home",
            str(fresh_hierarchy.home),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == ExitCode.USAGE
    error = json.loads(proc.stderr)["error"]
    assert "no terminal to ask on" in error["message"] and "--passphrase-file" in error["hint"]
