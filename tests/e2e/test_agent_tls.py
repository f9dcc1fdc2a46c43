"""``cyphrs_cli.client.tls``: real handshakes between processes, rotation under a running
server, peer rules, and py-spiffe's ``X509Svid`` as an independent reader of the SVIDs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cyphrs_cli.ca.delivery import PemBundle
from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, AgentClaims, encode_agent_claims
from cyphrs_cli.client.files import install
from cyphrs_cli.client.tls import PeerRejected, check_peer, client_context, server_context
from cyphrs_cli.errors import PolicyDenied
from tests.helpers import Hierarchy, build_hierarchy, cli

REPO = Path(__file__).resolve().parents[2]


def issue_agent(h: Hierarchy, out: Path, workflow: str, *perms: str) -> Path:
    args = [a for p in perms for a in ("--permission", p)]
    done = h.issue("agent", "--workflow", workflow, *args, "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return out


def renew_offline(h: Hierarchy, agent: Path, out: Path) -> PemBundle:
    """The successor of ``agent``'s certificate (new key), as the bundle a swap installs."""
    done = cli(
        "renew",
        str(agent / "cert.pem"),
        "--out-dir",
        str(out),
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert done.exit_code == 0, done.stderr
    return PemBundle(
        certificate=(out / "cert.pem").read_text(),
        chain=(out / "chain.pem").read_text(),
        root=(out / "ca.pem").read_text(),
        private_key=(out / "key.pem").read_text(),
    )


def spiffe_of(agent: Path) -> str:
    cert = x509.load_pem_x509_certificate((agent / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


class TlsServer:
    """``tests/agent_tls_server.py`` as its own process; stopped by PID in the finalizer."""

    def __init__(self, cert_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_tls_server", str(cert_dir), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(30), "TLS server did not start"
        self.port = int(self.lines[0]["port"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))
            self._ready.set()

    def log(self, key: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while datetime.now(UTC) < deadline:
            found = [line for line in self.lines if key in line]
            if found:
                return found
            threading.Event().wait(0.05)
        return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def servers() -> Iterator[Callable[..., TlsServer]]:
    started: list[TlsServer] = []

    def start(cert_dir: Path, *args: str) -> TlsServer:
        server = TlsServer(cert_dir, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def talk(ctx: ssl.SSLContext, port: int) -> tuple[dict[str, Any], x509.Certificate]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="agent") as tls,
    ):
        tls.sendall(b"hi")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            reply += chunk
        if not reply:  # cut off after the handshake (a peer rule of the server)
            raise ConnectionResetError("the server closed the connection without answering")
        der = tls.getpeercert(binary_form=True)
        assert der is not None
    return json.loads(reply), x509.load_der_x509_certificate(der)


@pytest.fixture
def two_agents(hierarchy: Hierarchy, tmp_path: Path) -> tuple[Path, Path]:
    a = issue_agent(hierarchy, tmp_path / "a", "payments-recon", "ledger:read")
    b = issue_agent(hierarchy, tmp_path / "b", "billing", "ledger:read", "queue:write")
    return a, b


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_two_agents_authenticate_each_other(
    mode: str, two_agents: tuple[Path, Path], servers: Callable[..., TlsServer]
) -> None:
    from spiffe import X509Svid

    a, b = two_agents
    extra = ["--asyncio"] if mode == "asyncio" else []
    server = servers(a, "--workflow", "billing", "--permission", "queue:write", *extra)
    ctx = client_context(b, workflow="payments-recon")
    reply, server_cert = talk(ctx, server.port)
    assert reply["peer"] == spiffe_of(b) and reply["workflow"] == "billing"
    assert server_cert.fingerprint(hashes.SHA256()) == x509.load_pem_x509_certificate(
        (a / "cert.pem").read_bytes()
    ).fingerprint(hashes.SHA256())
    # An independent SPIFFE implementation reads the same identities from the files.
    for agent in (a, b):
        svid = X509Svid.load(
            str(agent / "fullchain.pem"), str(agent / "key.pem"), serialization.Encoding.PEM
        )
        assert str(svid.spiffe_id) == spiffe_of(agent)
        assert check_peer(svid.leaf.public_bytes(serialization.Encoding.DER)).spiffe_id == str(
            svid.spiffe_id
        )


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_server_rules_cut_off_the_wrong_agent(
    mode: str, two_agents: tuple[Path, Path], servers: Callable[..., TlsServer]
) -> None:
    a, b = two_agents
    extra = ["--asyncio"] if mode == "asyncio" else []
    only_recon = servers(b, "--workflow", "payments-recon", *extra)
    needs_write = servers(b, "--permission", "ledger:write", *extra)
    pinned = servers(b, "--allowed-spiffe", "spiffe://acme.internal/agent/billing/*", *extra)
    client = client_context(a, workflow="billing")
    # The wrong workflow, a missing permission, an ID outside the pattern: all cut off.
    for server, rule in ((needs_write, "peer.permissions"), (pinned, "peer.spiffe_id")):
        with pytest.raises((ssl.SSLError, OSError, json.JSONDecodeError)):
            talk(client, server.port)
        if mode == "threads":  # asyncio reports a failed handshake only in debug mode
            assert server.log("rejected")[0]["rejected"] == rule
    # The same client against the same kind of server whose rule it meets: served.
    reply, _ = talk(client, only_recon.port)
    assert reply["peer"] == spiffe_of(a)


def test_client_rules_refuse_the_wrong_server(
    two_agents: tuple[Path, Path], servers: Callable[..., TlsServer]
) -> None:
    a, b = two_agents
    server = servers(a)
    for rules, rule in (
        ({"workflow": "billing"}, "peer.workflow"),
        ({"trust_domain": "other.internal"}, "peer.trust_domain"),
        ({"allowed_spiffe": [spiffe_of(b)]}, "peer.spiffe_id"),
        ({"workflow": "payments-recon", "permissions": ["ledger:write"]}, "peer.permissions"),
    ):
        with pytest.raises(PeerRejected) as caught:
            talk(client_context(b, **rules), server.port)  # type: ignore[arg-type]
        assert caught.value.denial.rule == rule
    reply, _ = talk(client_context(b, allowed_spiffe=[spiffe_of(a)]), server.port)
    assert reply["peer"] == spiffe_of(b)


def test_without_rules_a_client_checks_the_host_name(
    two_agents: tuple[Path, Path], servers: Callable[..., TlsServer]
) -> None:
    a, b = two_agents
    server = servers(a)
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(client_context(b), server.port)  # an agent certificate names no host


def test_foreign_root_is_refused(
    two_agents: tuple[Path, Path], servers: Callable[..., TlsServer], tmp_path: Path
) -> None:
    a, _ = two_agents
    stranger_ca = build_hierarchy(tmp_path / "stranger")
    stranger = issue_agent(stranger_ca, tmp_path / "s", "billing")
    server = servers(a)
    # The stranger trusts our root (so only the server's check can refuse it).
    shutil.copy(a / "ca.pem", stranger / "ca.pem")
    with pytest.raises((ssl.SSLError, OSError)):
        talk(client_context(stranger, workflow="payments-recon"), server.port)
    assert "certificate verify failed" in server.log("error")[0]["error"]


def test_running_server_follows_the_swap_and_never_serves_a_mismatch(
    hierarchy: Hierarchy,
    two_agents: tuple[Path, Path],
    servers: Callable[..., TlsServer],
    tmp_path: Path,
) -> None:
    a, b = two_agents
    server = servers(a)
    client = client_context(b, workflow="payments-recon")
    first = talk(client, server.port)[1]
    # A renewal swapped in by the agent-side journal: the next connection serves it.
    second_bundle = renew_offline(hierarchy, a, tmp_path / "a2")
    install(a, second_bundle)
    reply, second = talk(client, server.port)
    assert second.serial_number != first.serial_number and reply["reloads"] == 1
    assert second.public_bytes(serialization.Encoding.PEM).decode() == second_bundle.certificate
    # Between two renames of a swap: the new key beside the old certificate. The server
    # keeps the context it has and still completes handshakes with the old pair.
    third_bundle = renew_offline(hierarchy, a, tmp_path / "a3")
    assert third_bundle.private_key is not None
    staged = a / ".key.new"
    staged.write_text(third_bundle.private_key)
    os.replace(staged, a / "key.pem")
    reply, served = talk(client, server.port)
    assert served.serial_number == second.serial_number and reply["reloads"] == 1
    staged.write_text(third_bundle.fullchain)
    os.replace(staged, a / "fullchain.pem")
    reply, served = talk(client, server.port)
    assert served.public_bytes(serialization.Encoding.PEM).decode() == third_bundle.certificate
    assert reply["reloads"] == 2


def test_openssl_s_client_against_the_reloading_server(
    two_agents: tuple[Path, Path], servers: Callable[..., TlsServer]
) -> None:
    a, b = two_agents
    server = servers(a, "--workflow", "billing")
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            str(b / "ca.pem"),
            "-cert",
            str(b / "cert.pem"),
            "-cert_chain",
            str(b / "chain.pem"),
            "-key",
            str(b / "key.pem"),
        ],
        input=b"hi",
        capture_output=True,
        timeout=30,
        check=False,
    )
    # (s_client exits 1 on the server's close without close_notify; the answer counts.)
    assert json.loads(done.stdout)["peer"] == spiffe_of(b), done.stderr
    # Without a client certificate the handshake fails.
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-quiet",
            "-CAfile",
            str(b / "ca.pem"),
        ],
        input=b"hi",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert b"peer" not in done.stdout


# --- check_peer on forged certificates (it reads; the chain is TLS's business) ----------


def forge(
    uris: list[str],
    *,
    claims: AgentClaims | None = None,
    ca: bool = False,
    dns: list[str] | None = None,
    raw_claims: bytes | None = None,
) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns or []]
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "forger")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if claims is not None or raw_claims is not None:
        value = raw_claims if claims is None else encode_agent_claims(claims)
        assert value is not None
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(AGENT_CLAIMS_OID), value),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


