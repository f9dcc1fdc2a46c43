"""The agent side without a server: schedule, error mapping, answer checks, the swap
journal under kill -9 at every step, and the token rules of ``cyphrs enroll``."""

from __future__ import annotations

import itertools
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cyphrs_cli.ca.delivery import PemBundle
from cyphrs_cli.client import schedule
from cyphrs_cli.client.agent import DaemonSettings, RenewRequest
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
    # Also when the fraction itself asks for later (a review found 1.0 renewing at expiry).
    for fraction, jitter in ((1.0, 0.0), (0.95, 0.0), (1.0, 0.5)):
        at = schedule.renewal_at(T0, end, fraction=fraction, jitter=jitter, rng=lambda: 0.99999)
        assert at == T0 + timedelta(hours=1) * 0.9
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
    for hostile in ("nan", "inf", "soon", "Mon, 99 Foo 2026 00:00:00 GMT"):
        assert problem_error(503, None, b"", hostile).retry_after is None  # type: ignore[attr-defined]
    # Over an hour: an hour, not ignored (a CA asking for two hours was retried in 2 s);
    # the HTTP-date form counts too.
    assert problem_error(503, None, b"", "7200").retry_after == 3600  # type: ignore[attr-defined]
    later = (datetime.now(UTC) + timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    waited = problem_error(503, None, b"", later).retry_after  # type: ignore[attr-defined]
    assert 100 <= waited <= 120
    past = "Mon, 01 Jan 2024 00:00:00 GMT"
    assert problem_error(503, None, b"", past).retry_after == 0  # type: ignore[attr-defined]
    # A status nothing maps, from the CA or a proxy before it: the CA is unusable to us
    # (exit 8, tried again by a daemon), never exit 1, which is for this program's bugs.
    for status in (301, 302, 405, 418, 421, 422, 451):
        weird = problem_error(status, "application/problem+json", b"[1, 2]")
        assert isinstance(weird, CaUnavailable) and weird.exit_code == ExitCode.STORAGE
    # JSON nested past the interpreter's stack is no document, not a crash.
    deep = problem_error(503, "application/problem+json", b"[" * 200_000)
    assert isinstance(deep, CaUnavailable)


def test_an_answer_with_a_time_out_of_range_is_malformed_not_a_crash() -> None:
    from cyphrs_cli.client.api import Issued

    document = {
        "schema": "cyphrs.enroll/v1",
        "serial": "01",
        "not_before": "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: OverflowError
        "not_after": "9999-12-31T23:59:59-01:00",
        "fingerprint": "00",
        "certificate": "x",
        "ca": "x",
    }
    with pytest.raises(CaUnavailable, match="bad time"):
        Issued.from_json(document)


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


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("trickle", "did not answer within 3 s"), ("short", "was cut short")],
)
def test_a_ca_answer_that_trickles_or_stops_short_is_refused(
    hierarchy: Hierarchy, tmp_path: Path, behaviour: str, expected: str
) -> None:
    """A byte every 0.2 s never trips a per-read time-out of 1 s: the whole exchange is
    bounded (3 x the time-out), so a hostile or broken CA cannot hold an agent, and its
    directory's lock, for ever. An answer that closes before its Content-Length used to
    be taken whole (``read(n)`` returns what came). Both found by the eighth stop's
    review. Real TLS, a real server thread on 127.0.0.1."""
    import socket
    import threading

    from cyphrs_cli.client.api import CaClient

    done = hierarchy.issue("server", "--ip", "127.0.0.1", "--out-dir", str(tmp_path / "tls"))
    assert done.exit_code == 0, done.stderr
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls" / "fullchain.pem", tmp_path / "tls" / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"

    def answer() -> None:
        connection, _ = listener.accept()
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.recv(65536)
            if behaviour == "short":
                tls.sendall(head + b"x" * 10)
                return
            for byte in head + b"x" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    tls.sendall(bytes([byte]))
                except OSError:
                    return

    server = threading.Thread(target=answer)
    server.start()
    client = CaClient(
        f"https://127.0.0.1:{listener.getsockname()[1]}",
        hierarchy.root_cert.read_bytes(),
        timeout=1,
    )
    started = time.monotonic()
    try:
        with pytest.raises(CaUnavailable, match=expected):
            client.roots()
    finally:
        stop.set()
        server.join(10)
        listener.close()
        client.close()
    assert time.monotonic() - started < 6


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
        fingerprint="sha256:" + cert.fingerprint(hashes.SHA256()).hex(),
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
        # The JSON fields feed the --json report and the hook's environment: they must be
        # the certificate's own.
        "another serial": (replace(issued, serial="0" + issued.serial + "1"), keys, None),
        "a serial of shell text": (replace(issued, serial="$(reboot)"), keys, None),
        "an upper-case serial": (replace(issued, serial=issued.serial.upper() + "A"), keys, None),
        "another notAfter": (
            replace(issued, not_after=issued.not_after + timedelta(hours=1)), keys, None
        ),
        "another SPIFFE ID": (
            replace(issued, spiffe_id="spiffe://acme.internal/agent/other/1"), keys, None
        ),
        "another fingerprint": (replace(issued, fingerprint="sha256:" + "0" * 64), keys, None),
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
import time
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


