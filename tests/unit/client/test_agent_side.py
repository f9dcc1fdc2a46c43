"""The agent side without a server: schedule, error mapping, answer checks, the swap
journal under kill -9 at every step, and the token rules of ``cyphrs enroll``."""

from __future__ import annotations

import itertools
import json
import os
import ssl
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from cyphrs_cli.ca.delivery import PemBundle
from cyphrs_cli.client import schedule
from cyphrs_cli.client.api import CaEndpoint, CaUnavailable, Issued, problem_error
from cyphrs_cli.client.credentials import KeyRequest, accept_issued, load_roots
from cyphrs_cli.client.files import COMPLETE, STAGE, SWAP_ORDER, install, recover
from cyphrs_cli.errors import (
    ConflictError,
    CyphrsError,
    ExitCode,
    InvalidInputError,
    NotFoundError,
    PolicyDenied,
    StorageError,
    UsageError,
)
from tests.helpers import Hierarchy, build_hierarchy, cli

T0 = datetime(2026, 12, 7, tzinfo=UTC)

# --- schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_renewal_time_is_two_thirds_plus_bounded_jitter(draw: float) -> None:
    end = T0 + timedelta(hours=3)
    at = schedule.renewal_at(T0, end, rng=lambda: draw)
    share = (at - T0) / (end - T0)
    assert 2 / 3 - 0.05 - 1e-9 <= share <= 2 / 3 + 0.05 + 1e-9
    assert schedule.renewal_at(T0, end, jitter=0, rng=lambda: draw) == T0 + timedelta(hours=2)


def test_renewal_time_never_before_issue_nor_after_ninety_percent() -> None:
    end = T0 + timedelta(hours=1)
    assert schedule.renewal_at(T0, end, fraction=0.01, jitter=0.4, rng=lambda: 0.0) == T0
    late = schedule.renewal_at(T0, end, fraction=0.85, jitter=0.4, rng=lambda: 0.99999)
    assert late <= T0 + timedelta(hours=1) * 0.9
    # Jitter spreads agents issued together.
    spread = {schedule.renewal_at(T0, end, rng=lambda d=d: d) for d in (0.1, 0.5, 0.9)}
    assert len(spread) == 3
    with pytest.raises(ValueError):
        schedule.renewal_at(T0, end, fraction=0)
    with pytest.raises(ValueError):
        schedule.renewal_at(T0, end, fraction=float("nan"))


def test_a_certificate_due_on_arrival_does_not_loop() -> None:
    # A 2-minute certificate backdated 60 s, with fraction 0.45: due before it arrives.
    arrived = T0
    nb, na = T0 - timedelta(seconds=60), T0 + timedelta(seconds=59)
    due = schedule.renewal_at(nb, na, fraction=0.45, jitter=0)
    assert due < arrived
    earliest = schedule.not_before_next(arrived, nb, na)
    assert earliest - arrived == (na - nb) / 10
    assert schedule.not_before_next(T0, T0, T0 + timedelta(seconds=2)) == T0 + timedelta(seconds=1)


def test_backoff_grows_is_capped_and_honours_retry_after_and_expiry() -> None:
    lows = [schedule.retry_delay(n, rng=lambda: 0.0) for n in range(1, 12)]
    highs = [schedule.retry_delay(n, rng=lambda: 1.0) for n in range(1, 12)]
    assert lows[0] == timedelta(seconds=1) and highs[0] == timedelta(seconds=2)
    assert all(a <= b for a, b in itertools.pairwise(highs))
    assert max(highs) == schedule.BACKOFF_CAP and min(lows[8:]) == schedule.BACKOFF_CAP / 2
    assert schedule.retry_delay(10**6, rng=lambda: 1.0) == schedule.BACKOFF_CAP
    assert schedule.retry_delay(1, retry_after=30, rng=lambda: 0) == timedelta(seconds=30)
    assert schedule.retry_delay(9, until_expiry=timedelta(seconds=3)) == timedelta(seconds=3)
    assert schedule.retry_delay(9, until_expiry=timedelta(seconds=-3)) == timedelta(0)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (CaUnavailable("no route"), True),
        (StorageError("disk full"), True),
        (CyphrsError("internal"), True),
        (PolicyDenied("revoked", rule="mtls.revoked"), False),
        (ConflictError("superseded"), False),
        (InvalidInputError("bad csr"), False),
        (NotFoundError("unknown"), False),
    ],
)
def test_which_errors_the_daemon_retries(error: CyphrsError, transient: bool) -> None:
    assert schedule.is_transient(error) is transient


# --- problem+json mapping ---------------------------------------------------------------