CLAIMS = AgentClaims("payments-recon", ("ledger:read",), "ci", datetime(2026, 1, 1, tzinfo=UTC))
GOOD = "spiffe://acme.internal/agent/payments-recon/i-1"


@pytest.mark.parametrize(
    ("der", "rules", "rule"),
    [
        (b"", {}, "peer.missing"),
        (b"garbage", {}, "peer.spiffe"),
        (forge([GOOD], claims=CLAIMS, ca=True), {}, "peer.spiffe"),
        (forge([], dns=["api.acme.internal"]), {}, "peer.spiffe"),
        (forge([GOOD, "spiffe://acme.internal/agent/x/2"], claims=CLAIMS), {}, "peer.spiffe"),
        (forge(["spiffe://acme.internal"], claims=CLAIMS), {}, "peer.spiffe"),
        (forge(["spiffe://ACME/agent/x/1"], claims=CLAIMS), {}, "peer.spiffe"),
        (forge([GOOD], claims=CLAIMS), {"trust_domain": "acme.internal.evil"}, "peer.trust_domain"),
        # A * stays inside one segment: a deeper path does not match.
        (
            forge(["spiffe://acme.internal/agent/payments-recon/i-1/x"], claims=CLAIMS),
            {"allowed_spiffe": "spiffe://acme.internal/agent/payments-recon/*"},
            "peer.spiffe_id",
        ),
        # Claims that disagree with the SPIFFE path are a forgery or a bug: refused.
        (forge(["spiffe://acme.internal/agent/billing/i-1"], claims=CLAIMS), {}, "peer.claims"),
        (forge([GOOD]), {"workflow": "payments-recon"}, "peer.workflow"),
        (forge([GOOD], raw_claims=b"\x30\x03\x02\x01\x07"), {}, "peer.claims"),
        (
            forge([GOOD], claims=CLAIMS),
            {"permissions": ["ledger:read", "ledger:write"]},
            "peer.permissions",
        ),
    ],
)
def test_check_peer_refuses(der: bytes, rules: dict[str, Any], rule: str) -> None:
    with pytest.raises(PolicyDenied) as caught:
        check_peer(der, **rules)
    assert caught.value.rule == rule


