"""Issue 8, class 2 and the profile part of class 14: the files of a CA home are caches of
the ledger. Each test tampers with one file the way an attacker (or a careless edit) would
and drives the real ``cyphrs`` in a subprocess: nothing may be signed or handed out, the
exit code is 8 and stderr is one line naming the file."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, run_cyphrs


def _run(h: Hierarchy, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = run_cyphrs(*args, "--home", str(h.home), env={"CI": "true", **(env or {})})
    return proc.returncode, proc.stderr.decode()


def _issue(h: Hierarchy, out: Path, *extra: str) -> tuple[int, str]:
    return _run(
        h, "issue", "agent", "--workflow", "wf", "--passphrase-file", str(h.inter_pass),
        "--out-dir", str(out), *extra,
    )  # fmt: skip


def _assert_refused(code: int, stderr: str, names: str) -> None:
    assert code == ExitCode.STORAGE, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], stderr


def _impostor_root(subject_cn: str) -> bytes:
    """Another self-signed CA with the very same subject: only the fingerprint tells."""
    return _impostor_root_and_key(subject_cn)[0].public_bytes(serialization.Encoding.PEM)


def _impostor_root_and_key(
    subject_cn: str,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _cert_count(h: Hierarchy) -> int:
    return h.ledger_rows("certificates")


def _edit_config(h: Hierarchy, old: str, new: str) -> None:
    path = h.home / "config.toml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def test_untouched_home_checks_clean(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    code, err = _run(fresh_hierarchy, "config", "check")
    assert code == 0, err
    code, err = _issue(fresh_hierarchy, tmp_path / "a")
    assert code == 0, err


def test_swapped_root_file_refuses_every_signing_path(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    code, err = _issue(h, tmp_path / "before")
    assert code == 0, err
    genuine = h.root_cert.read_bytes()
    h.root_cert.write_bytes(_impostor_root("Test Root CA"))
    before = _cert_count(h)
    inter, root = str(h.inter_pass), str(h.root_pass)
    attempts = [
        ("issue", "agent", "-w", "wf", "--passphrase-file", inter, "--out-dir", str(tmp_path / "x")),
        ("issue", "agent", "-w", "wf", "--dry-run"),
        ("renew", str(tmp_path / "before" / "cert.pem"), "--passphrase-file", inter,
         "--out-dir", str(tmp_path / "r")),
        ("crl", "--passphrase-file", inter),
        ("crl", "--issuer", "test-root", "--passphrase-file", root),
        ("audit", "checkpoint", "--passphrase-file", inter),
        ("audit-export", "--since", "2020-01-01", "--out", str(tmp_path / "bundle"),
         "--passphrase-file", inter),
        ("create-intermediate", "--name", "Other CA", "--passphrase-file", inter,
         "--root-passphrase-file", root),
        ("config", "check"),
    ]  # fmt: skip
    for args in attempts:
        code, err = _run(h, *args)
        _assert_refused(code, err, "certs/test-root.pem differs")
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"workflow": "wf", "name": "one"}) + "\n")
    code, err = _run(
        h, "issue", "agent", "--batch", str(batch), "--out-dir", str(tmp_path / "batch"),
        "--passphrase-file", inter,
    )  # fmt: skip
    assert code == ExitCode.STORAGE and "certs/test-root.pem differs" in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()
    assert not (tmp_path / "batch" / "one" / "ca.pem").exists()
    assert _cert_count(h) == before
    h.root_cert.write_bytes(genuine)  # restoring the cache restores service
    code, err = _issue(h, tmp_path / "after")
    assert code == 0, err
    assert (tmp_path / "after" / "ca.pem").read_bytes() == genuine


def test_swapped_intermediate_file_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    code, err = _run(
        h, "create-intermediate", "--name", "Second CA", "--alias", "second",
        "--trust-domain", "acme.internal", "--passphrase-file", str(h.inter_pass),
        "--root-passphrase-file", str(h.root_pass),
    )  # fmt: skip
    assert code == 0, err
    # A genuine certificate of this very hierarchy, just not test-inter's.
    h.inter_cert.write_bytes((h.home / "certs" / "second.pem").read_bytes())
    code, err = _issue(h, tmp_path / "x", "--issuer", "test-inter")
    _assert_refused(code, err, "certs/test-inter.pem differs")
    assert not (tmp_path / "x").exists()


def test_edited_trust_domain_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    before = _cert_count(h)
    _edit_config(h, 'trust_domain = "acme.internal"', 'trust_domain = "evil.example"')
    for extra in ((), ("--dry-run",)):
        args = ("issue", "agent", "-w", "wf", "--passphrase-file", str(h.inter_pass))
        code, err = _run(h, *args, *(extra or ("--out-dir", str(tmp_path / "x"))))
        _assert_refused(code, err, "config.toml: authority 'test-inter' trust_domain")
    assert _cert_count(h) == before and not (tmp_path / "x").exists()
    # Dropping the line is an edit too: the ledger still says acme.internal.
    _edit_config(h, 'trust_domain = "evil.example"\n', "")
    code, err = _issue(h, tmp_path / "y")
    _assert_refused(code, err, "trust_domain")


def test_edited_key_uri_and_role_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    _edit_config(h, "file:keys/test-inter.key.pem", "file:keys/test-root.key.pem")
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "authority 'test-inter' key is")
    _edit_config(h, "file:keys/test-root.key.pem", "file:keys/test-inter.key.pem")
    _edit_config(h, 'parent = "test-root"', 'parent = "test-inter"')
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "parent")


def test_repointed_to_revoked_intermediate_refused(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The old attack: revoke test-inter, create a fresh one, then point the fresh one's
    config entry at the revoked CA's certificate and key: the revoked CA signs again."""
    h = fresh_hierarchy
    code, err = _run(h, "revoke", str(h.inter_cert), "--reason", "key-compromise")
    assert code == 0, err
    code, err = _run(
        h, "create-intermediate", "--name", "Fresh CA", "--alias", "fresh",
        "--trust-domain", "acme.internal", "--passphrase-file", str(h.root_pass),
        "--root-passphrase-file", str(h.root_pass),
    )  # fmt: skip
    assert code == 0, err
    code, err = _issue(h, tmp_path / "revoked", "--issuer", "test-inter")
    assert code == ExitCode.POLICY_DENIED, err
    _edit_config(h, 'cert = "certs/fresh.pem"', 'cert = "certs/test-inter.pem"')
    _edit_config(h, 'key = "file:keys/fresh.key.pem"', 'key = "file:keys/test-inter.key.pem"')
    before = _cert_count(h)
    code, err = _issue(h, tmp_path / "x", "--issuer", "fresh")
    assert code == ExitCode.STORAGE, err
    assert "config.toml: authority 'fresh' key" in err and len(err.strip().splitlines()) == 1
    # Only the cert path repointed (key left alone): the fingerprint check names the file.
    _edit_config(h, 'key = "file:keys/test-inter.key.pem"', 'key = "file:keys/fresh.key.pem"')
    code, err = _issue(h, tmp_path / "x", "--issuer", "fresh")
    _assert_refused(code, err, "certs/test-inter.pem differs from the certificate the ledger")
    assert _cert_count(h) == before and not (tmp_path / "x").exists()


