"""Typed requests and results of the use cases: what a front end (CLI, server) hands to an
``Authority`` and what it gets back. Frozen, so a request cannot change under a call.

Nothing here reads the environment, a terminal or stdin: the front end resolves those
(``--csr -``, ``CYPHRS_ACTOR``, TTY checks) and passes plain values in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ca.orders import LeafOrder

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.audit.checkpoint import TrustAnchor
    from cyphrs_cli.audit.export import ExportResult
    from cyphrs_cli.ca.delivery import PemBundle
    from cyphrs_cli.ca.models import CertificatePlan, IssuedCertificate
    from cyphrs_cli.ca.revocation import PublishedCrl
    from cyphrs_cli.policy.decide import PolicyDecision

__all__ = [
    "CertificateTarget",
    "CheckpointResult",
    "CrlRequest",
    "CrlResult",
    "DryRunResult",
    "ExportRequest",
    "ExportSummary",
    "IssueRequest",
    "IssueResult",
    "LeafOrder",
    "RenewRequest",
    "RenewalCheck",
    "RenewalCheckRequest",
    "RevokeRequest",
]


@dataclass(frozen=True)
class IssueRequest:
    """One leaf: the order, and where its files go (``out_dir`` None: returned only).

    The output directory is part of the request so that it is checked before anything
    is signed (an existing file without ``force`` refuses with nothing recorded)."""

    order: LeafOrder
    out_dir: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class IssueResult:
    """A recorded certificate, the key generated for it (None for a CSR or a reused
    key), its PEM bundle, the files written (None without ``out_dir``) and, for a
    renewal, the serial it replaces."""

    issued: IssuedCertificate
    private_key: CertificateIssuerPrivateKeyTypes | None = field(repr=False)
    bundle: PemBundle = field(repr=False)
    files: dict[str, str] | None = None
    replaces: str | None = None


@dataclass(frozen=True)
class DryRunResult:
    """What would be issued and which rules allow it; nothing signed or recorded."""

    issuer: str
    key_type: str
    decision: PolicyDecision
    plan: CertificatePlan


@dataclass(frozen=True)
class CertificateTarget:
    """A certificate named by its ledger serial (hex) or by its bytes (PEM/DER), exactly
    one; ``source`` names the bytes in messages (a path, or ``-``)."""

    serial: str | None = None
    certificate: bytes | None = None
    source: str = "certificate"


@dataclass(frozen=True)
class RenewalCheckRequest:
    target: CertificateTarget
    due_fraction: float = 2 / 3
    # The moment to judge at (default: now); a front end or test may fix it.
    at: datetime | None = None


@dataclass(frozen=True)
class RenewalCheck:
    """Is renewal due: 2/3 (``due_fraction``) of the lifetime passed, or revoked."""

    serial: str
    due: bool
    due_at: datetime
    status: str


@dataclass(frozen=True)
class RenewRequest:
    """Renew ``target``: a new key (default), the old one (``reuse_key``) or a CSR's."""

    target: CertificateTarget
    reuse_key: bool = False
    csr_pem: bytes | None = None
    ttl: timedelta | None = None
    requester: str | None = None
    out_dir: Path | None = None
    force: bool = False

    @property
    def public_key_mode(self) -> str:
        return "csr" if self.csr_pem is not None else "reuse" if self.reuse_key else "new"


@dataclass(frozen=True)
class RevokeRequest:
    target: CertificateTarget
    reason: str | None = None  # an RFC 5280 reason name, normalised on construction

    def __post_init__(self) -> None:
        from cyphrs_cli.ca.revocation import normalise_reason

        # Refused (exit 3) before anything is opened or looked up.
        object.__setattr__(self, "reason", normalise_reason(self.reason))


@dataclass(frozen=True)
class CrlRequest:
    """The issuer's next CRL; ``validity`` None: 30 days for a root, 24 hours otherwise.
    ``issuer`` None: the authority's own issuer."""

    validity: timedelta | None = None
    issuer: str | None = None


@dataclass(frozen=True)
class CrlResult:
    published: PublishedCrl
    path: Path  # crls/ALIAS.crl.pem in the CA home (the DER copy beside it)


@dataclass(frozen=True)
class CheckpointResult:
    document: dict[str, Any]


@dataclass(frozen=True)
class ExportRequest:
    """An evidence bundle for [since, until); ``until`` None: everything recorded so far."""

    out_dir: Path
    since: datetime
    until: datetime | None = None
    force: bool = False
    allow_unverified: bool = False
    anchor: TrustAnchor | None = None
    archive: bool = False


@dataclass(frozen=True)
class ExportSummary:
    result: ExportResult
    archive_path: Path | None = None
    archive_sha256: str | None = None
