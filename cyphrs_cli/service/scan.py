"""The ``scan`` use case: the posture of certificates a team already has.

Collects certificates from files and directories, TLS endpoints and (optionally) this
home's ledger (``posture.sources``), judges them (``posture.rules``) and scores the set
(``posture.score``). Nothing is written; a TLS endpoint is only connected to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.config.home import CaHome

SCAN_SCHEMA = "cyphrs.scan/v1"
#: Where Debian, Ubuntu and Alpine keep the system's public roots (ca-certificates).
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


@dataclass(frozen=True)
class ScanRequest:
    paths: tuple[Path, ...] = ()
    endpoints: tuple[str, ...] = ()
    home: CaHome | None = None  # scan this home's certificates in force
    max_lifetime: timedelta = timedelta(days=398)
    expiring_within: timedelta = timedelta(days=30)
    public_roots: Path | None = None  # None: the system bundle, if any
    use_public_roots: bool = True
    timeout: float = 10.0
    now: datetime | None = None


@dataclass(frozen=True)
class ScanReport:
    scanned_at: str
    score: int
    certificates: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    public_roots: str | None = None

    def counts(self) -> dict[str, int]:
        from cyphrs_cli.checks.model import Severity

        counts = {"certificates": len(self.certificates)}
        for severity in Severity:
            counts[severity.label] = sum(
                f["severity"] == severity.label for c in self.certificates for f in c["findings"]
            )
        return counts

    def to_json(self) -> dict[str, Any]:
        from cyphrs_cli.posture.score import FORMULA

        return {
            "schema": SCAN_SCHEMA,
            "scanned_at": self.scanned_at,
            "score": self.score,
            "formula": FORMULA,
            "public_roots": self.public_roots,
            "counts": self.counts(),
            "skipped": self.skipped,
            "certificates": self.certificates,
        }


def _public_roots(request: ScanRequest) -> tuple[frozenset[x509.Name], str | None]:
    from cryptography import x509

    from cyphrs_cli.errors import InvalidInputError
    from cyphrs_cli.fsutil import read_input

    if not request.use_public_roots:
        return frozenset(), None
    path = request.public_roots
    if path is None:
        path = next((Path(p) for p in SYSTEM_BUNDLES if Path(p).is_file()), None)
        if path is None:
            return frozenset(), None
    import warnings

    try:
        with warnings.catch_warnings():  # old roots with non-positive serials: not ours to fix
            warnings.simplefilter("ignore")
            roots = x509.load_pem_x509_certificates(read_input(str(path)))
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not a PEM bundle of root certificates") from exc
    return frozenset(c.subject for c in roots), str(path)


def run_scan(request: ScanRequest) -> ScanReport:
    """Scan every source of ``request``.

    Raises:
        CyphrsError: 2 nothing to scan; 3 an unreadable public-roots bundle or a bad
            endpoint; 6 a missing path, an unreachable endpoint, no CA home.
    """
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.ledger.events import rfc3339, utc_now
    from cyphrs_cli.posture.rules import ScanPolicy, judge
    from cyphrs_cli.posture.score import certificate_score, posture_score
    from cyphrs_cli.posture.sources import fetch_endpoint, ledger_certificates, load_paths

    if not request.paths and not request.endpoints and request.home is None:
        raise UsageError("nothing to scan: give files, directories, --endpoint or --ledger")
    now = request.now or utc_now()
    loaded = load_paths(list(request.paths))
    scanned = list(loaded.certificates)
    for endpoint in request.endpoints:
        scanned.extend(fetch_endpoint(endpoint, timeout=request.timeout))
    if request.home is not None:
        from cyphrs_cli.ca.hierarchy import open_ledger

        request.home.require_initialised()
        with open_ledger(request.home) as ledger:
            scanned.extend(ledger_certificates(ledger.conn, rfc3339(now)))
    roots, roots_source = _public_roots(request)
    policy = ScanPolicy(request.max_lifetime, request.expiring_within, roots)
    judged = judge(scanned, policy, now)
    views = []
    for item in judged:
        severities = [f.severity for f in item.findings]
        views.append(_view(item, certificate_score(severities), rfc3339))
    score = posture_score([[f.severity for f in item.findings] for item in judged])
    return ScanReport(rfc3339(now), score, views, loaded.skipped, roots_source)


def _view(item: Any, score: int, rfc3339: Any) -> dict[str, Any]:
    from cyphrs_cli.ca.parsing import key_description
    from cyphrs_cli.ca.serials import serial_hex

    cert = item.certificate
    hash_algorithm = cert.signature_hash_algorithm
    return {
        "fingerprint": item.fingerprint,
        "serial": serial_hex(cert.serial_number),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": rfc3339(cert.not_valid_before_utc),
        "not_after": rfc3339(cert.not_valid_after_utc),
        "is_ca": item.is_ca,
        "key": key_description(cert.public_key()),
        "signature_hash": hash_algorithm.name if hash_algorithm is not None else None,
        "sources": item.sources,
        "score": score,
        "findings": [
            {"id": f.id, "severity": f.severity.label, "message": f.message} for f in item.findings
        ],
    }
