"""Real clients of a running ``cyphrs serve`` for the tests: curl, Python's ssl/http.client,
and a key+CSR maker. No HTTP library of ours: what an agent's shell or program would use."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import cli
from tests.server_process import ServerProcess


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def new_csr() -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM): a fresh P-256 key made on the 'agent' side."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def issue_offline(
    home: Path, passphrase: Path, out_dir: Path, profile: str = "agent", *args: str
) -> Path:
    """A certificate made by ``cyphrs issue`` on the CA host (the bootstrap identity)."""
    if profile == "agent" and "--workflow" not in args:
        args = ("--workflow", "serve-tests", *args)
    done = cli(
        "issue", profile, "--home", str(home), "--passphrase-file", str(passphrase),
        "--out-dir", str(out_dir), *args,
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return out_dir


def client_context(server: ServerProcess, cert_dir: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.root_pem))
    if cert_dir is not None:
        context.load_cert_chain(cert_dir / "fullchain.pem", cert_dir / "key.pem")
    return context


def request(
    server: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    cert_dir: Path | None = None,
    timeout: float = 20.0,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTPS request over Python's ssl (a fresh connection, TLS verified)."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(server, cert_dir), timeout=timeout
    )
    try:
        payload = (
            raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        )
        sent = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        return Reply(response.status, response.read(), dict(response.getheaders()))
    finally:
        connection.close()


def curl(
    server: ServerProcess,
    path: str,
    *,
    data: str | None = None,
    cert_dir: Path | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, str]:
    """curl -s against the server; (HTTP status, body); status 0 when no HTTP answer."""
    args = ["curl", "-sS", "--max-time", "20", "--cacert", str(server.root_pem)]
    if cert_dir is not None:
        args += ["--cert", str(cert_dir / "fullchain.pem"), "--key", str(cert_dir / "key.pem")]
    if data is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    args += [*extra, "-w", "\n%{http_code}", server.url + path]
    done = subprocess.run(args, input=data or "", capture_output=True, text=True, timeout=30)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body


def write_identity(directory: Path, issued: dict[str, Any], key_pem: bytes) -> Path:
    """The files an agent keeps after enroll/renew (as ``issue --out-dir`` names them)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "key.pem").write_bytes(key_pem)
    (directory / "cert.pem").write_text(issued["certificate"])
    (directory / "chain.pem").write_text(issued["chain"])
    (directory / "fullchain.pem").write_text(issued["certificate"] + issued["chain"])
    (directory / "ca.pem").write_text(issued["ca"])
    return directory
