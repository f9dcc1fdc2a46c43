"""``cyphrs serve`` against real clients: curl, openssl s_client, Python ssl. Each test
attacks one promise: mTLS renewal only for a current certificate of this CA, admin routes
only for admin certificates, bounded bodies and times, TLS 1.2+, hot certificate swap,
group commit, problem+json errors, rate limits, logs without secrets."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.csr_builders import csr_with_duplicate_san
from tests.helpers import Hierarchy, build_hierarchy, cli
from tests.serve_clients import curl, issue_offline, new_csr, request, write_identity
from tests.server_process import ServerProcess, start_server


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(tmp_path_factory.mktemp("serve-ca"))


@pytest.fixture(scope="module")
def server(ca: Hierarchy) -> object:
    running = start_server(ca.home, ca.inter_pass)
    yield running
    running.stop()


def _row(ca: Hierarchy, serial: str) -> sqlite3.Row:
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchone()
    assert found is not None, serial
    return found


def _serial(cert_dir: Path) -> str:
    cert = x509.load_pem_x509_certificate((cert_dir / "cert.pem").read_bytes())
    return format(cert.serial_number, "x").rjust(
        2 * ((cert.serial_number.bit_length() + 7) // 8), "0"
    )


def _agent(ca: Hierarchy, where: Path, *args: str) -> Path:
    return issue_offline(ca.home, ca.inter_pass, where, "agent", *args)


# -- renewal over mTLS ------------------------------------------------------------------


def test_renew_over_mtls_with_curl_keeps_identity_and_links_replaces(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    old = _agent(ca, tmp_path / "old", "--permission", "ledger:read")
    key_pem, csr_pem = new_csr()
    status, body = curl(
        server, "/v1/renew", data=json.dumps({"csr": csr_pem.decode()}), cert_dir=old
    )
    assert status == 201, body
    issued = json.loads(body)
    assert issued["schema"] == "cyphrs.agent-renew/v1"
    assert issued["replaces"] == _serial(old)
    new = write_identity(tmp_path / "new", issued, key_pem)
    old_cert = x509.load_pem_x509_certificate((old / "cert.pem").read_bytes())
    new_cert = x509.load_pem_x509_certificate((new / "cert.pem").read_bytes())
    # Same SPIFFE ID and claims extension; the key is the CSR's.
    san = x509.SubjectAlternativeName
    assert new_cert.extensions.get_extension_for_class(san).value == (
        old_cert.extensions.get_extension_for_class(san).value
    )
    claims = x509.ObjectIdentifier("1.3.6.1.4.1.32473.77.1")
    old_claims = old_cert.extensions.get_extension_for_oid(claims).value
    new_claims = new_cert.extensions.get_extension_for_oid(claims).value
    assert b"ledger:read" in new_claims.value  # type: ignore[attr-defined]
    assert old_claims.value.split(b"\x18")[0] == new_claims.value.split(b"\x18")[0]  # type: ignore[attr-defined]
    csr = x509.load_pem_x509_csr(csr_pem)
    assert new_cert.public_key() == csr.public_key()
    # The chain verifies with openssl, and the ledger links the two.
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(server.root_pem), "-untrusted",
         str(new / "chain.pem"), str(new / "cert.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    new_row, old_row = _row(ca, issued["serial"]), _row(ca, _serial(old))
    assert old_row["status"] == "superseded"
    assert new_row["replaces_id"] == old_row["id"]
    # The renewed certificate renews in turn (it is the current one now).
    _, csr2 = new_csr()
    again = request(server, "POST", "/v1/renew", {"csr": csr2.decode()}, cert_dir=new)
    assert again.status == 201, again.body
    assert again.json()["replaces"] == issued["serial"]


def test_renewal_refused_for_revoked_superseded_expired_and_foreign_certificates(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, csr = new_csr()
    body = {"csr": csr.decode()}
    before = ca.ledger_rows()

    revoked = _agent(ca, tmp_path / "revoked")
    done = cli("revoke", str(revoked / "cert.pem"), "--home", str(ca.home))
    assert done.exit_code == 0, done.stderr
    reply = request(server, "POST", "/v1/renew", body, cert_dir=revoked)
    assert reply.status == 409, reply.body
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.json()["slug"] == "conflict" and reply.json()["exit_code"] == 7

    superseded = _agent(ca, tmp_path / "superseded")
    first = request(server, "POST", "/v1/renew", body, cert_dir=superseded)
    assert first.status == 201
    before += 1
    # The same CSR again (a client that lost the answer): the recorded successor, no row.
    again = request(server, "POST", "/v1/renew", body, cert_dir=superseded)
    assert again.status == 201 and again.json()["serial"] == first.json()["serial"]
    # Any other key: a superseded certificate cannot renew.
    _, other_csr = new_csr()
    reply = request(server, "POST", "/v1/renew", {"csr": other_csr.decode()}, cert_dir=superseded)
    assert reply.status == 409 and "already renewed" in reply.json()["detail"]

    # 62s: notBefore is backdated 60 s, so this one expires a second after issue.
    expired = _agent(ca, tmp_path / "expired", "--ttl", "62s")
    time.sleep(2.5)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        request(server, "POST", "/v1/renew", body, cert_dir=expired)  # TLS refuses it

    foreign_ca = build_hierarchy(tmp_path_factory.mktemp("foreign"))
    foreign = issue_offline(foreign_ca.home, foreign_ca.inter_pass, tmp_path / "foreign", "agent",
                            "--workflow", "serve-tests")  # fmt: skip
    status, _ = curl(server, "/v1/renew", data=json.dumps(body), cert_dir=foreign)
    assert status in (0, 403)  # handshake refused (unknown CA) or refused by the ledger
    # Nothing was issued by any refused attempt (revoked, superseded, expired+foreign
    # certificates were made offline: 3 rows plus the first agent's).
    assert ca.ledger_rows() == before + 3


def test_the_ledger_decides_even_when_tls_would_accept(
    ca: Hierarchy, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The use case refuses an expired or foreign certificate by itself (the TLS layer is
    not the only guard: a resumed session or a misconfigured proxy must not renew)."""
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.errors import PolicyDenied
    from cyphrs_cli.service.authority import Authority

    expired = _agent(ca, tmp_path / "expired", "--ttl", "62s")
    foreign_ca = build_hierarchy(tmp_path_factory.mktemp("foreign2"))
    foreign = issue_offline(foreign_ca.home, foreign_ca.inter_pass, tmp_path / "foreign")
    time.sleep(2.5)
    _, csr = new_csr()

    def der(cert_dir: Path) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        pem = (cert_dir / "cert.pem").read_bytes()
        return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)

    secret = ca.inter_pass.read_bytes().strip()
    with Authority.open(CaHome(ca.home), secrets=lambda _: secret) as authority:
        for cert_dir, rule in ((expired, "mtls.expired"), (foreign, "mtls.unknown-certificate")):
            with pytest.raises(PolicyDenied) as caught:
                authority.renew_presented(der(cert_dir), csr)
            assert caught.value.rule == rule
        with pytest.raises(PolicyDenied) as caught:
            authority.renew_presented(b"", csr)
        assert caught.value.rule == "mtls.required"


