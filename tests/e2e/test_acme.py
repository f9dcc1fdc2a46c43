"""ACME (RFC 8555) in ``cyphrs serve`` against real clients on loopback: certbot and lego
obtain, renew and revoke certificates with EAB (http-01; lego also tls-alpn-01 and dns-01
through a loopback DNS server), and a jwcrypto client attacks each refusal: no EAB, wrong
HMAC, EAB reuse, a name outside the policy (refused before any challenge), a replayed
nonce, a wrong ``url`` header, a CSR with other names, a failed challenge, a validation
target outside the allow-list (no connection made), 20 concurrent finalize calls of one
order (exactly one certificate), orders surviving a restart. And: ``audit verify``
against ACME rows edited with the sqlite3 shell, lego's second certificate reusing the
authorization (no second validation request; no other account may reuse it), ARI
``replaces``, per-address limits on unsigned requests, expired orders swept.

Every server is on 127.0.0.1 with free ports; every process is stopped by its PID.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.acme_support import AcmeClient, LoopbackDns, b64
from tests.helpers import Hierarchy, build_hierarchy, cli, openssl_verify, pkilint_findings
from tests.server_process import ServerProcess, start_server

CLIENT_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AcmeCa:
    ca: Hierarchy
    dns: LoopbackDns
    server: ServerProcess
    http_port: int
    tls_port: int

    @property
    def directory(self) -> str:
        return self.server.url + "/acme/directory"

    def eab(self, *args: str) -> dict[str, Any]:
        result = cli("acme", "eab", "create", "--home", str(self.ca.home), "--json", *args)
        assert result.exit_code == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def client(self) -> AcmeClient:
        return AcmeClient(self.directory, self.ca.root_cert)

    def rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        with sqlite3.connect(self.ca.home / "ledger.sqlite3") as conn:
            conn.row_factory = sqlite3.Row
            return list(conn.execute(sql, params))


def _start(ca: Hierarchy, dns: LoopbackDns, http_port: int, tls_port: int,
           *extra: str) -> ServerProcess:
    return start_server(
        ca.home, ca.inter_pass, "--acme", "--acme-dns-resolver", dns.address,
        "--acme-http-port", str(http_port), "--acme-tls-port", str(tls_port), *extra,
    )


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCa]:
    ca = build_hierarchy(tmp_path_factory.mktemp("acme-ca"))
    dns = LoopbackDns()
    http_port, tls_port = _free_port(), _free_port()
    server = _start(ca, dns, http_port, tls_port, "--acme-allow-network", "127.0.0.0/8")
    running = AcmeCa(ca, dns, server, http_port, tls_port)
    try:
        yield running
    finally:
        running.server.stop()
        dns.close()


def _serial_of(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return format(cert.serial_number, "x").rjust(
        2 * ((cert.serial_number.bit_length() + 7) // 8), "0"
    )


def _check_certificate(acme: AcmeCa, fullchain: Path, tmp: Path, name: str) -> str:
    """openssl verify -x509_strict -purpose sslserver, pkilint, the name; the serial."""
    certs = fullchain.read_text().split("-----END CERTIFICATE-----")
    leaf, chain = tmp / "leaf.pem", tmp / "chain.pem"
    leaf.write_text(certs[0] + "-----END CERTIFICATE-----\n")
    chain.write_text("".join(c + "-----END CERTIFICATE-----\n" for c in certs[1:] if c.strip()))
    verified = openssl_verify(acme.ca.root_cert, chain, leaf, "sslserver")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert pkilint_findings("lint_pkix_cert", str(leaf)) == []
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [name]
    return _serial_of(leaf)


def _status(acme: AcmeCa, serial: str) -> str:
    (row,) = acme.rows("SELECT status FROM certificates WHERE serial = ?", serial)
    return str(row["status"])


# -- real clients --------------------------------------------------------------------


def _certbot(acme: AcmeCa, base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["certbot", *args, "--non-interactive", "--config-dir", str(base / "config"),
         "--work-dir", str(base / "work"), "--logs-dir", str(base / "logs")],
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(acme.ca.root_cert)},
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
    )


@pytest.mark.skipif(shutil.which("certbot") is None, reason="Debian certbot not installed")
def test_certbot_obtains_renews_and_revokes_with_eab_over_http01(
    acme: AcmeCa, tmp_path: Path
) -> None:
    key = acme.eab("--profile", "server", "--dns-pattern", "*.svc.acme.internal")
    name = "api.svc.acme.internal"
    obtained = _certbot(
        acme, tmp_path, "certonly", "--server", acme.directory, "--agree-tos",
        "--email", "ops@acme.internal", "--eab-kid", key["kid"], "--eab-hmac-key",
        key["hmac_key"], "--standalone", "--http-01-port", str(acme.http_port),
        "--http-01-address", "127.0.0.1", "--key-type", "ecdsa", "-d", name,
    )
    assert obtained.returncode == 0, obtained.stdout + obtained.stderr
    live = tmp_path / "config" / "live" / name
    first = _check_certificate(acme, live / "fullchain.pem", tmp_path, name)
    # The issuance is an ordinary ledger row, and the events name the account and order.
    (event,) = [
        json.loads(r["details"]) for r in acme.rows(
            "SELECT details FROM events WHERE type = 'acme.order.finalized'")
        if json.loads(r["details"])["serial"] == first
    ]
    (account,) = acme.rows("SELECT * FROM acme_accounts WHERE eab_kid = ?", key["kid"])
    assert event["account"] == account["account_id"] and event["order"].startswith("ord_")
    (cert_row,) = acme.rows("SELECT requester FROM certificates WHERE serial = ?", first)
    assert cert_row["requester"] == f"acme:{account['account_id']}"

    renewed = _certbot(acme, tmp_path, "renew", "--force-renewal", "--no-random-sleep-on-renew",
                       "--cert-name", name)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = _check_certificate(acme, live / "fullchain.pem", tmp_path, name)
    assert second != first

    revoked = _certbot(acme, tmp_path, "revoke", "--cert-name", name, "--reason",
                       "keycompromise", "--no-delete-after-revoke")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert _status(acme, second) == "revoked"
    assert _status(acme, first) == "valid"


def _lego(acme: AcmeCa, path: Path, key: dict[str, Any], *args: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["lego", "--server", acme.directory, "--path", str(path), "--accept-tos",
         "--email", "ops@acme.internal", "--eab", "--kid", key["kid"], "--hmac",
         key["hmac_key"], *args],
        env={**os.environ, "LEGO_CA_CERTIFICATES": str(acme.ca.root_cert), **(env or {})},
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
    )


@pytest.mark.skipif(shutil.which("lego") is None, reason="Debian lego not installed")
def test_lego_http01_renew_revoke_then_tls_alpn01_and_dns01(acme: AcmeCa, tmp_path: Path) -> None:
    key = acme.eab("--dns-pattern", "*.svc.acme.internal")
    path = tmp_path / "lego"
    http = ("--http", "--http.port", f"127.0.0.1:{acme.http_port}")
    name = "web.svc.acme.internal"
    run = _lego(acme, path, key, *http, "--domains", name, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    crt = path / "certificates" / f"{name}.crt"
    first = _check_certificate(acme, crt, tmp_path, name)
    renew = _lego(acme, path, key, *http, "--domains", name, "renew", "--days", "99999",
                  "--no-random-sleep")
    assert renew.returncode == 0, renew.stdout + renew.stderr
    second = _check_certificate(acme, crt, tmp_path, name)
    assert second != first
    revoke = _lego(acme, path, key, "--domains", name, "revoke", "--keep")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert _status(acme, second) == "revoked"

    # tls-alpn-01 (RFC 8737): the validator dials the configured TLS port.
    alpn_name = "alpn.svc.acme.internal"
    run = _lego(acme, path, key, "--tls", "--tls.port", f"127.0.0.1:{acme.tls_port}",
                "--domains", alpn_name, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    _check_certificate(acme, path / "certificates" / f"{alpn_name}.crt", tmp_path, alpn_name)

    # dns-01: lego's exec provider writes the TXT record where the loopback DNS serves it.
    txt_file = tmp_path / "txt.json"
    hook = tmp_path / "dns-hook.py"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"path = {str(txt_file)!r}\n"
        "action, fqdn, value = sys.argv[1:4]\n"
        "if action == 'present':\n"
        "    open(path, 'w').write(json.dumps({fqdn.rstrip('.'): value}))\n"
    )
    hook.chmod(0o700)
    acme.dns.txt_file = txt_file
    dns_name = "dns.svc.acme.internal"
    run = _lego(
        acme, path, key, "--dns", "exec", "--dns.resolvers", acme.dns.address,
        "--dns.disable-cp", "--domains", dns_name, "run",
        env={"EXEC_PATH": str(hook), "EXEC_POLLING_INTERVAL": "1",
             "EXEC_PROPAGATION_TIMEOUT": "20", "PYTHON": "python3"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    _check_certificate(acme, path / "certificates" / f"{dns_name}.crt", tmp_path, dns_name)
    assert ("_acme-challenge.dns.svc.acme.internal", "TXT") in acme.dns.queries


# -- refusals (the jwcrypto client) ----------------------------------------------------


def _problem(document: Any, kind: str) -> None:
    assert isinstance(document, dict), document
    assert document["type"] == f"urn:ietf:params:acme:error:{kind}", document


def test_new_account_without_eab_is_refused(acme: AcmeCa) -> None:
    client = acme.client()
    status, headers, document = client.register(None, None)
    assert status == 403
    _problem(document, "externalAccountRequired")
    assert headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(client._http("GET", acme.directory)[2])["meta"][
        "externalAccountRequired"] is True


def test_wrong_hmac_and_eab_reuse_are_refused(acme: AcmeCa) -> None:
    key = acme.eab("--dns-pattern", "*.svc.acme.internal")
    wrong = b64(b"\x00" * 32)
    status, _, document = acme.client().register(key["kid"], wrong)
    assert status == 403
    _problem(document, "unauthorized")
    assert acme.rows("SELECT * FROM acme_eab_keys WHERE kid = ?", key["kid"])[0][
        "account_id"] is None
    status, _, _ = acme.client().register(key["kid"], key["hmac_key"])
    assert status == 201
    status, _, document = acme.client().register(key["kid"], key["hmac_key"])
    assert status == 403
    _problem(document, "unauthorized")
    assert "bound" in document["detail"] or "used" in document["detail"]


def _account(acme: AcmeCa, *patterns: str) -> AcmeClient:
    key = acme.eab(*patterns)
    client = acme.client()
    status, _, document = client.register(key["kid"], key["hmac_key"])
    assert status == 201, document
    return client


def test_name_outside_the_policy_is_refused_before_any_challenge(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    orders_before = len(acme.rows("SELECT * FROM acme_orders"))
    queries_before = len(acme.dns.queries)
    for value in ("api.other.internal", "a.b.svc.acme.internal", "svc.acme.internal"):
        status, _, document = client.post(
            client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": value}]})
        assert status == 400, value
        _problem(document, "rejectedIdentifier")
    status, _, document = client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]})
    _problem(document, "rejectedIdentifier")
    assert len(acme.rows("SELECT * FROM acme_orders")) == orders_before
    assert len(acme.dns.queries) == queries_before  # nothing was resolved or dialled


def test_replayed_nonce_and_wrong_url_are_refused(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    url = client.kid
    assert url is not None
    nonce = client.fresh_nonce()
    status, _, _ = client.post(url, None, nonce=nonce)
    assert status == 200
    status, headers, document = client.post(url, None, nonce=nonce)
    assert status == 400
    _problem(document, "badNonce")
    assert headers["Replay-Nonce"]  # the client can retry with this one
    status, _, document = client.post(url, None, url_header=client.directory["newOrder"])
    assert status == 401
    _problem(document, "unauthorized")
    # A signature by another key under this account's kid.
    from jwcrypto import jwk

    status, _, document = client.post(url, None, key=jwk.JWK.generate(kty="EC", crv="P-256"))
    assert status == 400
    _problem(document, "malformed")


class _Responder:
    """An http-01 responder on the validation port (a real HTTP server on 127.0.0.1)."""

    def __init__(self, port: int) -> None:
        self.answers: dict[str, str] = {}
        self.hits = 0
        answers, outer = self.answers, self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                token = self.path.rsplit("/", 1)[-1]
                body = answers.get(token, "").encode()
                self.send_response(200 if body else 404)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _csr(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _poll(client: AcmeClient, url: str, until: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, _, document = client.post(url, None)
        assert status == 200, document
        if document["status"] in until:
            return dict(document)
        time.sleep(0.2)
    raise AssertionError(f"{url} still {document['status']}")


def _ready_order(acme: AcmeCa, client: AcmeClient, name: str, answer: bool = True
                 ) -> tuple[str, dict[str, Any]]:
    status, headers, order = client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
    assert status == 201, order
    (authz_url,) = order["authorizations"]
    _, _, authz = client.post(authz_url, None)
    (challenge,) = [c for c in authz["challenges"] if c["type"] == "http-01"]
    thumbprint = client.key.thumbprint()
    responder = _Responder(acme.http_port)
    try:
        if answer:
            responder.answers[challenge["token"]] = f"{challenge['token']}.{thumbprint}"
        client.post(challenge["url"], {})
        authz = _poll(client, authz_url, ("valid", "invalid"))
    finally:
        responder.close()
    return headers["Location"], authz


def test_failed_challenge_invalidates_the_order(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    order_url, authz = _ready_order(acme, client, "fail.svc.acme.internal", answer=False)
    assert authz["status"] == "invalid"
    (challenge,) = [c for c in authz["challenges"] if c["type"] == "http-01"]
    assert challenge["error"]["type"] == "urn:ietf:params:acme:error:unauthorized"
    _, _, order = client.post(order_url, None)
    assert order["status"] == "invalid"
    status, _, document = client.post(order["finalize"],
                                      {"csr": b64(_csr("fail.svc.acme.internal"))})
    assert status == 403
    _problem(document, "orderNotReady")


def test_csr_with_other_names_is_refused(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "csr.svc.acme.internal"
    order_url, authz = _ready_order(acme, client, name)
    assert authz["status"] == "valid"
    _, _, order = client.post(order_url, None)
    assert order["status"] == "ready"
    for names in ((name, "extra.svc.acme.internal"), ("other.svc.acme.internal",)):
        status, _, document = client.post(order["finalize"], {"csr": b64(_csr(*names))})
        assert status == 400
        _problem(document, "badCSR")
    _, _, order = client.post(order_url, None)
    assert order["status"] == "ready"  # a refused CSR spends nothing


def test_twenty_concurrent_finalize_calls_issue_exactly_one_certificate_after_restart(
    acme: AcmeCa,
) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "race.svc.acme.internal"
    order_url, authz = _ready_order(acme, client, name)
    assert authz["status"] == "valid"
    # Orders and authorizations are ledger rows: a restart keeps them.
    acme.server.stop()
    acme.server = _start(acme.ca, acme.dns, acme.http_port, acme.tls_port,
                         "--acme-allow-network", "127.0.0.0/8")
    client = AcmeClient(acme.directory, acme.ca.root_cert, key=client.key, kid=client.kid)
    client.kid = client.kid.replace(client.kid.split("/acme/")[0], acme.server.url)
    order_url = order_url.replace(order_url.split("/acme/")[0], acme.server.url)
    _, _, order = client.post(order_url, None)
    assert order["status"] == "ready", order
    csr = b64(_csr(name))
    bodies = [client.sign(order["finalize"], {"csr": csr}, nonce=client.fresh_nonce())
              for _ in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda b: client._http("POST", order["finalize"], b), bodies))
    statuses = sorted(a[0] for a in answers)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(403) == 19, statuses
    order_id = order_url.rsplit("/", 1)[1]
    finalized = [r for r in acme.rows("SELECT details FROM events WHERE type ="
                                      " 'acme.order.finalized'")
                 if json.loads(r["details"])["order"] == order_id]
    assert len(finalized) == 1
    account_id = client.kid.rsplit("/", 1)[1]
    issued = acme.rows("SELECT serial FROM certificates WHERE requester = ?",
                       f"acme:{account_id}")
    assert len(issued) == 1
    _, _, order = client.post(order_url, None)
    assert order["status"] == "valid"
    status, headers, chain = client._http("POST", order["certificate"],
                                          client.sign(order["certificate"], None))
    assert status == 200 and headers["Content-Type"] == "application/pem-certificate-chain"
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    # revokeCert signed by the certificate's own key is the other way; by account here.
    der = x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER)
    status, _, _ = client.post(client.directory["revokeCert"], {"certificate": b64(der)})
    assert status == 200
    assert _status(acme, issued[0]["serial"]) == "revoked"
    status, _, document = client.post(client.directory["revokeCert"],
                                      {"certificate": b64(der)})
    _problem(document, "alreadyRevoked")


def test_validation_never_dials_outside_the_allow_list(tmp_path: Path) -> None:
    ca = build_hierarchy(tmp_path / "ca")
    dns = LoopbackDns()
    http_port = _free_port()
    server = _start(ca, dns, http_port, _free_port())  # default allow-list: no loopback
    responder = _Responder(http_port)
    try:
        running = AcmeCa(ca, dns, server, http_port, 0)
        client = _account(running, "--dns-pattern", "*.svc.acme.internal")
        status, _, order = client.post(
            client.directory["newOrder"],
            {"identifiers": [{"type": "dns", "value": "loop.svc.acme.internal"}]})
        assert status == 201
        (authz_url,) = order["authorizations"]
        _, _, authz = client.post(authz_url, None)
        (challenge,) = [c for c in authz["challenges"] if c["type"] == "http-01"]
        responder.answers[challenge["token"]] = f"{challenge['token']}.{client.key.thumbprint()}"
        client.post(challenge["url"], {})
        authz = _poll(client, authz_url, ("valid", "invalid"))
        assert authz["status"] == "invalid"
        (failed,) = [c for c in authz["challenges"] if c["type"] == "http-01"]
        assert failed["error"]["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
        assert responder.hits == 0  # the name resolved to 127.0.0.1; nothing was dialled
    finally:
        responder.close()
        server.stop()
        dns.close()


@pytest.mark.parametrize(
    ("kty", "params", "alg"),
    [
        ("EC", {"crv": "P-384"}, "ES384"),
        ("RSA", {"size": 2048}, "RS256"),
        ("OKP", {"crv": "Ed25519"}, "EdDSA"),
    ],
)
def test_account_key_algorithms(acme: AcmeCa, kty: str, params: dict[str, Any], alg: str
                                ) -> None:
    from jwcrypto import jwk

    key = acme.eab("--dns-pattern", "*.svc.acme.internal")
    client = AcmeClient(acme.directory, acme.ca.root_cert,
                        key=jwk.JWK.generate(kty=kty, **params))
    payload = {"termsOfServiceAgreed": True,
               "externalAccountBinding": client.eab(key["kid"], key["hmac_key"])}
    status, headers, document = client.post(client.directory["newAccount"], payload,
                                            use_jwk=True, alg=alg)
    assert status == 201, document
    client.kid = headers["Location"]
    status, _, document = client.post(client.kid, None, alg=alg)
    assert status == 200 and document["status"] == "valid"
    # The same key under a mismatched algorithm is refused.
    wrong = "ES256" if alg != "ES256" else "RS256"
    try:
        body = client.sign(client.kid, None, alg=wrong)
    except Exception:  # jwcrypto refuses to sign with a key of another type: also a pass
        return
    status, _, data = client._http("POST", client.kid, body)
    assert status == 400, data
    assert json.loads(data)["type"] in (
        "urn:ietf:params:acme:error:badPublicKey", "urn:ietf:params:acme:error:malformed")


def test_small_rsa_key_and_unknown_alg_are_refused(acme: AcmeCa) -> None:
    from jwcrypto import jwk

    client = AcmeClient(acme.directory, acme.ca.root_cert,
                        key=jwk.JWK.generate(kty="RSA", size=1024))
    status, _, document = client.post(client.directory["newAccount"],
                                      {"termsOfServiceAgreed": True}, use_jwk=True,
                                      alg="RS256")
    assert status == 400
    _problem(document, "badPublicKey")
    # HS256 "signed" with a published key: refused before any verification.
    import hashlib
    import hmac

    hmac_client = acme.client()
    url = hmac_client.directory["newAccount"]
    protected = b64(json.dumps({"alg": "HS256", "url": url, "nonce": hmac_client.fresh_nonce(),
                                "jwk": hmac_client.public_jwk()}).encode())
    payload = b64(b"{}")
    mac = hmac.new(b"k" * 32, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
    body = json.dumps({"protected": protected, "payload": payload, "signature": b64(mac)})
    status, _, data = hmac_client._http("POST", url, body.encode())
    assert status == 400
    _problem(json.loads(data), "badSignatureAlgorithm")


def test_key_change_deactivation_and_revoked_eab(acme: AcmeCa) -> None:
    from jwcrypto import jwk, jws

    key = acme.eab("--dns-pattern", "*.svc.acme.internal")
    client = acme.client()
    assert client.register(key["kid"], key["hmac_key"])[0] == 201
    new_key = jwk.JWK.generate(kty="EC", crv="P-256")
    url = client.directory["keyChange"]
    inner = jws.JWS(json.dumps({"account": client.kid, "oldKey": client.public_jwk()}).encode())
    inner.add_signature(new_key, "ES256", protected=json.dumps(
        {"alg": "ES256", "url": url, "jwk": dict(new_key.export_public(as_dict=True))}))
    status, _, document = client.post(url, json.loads(inner.serialize()))
    assert status == 200, document
    old_key, client.key = client.key, new_key
    assert client.post(client.kid, None)[0] == 200
    status, _, document = client.post(client.kid, None, key=old_key)
    _problem(document, "malformed")  # the old key no longer signs for the account
    # A revoked EAB key stops its account from ordering.
    assert cli("acme", "eab", "revoke", key["kid"], "--home", str(acme.ca.home)).exit_code == 0
    status, _, document = client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "x.svc.acme.internal"}]})
    assert status == 403
    _problem(document, "unauthorized")
    # Deactivation is final.
    status, _, document = client.post(client.kid, {"status": "deactivated"})
    assert status == 200 and document["status"] == "deactivated"
    status, _, document = client.post(client.kid, None)
    assert status == 401
    _problem(document, "unauthorized")


def test_revoke_by_certificate_key(acme: AcmeCa) -> None:
    from jwcrypto import jwk

    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "bykey.svc.acme.internal"
    order_url, _ = _ready_order(acme, client, name)
    _, _, order = client.post(order_url, None)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(cert_key, hashes.SHA256())
    )
    status, _, order = client.post(order["finalize"], {"csr": b64(csr.public_bytes(
        serialization.Encoding.DER))})
    assert status == 200 and order["status"] == "valid", order
    _, _, chain = client._http("POST", order["certificate"], client.sign(order["certificate"],
                                                                         None))
    leaf = x509.load_pem_x509_certificate(chain)
    der = leaf.public_bytes(serialization.Encoding.DER)
    # ARI (RFC 9773): the suggested window, unauthenticated, before and after revocation.
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    number = leaf.serial_number
    cert_id = b64(aki.key_identifier) + "." + b64(number.to_bytes(number.bit_length() // 8 + 1,
                                                                   "big"))
    ari = client.directory["renewalInfo"] + "/" + cert_id
    status, headers, data = client._http("GET", ari)
    assert status == 200 and int(headers["Retry-After"]) >= 60, data
    window = json.loads(data)["suggestedWindow"]
    assert window["start"] > leaf.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert window["end"] < leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client._http("GET", client.directory["renewalInfo"] + "/AAAA.AAAA")[0] == 404
    stranger = acme.client()  # a key that is neither the account's nor the certificate's
    status, _, document = stranger.post(stranger.directory["revokeCert"],
                                        {"certificate": b64(der)}, use_jwk=True)
    assert status == 403
    _problem(document, "unauthorized")
    owner = jwk.JWK.from_pyca(cert_key)
    holder = AcmeClient(acme.directory, acme.ca.root_cert, key=owner)
    status, _, document = holder.post(holder.directory["revokeCert"],
                                      {"certificate": b64(der), "reason": 1}, use_jwk=True)
    assert status == 200, document
    serial = format(leaf.serial_number, "x").rjust(
        2 * ((leaf.serial_number.bit_length() + 7) // 8), "0")
    assert _status(acme, serial) == "revoked"
    revoked_window = json.loads(client._http("GET", ari)[2])["suggestedWindow"]
    assert revoked_window["end"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
        time.time() + 5))  # renew now


def test_ip_identifier_rfc8738_new_nonce_and_retry_after(acme: AcmeCa) -> None:
    client = _account(acme, "--ip-network", "127.0.0.0/8")
    status, headers, _ = client._http("GET", client.directory["newNonce"])
    assert status == 204 and headers["Replay-Nonce"] and headers["Cache-Control"] == "no-store"
    status, headers, _ = client._http("HEAD", client.directory["newNonce"])
    assert status == 200 and headers["Replay-Nonce"]
    status, headers, order = client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]})
    assert status == 201, order
    status, headers, _ = client.post(headers["Location"], None)
    assert headers["Retry-After"] == "1"  # pending: poll again later
    (authz_url,) = order["authorizations"]
    _, _, authz = client.post(authz_url, None)
    assert {c["type"] for c in authz["challenges"]} == {"http-01", "tls-alpn-01"}
    (challenge,) = [c for c in authz["challenges"] if c["type"] == "http-01"]
    responder = _Responder(acme.http_port)
    try:
        responder.answers[challenge["token"]] = f"{challenge['token']}.{client.key.thumbprint()}"
        client.post(challenge["url"], {})
        assert _poll(client, authz_url, ("valid", "invalid"))["status"] == "valid"
    finally:
        responder.close()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    status, _, order = client.post(order["finalize"], {"csr": b64(csr.public_bytes(
        serialization.Encoding.DER))})
    assert status == 200 and order["status"] == "valid", order
    _, _, chain = client._http("POST", order["certificate"],
                               client.sign(order["certificate"], None))
    leaf = x509.load_pem_x509_certificate(chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_requests_per_account_and_per_address_are_rate_limited(tmp_path: Path) -> None:
    ca = build_hierarchy(tmp_path / "ca")
    dns = LoopbackDns()
    server = _start(ca, dns, _free_port(), _free_port(), "--acme-rate", "4/m")
    try:
        running = AcmeCa(ca, dns, server, 0, 0)
        client = _account(running, "--dns-pattern", "*.svc.acme.internal")  # by its key
        assert client.kid is not None
        statuses = [client.post(client.kid, None) for _ in range(5)]  # by its account
        assert [s for s, _, _ in statuses] == [200, 200, 200, 200, 429]
        _, headers, document = statuses[-1]
        _problem(document, "rateLimited")
        assert int(headers["Retry-After"]) >= 1
        # Requests without a JWS (directory, newNonce, renewalInfo) count per client
        # address: the two clients' directory requests spent 2 of this address's 4.
        other = _account(running, "--dns-pattern", "*.svc.acme.internal")  # its own budget
        assert other.post(str(other.kid), None)[0] == 200
        public = [(method, url, *other._http(method, url)) for method, url in (
            ("GET", running.directory), ("HEAD", other.directory["newNonce"]),
            ("GET", other.directory["newNonce"]), ("HEAD", other.directory["newNonce"]),
            ("GET", other.directory["renewalInfo"] + "/AAAA.AAAA"))]
        assert [p[2] for p in public] == [200, 200, 429, 429, 429], public
        for method, _, _, headers, data in public[2:]:
            assert int(headers["Retry-After"]) >= 1
            if method == "GET":
                _problem(json.loads(data), "rateLimited")
        assert other.post(str(other.kid), None)[0] == 200  # accounts keep their own budget
    finally:
        server.stop()
        dns.close()


class _Webroot:
    """A web server over a webroot directory (lego ``--http.webroot`` writes the challenge
    file there) that counts the validation requests it answers."""

    def __init__(self, port: int, root: Path) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                target = root / self.path.lstrip("/")
                body = target.read_bytes() if target.is_file() else b""
                self.send_response(200 if body else 404)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _events(acme: AcmeCa, kind: str) -> list[dict[str, Any]]:
    return [json.loads(r["details"]) for r in acme.rows(
        "SELECT details FROM events WHERE type = ? ORDER BY seq", kind)]


@pytest.mark.skipif(shutil.which("lego") is None, reason="Debian lego not installed")
def test_lego_second_certificate_reuses_the_authorization_but_no_other_account_does(
    acme: AcmeCa, tmp_path: Path
) -> None:
    key = acme.eab("--dns-pattern", "*.svc.acme.internal")
    path, webroot = tmp_path / "lego", tmp_path / "webroot"
    webroot.mkdir()
    name = "reuse.svc.acme.internal"
    http = ("--http", "--http.webroot", str(webroot))
    responder = _Webroot(acme.http_port, webroot)
    try:
        run = _lego(acme, path, key, *http, "--domains", name, "run")
        assert run.returncode == 0, run.stdout + run.stderr
        first = _check_certificate(acme, path / "certificates" / f"{name}.crt", tmp_path, name)
        validations = len(responder.hits)
        assert validations >= 1  # the first order was validated over http-01
        run = _lego(acme, path, key, *http, "--domains", name, "run")
        assert run.returncode == 0, run.stdout + run.stderr
        second = _check_certificate(acme, path / "certificates" / f"{name}.crt", tmp_path,
                                    name)
        assert second != first
        assert len(responder.hits) == validations  # no second validation request
    finally:
        responder.close()
    valid = [e for e in _events(acme, "acme.challenge.valid")
             if e["identifier"] == f"dns:{name}"]
    assert len(valid) == 1
    created = [e for e in _events(acme, "acme.order.created")
               if e["identifiers"] == [f"dns:{name}"]]
    assert len(created) == 2 and created[1]["reused"] == {f"dns:{name}": valid[0]["order"]}
    # Another account with the same name policy must prove control itself.
    other = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    status, _, order = other.post(other.directory["newOrder"],
                                  {"identifiers": [{"type": "dns", "value": name}]})
    assert status == 201 and order["status"] == "pending", order
    _, _, authz = other.post(order["authorizations"][0], None)
    assert authz["status"] == "pending"
    assert {c["status"] for c in authz["challenges"]} == {"pending"}


def _sqlite(home: Path, sql: str, **ids: str) -> None:
    """Edit the ledger with the sqlite3 shell, as someone with write access would
    (``:name`` parameters bound from ``ids``)."""
    script = "".join(f".parameter set :{k} '{v}'\n" for k, v in ids.items()) + sql + ";\n"
    done = subprocess.run(["sqlite3", str(home / "ledger.sqlite3")], input=script, text=True,
                          check=True, capture_output=True, timeout=30)
    assert done.stderr == "", done.stderr


def _audit_problems(home: Path) -> list[str]:
    result = cli("audit", "verify", "--json", "--home", str(home))
    return list(json.loads(result.stdout)["problems"])


def test_audit_verify_catches_edited_acme_state(acme: AcmeCa, tmp_path: Path) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    account = str(client.kid).rsplit("/", 1)[1]
    name = "audit.svc.acme.internal"
    first_url, authz = _ready_order(acme, client, name)
    assert authz["status"] == "valid"
    _, _, order = client.post(first_url, None)
    status, _, order = client.post(order["finalize"], {"csr": b64(_csr(name))})
    assert status == 200 and order["status"] == "valid", order
    # A second order for the name reuses the valid authorization: ready at once.
    status, headers, again = client.post(client.directory["newOrder"],
                                         {"identifiers": [{"type": "dns", "value": name}]})
    assert status == 201 and again["status"] == "ready", again
    second = headers["Location"].rsplit("/", 1)[1]
    status, headers, pending = client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "pending.svc.acme.internal"}]})
    assert status == 201 and pending["status"] == "pending"
    third = headers["Location"].rsplit("/", 1)[1]
    first = first_url.rsplit("/", 1)[1]
    home = tmp_path / "clean"
    shutil.copytree(acme.ca.home, home)
    assert _audit_problems(home) == []
    ids = {"first": first, "second": second, "third": third, "account": account}
    attacks = [
        ("UPDATE acme_orders SET status = 'pending' WHERE order_id = :first",
         first, "acme.order.finalized"),
        ("UPDATE acme_orders SET identifiers = '[{\"type\": \"dns\", \"value\":"
         " \"evil.svc.acme.internal\"}]' WHERE order_id = :second", second, "edited"),
        ("UPDATE acme_authorizations SET identifier = 'evil.svc.acme.internal'"
         " WHERE order_id = :second", "ACME authorization", "identifier"),
        ("UPDATE acme_orders SET status = 'valid' WHERE order_id = :third",
         third, "without an acme.order.finalized"),
        ("UPDATE acme_orders SET status = 'ready' WHERE order_id = :third",
         third, "without a valid challenge"),
        ("UPDATE acme_authorizations SET status = 'valid' WHERE order_id = :third",
         "ACME authorization", "valid without a valid challenge"),
        ("UPDATE acme_challenges SET status = 'valid' WHERE authz_id IN (SELECT authz_id"
         " FROM acme_authorizations WHERE order_id = :third)", "ACME challenge",
         "without an acme.challenge.valid"),
        ("UPDATE acme_orders SET certificate_pem = (SELECT pem FROM certificates WHERE"
         " is_ca = 1 LIMIT 1) WHERE order_id = :first", first, "certificate link"),
        ("UPDATE acme_orders SET certificate_serial = (SELECT serial FROM certificates"
         " WHERE serial != certificate_serial LIMIT 1) WHERE order_id = :first",
         first, "acme.order.finalized"),
        ("UPDATE acme_orders SET profile = 'admin' WHERE order_id = :third", third, "profile"),
        ("UPDATE acme_accounts SET status = 'deactivated' WHERE account_id = :account",
         account, "status"),
        ("UPDATE acme_accounts SET jwk_thumbprint = 'AAAA', jwk = '{}'"
         " WHERE account_id = :account", account, "swapped"),
        ("DELETE FROM acme_challenges WHERE authz_id IN (SELECT authz_id FROM"
         " acme_authorizations WHERE order_id = :third); DELETE FROM acme_authorizations"
         " WHERE order_id = :third; DELETE FROM acme_orders WHERE order_id = :third",
         third, "deleted"),
        ("INSERT INTO acme_orders (order_id, account_id, status, identifiers, profile,"
         " expires_at, created_at) VALUES ('ord_forged', :account, 'ready', '[]', 'server',"
         " '2099-01-01T00:00:00Z', '2026-01-01T00:00:00Z')", "ord_forged", "forged"),
    ]
    for number, (statement, subject, expected) in enumerate(attacks):
        attacked = tmp_path / f"attack-{number}"
        shutil.copytree(home, attacked)
        _sqlite(attacked, statement, **ids)
        found = _audit_problems(attacked)
        assert any(expected in p and subject in p for p in found), (statement, found)


def test_expired_orders_are_swept_consistently(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    status, headers, order = client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "late.svc.acme.internal"}]})
    assert status == 201
    order_id = headers["Location"].rsplit("/", 1)[1]
    orders_url = f"{client.kid}/orders"
    assert client.post(orders_url, None)[2]["orders"] == [headers["Location"]]
    (row,) = acme.rows("SELECT expires_at FROM acme_orders WHERE order_id = ?", order_id)
    _sqlite(acme.ca.home, "UPDATE acme_orders SET expires_at = '2000-01-01T00:00:00Z'"
            " WHERE order_id = :order", order=order_id)
    try:
        # The listing sweeps first: the expired order is gone from it and invalid in the
        # ledger and to a read, with the same problem.
        assert client.post(orders_url, None)[2]["orders"] == []
        (swept,) = acme.rows("SELECT status, error FROM acme_orders WHERE order_id = ?",
                             order_id)
        assert swept["status"] == "invalid"
        _, _, read = client.post(headers["Location"], None)
        assert read["status"] == "invalid" and read["error"] == json.loads(swept["error"])
        status, _, document = client.post(order["finalize"],
                                          {"csr": b64(_csr("late.svc.acme.internal"))})
        assert status == 403
        _problem(document, "orderNotReady")
    finally:  # the row matches its acme.order.created event again (audit stays clean)
        _sqlite(acme.ca.home, "UPDATE acme_orders SET expires_at = :expires"
                " WHERE order_id = :order", order=order_id, expires=str(row["expires_at"]))


def _ari_id(leaf: x509.Certificate) -> str:
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    number = leaf.serial_number
    return b64(aki.key_identifier) + "." + b64(number.to_bytes(number.bit_length() // 8 + 1,
                                                                "big"))


def _finalized_leaf(client: AcmeClient, order: dict[str, Any], name: str
                    ) -> x509.Certificate:
    status, _, order = client.post(order["finalize"], {"csr": b64(_csr(name))})
    assert status == 200 and order["status"] == "valid", order
    _, _, chain = client._http("POST", order["certificate"],
                               client.sign(order["certificate"], None))
    return x509.load_pem_x509_certificate(chain)


def test_new_order_replaces_is_linked_in_the_ledger(acme: AcmeCa, tmp_path: Path) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "ari.svc.acme.internal"
    order_url, _ = _ready_order(acme, client, name)
    _, _, order = client.post(order_url, None)
    old = _finalized_leaf(client, order, name)
    old_id = _ari_id(old)
    identifiers = [{"type": "dns", "value": name}]
    status, headers, order = client.post(client.directory["newOrder"],
                                         {"identifiers": identifiers, "replaces": old_id})
    assert status == 201 and order["status"] == "ready", order  # authorization reused
    assert order["replaces"] == old_id  # reflected (RFC 9773 §5)
    new = _finalized_leaf(client, order, name)
    (old_row,) = acme.rows("SELECT id, status FROM certificates WHERE fingerprint = ?",
                           "sha256:" + old.fingerprint(hashes.SHA256()).hex())
    (new_row,) = acme.rows("SELECT replaces_id FROM certificates WHERE fingerprint = ?",
                           "sha256:" + new.fingerprint(hashes.SHA256()).hex())
    assert new_row["replaces_id"] == old_row["id"] and old_row["status"] == "superseded"
    order_id = headers["Location"].rsplit("/", 1)[1]
    (created,) = [e for e in _events(acme, "acme.order.created") if e["order"] == order_id]
    assert created["replaces"] == old_row["id"]
    # ARI now says: renew at once (superseded); a second replacement is refused.
    window = json.loads(client._http("GET", client.directory["renewalInfo"] + "/" + old_id)[2])
    assert window["suggestedWindow"]["end"] <= time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    status, _, document = client.post(client.directory["newOrder"],
                                      {"identifiers": identifiers, "replaces": old_id})
    assert status == 409
    _problem(document, "alreadyReplaced")
    # Another account cannot claim to replace this account's certificate.
    other = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    status, _, document = other.post(other.directory["newOrder"],
                                     {"identifiers": identifiers, "replaces": _ari_id(new)})
    assert status == 403
    _problem(document, "unauthorized")
    for bad in ("nope", 7, "AAAA.AAAA"):
        status, _, document = client.post(client.directory["newOrder"],
                                          {"identifiers": identifiers, "replaces": bad})
        assert status in (400, 404), (bad, document)
    # The link is audited like the rest of the order.
    home = tmp_path / "home"
    shutil.copytree(acme.ca.home, home)
    _sqlite(home, "UPDATE acme_orders SET replaces_certificate_id = NULL"
            " WHERE order_id = :order", order=order_id)
    assert any("replaces_certificate_id" in p and order_id in p
               for p in _audit_problems(home))


def test_deactivating_an_authorization_ends_its_reuse(acme: AcmeCa) -> None:
    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "deact.svc.acme.internal"
    first_url, authz = _ready_order(acme, client, name)
    assert authz["status"] == "valid"
    identifiers = {"identifiers": [{"type": "dns", "value": name}]}
    status, _, reused = client.post(client.directory["newOrder"], identifiers)
    assert status == 201 and reused["status"] == "ready", reused
    (copy_url,) = reused["authorizations"]
    status, _, copy = client.post(copy_url, {"status": "deactivated"})
    assert status == 200 and copy["status"] == "deactivated", copy
    _, _, first = client.post(first_url, None)
    _, _, original = client.post(first["authorizations"][0], None)
    assert original["status"] == "deactivated"  # the original and every copy
    status, _, fresh = client.post(client.directory["newOrder"], identifiers)
    assert status == 201 and fresh["status"] == "pending", fresh
    _, _, again = client.post(fresh["authorizations"][0], None)
    assert again["status"] == "pending"


def test_reuse_is_bounded_by_the_authorization_lifetime(acme: AcmeCa) -> None:
    from datetime import UTC, datetime, timedelta

    client = _account(acme, "--dns-pattern", "*.svc.acme.internal")
    name = "stale.svc.acme.internal"
    _, authz = _ready_order(acme, client, name)
    assert authz["status"] == "valid"
    (done,) = [c for c in authz["challenges"] if c["status"] == "valid"]
    validated = datetime.strptime(done["validated"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC)
    expires = datetime.strptime(authz["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC)
    assert expires - validated == timedelta(hours=24)  # AUTHZ_REUSE
    # An authorization about to expire (inside the 5-minute margin) is not reused.
    soon = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _sqlite(acme.ca.home, "UPDATE acme_authorizations SET expires_at = :soon WHERE"
            " account_id = :account AND identifier = :name", soon=soon, name=name,
            account=str(client.kid).rsplit("/", 1)[1])
    status, _, order = client.post(client.directory["newOrder"],
                                   {"identifiers": [{"type": "dns", "value": name}]})
    assert status == 201 and order["status"] == "pending", order
