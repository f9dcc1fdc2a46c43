"""The server's TLS: one ``ssl.SSLContext`` (TLS 1.2+, client certificates optional and
verified against the home's roots) whose certificate is the server's own, issued by the CA
it serves and swapped in place when renewed.

``SSLContext.load_cert_chain`` reads files only. The key never touches the disk in the
clear: it is written encrypted (PKCS#8, a random one-time password held in memory) to a
private temporary directory, loaded, and the directory removed at once. Calling
``load_cert_chain`` again on the live context replaces the certificate for every handshake
after it; connections already open keep theirs (tests/e2e/test_serve.py checks this).
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyphrs_cli.service.requests import IssueResult


def server_context(trust_bundle_pem: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, CERT_OPTIONAL against ``trust_bundle_pem``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=trust_bundle_pem)
    # No session tickets: a resumed session would skip the client-certificate check
    # against a certificate revoked since (the handler's ledger check still runs).
    context.options |= ssl.OP_NO_TICKET
    return context


def load_certificate(context: ssl.SSLContext, result: IssueResult) -> None:
    """Install ``result``'s certificate, chain and in-memory key in ``context``."""
    from cryptography.hazmat.primitives import serialization

    assert result.private_key is not None
    password = secrets.token_bytes(32)
    encrypted = result.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="cyphrs-serve-") as folder:  # mode 0700
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(result.bundle.fullchain)
        key_path.touch(mode=0o600)
        key_path.write_bytes(encrypted)
        context.load_cert_chain(cert_path, key_path, password=password)