def test_check_peer_accepts_and_reports() -> None:
    peer = check_peer(
        forge([GOOD], claims=CLAIMS),
        trust_domain="acme.internal",
        allowed_spiffe=["spiffe://acme.internal/agent/payments-recon/*"],
        workflow="payments-recon",
        permissions=["ledger:read"],
    )
    assert (peer.spiffe_id, peer.workflow, peer.permissions) == (
        GOOD,
        "payments-recon",
        ("ledger:read",),
    )
    assert peer.path == ("agent", "payments-recon", "i-1")


def _one_connection(server_sock: socket.socket, answer: Callable[[socket.socket], None]) -> Any:
    """Accept one connection on ``server_sock`` in a thread and run ``answer`` on it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            connection, _ = server_sock.accept()
            with connection:
                answer(connection)
        except Exception as error:  # the test asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_wrapped_listening_socket_accepts_with_the_newest_files(
    hierarchy: Hierarchy, two_agents: tuple[Path, Path], tmp_path: Path
) -> None:
    """The ``ssl`` documentation's pattern (and ``http.server``'s): wrap the listening
    socket once, then accept. ``SSLSocket.accept`` wraps with the listening socket's own
    context, which was the inner one the listener was made with: a renewal was never
    served (found by the eighth stop's review)."""
    a, b = two_agents
    listener = server_context(a).wrap_socket(
        socket.create_server(("127.0.0.1", 0)), server_side=True
    )
    port = listener.getsockname()[1]
    client = client_context(b, check_hostname=False)

    def served_serial() -> int:
        thread, outcome = _one_connection(listener, lambda conn: conn.sendall(b"hi"))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw) as tls,
        ):
            tls.recv(2)
            der = tls.getpeercert(binary_form=True)
        thread.join(10)
        assert "error" not in outcome, outcome
        return x509.load_der_x509_certificate(der).serial_number

    try:
        first = served_serial()
        install(a, renew_offline(hierarchy, a, tmp_path / "a2"))
        second = served_serial()
    finally:
        listener.close()
    assert second != first
    assert second == x509.load_pem_x509_certificate((a / "cert.pem").read_bytes()).serial_number


