"""Renewal: the same identity, profile and names under a new serial and validity.

A renewal is an ordinary leaf request (so it passes today's policy again) that names the
certificate it replaces; the issuance transaction marks the old one ``superseded``. The use
case (which CA signs, output checks, delivery) is ``service.lifecycle.renew``.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.errors import ConflictError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.models import LeafRequest

DEFAULT_DUE_FRACTION = 2 / 3


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def lifetime(row: sqlite3.Row) -> timedelta:
    return _parse_time(row["not_after"]) - _parse_time(row["not_before"]) + timedelta(seconds=1)


def renewal_due_at(row: sqlite3.Row, fraction: float = DEFAULT_DUE_FRACTION) -> datetime:
    """The moment ``fraction`` of the certificate's lifetime has passed."""
    return _parse_time(row["not_before"]) + lifetime(row) * fraction


def check_renewable(row: sqlite3.Row, conn: sqlite3.Connection) -> None:
    if row["is_ca"]:
        raise UsageError("renew issues leaf certificates; create a new intermediate to roll a CA")
    if row["status"] == "revoked":
        raise ConflictError(f"certificate {row['serial']} is revoked; issue a new one instead")
    if row["status"] == "superseded":
        newest = row
        while True:
            nxt = conn.execute(
                "SELECT * FROM certificates WHERE replaces_id = ?", (newest["id"],)
            ).fetchone()
            if nxt is None:
                break
            newest = nxt
        raise ConflictError(
            f"certificate {row['serial']} was already renewed",
            hint=f"renew the newest one, serial {newest['serial']}",
        )


def renewal_request(
    row: sqlite3.Row,
    *,
    public_key_mode: str,
    csr_pem: bytes | None,
    ttl: timedelta | None,
    requester: str | None,
) -> tuple[LeafRequest, CertificateIssuerPrivateKeyTypes | None]:
    """Rebuild the request of ``row``; ``public_key_mode`` is new | reuse | csr."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from cyphrs_cli.ca.issuance import key_algorithm_name
    from cyphrs_cli.ca.models import LeafRequest
    from cyphrs_cli.keystore.base import KeySpec

    old = x509.load_pem_x509_certificate(row["pem"].encode())
    private_key = None
    if public_key_mode == "csr":
        from cyphrs_cli.ca.parsing import load_csr

        assert csr_pem is not None
        public_key = load_csr(csr_pem, source="CSR").public_key()
        key_storage = "csr"
    elif public_key_mode == "reuse":
        public_key = old.public_key()
        key_storage = "reused"
    else:
        private_key = KeySpec.parse(row["key_algorithm"]).generate_software_key()
        public_key = private_key.public_key()
        key_storage = "generated"
    names = json.loads(row["sans"])
    cns = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    spiffe = row["spiffe_id"]
    instance = spiffe.rsplit("/", 1)[1] if spiffe and row["workflow"] else None
    dns = tuple(n[4:] for n in names if n.startswith("DNS:"))
    ips = tuple(n[3:] for n in names if n.startswith("IP:"))
    common_name = str(cns[0].value) if cns else None
    # The defaults before issue 8 (``workflow/instance`` for agents, the first IP of an
    # IP-only certificate) are not carried over: the renewal gets today's default, no CN,
    # which verifiers accept under name constraints (docs/name-constraints.md).
    if common_name is not None and (
        common_name == f"{row['workflow']}/{instance}" or (not dns and ips[:1] == (common_name,))
    ):
        common_name = None
    request = LeafRequest(
        profile=row["profile"],
        public_key=public_key,
        common_name=common_name,
        dns_names=dns,
        ip_addresses=ips,
        spiffe_id=spiffe,
        workflow=row["workflow"],
        instance=instance,
        permissions=tuple(json.loads(row["permissions"] or "[]")),
        # Who asked stays who asked: renewing (by a bot, an operator) is not asking anew.
        requester=requester or row["requester"],
        ttl=ttl or lifetime(row),
        key_type=key_algorithm_name(public_key),
        key_storage=key_storage,
        replaces_id=int(row["id"]),
    )
    return request, private_key
