"""A renewal whose answer never reaches the agent, against a real ``cyphrs serve``.

The CA records a renewal (the old certificate is superseded) before it answers. If the
answer is lost -- the agent is killed, its disk is full, the connection drops, or the
CA dies between its commit and its reply -- a fresh key could never renew the superseded
certificate again. The agent keeps the renewal's key (``.cyphrs-renewal-key.pem``) until
the answer is installed, and the CA answers the same key again with the certificate it
recorded (``certificate.redelivered``), issuing nothing new. These tests lose the answer
for real (a process killed at the fault point) and try to abuse the second answer.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cyphrs_cli.ca.issuance import DELAY_ENV, FAULT_ENV
from cyphrs_cli.client.files import PENDING_KEY
from tests.csr_builders import csr_with_foreign_key
from tests.e2e.test_agent_online import create_token, enroll, issue_agent, renew, serial_of
from tests.e2e.test_enospc import _fill as fill
from tests.e2e.test_enospc import small_tmpfs  # noqa: F401 - a fixture
from tests.helpers import Hierarchy, cli, openssl_verify, tool
from tests.server_process import ServerProcess, start_server, wait_until


@pytest.fixture
def ca(fresh_hierarchy: Hierarchy) -> Iterator[ServerProcess]:
    server = start_server(fresh_hierarchy.home, fresh_hierarchy.inter_pass)
    try:
        yield server
    finally:
        server.stop()


def _rows(h: Hierarchy, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        return conn.execute(sql, args).fetchall()


def _successors(h: Hierarchy, serial: str) -> list[str]:
    return [
        str(r[0])
        for r in _rows(
            h,
            "SELECT n.serial FROM certificates n JOIN certificates o ON n.replaces_id = o.id"
            " WHERE o.serial = ?",
            serial,
        )
    ]


def _redelivered(h: Hierarchy) -> list[dict[str, object]]:
    return [
        json.loads(str(r[0]))
        for r in _rows(h, "SELECT details FROM events WHERE type = 'certificate.redelivered'")
    ]


def _count(h: Hierarchy) -> int:
    return int(str(_rows(h, "SELECT count(*) FROM certificates")[0][0]))


def _audit_ok(h: Hierarchy) -> None:
    verified = cli("audit", "verify", "--json", "--home", str(h.home))
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def _lose_the_answer(ca: ServerProcess, h: Hierarchy, agent: Path) -> tuple[str, str]:
    """Renew with the agent killed right after the CA's answer arrived: (old, recorded)."""
    old = serial_of(agent)
    killed = renew(ca.url, agent, env={FAULT_ENV: "agent-answer"})
    assert killed.returncode == 86, killed.stderr
    assert serial_of(agent) == old  # nothing installed
    (recorded,) = _successors(h, old)
    return old, recorded


