"""A Python service that admits only agents with an allowed SPIFFE ID (mTLS, CRL-checked).

Run:
    cyphrs trust-bundle --out ca.pem           # the root(s): the only trust anchor
    cyphrs crl --all --out crls.pem            # every CA's CRL (root included)
    python3 spiffe_server.py server-fullchain.pem server-key.pem ca.pem crls.pem 8443 \
        spiffe://acme.internal/agent/billing [more allowed IDs ...]

Each accepted connection gets one line "ok <spiffe-id>"; every refusal is logged on
stderr as "refused: <reason>". Standard library only (Python >= 3.10).
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Any


def tls_context(cert: str, key: str, trust: str, crls: str) -> ssl.SSLContext:
    """Require a client certificate chaining to ``trust``, with every CA's CRL checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=trust)
    # The CRLs of the issuing CA *and* the root: CHECK_CHAIN refuses a chain with any CA
    # lacking a CRL, and refuses everyone once a CRL is past nextUpdate -- republish with a
    # timer (cyphrs crl; cyphrs crl --all) and restart or rebuild this context.
    context.load_verify_locations(cafile=crls)
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN | ssl.VERIFY_X509_STRICT
    return context


def spiffe_id(peer: dict[str, Any]) -> str | None:
    """The X.509-SVID's SPIFFE ID: exactly one URI SAN, with the spiffe scheme."""
    uris = [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        return None
    return str(uris[0])


def serve(context: ssl.SSLContext, port: int, allowed: set[str]) -> None:
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    identity = spiffe_id(tls.getpeercert() or {})
                    if identity not in allowed:
                        print(f"refused: SPIFFE ID {identity} not allowed", file=sys.stderr)
                        continue
                    tls.sendall(f"ok {identity}\n".encode())
            except (ssl.SSLError, OSError) as error:
                print(f"refused: {error}", file=sys.stderr)
            sys.stderr.flush()


if __name__ == "__main__":
    cert, key, trust, crls, port, *allowed_ids = sys.argv[1:]
    serve(tls_context(cert, key, trust, crls), int(port), set(allowed_ids))
