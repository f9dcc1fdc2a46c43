"""Frozen dataclasses at the boundary between callers (CLI, batch, server) and the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.config.trust import DEFAULT_CLAIMS_OID

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificatePublicKeyTypes,
    )

    from cyphrs_cli.ca.extensions import AgentClaims
    from cyphrs_cli.keystore.base import KeyInfo


@dataclass(frozen=True)
class Issuer:
    """A CA that can sign: its certificate (None while a root signs itself) and signer."""

    name: str
    authority_id: int | None
    certificate: x509.Certificate | None
    signer: CertificateIssuerPrivateKeyTypes
    trust_domain: str | None = None
    # Certificates above this issuer, nearest first, ending with the root.
    parents: tuple[x509.Certificate, ...] = ()
    # Set from the ledger: a revoked CA may still sign its last CRLs but nothing else.
    revoked: bool = False
    # The agent-claims extension OID this home records (config.trust).
    claims_oid: str = DEFAULT_CLAIMS_OID
    # The home's recorded public URL: AIA and CRL DP in what this CA signs (config.trust).
    public_url: str | None = None


@dataclass(frozen=True)
class IssuerFacts:
    """What policy and planning need to know of an issuer: no key, so no secret."""

    name: str
    certificate: x509.Certificate | None
    trust_domain: str | None = None
    claims_oid: str = DEFAULT_CLAIMS_OID
    public_url: str | None = None


@dataclass(frozen=True)
class NewAuthority:
    """A CA being created: recorded in the same transaction as its certificate."""

    name: str
    role: str
    key: KeyInfo
    parent_id: int | None
    trust_domain: str | None


@dataclass(frozen=True)
class CertificatePlan:
    """Everything to be signed, fully validated; issuance adds serial and validity only."""

    profile: str
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    ttl: timedelta
    extensions: list[tuple[x509.ExtensionType, bool]]
    is_ca: bool = False
    sans: tuple[str, ...] = ()
    spiffe_id: str | None = None
    claims: AgentClaims | None = None
    requester: str | None = None
    key_storage: str | None = None
    replaces_id: int | None = None
    new_authority: NewAuthority | None = None
    # A leaf may share its SPIFFE ID with another valid certificate (--allow-duplicate).
    allow_duplicate: bool = False
    # SHA-256 of the profile text signed under (leaves); carried by the issuance event.
    profile_sha256: str | None = None


@dataclass(frozen=True)
class LeafRequest:
    """What a caller asks for; the profile and policy turn it into a CertificatePlan."""

    profile: str
    public_key: CertificatePublicKeyTypes
    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    spiffe_id: str | None = None
    workflow: str | None = None
    instance: str | None = None
    permissions: tuple[str, ...] = ()
    requester: str | None = None
    ttl: timedelta | None = None
    key_type: str = "p256"
    key_storage: str = "generated"
    replaces_id: int | None = None
    allow_duplicate: bool = False


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed certificate that the ledger has durably recorded."""

    certificate: x509.Certificate
    record_id: int
    serial: str
    fingerprint: str
    profile: str
    issuer_name: str
    not_before: datetime
    not_after: datetime
    clamped: bool
    spiffe_id: str | None = None
    chain: tuple[x509.Certificate, ...] = field(default_factory=tuple)
    authority_id: int | None = None
    # The agent claims signed into the certificate (self-checked equal to the plan's), so
    # a view need not decode them again; None for certificates without claims.
    claims: AgentClaims | None = None