def test_a_renewal_answer_lost_after_the_ca_recorded_it_is_answered_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    old, recorded = _lose_the_answer(ca, h, agent)
    kept = agent / PENDING_KEY
    assert kept.stat().st_mode & 0o777 == 0o600
    kept_pem = kept.read_bytes()
    rows = _count(h)

    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    # The certificate the CA recorded, not a new one; the kept key now installed.
    assert answer["serial"] == recorded == serial_of(agent)
    assert answer["replaces"] == old
    assert _count(h) == rows
    assert (agent / "key.pem").read_bytes() == kept_pem
    assert not kept.exists()
    verified = openssl_verify(agent / "ca.pem", agent / "chain.pem", agent / "cert.pem", "sslclient")
    assert verified.returncode == 0, verified.stderr
    key = serialization.load_pem_private_key((agent / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((agent / "cert.pem").read_bytes())
    assert key.public_key() == cert.public_key()
    (event,) = _redelivered(h)
    assert event["serial"] == recorded and event["presented_serial"] == old
    _audit_ok(h)

    # And the agent goes on as before: the next renewal makes and sends a new key.
    again = renew(ca.url, agent)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["replaces"] == recorded
    assert (agent / "key.pem").read_bytes() != kept_pem
    assert _successors(h, recorded) == [serial_of(agent)]


def test_the_ca_killed_between_its_commit_and_its_answer_loses_nothing(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The other side: the CA process is SIGKILLed after the commit, before it answers
    (held there by a test delay): a reset connection for the agent, exit 8. Once the CA
    is back, the agent gets the certificate that was recorded."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    old = serial_of(agent)
    with start_server(h.home, h.inter_pass, env={DELAY_ENV: "after-record=3"}) as held:
        client = subprocess.Popen(
            [tool("cyphrs"), "renew", "--ca-url", held.url, str(agent), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert wait_until(lambda: _successors(h, old), 30)
            held.kill()
            _out, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    assert client.returncode == 8, err
    (recorded,) = _successors(h, old)
    assert serial_of(agent) == old and (agent / PENDING_KEY).exists()
    with start_server(h.home, h.inter_pass) as back:
        done = renew(back.url, agent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["serial"] == recorded == serial_of(agent)
    _audit_ok(h)


def test_only_the_holder_of_the_recorded_key_gets_the_answer_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Someone holding the superseded certificate and its key (a stolen copy) but not the
    successor's key: a fresh key, or a CSR that carries the successor's public key under
    another key's signature, is refused as before (already renewed), and nothing is
    handed out or recorded."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    stolen = tmp_path / "stolen"
    shutil.copytree(agent, stolen)
    _old, recorded = _lose_the_answer(ca, h, agent)
    (stolen / PENDING_KEY).unlink(missing_ok=True)

    fresh = renew(ca.url, stolen)
    assert fresh.returncode == 7, fresh.stderr
    assert "already renewed" in json.loads(fresh.stderr)["error"]["message"]

    successor_key = x509.load_pem_x509_certificate(
        _rows(h, "SELECT pem FROM certificates WHERE serial = ?", recorded)[0][0].encode()  # type: ignore[union-attr]
    ).public_key()
    forged = csr_with_foreign_key(successor_key, ec.generate_private_key(ec.SECP256R1()))
    code, answer = _renew_with_csr(ca, stolen, forged)
    assert code == 409 and "already renewed" in json.loads(answer)["detail"], answer
    assert _redelivered(h) == []
    assert (stolen / "cert.pem").read_bytes() == (agent / "cert.pem").read_bytes()


def _renew_with_csr(ca: ServerProcess, directory: Path, csr_pem: bytes) -> tuple[int, str]:
    """POST /v1/renew with ``csr_pem`` over mTLS as ``directory``'s certificate (curl):
    the HTTP status and the body."""
    body_file = directory / "answer.json"
    done = subprocess.run(
        [
            "curl", "-sS", "--cacert", str(directory / "ca.pem"),
            "--cert", str(directory / "fullchain.pem"), "--key", str(directory / "key.pem"),
            "-H", "Content-Type: application/json",
            "--data-binary", json.dumps({"csr": csr_pem.decode()}),
            "-o", str(body_file), "-w", "%{http_code}", f"{ca.url}/v1/renew",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout), body_file.read_text()


def test_a_revoked_successor_is_not_handed_out_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    _old, recorded = _lose_the_answer(ca, h, agent)
    assert cli("revoke", "--serial", recorded, "--home", str(h.home)).exit_code == 0
    done = renew(ca.url, agent)
    assert done.returncode == 7, done.stderr
    assert _redelivered(h) == []


def test_a_kept_key_already_installed_is_not_sent_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The swap finished but the process died before forgetting the kept key: the next
    renewal must not ask for a certificate for the key it replaces."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    installed = (agent / "key.pem").read_bytes()
    (agent / PENDING_KEY).write_bytes(installed)
    (agent / PENDING_KEY).chmod(0o600)
    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr
    assert (agent / "key.pem").read_bytes() != installed
    assert not (agent / PENDING_KEY).exists()
    assert _redelivered(h) == []


def test_enrolling_a_directory_again_forgets_its_kept_key(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    _lose_the_answer(ca, h, agent)
    assert (agent / PENDING_KEY).exists()
    token = create_token(h, "payments-recon")
    done = enroll(ca.url, agent / "ca.pem", agent, "--force", token=token)
    assert done.returncode == 0, done.stderr
    assert not (agent / PENDING_KEY).exists()


def test_a_key_the_ca_refuses_is_not_kept_for_the_next_attempt(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A kept key the CA refused outright (a key type its profile does not allow) made
    every later renewal send it again and be refused again, whatever --key-type said."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    refused = renew(ca.url, agent, "--key-type", "rsa2048")
    assert refused.returncode == 5, refused.stderr
    assert json.loads(refused.stderr)["error"]["rule"] == "agent.key_types"
    assert not (agent / PENDING_KEY).exists()
    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr


def test_a_retry_asking_for_a_longer_ttl_is_refused_as_a_renewal_would_be(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a", "--ttl", "4h")
    _lose_the_answer(ca, h, agent)
    longer = renew(ca.url, agent, "--ttl", "30d")
    assert longer.returncode == 5, longer.stderr
    assert json.loads(longer.stderr)["error"]["rule"] == "renew.ttl"
    assert _redelivered(h) == []


def test_a_successor_renewed_in_turn_is_not_handed_out_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Whoever holds the successor's key renewed it meanwhile: the successor is no longer
    the current certificate and is not answered again (exit 7), and the retry's key,
    refused outright, is forgotten."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    _old, recorded = _lose_the_answer(ca, h, agent)
    holder = tmp_path / "holder"
    shutil.copytree(agent, holder)
    pem = str(_rows(h, "SELECT pem FROM certificates WHERE serial = ?", recorded)[0][0])
    (holder / "cert.pem").write_text(pem)
    (holder / "fullchain.pem").write_text(pem + (holder / "chain.pem").read_text())
    os.replace(holder / PENDING_KEY, holder / "key.pem")
    assert renew(ca.url, holder).returncode == 0
    done = renew(ca.url, agent)
    assert done.returncode == 7, done.stderr
    assert _redelivered(h) == [] and not (agent / PENDING_KEY).exists()


def test_the_timeline_says_what_a_redelivery_was(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    old, recorded = _lose_the_answer(ca, h, agent)
    assert renew(ca.url, agent).returncode == 0
    shown = cli("timeline", "--serial", recorded, "--since", "2000-01-01", "--json",
                "--home", str(h.home))  # fmt: skip
    assert shown.exit_code == 0, shown.stderr
    summaries = [e["summary"] for e in shown.json()["events"]]
    assert any(f"answered again to the holder of {old}" in s for s in summaries), summaries


@pytest.mark.parametrize("what", ["directory", "fifo", "symlink", "huge"])
def test_something_else_at_the_kept_keys_name_is_refused_with_one_line(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path, what: str
) -> None:
    """Only the directory's owner can put it there: a clear exit 3 naming the file, never
    a hang (a FIFO), a link followed, a file read whole, or an internal error."""
    agent = issue_agent(fresh_hierarchy, tmp_path / "a")
    kept = agent / PENDING_KEY
    if what == "directory":
        kept.mkdir()
    elif what == "fifo":
        os.mkfifo(kept, 0o600)
    elif what == "symlink":
        (tmp_path / "elsewhere.pem").write_text("x")
        kept.symlink_to(tmp_path / "elsewhere.pem")
    else:
        with kept.open("wb") as huge:
            huge.truncate(1 << 30)  # sparse
        kept.chmod(0o600)
    before = (agent / "cert.pem").read_bytes()
    done = renew(ca.url, agent)
    assert done.returncode == 3, done.stderr
    error = json.loads(done.stderr)["error"]
    assert PENDING_KEY in error["message"] and "remove it by hand" in error["message"]
    assert (agent / "cert.pem").read_bytes() == before


@pytest.mark.parametrize(
    "what", ["garbage", "encrypted", "brainpool", "sm2", "readable by others"]
)
def test_a_kept_key_that_cannot_or_should_not_be_used_is_replaced(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path, what: str
) -> None:
    agent = issue_agent(fresh_hierarchy, tmp_path / "a")
    kept = agent / PENDING_KEY
    other = ec.generate_private_key(ec.SECP256R1())
    pem = {
        "garbage": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "encrypted": other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        # Not a type the agent makes: P-256 on another curve, and one cryptography
        # cannot even load (UnsupportedAlgorithm).
        "brainpool": ec.generate_private_key(ec.BrainpoolP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "sm2": subprocess.run(
            ["openssl", "genpkey", "-algorithm", "SM2"], capture_output=True, check=True
        ).stdout,
        "readable by others": other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }[what]
    kept.write_bytes(pem)
    kept.chmod(0o644 if what == "readable by others" else 0o600)
    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr
    installed = serialization.load_pem_private_key((agent / "key.pem").read_bytes(), None)
    assert installed.public_key() != other.public_key()
    assert not kept.exists()


def test_a_full_disk_after_the_ca_recorded_the_renewal_loses_nothing(
    ca: ServerProcess,
    fresh_hierarchy: Hierarchy,
    small_tmpfs: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The agent's directory on a real tmpfs that fills up while the answer is on its way
    (the agent held at the answer by a test delay): staging fails with exit 8, and once
    there is room again the agent gets the certificate the CA recorded."""
    h = fresh_hierarchy
    agent = small_tmpfs / "a"
    shutil.copytree(issue_agent(h, tmp_path / "a"), agent)
    old = serial_of(agent)
    renewer = subprocess.Popen(
        [tool("cyphrs"), "renew", "--ca-url", ca.url, str(agent), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true", DELAY_ENV: "agent-answer=3"},
    )
    try:
        assert wait_until(lambda: _successors(h, old), 30)
        fill(small_tmpfs, 0)
        _out, err = renewer.communicate(timeout=60)
    finally:
        if renewer.poll() is None:
            renewer.kill()
            renewer.wait(10)
    assert renewer.returncode == 8, err
    assert b"No space left" in err and serial_of(agent) == old
    (small_tmpfs / "filler").unlink()
    done = renew(ca.url, agent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["serial"] == _successors(h, old)[0] == serial_of(agent)


def test_a_revocation_between_the_first_look_and_the_answer_wins(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The successor is revoked while the CA is between deciding to answer again and
    recording it (held there by a test delay): the decision is taken again under the
    writer lock, so the revoked certificate is not handed out."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    with start_server(h.home, h.inter_pass) as first:
        _old, recorded = _lose_the_answer(first, h, agent)
    with start_server(h.home, h.inter_pass, env={DELAY_ENV: "answer-again=3"}) as held:
        retry = subprocess.Popen(
            [tool("cyphrs"), "renew", "--ca-url", held.url, str(agent), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CI": "true"},
        )
        try:
            assert wait_until(lambda: _sleeping(held.pid), 30), "never held at the delay"
            assert cli("revoke", "--serial", recorded, "--home", str(h.home)).exit_code == 0
            _out, err = retry.communicate(timeout=60)
        finally:
            if retry.poll() is None:
                retry.kill()
                retry.wait(10)
    assert retry.returncode == 7, err
    assert _redelivered(h) == []


def _sleeping(pid: int) -> bool:
    """Whether a thread of ``pid`` sleeps in ``clock_nanosleep``/``nanosleep`` (x86-64
    numbers 230, 35): the test delay; an idle server waits in epoll and futexes only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            number = (task / "syscall").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if number in ("230", "35"):
            return True
    return False


def test_an_expired_successor_is_not_handed_out_again(
    ca: ServerProcess, fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The lost renewal asked for 63 s, of which 2 s are left after the backdate: by the
    retry it has expired, and is not answered again (exit 7)."""
    h = fresh_hierarchy
    agent = issue_agent(h, tmp_path / "a")
    old = serial_of(agent)
    killed = renew(ca.url, agent, "--ttl", "63s", env={FAULT_ENV: "agent-answer"})
    assert killed.returncode == 86, killed.stderr
    (recorded,) = _successors(h, old)
    not_after = str(_rows(h, "SELECT not_after FROM certificates WHERE serial = ?", recorded)[0][0])
    assert wait_until(
        lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") > not_after, 10
    )
    done = renew(ca.url, agent)
    assert done.returncode == 7, done.stderr
    assert _redelivered(h) == []