def problem(slug: str, code: int, status: int, **extra: object) -> bytes:
    return json.dumps(
        {
            "type": f"https://cyphrs.dev/problems/{slug}",
            "title": slug,
            "status": status,
            "detail": f"{slug} happened",
            "slug": slug,
            "exit_code": code,
            **extra,
        }
    ).encode()


@pytest.mark.parametrize(
    ("slug", "code", "status", "cls"),
    [
        ("policy-denied", 5, 403, PolicyDenied),
        ("conflict", 7, 409, ConflictError),
        ("invalid-input", 3, 400, InvalidInputError),
        ("usage", 2, 400, UsageError),
        ("not-found", 6, 404, NotFoundError),
        ("something-new", 7, 409, ConflictError),  # an unknown slug: its exit code decides
    ],
)
def test_problems_come_back_as_the_cli_error(
    slug: str, code: int, status: int, cls: type[CyphrsError]
) -> None:
    error = problem_error(status, "application/problem+json", problem(slug, code, status))
    assert type(error) is cls and error.exit_code == code
    assert error.message == f"{slug} happened"


def test_policy_rule_and_retry_after_travel() -> None:
    error = problem_error(
        403, "application/problem+json", problem("policy-denied", 5, 403, rule="token.used")
    )
    assert isinstance(error, PolicyDenied) and error.rule == "token.used"
    busy = problem_error(429, "application/problem+json", problem("rate", 8, 429), "7")
    assert isinstance(busy, CaUnavailable) and busy.retry_after == 7.0
    for status in (500, 502, 503):
        assert isinstance(problem_error(status, "text/html", b"<h1>oops</h1>"), CaUnavailable)
    # Not problem+json at all: the HTTP status alone decides; hostile Retry-After ignored.
    assert type(problem_error(403, "text/html", b"<h1>no</h1>")) is PolicyDenied
    assert problem_error(503, None, b"", "-5").retry_after is None  # type: ignore[attr-defined]
    weird = problem_error(418, "application/problem+json", b"[1, 2]")
    assert weird.exit_code == ExitCode.INTERNAL


@pytest.mark.parametrize(
    "url",
    [
        "http://ca:8443",
        "https://user:pw@ca:8443",
        "https://ca:99999",
        "ftp://ca",
        "https:///x",
        "https://ca:8443/?token=x",
    ],
)
def test_ca_url_must_be_plain_https(url: str) -> None:
    with pytest.raises(UsageError):
        CaEndpoint.parse(url)


def test_ca_url_parts() -> None:
    assert CaEndpoint.parse("https://ca.acme.internal") == CaEndpoint("ca.acme.internal", 443, "")
    assert CaEndpoint.parse("https://127.0.0.1:8443/pki/") == CaEndpoint("127.0.0.1", 8443, "/pki")


def test_client_refuses_an_unreachable_ca_quickly(tmp_path: Path, hierarchy: Hierarchy) -> None:
    import socket

    from cyphrs_cli.client.api import CaClient

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    client = CaClient(f"https://127.0.0.1:{port}", hierarchy.root_cert.read_bytes(), timeout=2)
    with pytest.raises(CaUnavailable, match="cannot reach"):
        client.roots()
    with pytest.raises(InvalidInputError):
        CaClient("https://127.0.0.1:1", b"not a certificate")


# --- the CA's answer is checked before anything is written --------------------------------


@pytest.fixture
def answered(
    hierarchy: Hierarchy, tmp_path: Path
) -> tuple[Issued, KeyRequest, list[x509.Certificate]]:
    """A genuine answer for a fresh key: issued by the test CA from our CSR."""
    keys = KeyRequest.generate("p256")
    (tmp_path / "req.csr").write_bytes(keys.csr_pem)
    done = hierarchy.issue(
        "agent",
        "--workflow",
        "payments-recon",
        "--csr",
        str(tmp_path / "req.csr"),
        "--out-dir",
        str(tmp_path / "issued"),
    )
    assert done.exit_code == 0, done.stderr
    out = tmp_path / "issued"
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    issued = Issued(
        schema="cyphrs.enroll/v1",
        serial=f"{cert.serial_number:x}",
        spiffe_id=str(san.get_values_for_type(x509.UniformResourceIdentifier)[0]),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint="sha256:" + "0" * 64,
        certificate=(out / "cert.pem").read_text(),
        chain=(out / "chain.pem").read_text(),
        ca=(out / "ca.pem").read_text(),
        replaces=None,
    )
    roots = load_roots(hierarchy.root_cert.read_bytes(), source="root")
    return issued, keys, roots


