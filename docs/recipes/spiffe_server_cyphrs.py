"""A Python service that admits only agents with an allowed SPIFFE ID, with the SPIFFE ID
and agent-claims rules of ``cyphrs_cli.client.tls.check_peer`` (mTLS, CRL-checked).

For hosts where cyphrs is installed (``pip install cyphrs``); ``spiffe_server.py`` beside
this file does the same with the standard library only. ``check_peer`` also accepts
patterns (``spiffe://acme.internal/agent/billing/*``), ``trust_domain=``, ``workflow=``
and ``permissions=`` (the agent-claims extension).

Run:
    cyphrs trust-bundle --out ca.pem           # the root(s): the only trust anchor
    cyphrs crl --all --out crls.pem            # every CA's CRL (root included)
    python3 spiffe_server_cyphrs.py server-fullchain.pem server-key.pem ca.pem crls.pem \
        8443 spiffe://acme.internal/agent/billing [more allowed IDs or patterns ...]

Each accepted connection gets one line "ok <spiffe-id>"; every refusal is logged on
stderr as "refused: <reason>".
"""

from __future__ import annotations

import socket
import ssl
import sys

from cyphrs_cli.client.tls import check_peer
from cyphrs_cli.errors import PolicyDenied


def tls_context(cert: str, key: str, trust: str, crls: str) -> ssl.SSLContext:
    """Require a client certificate chaining to ``trust``, with every CA's CRL checked.

    (``cyphrs_cli.client.tls.server_context`` follows rotated files but loads no CRLs:
    a service that must refuse revoked agents builds its context like this.)
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=trust)
    context.load_verify_locations(cafile=crls)
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN | ssl.VERIFY_X509_STRICT
    return context


def serve(context: ssl.SSLContext, port: int, allowed: list[str]) -> None:
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    peer = check_peer(tls, allowed_spiffe=allowed)
                    tls.sendall(f"ok {peer.spiffe_id}\n".encode())
            except PolicyDenied as denial:
                print(f"refused: {denial.rule}: {denial.message}", file=sys.stderr)
            except (ssl.SSLError, OSError) as error:
                print(f"refused: {error}", file=sys.stderr)
            sys.stderr.flush()


if __name__ == "__main__":
    cert, key, trust, crls, port, *allowed_ids = sys.argv[1:]
    serve(tls_context(cert, key, trust, crls), int(port), allowed_ids)
