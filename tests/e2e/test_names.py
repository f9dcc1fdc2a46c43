"""Issue 8, class 9 and limits: hostile names, one valid certificate per agent instance,
size limits and key strength, driven through the real CLI (in-process and as processes).

Every refusal here happened before on today's code: a newline reached the URI SAN, a
root SPIFFE ID was certified, one instance held several valid certificates (also when
several processes raced), and CSRs with e = 3 were signed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.helpers import Hierarchy, cli, run_cyphrs, tool


def _issue(h: Hierarchy, out: Path, *args: str) -> tuple[int, str]:
    done = cli(
        "issue",
        *args,
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--out-dir",
        str(out),
    )
    return done.exit_code, done.stderr


def _valid_rows(h: Hierarchy, spiffe_id: str) -> int:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE spiffe_id = ? AND status = 'valid'",
            (spiffe_id,),
        ).fetchone()
    return int(count)


@pytest.mark.parametrize(
    "args",
    [
        ("agent", "--spiffe-id", "spiffe://acme.internal/agent/x/1\n"),
        ("agent", "--spiffe-id", "spiffe://acme.internal"),  # X509-SVID 3.1: no root ID
        ("agent", "--spiffe-id", "spiffe://acme.internal/"),
        ("agent", "--spiffe-id", "spiffe://user@acme.internal/x"),
        ("agent", "--spiffe-id", "spiffe://acme.internal:443/x"),
        ("agent", "--spiffe-id", "spiffe://acme.internal/a%2Fb"),
        ("agent", "--spiffe-id", "SPIFFE://acme.internal/x"),
        ("agent", "--workflow", "recon\n"),
        ("agent", "--workflow", "recon", "--instance", "a1\n"),
        ("agent", "--workflow", "recon", "--permission", "ledger:read\n"),
        ("agent", "--workflow", "recon", "--permission", "x\x1b]0;pwned\x07"),
        ("agent", "--workflow", "recon", "--requester", "ci\r\nforged: yes"),
        ("agent", "--workflow", "recon", "--requester", "r" * 129),
        ("agent", "--workflow", "recon", "--permission", "p" * 129),
        ("agent", "--workflow", "recon", *[a for i in range(65) for a in ("-p", f"p{i}")]),
        ("client", "--cn", "ci\ndeployer"),
        ("client", "--cn", "ci\u202edeployer"),
        ("client", "--cn", "c" * 65),
        ("server", "--dns", "api.acme.internal\n"),
        ("server", *[a for i in range(101) for a in ("--dns", f"h{i}.acme.internal")]),
    ],
)
def test_hostile_names_and_oversized_fields_exit_3(
    fresh_hierarchy: Hierarchy, tmp_path: Path, args: tuple[str, ...]
) -> None:
    before = fresh_hierarchy.ledger_rows()
    code, err = _issue(fresh_hierarchy, tmp_path / "out", *args)
    assert code == 3, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert fresh_hierarchy.ledger_rows() == before
    assert not (tmp_path / "out" / "cert.pem").exists()


def test_default_requester_from_the_environment_is_checked(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The requester default (a CI user variable) lands in the claims: same rules."""
    h = fresh_hierarchy
    done = run_cyphrs(
        "issue",
        "agent",
        "--workflow",
        "recon",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--out-dir",
        str(tmp_path / "out"),
        env={"CYPHRS_ACTOR": "", "GITHUB_ACTOR": "bot\nforged-line"},
    )
    assert done.returncode == 3, done.stderr
    assert b"requester 'ci:bot" in done.stderr
    assert h.ledger_rows() == 1 + 1  # root and intermediate only