def test_authority_missing_from_ledger_or_config(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    config = (h.home / "config.toml").read_text()
    (h.home / "config.toml").write_text(
        config.replace("[authorities.test-inter]", "[authorities.ghost]").replace(
            'default_issuer = "test-inter"', 'default_issuer = "ghost"'
        )
    )
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "names authority 'ghost', which the ledger does not record")


PROFILE = """\
description = "payments agents"
extended_key_usage = ["clientAuth"]
default_ttl = "1h"
min_ttl = "1m"
max_ttl = "2h"
key_types = ["p256"]

[names]
spiffe = "required"
"""

FOREIGN_AGENT = """\
description = "agent, quietly widened"
extended_key_usage = ["clientAuth", "serverAuth"]
default_ttl = "1000d"
min_ttl = "1m"
max_ttl = "1000d"
key_types = ["p256"]

[names]
spiffe = "required"
trust_domains = ["evil.example"]
"""


def _events(h: Hierarchy, kind: str) -> list[dict[str, object]]:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT details FROM events WHERE type = ? ORDER BY seq", (kind,))
        return [json.loads(d) for (d,) in rows]


def test_unrecorded_override_of_builtin_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    (h.home / "profiles").mkdir(mode=0o700)
    (h.home / "profiles" / "agent.toml").write_text(FOREIGN_AGENT)
    before = _cert_count(h)
    for extra in (("--out-dir", str(tmp_path / "x")), ("--dry-run",)):
        code, err = _run(
            h, "issue", "agent", "--spiffe-id", "spiffe://evil.example/agent/x/y",
            "--ttl", "900d", "--passphrase-file", str(h.inter_pass), *extra,
        )  # fmt: skip
        _assert_refused(code, err, "profiles/agent.toml is not recorded in the ledger")
    assert _cert_count(h) == before
    source = tmp_path / "agent.toml"
    source.write_text(FOREIGN_AGENT)
    code, err = _run(h, "profiles", "set", str(source))
    assert code == ExitCode.USAGE and "--override-builtin" in err, err
    code, err = _run(h, "profiles", "set", str(source), "--override-builtin")
    assert code == 0, err
    recorded = _events(h, "profile.set")[-1]
    assert recorded["name"] == "agent" and recorded["overrides_builtin"] is True
    assert recorded["text"] == FOREIGN_AGENT
    proc = run_cyphrs("profiles", "show", "agent", "--json", "--home", str(h.home))
    shown = json.loads(proc.stdout)
    assert shown["profile"]["overrides_builtin"] is True
    assert shown["ledger"]["recorded"]["sha256"] == recorded["sha256"] == shown["profile"]["sha256"]
    assert shown["ledger"]["matches"] is True and shown["ledger"]["recorded"]["recorded_by"]
    # Recorded, the override is in force and visible: each issuance names its text's hash.
    foreign = ("issue", "agent", "--spiffe-id", "spiffe://evil.example/agent/x/y", "--ttl", "900d")
    code, err = _run(
        h, *foreign, "--passphrase-file", str(h.inter_pass), "--out-dir", str(tmp_path / "ok")
    )
    assert code == 0, err
    issued = _events(h, "certificate.issued")[-1]
    assert issued["profile_sha256"] == recorded["sha256"]
    # Withdrawn with a recorded command, the built-in applies again (24 h max).
    code, err = _run(h, "profiles", "remove", "agent")
    assert code == 0, err
    code, err = _run(
        h, *foreign, "--passphrase-file", str(h.inter_pass), "--out-dir", str(tmp_path / "ok2")
    )
    assert code == ExitCode.POLICY_DENIED, err
    # Deleting the file by hand instead is a mismatch with the ledger.
    code, err = _run(h, "profiles", "set", str(source), "--override-builtin")
    assert code == 0, err
    (h.home / "profiles" / "agent.toml").unlink()
    code, err = _issue(h, tmp_path / "ok3")
    _assert_refused(code, err, "profiles/agent.toml is missing but the ledger records it")