def test_a_genuine_answer_becomes_the_bundle(
    answered: tuple[Issued, KeyRequest, list[x509.Certificate]],
) -> None:
    issued, keys, roots = answered
    bundle = accept_issued(issued, keys, roots, spiffe_id=issued.spiffe_id)
    assert bundle.certificate == issued.certificate and bundle.private_key == keys.key_pem()


def test_hostile_answers_are_refused(
    answered: tuple[Issued, KeyRequest, list[x509.Certificate]], tmp_path: Path
) -> None:
    issued, keys, roots = answered
    stranger = build_hierarchy(tmp_path / "stranger")
    stranger_root = stranger.root_cert.read_text()
    cases = {
        "another key": (replace(issued), KeyRequest.generate("p256"), None),
        "another root": (replace(issued, ca=stranger_root), keys, None),
        "a broken chain": (replace(issued, chain=stranger.inter_cert.read_text()), keys, None),
        "no chain": (replace(issued, chain=""), keys, None),
        "another identity": (replace(issued), keys, "spiffe://acme.internal/agent/other/1"),
        "garbage": (replace(issued, certificate="-----BEGIN CERTIFICATE-----\nAA\n"), keys, None),
    }
    for what, (answer, request, spiffe) in cases.items():
        with pytest.raises(CaUnavailable, match="refused"):
            accept_issued(answer, request, roots, spiffe_id=spiffe)
            pytest.fail(what)
    with pytest.raises(CaUnavailable, match="not valid now"):
        accept_issued(issued, keys, roots, now=datetime.now(UTC) + timedelta(days=2))


def test_malformed_answer_documents_are_refused() -> None:
    good = {
        "schema": "cyphrs.enroll/v1",
        "serial": "0a",
        "spiffe_id": None,
        "not_before": "2026-12-07T00:00:00Z",
        "not_after": "2026-12-07T04:00:00Z",
        "fingerprint": "sha256:00",
        "certificate": "x",
        "chain": "",
        "ca": "y",
        "replaces": None,
    }
    assert Issued.from_json(good).not_after == datetime(2026, 12, 7, 4, tzinfo=UTC)
    for broken in (
        [],
        {**good, "certificate": 5},
        {**good, "not_after": "yesterday"},
        {**good, "not_after": "2026-12-07T04:00:00"},  # no zone
        {k: v for k, v in good.items() if k != "ca"},
    ):
        with pytest.raises(CaUnavailable, match="malformed"):
            Issued.from_json(broken)


# --- the swap journal, killed at every step ---------------------------------------------


def bundle_from(directory: Path) -> PemBundle:
    return PemBundle(
        certificate=(directory / "cert.pem").read_text(),
        chain=(directory / "chain.pem").read_text(),
        root=(directory / "ca.pem").read_text(),
        private_key=(directory / "key.pem").read_text(),
    )


def pair_matches(directory: Path) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(directory / "fullchain.pem", directory / "key.pem")
        cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
        full = x509.load_pem_x509_certificates((directory / "fullchain.pem").read_bytes())[0]
    except ssl.SSLError:
        return False
    return cert == full


@pytest.fixture
def old_and_new(hierarchy: Hierarchy, tmp_path: Path) -> tuple[Path, PemBundle, PemBundle]:
    agent = tmp_path / "agent"
    done = hierarchy.issue("agent", "--workflow", "payments-recon", "--out-dir", str(agent))
    assert done.exit_code == 0, done.stderr
    done = cli(
        "renew",
        str(agent / "cert.pem"),
        "--out-dir",
        str(tmp_path / "next"),
        "--home",
        str(hierarchy.home),
        "--passphrase-file",
        str(hierarchy.inter_pass),
    )
    assert done.exit_code == 0, done.stderr
    return agent, bundle_from(agent), bundle_from(tmp_path / "next")


SWAP_SCRIPT = """
import sys
from pathlib import Path
from cyphrs_cli.ca.delivery import PemBundle
from cyphrs_cli.client.files import install
d = Path(sys.argv[1]); n = Path(sys.argv[2])
install(d, PemBundle(*(p.read_text() for p in (n / "cert.pem", n / "chain.pem", n / "ca.pem",
        n / "key.pem"))))
"""