def test_limits_are_inclusive(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """100 SANs, a 64-character CN and 64 permissions of 128 characters are fine."""
    dns = [a for i in range(100) for a in ("--dns", f"h{i}.acme.internal")]
    assert _issue(fresh_hierarchy, tmp_path / "a", "server", *dns, "--cn", "c" * 64)[0] == 0
    perms = [a for i in range(64) for a in ("-p", f"{i:03d}" + "p" * 125)]
    code, err = _issue(fresh_hierarchy, tmp_path / "b", "agent", "--workflow", "w", *perms)
    assert code == 0, err


def test_one_valid_certificate_per_instance(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    spiffe_id = "spiffe://acme.internal/agent/recon/a1"
    agent = ("agent", "--workflow", "recon", "--instance", "a1")
    assert _issue(h, tmp_path / "1", *agent)[0] == 0
    # A second certificate for the same instance, or the same ID spelt explicitly: 7.
    code, err = _issue(h, tmp_path / "2", *agent)
    assert code == 7 and "already has a valid certificate" in err, err
    code, err = _issue(h, tmp_path / "3", "agent", "--spiffe-id", spiffe_id)
    assert code == 7, err
    assert _valid_rows(h, spiffe_id) == 1
    assert not (tmp_path / "2").exists()
    # Asked for explicitly, a duplicate is allowed.
    assert _issue(h, tmp_path / "4", *agent, "--allow-duplicate")[0] == 0
    assert _valid_rows(h, spiffe_id) == 2


def test_renew_revoke_and_expiry_free_the_instance(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    spiffe_id = "spiffe://acme.internal/agent/recon/b1"
    agent = ("agent", "--workflow", "recon", "--instance", "b1")
    assert _issue(h, tmp_path / "1", *agent)[0] == 0
    # renew supersedes its predecessor: still one valid certificate.
    done = cli(
        "renew",
        str(tmp_path / "1" / "cert.pem"),
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--out-dir",
        str(tmp_path / "2"),
    )
    assert done.exit_code == 0, done.stderr
    assert _valid_rows(h, spiffe_id) == 1
    # Revoked: the instance may be issued again.
    done = cli("revoke", str(tmp_path / "2" / "cert.pem"), "--home", str(h.home))
    assert done.exit_code == 0, done.stderr
    assert _issue(h, tmp_path / "3", *agent)[0] == 0
    # Expired (not_after in the past) no longer counts as valid.
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute(
            "UPDATE certificates SET not_after = '2000-01-01T00:00:00Z'"
            " WHERE spiffe_id = ? AND status = 'valid'",
            (spiffe_id,),
        )
    assert _issue(h, tmp_path / "4", *agent)[0] == 0
    assert _issue(h, tmp_path / "5", *agent)[0] == 7


def test_renewal_drops_the_old_default_cn(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """A certificate with the pre-issue-8 default CN (``workflow/instance``, or the IP of an
    IP-only certificate) renews into today's default: an empty subject."""
    h = fresh_hierarchy
    for name, args in (
        ("agent", ("agent", "--workflow", "recon", "--instance", "c1", "--cn", "recon/c1")),
        ("ip", ("server", "--ip", "10.0.0.9", "--cn", "10.0.0.9")),
    ):
        assert _issue(h, tmp_path / name, *args)[0] == 0
        done = cli(
            "renew",
            str(tmp_path / name / "cert.pem"),
            "--home",
            str(h.home),
            "--passphrase-file",
            str(h.inter_pass),
            "--out-dir",
            str(tmp_path / f"{name}-renewed"),
        )
        assert done.exit_code == 0, done.stderr
        renewed = x509.load_pem_x509_certificate(
            (tmp_path / f"{name}-renewed" / "cert.pem").read_bytes()
        )
        assert renewed.subject == x509.Name([])
        assert renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_concurrent_issues_for_one_instance_have_one_winner(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Real processes; each sleeps after signing (past the early check) so all of them
    reach the recording transaction: only the check under the write lock can decide."""
    h = fresh_hierarchy
    spiffe_id = "spiffe://acme.internal/agent/recon/race"
    for attempt in range(2):
        procs = [
            subprocess.Popen(
                [
                    tool("cyphrs"),
                    "issue",
                    "agent",
                    "--workflow",
                    "recon",
                    "--instance",
                    "race",
                    "--home",
                    str(h.home),
                    "--passphrase-file",
                    str(h.inter_pass),
                    "--json",
                ],
                env={
                    **os.environ,
                    "CYPHRS_TEST_DELAY": "after-sign=1.5",
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(5)
        ]
        results = [(p.wait(timeout=120), p.stdout, p.stderr) for p in procs]
        codes = sorted(code for code, _, _ in results)
        expected = [0, 7, 7, 7, 7] if attempt == 0 else [7, 7, 7, 7, 7]
        assert codes == expected, [e.read() if e else b"" for _, _, e in results]
        assert _valid_rows(h, spiffe_id) == 1
        for code, out, _ in results:
            if code == 0:
                assert out is not None
                assert json.loads(out.read())["certificate"]["spiffe_id"] == spiffe_id


def _csr(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "req.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_csr_with_weak_rsa_exponent_is_denied(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """e = 3 is allowed by the server profile's key types (rsa2048) but never by cyphrs."""
    weak = rsa.generate_private_key(public_exponent=3, key_size=2048)
    before = fresh_hierarchy.ledger_rows()
    code, err = _issue(
        fresh_hierarchy,
        tmp_path / "out",
        "server",
        "--dns",
        "api.acme.internal",
        "--csr",
        str(_csr(tmp_path, weak)),
    )
    assert code == 5 and "(rule limits.rsa_exponent)" in err, err
    assert fresh_hierarchy.ledger_rows() == before
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    code, err = _issue(
        fresh_hierarchy,
        tmp_path / "ok",
        "server",
        "--dns",
        "api.acme.internal",
        "--csr",
        str(_csr(tmp_path, strong)),
    )
    assert code == 0, err