def test_profile_edited_after_recording_refused(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    source = tmp_path / "payments.toml"
    source.write_text(PROFILE)
    code, err = _run(h, "profiles", "set", str(source))
    assert code == 0, err
    args = ("issue", "payments", "-w", "pay", "--passphrase-file", str(h.inter_pass))
    code, err = _run(h, *args, "--out-dir", str(tmp_path / "a"))
    assert code == 0, err
    installed = h.home / "profiles" / "payments.toml"
    installed.write_text(PROFILE.replace('max_ttl = "2h"', 'max_ttl = "1000d"'))
    before = _cert_count(h)
    code, err = _run(h, *args, "--ttl", "900d", "--out-dir", str(tmp_path / "b"))
    _assert_refused(
        code, err, "profiles/payments.toml differs from the profile recorded in the ledger"
    )
    assert "cyphrs profiles set" in err
    # A batch is checked as a whole before its first item: the agent item is not issued.
    batch = tmp_path / "b.jsonl"
    batch.write_text(
        json.dumps({"profile": "agent", "workflow": "wf", "name": "first"})
        + "\n"
        + json.dumps({"profile": "payments", "workflow": "pay", "name": "second"})
        + "\n"
    )
    code, err = _run(
        h, "issue", "--batch", str(batch), "--out-dir", str(tmp_path / "batch"),
        "--passphrase-file", str(h.inter_pass),
    )  # fmt: skip
    assert code == ExitCode.STORAGE and "profiles/payments.toml differs" in err, err
    assert not (tmp_path / "batch" / "first").exists()
    # Every cache must match before any signature, CRLs included.
    code, err = _run(h, "crl", "--passphrase-file", str(h.inter_pass))
    _assert_refused(code, err, "profiles/payments.toml differs")
    # renew signs under the profile too
    code, err = _run(
        h, "renew", str(tmp_path / "a" / "cert.pem"), "--passphrase-file", str(h.inter_pass),
        "--out-dir", str(tmp_path / "c"),
    )  # fmt: skip
    _assert_refused(code, err, "profiles/payments.toml differs")
    assert _cert_count(h) == before
    code, err = _run(h, "config", "check")
    _assert_refused(code, err, "profiles/payments.toml differs")


def test_claims_oid_recorded_and_enforced(tmp_path: Path) -> None:
    from tests.helpers import INTER_PASS, ROOT_PASS

    home = tmp_path / "home"
    (tmp_path / "r").write_text(ROOT_PASS)
    (tmp_path / "i").write_text(INTER_PASS)
    env = {"CI": "true"}
    bad = run_cyphrs(
        "init-root", "--name", "R", "--home", str(home), "--passphrase-file",
        str(tmp_path / "r"), "--claims-oid", "2.5.29.99", env=env,
    )  # fmt: skip
    assert bad.returncode == ExitCode.INVALID_INPUT and not home.exists(), bad.stderr
    oid = "1.3.6.1.4.1.99999.7.1"
    for args in (
        ("init-root", "--name", "R", "--passphrase-file", str(tmp_path / "r"), "--claims-oid", oid),
        ("create-intermediate", "--name", "I", "--trust-domain", "acme.internal",
         "--passphrase-file", str(tmp_path / "i"), "--root-passphrase-file", str(tmp_path / "r")),
        ("issue", "agent", "-w", "wf", "-p", "ledger:read", "--passphrase-file",
         str(tmp_path / "i"), "--out-dir", str(tmp_path / "a")),
    ):  # fmt: skip
        proc = run_cyphrs(*args, "--home", str(home), env=env)
        assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "a" / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    shown = json.loads(
        run_cyphrs(
            "inspect", str(tmp_path / "a" / "cert.pem"), "--json", "--home", str(home)
        ).stdout
    )
    assert shown["objects"][0]["agent_claims"]["permissions"] == ["ledger:read"]
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (details,) = conn.execute(
            "SELECT details FROM events WHERE type = 'home.claims_oid_set'"
        ).fetchone()
    assert json.loads(details)["oid"] == oid
    # Editing config.toml is not how the OID changes.
    config = home / "config.toml"
    config.write_text(config.read_text().replace(oid, "1.3.6.1.4.1.99999.7.2"))
    proc = run_cyphrs(
        "issue", "agent", "-w", "wf", "--passphrase-file", str(tmp_path / "i"),
        "--out-dir", str(tmp_path / "b"), "--home", str(home), env=env,
    )  # fmt: skip
    assert proc.returncode == ExitCode.STORAGE and b"claims_oid" in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()
    for wrong in ("1.3.6.1.4.1.99999", "1.2.3.", "2.25.1234", "1.3.6.1.5.5.7.1.99", "3.1"):
        proc = run_cyphrs("config", "claims-oid", wrong, "--home", str(home), env=env)
        assert proc.returncode == ExitCode.INVALID_INPUT, (wrong, proc.stderr)
    proc = run_cyphrs("config", "claims-oid", "1.3.6.1.4.1.99999.7.2", "--home", str(home), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cyphrs(
        "issue", "agent", "-w", "wf", "--passphrase-file", str(tmp_path / "i"),
        "--out-dir", str(tmp_path / "b"), "--home", str(home), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "b" / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7.2"))


@pytest.mark.parametrize(
    ("target", "mode"),
    [("", 0o777), ("", 0o770), ("config.toml", 0o666), ("certs", 0o777), ("profiles", 0o757)],
)
def test_writable_home_refused_unless_allowed(
    fresh_hierarchy: Hierarchy, tmp_path: Path, target: str, mode: int
) -> None:
    h = fresh_hierarchy
    path = h.home / target if target else h.home
    path.mkdir(exist_ok=True) if target == "profiles" else None
    path.chmod(mode)
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "group/world-writable")
    assert not (tmp_path / "x").exists()
    code, err = _run(h, "--allow-insecure-home", "list")
    code, err = _run(
        h, "issue", "agent", "-w", "wf", "--passphrase-file", str(h.inter_pass),
        "--out-dir", str(tmp_path / "y"), env={"CYPHRS_ALLOW_INSECURE_HOME": "1"},
    )  # fmt: skip
    assert code == 0 and "warning: insecure CA home" in err, err
    proc = run_cyphrs(
        "--allow-insecure-home", "issue", "agent", "-w", "wf", "--passphrase-file",
        str(h.inter_pass), "--out-dir", str(tmp_path / "z"), "--home", str(h.home),
        env={"CI": "true"},
    )  # fmt: skip
    assert proc.returncode == 0 and b"warning: insecure CA home" in proc.stderr, proc.stderr


def test_new_home_is_private_and_existing_open_dir_refused(tmp_path: Path) -> None:
    from tests.helpers import ROOT_PASS

    (tmp_path / "r").write_text(ROOT_PASS)
    args = ("init-root", "--name", "R", "--passphrase-file", str(tmp_path / "r"))
    home = tmp_path / "home"
    proc = run_cyphrs(*args, "--home", str(home), env={"CI": "true"})
    assert proc.returncode == 0, proc.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    for name in ("config.toml", "ledger.sqlite3"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    for name in ("-wal", "-shm"):
        wal = home / f"ledger.sqlite3{name}"
        if wal.exists():
            assert wal.stat().st_mode & 0o077 == 0, name
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = run_cyphrs(*args, "--home", str(shared), env={"CI": "true"})
    assert proc.returncode == ExitCode.STORAGE and b"group/world-writable" in proc.stderr
    assert list(shared.iterdir()) == []
    readable = tmp_path / "readable"
    readable.mkdir()
    readable.chmod(0o755)
    proc = run_cyphrs(*args, "--home", str(readable), env={"CI": "true"})
    assert proc.returncode == 0, proc.stderr
    assert readable.stat().st_mode & 0o777 == 0o700
    # A profile name must be a whole-string match: no newline smuggled into a file name.
    source = tmp_path / "p.toml"
    source.write_text(PROFILE)
    proc = run_cyphrs(
        "profiles", "set", str(source), "--name", "ok\n", "--home", str(readable),
        env={"CI": "true"},
    )  # fmt: skip
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert not (readable / "profiles").exists() or list((readable / "profiles").iterdir()) == []


def test_restore_rewrites_the_caches_from_the_ledger(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    genuine_root, genuine_config = h.root_cert.read_bytes(), (h.home / "config.toml").read_text()
    source = tmp_path / "payments.toml"
    source.write_text(PROFILE)
    assert _run(h, "profiles", "set", str(source))[0] == 0
    h.root_cert.write_bytes(_impostor_root("Test Root CA"))
    h.inter_cert.unlink()
    _edit_config(h, 'trust_domain = "acme.internal"', 'trust_domain = "evil.example"')
    (h.home / "profiles" / "payments.toml").write_text(PROFILE.replace("2h", "1000d"))
    code, err = _run(h, "config", "check")
    assert code == ExitCode.STORAGE, err
    proc = run_cyphrs("config", "restore", "--json", "--home", str(h.home), env={"CI": "true"})
    assert proc.returncode == 0, proc.stderr
    rewritten = json.loads(proc.stdout)["rewritten"]
    assert set(rewritten) >= {
        "certs/test-root.pem",
        "certs/test-inter.pem",
        "config.toml [authorities.test-inter]",
        "profiles/payments.toml",
    }
    assert h.root_cert.read_bytes() == genuine_root
    assert (h.home / "profiles" / "payments.toml").read_text() == PROFILE
    assert 'trust_domain = "acme.internal"' in (h.home / "config.toml").read_text()
    assert (h.home / "config.toml").read_text() == genuine_config
    assert _events(h, "home.restored")[-1]["rewritten"] == rewritten
    code, err = _run(h, "config", "check")
    assert code == 0, err
    code, err = _issue(h, tmp_path / "ok")
    assert code == 0, err


def test_inspect_judges_chains_by_the_ledger_not_certs(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A leaf from an impostor root whose certificate replaced certs/test-root.pem must not
    be reported as chaining to this home."""
    h = fresh_hierarchy
    root, key = _impostor_root_and_key("Test Root CA")
    name, now = root.subject, datetime.now(UTC)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    h.root_cert.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    proc = run_cyphrs("inspect", str(tmp_path / "leaf.pem"), "--json", "--home", str(h.home))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["objects"][0]["chains_to_home_root"] is False


def test_ledger_certificate_row_must_match_its_creation_event(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Swapping the file *and* the certificate row (pem + fingerprint) still leaves the
    hash-chained authority.created event naming the genuine fingerprint."""
    h = fresh_hierarchy
    impostor = _impostor_root("Test Root CA")
    cert = x509.load_pem_x509_certificate(impostor)
    fp = "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute(
            "UPDATE certificates SET pem = ?, fingerprint = ? WHERE id ="
            " (SELECT certificate_id FROM authorities WHERE name = 'test-root')",
            (impostor.decode(), fp),
        )
    h.root_cert.write_bytes(impostor)
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "the ledger's certificate of 'test-root' does not match")
    assert not (tmp_path / "x").exists()


def test_edited_trust_events_are_exit_8_not_a_crash(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    source = tmp_path / "payments.toml"
    source.write_text(PROFILE)
    assert _run(h, "profiles", "set", str(source))[0] == 0
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE events SET details = 'not json' WHERE type = 'authority.created'")
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "creation event of")
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE events SET details = '[1]' WHERE type = 'profile.set'")
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "details are not what cyphrs wrote")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a file to another uid")
def test_home_file_owned_by_another_user_refused(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    os.chown(h.home / "certs", 12345, 12345)
    code, err = _issue(h, tmp_path / "x")
    _assert_refused(code, err, "is owned by uid 12345")
    assert not (tmp_path / "x").exists()


def test_sign_intermediate_refuses_a_swapped_root(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    from tests.helpers import openssl_csr

    h = fresh_hierarchy
    _, csr = openssl_csr(tmp_path, "/CN=Offline Agents CA")
    h.root_cert.write_bytes(_impostor_root("Test Root CA"))
    code, err = _run(
        h, "sign-intermediate", str(csr), "--out", str(tmp_path / "signed.pem"),
        "--passphrase-file", str(h.root_pass),
    )  # fmt: skip
    _assert_refused(code, err, "certs/test-root.pem differs")
    assert not (tmp_path / "signed.pem").exists()