def test_self_revocation_then_no_renewal(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    agent = _agent(ca, tmp_path / "a")
    status, body = curl(server, "/v1/revoke", data='{"reason": "key-compromise"}', cert_dir=agent)
    assert status == 200, body
    document = json.loads(body)
    assert document["revoked"]["serial"] == _serial(agent)
    assert document["revoked"]["reason"] == "key-compromise"
    assert _row(ca, _serial(agent))["status"] == "revoked"
    _, csr = new_csr()
    assert request(server, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=agent).status == 409
    assert request(server, "POST", "/v1/revoke", {}, cert_dir=agent).status == 409
    assert request(server, "POST", "/v1/revoke", {}).status == 403  # no certificate at all


# -- administration ---------------------------------------------------------------------


def test_admin_routes_need_an_admin_certificate(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    admin = issue_offline(ca.home, ca.inter_pass, tmp_path / "admin", "admin", "--cn", "ops-alice")
    agent = _agent(ca, tmp_path / "agent")
    victim = _agent(ca, tmp_path / "victim")

    for cert_dir in (agent, None):
        reply = request(server, "GET", "/v1/admin/certificates", cert_dir=cert_dir)
        assert reply.status == 403, reply.body
        assert reply.json()["rule"] == ("admin.profile" if cert_dir else "mtls.required")
        reply = request(
            server, "POST", "/v1/admin/revoke", {"serial": _serial(victim)}, cert_dir=cert_dir
        )
        assert reply.status == 403
    assert _row(ca, _serial(victim))["status"] == "valid"

    status, body = curl(server, "/v1/admin/certificates?profile=agent&limit=5", cert_dir=admin)
    assert status == 200, body
    listed = json.loads(body)
    assert listed["schema"] == "cyphrs.list/v1"
    assert 1 <= len(listed["certificates"]) <= 5
    assert {c["profile"] for c in listed["certificates"]} == {"agent"}

    reply = request(server, "POST", "/v1/admin/revoke", {"serial": _serial(victim)}, cert_dir=admin)
    assert reply.status == 200, reply.body
    assert _row(ca, _serial(victim))["status"] == "revoked"
    # An admin certificate that is revoked administers nothing.
    assert cli("revoke", str(admin / "cert.pem"), "--home", str(ca.home)).exit_code == 0
    reply = request(server, "GET", "/v1/admin/certificates", cert_dir=admin)
    assert reply.status == 403 and reply.json()["rule"] == "admin.status"


# -- hostile clients --------------------------------------------------------------------


def test_oversized_body_is_413_problem_json(server: ServerProcess) -> None:
    big = json.dumps({"csr": "A" * 200_000})
    status, body = curl(server, "/v1/renew", data=big)
    assert status == 413, body
    problem = json.loads(body)
    assert problem["status"] == 413 and problem["slug"] == "too-large"
    # Also without a Content-Length (chunked): cut off while reading.
    reply = request(server, "POST", "/v1/renew", raw=big.encode())
    assert reply.status in (403, 413)  # no client cert is refused before reading, or 413


def test_bad_requests_answer_problem_json_with_cli_codes(
    server: ServerProcess, tmp_path: Path
) -> None:
    reply = request(server, "GET", "/v1/nothing-here")
    assert reply.status == 404 and reply.json()["exit_code"] == 6
    reply = request(server, "POST", "/v1/renew", raw=b"{not json")
    assert reply.status == 400 and reply.json()["slug"] == "invalid-input"
    assert reply.json()["exit_code"] == 3
    reply = request(server, "POST", "/v1/renew", {"csr": "x", "surprise": 1})
    assert reply.status == 400 and "surprise" in reply.json()["detail"]
    for raw in (b'{"csr": "x\\ud800"}', b'{"csr": "x\xed\xa0\x80"}'):  # a lone surrogate
        reply = request(server, "POST", "/v1/enroll", raw=raw)
        assert reply.status == 400 and "not text" in reply.json()["detail"], raw


def test_hostile_http_details_answer_problem_json_without_quoting(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    """Found by an adversarial review (eighth stop): each was a 500 or a text/plain answer
    quoting the request."""
    secret = "cyphrs_tok_SECRET-IN-A-HEADER"
    # An expectation other than 100-continue: aiohttp's own 417 echoed the header.
    reply = request(server, "POST", "/v1/enroll", {"csr": "x"}, headers={"Expect": secret})
    assert reply.status == 417, reply.body
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.json()["slug"] == "expectation-failed" and secret not in reply.body.decode()
    # 100-continue still works: the answer is the request's own.
    reply = request(
        server, "POST", "/v1/renew", raw=b"{not json", headers={"Expect": "100-continue"}
    )
    assert reply.status == 400 and reply.json()["slug"] == "invalid-input"
    # A body declared gzip that does not inflate.
    reply = request(server, "POST", "/v1/enroll", raw=b"abcd", headers={"Content-Encoding": "gzip"})
    assert reply.status == 400 and reply.json()["slug"] == "invalid-input", reply.body
    # A limit written with a Unicode digit (str.isdigit() holds, int() fails).
    admin = issue_offline(ca.home, ca.inter_pass, tmp_path / "admin", "admin", "--cn", "ops-eve")
    for limit in ("%C2%B2", "%D9%A3"):  # superscript two; Arabic-Indic three
        reply = request(server, "GET", f"/v1/admin/certificates?limit={limit}", cert_dir=admin)
        assert reply.status == 400 and reply.json()["slug"] == "invalid-input", reply.body
    # 405 says what it is.
    reply = request(server, "DELETE", "/v1/enroll")
    assert reply.status == 405 and reply.json()["title"] == "Method not allowed"
    # A CSR asking for the same extension twice, on the loop's path (P-256) and the
    # worker thread's (RSA): bad input, nothing recorded.
    for rsa_key in (False, True):
        token = json.loads(
            cli("token", "create", "--workflow", "wf", "--json", "--home", str(ca.home)).stdout
        )["token"]
        csr = csr_with_duplicate_san("spiffe://acme.internal/agent/wf/i1", rsa_key=rsa_key)
        reply = request(server, "POST", "/v1/enroll", {"csr": csr.decode(), "token": token})
        assert reply.status == 400 and "extension" in reply.json()["detail"], reply.body
    assert "internal-error" not in server.log()


def test_an_admin_token_with_uses_written_as_a_float_keeps_the_ledger_verifiable(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    """JSON Schema counts 1.0 as an integer. Passed on as a float, the token's row said 1
    and its token.created event 1.0, and ``audit verify`` failed for good."""
    admin = issue_offline(ca.home, ca.inter_pass, tmp_path / "admin", "admin", "--cn", "ops-fay")
    body = {"workflow": "payments-recon", "uses": 1.0, "ttl": "10m"}
    reply = request(server, "POST", "/v1/admin/tokens", body, cert_dir=admin)
    assert reply.status == 201, reply.body
    assert reply.json()["uses_allowed"] == 1 and isinstance(reply.json()["uses_allowed"], int)
    reply = request(server, "POST", "/v1/admin/tokens", {**body, "uses": 1.5}, cert_dir=admin)
    assert reply.status == 400, reply.body
    verified = cli("audit", "verify", "--home", str(ca.home))
    assert verified.exit_code == 0, verified.stdout + verified.stderr


@pytest.fixture(scope="module")
def strict_server(ca: Hierarchy) -> object:
    """Short timeouts and a tiny per-identity rate, for the attacks below."""
    running = start_server(
        ca.home, ca.inter_pass, "--timeout", "2", "--identity-rate", "3/m", "--token-rate", "2/m"
    )
    yield running
    running.stop()


def _tls_socket(server: ServerProcess) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.root_pem))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Drip ``drip`` one byte every 0.2 s (then stall) until the server closes; seconds taken."""
    started = time.monotonic()
    sent = 0
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sent < len(drip):
                sock.send(drip[sent : sent + 1])
                sent += 1
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {seconds} s")


def test_slow_clients_are_cut_off(strict_server: ServerProcess) -> None:
    # Headers sent byte by byte (slowloris): closed at the 2 s header timeout.
    with _tls_socket(strict_server) as sock:
        drip = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        assert _closed_within(sock, 8, drip) < 5
    # A TLS handshake never started: the handshake timeout closes the TCP connection.
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as raw:
        assert _closed_within(raw, 8) < 5
    # A body announced and never sent: 408 problem (or closed) within the body timeout.
    with _tls_socket(strict_server) as sock:
        sock.sendall(
            b"POST /v1/renew HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"csr":'
        )
        sock.settimeout(8)
        started = time.monotonic()
        answer = sock.recv(4096)
        assert time.monotonic() - started < 5
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    # The server still serves.
    assert request(strict_server, "GET", "/healthz").status == 200


def test_rate_limit_per_identity_is_429_with_retry_after(
    ca: Hierarchy, strict_server: ServerProcess, tmp_path: Path
) -> None:
    agent = _agent(ca, tmp_path / "busy")
    statuses = [
        request(strict_server, "POST", "/v1/revoke", {"reason": "bogus-reason"}, cert_dir=agent)
        for _ in range(4)
    ]
    assert [s.status for s in statuses[:3]] == [400, 400, 400]
    assert statuses[3].status == 429
    assert int(statuses[3].headers["Retry-After"]) >= 1
    assert statuses[3].json()["slug"] == "rate-limited"
    # Another identity is not affected.
    other = _agent(ca, tmp_path / "other")
    assert (
        request(strict_server, "POST", "/v1/revoke", {"reason": "bogus"}, cert_dir=other).status
        == 400
    )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_refused_tls_1_2_accepted(server: ServerProcess) -> None:
    def s_client(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
             "-CAfile", str(server.root_pem), "-verify_return_error", *flags],
            input="", capture_output=True, text=True, timeout=20,
        )  # fmt: skip

    old = s_client("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert old.returncode != 0
    assert "Cipher is (NONE)" in old.stdout  # no session was negotiated
    modern = s_client("-tls1_2")
    assert modern.returncode == 0, modern.stderr
    assert "Verify return code: 0 (ok)" in modern.stdout
    assert "Cipher is (NONE)" not in modern.stdout
    # Python's client offering at most TLS 1.1 gets no session either.
    context = ssl.create_default_context(cafile=str(server.root_pem))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_sighup_swaps_the_tls_certificate_for_new_handshakes(ca: Hierarchy, tmp_path: Path) -> None:
    with start_server(ca.home, ca.inter_pass) as running:
        first = running.ready["tls_serial"]
        with _tls_socket(running) as old_connection:
            der = old_connection.getpeercert(binary_form=True)
            assert der is not None
            assert format(x509.load_der_x509_certificate(der).serial_number, "x") in first
            running.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while not any(e.get("event") == "tls.renewed" for e in running.log_events()):
                assert time.monotonic() < deadline, running.log()
                time.sleep(0.1)
            renewed = next(e for e in running.log_events() if e.get("event") == "tls.renewed")
            assert renewed["serial"] != first
            assert _row(ca, renewed["serial"])["profile"] == "server"  # recorded first
            with _tls_socket(running) as new_connection:
                der = new_connection.getpeercert(binary_form=True)
                assert der is not None
                serial = x509.load_der_x509_certificate(der).serial_number
                assert format(serial, "x") in renewed["serial"]
            # The connection opened before the swap still works.
            old_connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert old_connection.recv(4096).startswith(b"HTTP/1.1 200")


def test_concurrent_renewals_share_transactions(ca: Hierarchy, tmp_path: Path) -> None:
    """16 concurrent renewals land in fewer than 16 ledger transactions (group commit),
    each response only after its commit. The writer is slowed (50 ms after each group's
    commit) so that requests, signed in their own threads, queue up behind a commit, as they
    do under real load."""
    agents = [_agent(ca, tmp_path / f"a{i}") for i in range(16)]
    with start_server(
        ca.home, ca.inter_pass, env={"CYPHRS_TEST_DELAY": "after-record=0.05"}
    ) as running:

        def metric(name: str) -> float:
            text = request(running, "GET", "/metrics").body.decode()
            return sum(
                float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
            )

        commits_before = metric("cyphrs_ledger_commits_total")
        barrier = threading.Barrier(len(agents))
        results: list[int] = []
        serials: list[str] = []

        def renew_one(cert_dir: Path) -> None:
            _, csr = new_csr()
            barrier.wait(timeout=20)
            reply = request(running, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=cert_dir)
            results.append(reply.status)
            if reply.status == 201:
                serials.append(reply.json()["serial"])

        threads = [threading.Thread(target=renew_one, args=(a,)) for a in agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == [201] * 16
        commits = metric("cyphrs_ledger_commits_total") - commits_before
        assert 1 <= commits < 16, commits
        for serial in serials:
            assert _row(ca, serial)["status"] == "valid"


def test_access_log_is_json_without_secrets(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    agent = _agent(ca, tmp_path / "logged")
    key_pem, csr = new_csr()
    reply = request(server, "POST", "/v1/renew", {"csr": csr.decode()}, cert_dir=agent)
    assert reply.status == 201
    request(server, "POST", "/v1/enroll", {"csr": csr.decode(), "token": "cyphrs_tok_" + "A" * 43})
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    renewals = [
        line for line in lines if line.get("operation") == "renew" and line["status"] == 201
    ]
    assert renewals and renewals[-1]["client"].startswith("sha256:")
    for secret in (
        csr.decode().splitlines()[1],
        "cyphrs_tok_",
        "PRIVATE KEY",
        key_pem.decode().splitlines()[1],
    ):
        assert secret not in log


# -- enrollment end to end --------------------------------------------------------------


def test_admin_token_then_enroll_with_curl_then_replay_refused(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    admin = issue_offline(ca.home, ca.inter_pass, tmp_path / "admin", "admin", "--cn", "ops-bob")
    status, body = curl(
        server,
        "/v1/admin/tokens",
        data=json.dumps(
            {"workflow": "payments-recon", "permissions": ["ledger:read"], "ttl": "10m"}
        ),
        cert_dir=admin,
    )
    assert status == 201, body
    created = json.loads(body)
    assert created["schema"] == "cyphrs.token/v1" and created["token"].startswith("cyphrs_tok_")
    assert created["requester"] == "CN=ops-bob"
    token = created["token"]

    key_pem, csr = new_csr()
    status, body = curl(
        server, "/v1/enroll", data=json.dumps({"csr": csr.decode(), "token": token})
    )
    assert status == 201, body
    issued = json.loads(body)
    assert issued["schema"] == "cyphrs.enroll/v1"
    assert issued["spiffe_id"].startswith("spiffe://acme.internal/agent/payments-recon/")
    assert _row(ca, issued["serial"])["status"] == "valid"  # recorded before the answer
    agent = write_identity(tmp_path / "agent", issued, key_pem)
    # The enrolled identity renews over mTLS.
    _, csr2 = new_csr()
    assert (
        request(server, "POST", "/v1/renew", {"csr": csr2.decode()}, cert_dir=agent).status == 201
    )

    # Replay: refused, problem+json with the rule, counted as a token refusal.
    _, csr3 = new_csr()
    status, body = curl(
        server, "/v1/enroll", data=json.dumps({"csr": csr3.decode(), "token": token})
    )
    assert status == 403, body
    problem = json.loads(body)
    assert problem["slug"] == "policy-denied" and problem["rule"] == "token.used"
    metrics = request(server, "GET", "/metrics").body.decode()
    assert 'cyphrs_token_refusals_total{rule="token.used"} 1.0' in metrics
    assert 'cyphrs_issuance_total{operation="enroll",outcome="issued",profile="agent"}' in metrics
    # An agent certificate cannot create tokens.
    reply = request(server, "POST", "/v1/admin/tokens", {"workflow": "x"}, cert_dir=agent)
    assert reply.status == 403


# -- status: OCSP and CRL from the server ----------------------------------------------


def test_openssl_ocsp_and_crl_from_the_server(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    good = _agent(ca, tmp_path / "good")
    bad = _agent(ca, tmp_path / "bad")
    assert (
        request(server, "POST", "/v1/revoke", {"reason": "key-compromise"}, cert_dir=bad).status
        == 200
    )

    def ocsp(cert_dir: Path, *extra: str) -> str:
        done = subprocess.run(
            ["openssl", "ocsp", "-issuer", str(cert_dir / "chain.pem"), "-cert",
             str(cert_dir / "cert.pem"), "-url", server.url + "/ocsp", "-CAfile",
             str(server.root_pem), *extra],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Response verify OK" in done.stderr
        return done.stdout

    assert ": good" in ocsp(good)
    assert ": revoked" in ocsp(bad)
    assert ": revoked" in ocsp(bad, "-no_nonce", "-reqout", str(tmp_path / "req.der"))
    # The GET form answers the same request (curl, base64 in the path).
    import base64
    from urllib.parse import quote

    encoded = quote(base64.b64encode((tmp_path / "req.der").read_bytes()).decode(), safe="")
    status, _ = curl(server, f"/ocsp/{encoded}", extra=("-o", str(tmp_path / "resp.der")))
    assert status == 200
    text = subprocess.run(
        ["openssl", "ocsp", "-respin", str(tmp_path / "resp.der"), "-resp_text", "-noverify"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "Cert Status: revoked" in text

    # The server serves the stored CRL while it is fresh (OCSP is the real-time channel);
    # the operator publishes after a revocation, as `cyphrs revoke` advises.
    published = cli("crl", "--home", str(ca.home), "--passphrase-file", str(ca.inter_pass))
    assert published.exit_code == 0, published.stderr
    crl = tmp_path / "inter.crl"
    status, _ = curl(server, "/v1/crl/test-inter.crl", extra=("-o", str(crl)))
    assert status == 200
    pem = tmp_path / "inter.crl.pem"
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(crl), "-out", str(pem)], check=True
    )

    def verify(cert_dir: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-crl_check", "-CRLfile", str(pem), "-CAfile",
             str(server.root_pem), "-untrusted", str(cert_dir / "chain.pem"), str(cert_dir / "cert.pem")],
            capture_output=True, text=True,
        )  # fmt: skip

    assert verify(good).returncode == 0
    refused = verify(bad)
    assert refused.returncode != 0 and "error 23" in refused.stdout + refused.stderr
    status, _ = curl(server, "/v1/crl/no-such-ca.crl")
    assert status == 404


# -- the README's curl + openssl recipe -------------------------------------------------


def _readme_recipe() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- serve-recipe -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    return block + "\n"


def test_readme_curl_openssl_recipe_runs_as_written(
    ca: Hierarchy, server: ServerProcess, tmp_path: Path
) -> None:
    work = tmp_path / "recipe"
    work.mkdir()
    (work / "ca.pem").write_bytes(server.root_pem.read_bytes())
    issue_offline(ca.home, ca.inter_pass, work / "admin", "admin", "--cn", "ops-alice")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _readme_recipe()],
        cwd=work, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "CA": server.url, "ISSUER": "test-inter"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agent/cert.pem: good" in done.stdout
    assert done.stdout.rstrip().endswith("agent/cert.pem: revoked") or (
        "agent/cert.pem: revoked" in done.stdout
    )
    issued = json.loads((work / "agent" / "issued.json").read_text())
    renewed = json.loads((work / "agent" / "renewed.json").read_text())
    assert renewed["replaces"] == issued["serial"]
    assert _row(ca, renewed["serial"])["status"] == "revoked"
    assert (work / "test-inter.crl").stat().st_size > 0


def test_rate_limit_per_token_is_429(strict_server: ServerProcess) -> None:
    """Guessing or replaying one token is throttled by its hash (2/m here), before the
    ledger is asked; another token is not affected."""
    _, csr = new_csr()
    body = {"csr": csr.decode(), "token": "cyphrs_tok_" + "B" * 43}
    statuses = [request(strict_server, "POST", "/v1/enroll", body).status for _ in range(3)]
    assert statuses == [403, 403, 429]
    other = {"csr": csr.decode(), "token": "cyphrs_tok_" + "C" * 43}
    assert request(strict_server, "POST", "/v1/enroll", other).status == 403


def test_health_readiness_and_metrics(server: ServerProcess) -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "serve.v1.json").read_text()
    )
    Draft202012Validator(schema).validate(server.ready)  # the ready line's contract
    assert request(server, "GET", "/healthz").json() == {"status": "ok"}
    ready = request(server, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["checks"] == {"ledger": "ok", "key": "ok"}
    metrics = request(server, "GET", "/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    for name in (
        "cyphrs_request_seconds_bucket",
        "cyphrs_ledger_commit_seconds_bucket",
        "cyphrs_ledger_commits_total",
    ):
        assert name in text
    document = request(server, "GET", "/openapi.json").json()
    from cyphrs_cli.server.spec import openapi_document

    assert document == openapi_document()