@pytest.mark.parametrize("side", ["server", "client"])
def test_the_peer_rules_hold_when_the_handshake_happens_in_the_first_read_or_write(
    two_agents: tuple[Path, Path], side: str
) -> None:
    """``wrap_socket(..., do_handshake_on_connect=False)`` then ``recv``/``sendall``:
    OpenSSL runs the handshake inside the read or write, never through ``do_handshake``,
    where the rules were checked, and a billing agent was served by a server admitting
    payments-recon only (found by the eighth stop's review). Nothing may be read from
    or written to a peer before its check."""
    a, b = two_agents  # a: workflow payments-recon, b: billing
    raw_server = socket.create_server(("127.0.0.1", 0))
    port = raw_server.getsockname()[1]
    received: list[bytes] = []
    if side == "server":  # a server admitting payments-recon only; billing connects
        serving = server_context(a, workflow="payments-recon")
        client = client_context(b, check_hostname=False)
    else:  # a client wanting a payments-recon server; billing answers
        serving = server_context(b)
        client = client_context(a, workflow="payments-recon")

    def answer_with(conn: socket.socket) -> None:
        tls = serving.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        received.append(tls.recv(100))

    thread, outcome = _one_connection(raw_server, answer_with)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            tls = client.wrap_socket(raw, do_handshake_on_connect=False)
            try:
                tls.sendall(b"secret request")
                tls.recv(100)
            except (ssl.SSLError, OSError):
                pass
            finally:
                tls.close()
        thread.join(10)
    finally:
        raw_server.close()
    assert received in ([], [b""]), received  # the request never reached the other side
    if side == "server":
        assert isinstance(outcome.get("error"), PeerRejected), outcome