WAIT_FOR_URG = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGURG, lambda *a: print('signalled', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.mark.parametrize("held", ["-1", "0", "1", " 1 ", "", "abc", "\u0663\u0663", "12x"])
def test_a_pid_file_holding_no_pid_above_1_signals_nothing(tmp_path: Path, held: str) -> None:
    """The pid file is often written by the service the (root) daemon reloads: -1 would
    signal every process, 0 the daemon's own group, 1 init. SIGURG here, whose default is
    to be ignored, so a regression cannot hurt the machine; a child of this test's process
    group that handles it shows whether anything was sent."""
    from cyphrs_cli.client.agent import ReloadHooks
    from cyphrs_cli.client.files import AgentDir

    issued = Issued("cyphrs.agent-renew/v1", "0a", None, T0, T0, "sha256:00", "", "", "", None)
    child = subprocess.Popen(
        [sys.executable, "-c", WAIT_FOR_URG], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pid_file = tmp_path / "svc.pid"
        pid_file.write_text(held)
        problems = ReloadHooks(signal_spec="URG", pid_file=pid_file).run(AgentDir(tmp_path), issued)
        assert len(problems) == 1 and "cannot send SIGURG" in problems[0], problems
        time.sleep(0.3)
    finally:
        child.kill()
        out, _ = child.communicate(timeout=10)
    assert "signalled" not in out


def test_the_exec_hook_writes_to_stderr_and_dies_with_its_children_at_the_timeout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stdout would land in the daemon's --json stream; a hook that hangs is killed
    with what it started, not only its shell."""
    import cyphrs_cli.client.agent as agent
    from cyphrs_cli.client.files import AgentDir

    issued = Issued("cyphrs.agent-renew/v1", "0a", None, T0, T0, "sha256:00", "", "", "", None)
    assert agent.ReloadHooks(exec_command="echo HOOK-OUT").run(AgentDir(tmp_path), issued) == []
    captured = capfd.readouterr()
    assert "HOOK-OUT" not in captured.out and "HOOK-OUT" in captured.err
    monkeypatch.setattr(agent, "HOOK_TIMEOUT", 1)
    pid_file = tmp_path / "grandchild"
    hooks = agent.ReloadHooks(exec_command=f"sleep 300 & echo $! > {pid_file}; wait")
    started = time.monotonic()
    problems = hooks.run(AgentDir(tmp_path), issued)
    assert time.monotonic() - started < 10
    assert problems == ["--exec hook killed after 1 s, with its children"]
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the hook's child {grandchild} outlived the hook")


def test_the_daemon_backs_off_while_its_directory_is_locked(
    hierarchy: Hierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another renewer (or an operator's script) holding the directory's lock past the
    busy timeout used to end the daemon with exit 8; it is a transient failure."""
    import threading

    from cyphrs_cli.client.agent import DaemonSettings, ReloadHooks, RenewRequest, run_daemon
    from cyphrs_cli.client.files import AgentDir
    from cyphrs_cli.fsutil import home_lock

    done = hierarchy.issue("agent", "--workflow", "w", "--out-dir", str(tmp_path / "a"))
    assert done.exit_code == 0, done.stderr
    monkeypatch.setenv("CYPHRS_BUSY_TIMEOUT_MS", "100")
    request = RenewRequest(ca_url="https://127.0.0.1:1", directory=AgentDir(tmp_path / "a"))
    stop = threading.Event()
    lines: list[str] = []

    def report(message: str, result: object) -> None:
        lines.append(message)
        if len([line for line in lines if "retry in" in line]) >= 2:
            stop.set()

    settings = DaemonSettings(backoff_base=timedelta(milliseconds=50))
    with home_lock(tmp_path / "a"):
        run_daemon(request, ReloadHooks(), stop, settings=settings, report=report)
    assert stop.is_set() and all("cannot read" in line for line in lines), lines


def test_an_agent_directory_others_can_write_is_refused(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Whoever can write the directory can swap the staging directory for a link while a
    renewal writes into it, and have the renewer (often root) write and move keys into
    any directory (reproduced by the eighth stop's review). Such a directory is refused
    before anything is read or written: group/world-writable, or another user's."""
    from cyphrs_cli.client.files import AgentDir

    done = hierarchy.issue("agent", "--workflow", "w", "--out-dir", str(tmp_path / "a"))
    assert done.exit_code == 0, done.stderr
    agent = AgentDir(tmp_path / "a")
    with agent.locked():
        agent.certificate()  # ours and 0700: used
    before = sorted(p.name for p in agent.path.iterdir())
    agent.path.chmod(0o777)
    with pytest.raises(StorageError, match="group/world-writable"), agent.locked():
        raise AssertionError("entered")
    agent.path.chmod(0o700)
    if os.geteuid() == 0:  # only root can give it away
        os.chown(agent.path, 65534, 65534)
        with pytest.raises(StorageError, match="owned by uid 65534"), agent.locked():
            raise AssertionError("entered")
        os.chown(agent.path, 0, 0)
    assert sorted(p.name for p in agent.path.iterdir()) == before


def test_a_bad_key_type_is_refused_before_the_daemon_starts(tmp_path: Path) -> None:
    """It was found only at the first renewal, possibly hours later."""
    started = time.monotonic()
    done = cli("renew", "--ca-url", "https://127.0.0.1:1", str(tmp_path), "--daemon",
               "--key-type", "bogus")  # fmt: skip
    assert done.exit_code == 3 and "unknown key type" in done.stderr, done.stderr
    assert time.monotonic() - started < 10


def test_the_daemons_lines_are_escaped_for_the_terminal() -> None:
    """A CA's problem text reaches the daemon's log: CR/LF and escape sequences must not
    forge lines or drive the terminal (the one-shot commands escape the same text)."""
    from cyphrs_cli.cli.commands.agent import daemon_line

    line = daemon_line(
        "2026-01-01T00:00:00Z", "failed (x\r\nrenewed 00 as 1337\x1b[2J\x1b]0;t\x07)"
    )
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "\r" not in line and "\x1b" not in line and "\x07" not in line


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


def test_the_daemon_reads_its_files_and_the_clock_again_while_it_waits(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A daemon used to sleep in one piece until the renewal was due: on a machine
    suspended meanwhile (the monotonic clock stops) it woke after the certificate had
    expired, and a certificate swapped in by hand went unseen for hours. It now waits in
    slices of ``wake_every`` on the wall clock, reading the files after each."""
    import threading

    from cyphrs_cli.client.agent import DaemonSettings, ReloadHooks, RenewRequest, run_daemon
    from cyphrs_cli.client.files import AgentDir

    out = tmp_path / "a"
    assert hierarchy.issue("agent", "--workflow", "w", "--ttl", "1h", "--out-dir", str(out)).exit_code == 0
    request = RenewRequest(ca_url="https://127.0.0.1:1", directory=AgentDir(out))
    stop = threading.Event()
    planned: list[str] = []

    def report(message: str, result: object) -> None:
        if "renews at" in message:
            planned.append(message)

    settings = DaemonSettings(jitter=0, wake_every=timedelta(milliseconds=200))
    daemon = threading.Thread(
        target=run_daemon, args=(request, ReloadHooks(), stop),
        kwargs={"settings": settings, "report": report}, daemon=True,
    )  # fmt: skip
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while not planned and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(planned) == 1, planned  # due in about 40 minutes: asleep
        again = hierarchy.issue(
            "agent", "--workflow", "w", "--ttl", "2h", "--out-dir", str(out), "--force"
        )
        assert again.exit_code == 0, again.stderr
        new_serial = f"{x509.load_pem_x509_certificate((out / 'cert.pem').read_bytes()).serial_number:x}"
        deadline = time.monotonic() + 10
        while len(planned) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(planned) == 2 and new_serial in planned[1], planned
    finally:
        stop.set()
        daemon.join(10)
    assert not daemon.is_alive()


def _daemon_thread(
    request: RenewRequest,
    settings: DaemonSettings,
    report: Callable[[str, object], None],
    stop: threading.Event,
) -> tuple[threading.Thread, list[BaseException]]:
    """``run_daemon`` on a thread; what it raised, if anything, in the returned list."""
    from cyphrs_cli.client.agent import ReloadHooks, run_daemon

    raised: list[BaseException] = []

    def body() -> None:
        try:
            run_daemon(request, ReloadHooks(), stop, settings=settings, report=report)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, raised


def _agent_of_an_hour(hierarchy: Hierarchy, out: Path) -> RenewRequest:
    """An agent directory with a certificate of one hour (due in about 40 minutes), to
    renew against a CA that is not there."""
    from cyphrs_cli.client.files import AgentDir

    done = hierarchy.issue("agent", "--workflow", "w", "--ttl", "1h", "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return RenewRequest(ca_url="https://127.0.0.1:1", directory=AgentDir(out))


def _quick() -> DaemonSettings:
    """No jitter, a wake-up every 100 ms, back-off from 50 ms."""
    return DaemonSettings(
        jitter=0, wake_every=timedelta(milliseconds=100), backoff_base=timedelta(milliseconds=50)
    )


def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_lock_held_for_a_while_does_not_make_the_daemon_renew_early(
    hierarchy: Hierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the directory failed while another renewer held its lock; the count of
    those failures used to skip the wait, so the daemon renewed at once, hours early."""
    from cyphrs_cli.fsutil import home_lock

    out = tmp_path / "a"
    request = _agent_of_an_hour(hierarchy, out)
    monkeypatch.setenv("CYPHRS_BUSY_TIMEOUT_MS", "100")
    stop = threading.Event()
    lines: list[str] = []
    thread, raised = _daemon_thread(request, _quick(), lambda m, r: lines.append(m), stop)
    try:
        assert _wait_for(lambda: any("renews at" in line for line in lines))
        with home_lock(out):
            assert _wait_for(lambda: any("cannot read" in line for line in lines))
        time.sleep(1.5)  # many wake-ups with the lock free again
    finally:
        stop.set()
        thread.join(10)
    assert not raised and not thread.is_alive()
    assert not any("renewal failed" in line or "renewed" in line for line in lines), lines


def test_a_certificate_rewritten_in_place_is_waited_for(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``cert.pem`` rewritten by hand, not atomically: for a moment it is empty. The
    daemon, which now reads it every ``wake_every``, used to end with exit 3 on it; once
    running, it waits for a readable file again (at start a bad file is still exit 3)."""
    out = tmp_path / "a"
    request = _agent_of_an_hour(hierarchy, out)
    stop = threading.Event()
    lines: list[str] = []
    settings = _quick()
    thread, raised = _daemon_thread(request, settings, lambda m, r: lines.append(m), stop)
    pem = (out / "cert.pem").read_bytes()
    try:
        assert _wait_for(lambda: any("renews at" in line for line in lines))
        (out / "cert.pem").write_bytes(b"")
        assert _wait_for(lambda: any("cannot read" in line for line in lines))
        (out / "cert.pem").write_bytes(pem)
        time.sleep(0.5)
        assert thread.is_alive() and not raised, raised
    finally:
        stop.set()
        thread.join(10)
    assert not raised

    (out / "cert.pem").write_bytes(b"")
    thread, raised = _daemon_thread(request, settings, lambda m, r: None, threading.Event())
    thread.join(10)
    assert len(raised) == 1 and getattr(raised[0], "exit_code", None) == 3, raised


def test_the_stop_grace_does_not_spin(tmp_path: Path) -> None:
    """Once the daemon was told to stop, the hook's wait returned at once on the set
    event and polled the hook in a busy loop: five seconds of CPU for a five-second
    grace."""
    import cyphrs_cli.client.agent as agent
    from cyphrs_cli.client.files import AgentDir

    issued = Issued("cyphrs.agent-renew/v1", "0a", None, T0, T0, "sha256:00", "", "", "", None)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    cpu, started = time.thread_time(), time.monotonic()
    problems = agent.ReloadHooks(exec_command="sleep 30").run(AgentDir(tmp_path), issued, stop)
    took, cpu = time.monotonic() - started, time.thread_time() - cpu
    assert problems == ["--exec hook killed: the daemon is stopping, with its children"]
    assert agent.HOOK_STOP_GRACE <= took < agent.HOOK_STOP_GRACE + 3, took
    assert cpu < 0.5, cpu


@pytest.mark.parametrize("jump", ["forward", "back"])
def test_a_back_off_wait_ends_with_whichever_clock_says_so(
    monkeypatch: pytest.MonkeyPatch, jump: str
) -> None:
    """The wall clock jumps an hour just after a back-off wait began. Forward (the machine
    was suspended; the monotonic clock stood still): a 30 s wait ends at the next slice.
    Back (NTP stepped a fast clock back): a 0.3 s wait still ends after 0.3 s of the
    monotonic clock, not an hour later. A stop at 3 s bounds a wait that would not end."""
    import cyphrs_cli.client.agent as agent

    offset = timedelta(hours=1 if jump == "forward" else -1)

    class Jumped(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return datetime.now(UTC) + offset

    delay = timedelta(seconds=30) if jump == "forward" else timedelta(milliseconds=300)
    stop = threading.Event()
    jumping = threading.Timer(0.05, lambda: monkeypatch.setattr(agent, "datetime", Jumped))
    bound = threading.Timer(3, stop.set)
    jumping.start()
    bound.start()
    started = time.monotonic()
    try:
        agent._sleep_for(stop, delay, DaemonSettings(wake_every=timedelta(milliseconds=100)))
    finally:
        bound.cancel()
        jumping.join()
    took = time.monotonic() - started
    assert not stop.is_set() and took < 2, took
    if jump == "back":
        assert took >= 0.3, took