@pytest.mark.parametrize("fault", ["agent-stage", *(f"agent-swap@{i}" for i in range(5))])
def test_killed_swap_is_finished_or_undone_never_mismatched(
    fault: str, old_and_new: tuple[Path, PemBundle, PemBundle], tmp_path: Path
) -> None:
    agent, old, new = old_and_new
    nxt = tmp_path / "next"
    done = subprocess.run(
        [sys.executable, "-c", SWAP_SCRIPT, str(agent), str(nxt)],
        env={**os.environ, "CYPHRS_TEST_FAULT": fault},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 86, done.stderr
    died_mid_rename = fault.startswith("agent-swap") and int(fault[-1]) < SWAP_ORDER.index(
        "cert.pem"
    )
    if died_mid_rename and SWAP_ORDER.index("key.pem") <= int(fault[-1]):
        assert not pair_matches(agent)  # the very state recovery exists for
    rolled = recover(agent)
    assert rolled is fault.startswith("agent-swap")
    assert not (agent / STAGE).exists()
    assert pair_matches(agent)
    expected = new if rolled else old
    assert bundle_from(agent) == expected
    assert oct((agent / "key.pem").stat().st_mode & 0o777) == "0o600"


def test_stage_without_marker_is_discarded_and_a_planted_link_refused(
    old_and_new: tuple[Path, PemBundle, PemBundle], tmp_path: Path
) -> None:
    agent, old, new = old_and_new
    (agent / STAGE).mkdir()
    (agent / STAGE / "cert.pem").write_text(new.certificate)  # no COMPLETE marker
    assert recover(agent) is False and bundle_from(agent) == old
    os.symlink(tmp_path, agent / STAGE)
    with pytest.raises(InvalidInputError):
        recover(agent)
    os.unlink(agent / STAGE)
    install(agent, new)
    assert bundle_from(agent) == new and not (agent / STAGE / COMPLETE).exists()


# --- enroll's token rules (refused before any network) ------------------------------------


def enroll(*args: str, env: dict[str, str] | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    return cli(
        "enroll",
        "--ca-url",
        "https://127.0.0.1:9",
        "--root",
        "/nonexistent",
        "--out-dir",
        "/tmp/never",
        *args,
        env=env,
        input=input,
    )


def test_a_token_on_argv_is_refused() -> None:
    done = enroll("--token", "cyphrs_tok_" + "A" * 43, "--json")
    assert done.exit_code == 2
    assert "command line" in json.loads(done.stderr)["error"]["hint"]
    assert "A" * 43 not in done.stderr


def test_token_sources_exclude_each_other_and_must_be_text(tmp_path: Path) -> None:
    token_file = tmp_path / "t"
    token_file.write_text("cyphrs_tok_x\n")
    assert enroll("--token", "-", "--token-file", str(token_file)).exit_code == 2
    assert enroll("--jwt-file", str(token_file), "--token-file", str(token_file)).exit_code == 2
    assert enroll().exit_code == 2  # none at all
    token_file.write_text("two\nlines\n")
    assert enroll("--token-file", str(token_file)).exit_code == 3
    assert enroll("--token", "-", input="").exit_code == 3


# --- reload hooks ----------------------------------------------------------------------

WAIT_FOR_SIGNAL = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def test_hooks_signal_a_process_by_pid_and_by_pid_file(tmp_path: Path) -> None:
    from cyphrs_cli.client.agent import ReloadHooks
    from cyphrs_cli.client.files import AgentDir

    issued = Issued("cyphrs.agent-renew/v1", "0a", None, T0, T0, "sha256:00", "", "", "", None)
    for by_file in (False, True):
        child = subprocess.Popen(
            [sys.executable, "-c", WAIT_FOR_SIGNAL], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            pid_file = tmp_path / "svc.pid"
            pid_file.write_text(f"{child.pid}\n")
            hooks = (
                ReloadHooks(signal_spec="USR1", pid_file=pid_file)
                if by_file
                else ReloadHooks(signal_spec=f"{child.pid}:SIGUSR1")
            )
            hooks.check()
            assert hooks.run(AgentDir(tmp_path), issued) == []
            assert child.wait(10) == 42
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    marker = tmp_path / "ran"
    hooks = ReloadHooks(exec_command=f'echo "$CYPHRS_SERIAL $CYPHRS_CERT_DIR" > {marker}; exit 3')
    assert hooks.run(AgentDir(tmp_path), issued) == ["--exec hook exited 3"]
    assert marker.read_text() == f"0a {tmp_path}\n"


@pytest.mark.parametrize(
    ("spec", "pid_file"),
    [("NOPE", "f"), ("1:HUP", None), ("abc:HUP", None), ("HUP", None), ("9:HUP", "f"), (None, "f")],
)
def test_malformed_hooks_are_refused_before_the_daemon_starts(
    spec: str | None, pid_file: str | None
) -> None:
    from cyphrs_cli.client.agent import ReloadHooks

    with pytest.raises(UsageError):
        ReloadHooks(signal_spec=spec, pid_file=Path(pid_file) if pid_file else None).check()
