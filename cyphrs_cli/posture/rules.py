"""What is wrong with a set of certificates: per-certificate rules (expiry, lifetime, key,
signature hash, EKU/SAN, self-signed leaves) and rules across the set (chain gaps in what
a server or a chain file presents, client certificates from public CAs, one key in
several certificates).

Every rule is a plain function of the certificates and ``ScanPolicy``; nothing is
fetched. A certificate found in several places is judged once (by fingerprint).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cyphrs_cli.checks.model import Severity
from cyphrs_cli.durations import format_duration
from cyphrs_cli.posture.sources import ScannedCertificate

#: Leaves living at most this long are expected to expire soon; "expiring" skips them.
SHORT_LIVED = timedelta(days=7)


@dataclass(frozen=True)
class ScanPolicy:
    max_lifetime: timedelta = timedelta(days=398)  # CA/Browser Forum's TLS ceiling
    expiring_within: timedelta = timedelta(days=30)
    public_roots: frozenset[x509.Name] = frozenset()  # subjects of public trust anchors


@dataclass(frozen=True)
class PostureFinding:
    id: str
    severity: Severity
    message: str


@dataclass
class Judged:
    """One distinct certificate, where it was found, and its findings."""

    certificate: x509.Certificate
    fingerprint: str
    sources: list[str] = field(default_factory=list)
    findings: list[PostureFinding] = field(default_factory=list)

    @property
    def is_ca(self) -> bool:
        return _is_ca(self.certificate)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def judge(scanned: list[ScannedCertificate], policy: ScanPolicy, now: datetime) -> list[Judged]:
    """The distinct certificates of ``scanned``, each with its findings, in first-seen order."""
    by_fingerprint: dict[str, Judged] = {}
    for item in scanned:
        fp = item.certificate.fingerprint(hashes.SHA256()).hex()
        judged = by_fingerprint.setdefault(fp, Judged(item.certificate, f"sha256:{fp}"))
        if item.source not in judged.sources:
            judged.sources.append(item.source)
    for judged in by_fingerprint.values():
        judged.findings.extend(_certificate_rules(judged.certificate, policy, now))
    _chain_gaps(scanned, by_fingerprint, policy)
    _public_client_certificates(by_fingerprint, scanned, policy)
    _duplicate_keys(by_fingerprint)
    return list(by_fingerprint.values())


def _certificate_rules(
    cert: x509.Certificate, policy: ScanPolicy, now: datetime
) -> list[PostureFinding]:
    found: list[PostureFinding] = []
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime, left = end - start, end - now
    leaf = not _is_ca(cert)
    if left.total_seconds() <= 0:
        found.append(PostureFinding("cert.expired", Severity.HIGH, f"expired {end:%Y-%m-%d}"))
    elif left <= policy.expiring_within and not (leaf and lifetime <= SHORT_LIVED):
        found.append(
            PostureFinding("cert.expiring", Severity.MEDIUM, f"expires in {format_duration(left)}")
        )
    if leaf and lifetime > policy.max_lifetime:
        found.append(
            PostureFinding(
                "cert.long_lifetime",
                Severity.MEDIUM,
                f"lifetime {format_duration(lifetime)} exceeds"
                f" {format_duration(policy.max_lifetime)}",
            )
        )
    found.extend(_key_rules(cert))
    if not _self_signed(cert):  # a trust anchor's own signature is never checked
        algorithm = cert.signature_hash_algorithm
        if isinstance(algorithm, hashes.MD5):
            found.append(PostureFinding("sig.md5", Severity.CRITICAL, "signed with MD5"))
        elif isinstance(algorithm, hashes.SHA1):
            found.append(PostureFinding("sig.sha1", Severity.HIGH, "signed with SHA-1"))
    if leaf:
        if _extension(cert, x509.ExtendedKeyUsage) is None:
            found.append(
                PostureFinding("leaf.no_eku", Severity.LOW, "no extended key usage (any use)")
            )
        if _extension(cert, x509.SubjectAlternativeName) is None:
            found.append(
                PostureFinding(
                    "leaf.no_san",
                    Severity.MEDIUM,
                    "no subjectAltName: modern clients ignore the CN and refuse it",
                )
            )
        if _self_signed(cert):
            found.append(
                PostureFinding(
                    "leaf.self_signed",
                    Severity.MEDIUM,
                    "self-signed leaf: trusted only by pinning, cannot be revoked",
                )
            )
    return found


def _key_rules(cert: x509.Certificate) -> list[PostureFinding]:
    try:
        key = cert.public_key()
    except ValueError:
        return [PostureFinding("key.unsupported", Severity.HIGH, "unreadable public key")]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return [PostureFinding("key.weak", Severity.CRITICAL, f"RSA-{key.key_size}")]
        if key.key_size < 3072:
            return [
                PostureFinding(
                    "key.rsa_below_3072", Severity.LOW, f"RSA-{key.key_size} (below 128-bit level)"
                )
            ]
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        return [PostureFinding("key.weak", Severity.HIGH, f"EC {key.curve.name}")]
    elif isinstance(key, dsa.DSAPublicKey):
        return [PostureFinding("key.weak", Severity.HIGH, f"DSA-{key.key_size}")]
    return []


def _chain_gaps(
    scanned: list[ScannedCertificate], judged: dict[str, Judged], policy: ScanPolicy
) -> None:
    """A server (or a chain file) that presents a leaf without the certificate that
    issued it: clients without that intermediate cached fail (nginx with cert.pem alone)."""
    anchors = set(policy.public_roots) | {
        j.certificate.subject for j in judged.values() if _self_signed(j.certificate)
    }
    by_source: dict[str, list[ScannedCertificate]] = defaultdict(list)
    for item in scanned:
        by_source[item.source].append(item)
    for source, items in by_source.items():
        kind = items[0].kind
        if kind == "ledger" or (kind == "file" and len(items) < 2):
            continue
        leaf = items[0].certificate
        if _self_signed(leaf):
            continue
        presented = {i.certificate.subject for i in items[1:]}
        if leaf.issuer not in presented and leaf.issuer not in anchors:
            judged[leaf.fingerprint(hashes.SHA256()).hex()].findings.append(
                PostureFinding(
                    "chain.gap",
                    Severity.MEDIUM,
                    f"{source} does not present the issuer ({leaf.issuer.rfc4514_string()})",
                )
            )


def _public_client_certificates(
    judged: dict[str, Judged], scanned: list[ScannedCertificate], policy: ScanPolicy
) -> None:
    """Leaves with clientAuth that chain (by name) to a public root: public CAs stop
    issuing clientAuth (Chrome Root Program: dedicated serverAuth hierarchies from
    2026-06-15), so these cannot be renewed as they are."""
    if not policy.public_roots:
        return
    issuers = {j.certificate.subject: j.certificate for j in judged.values() if j.is_ca}
    for item in judged.values():
        cert = item.certificate
        eku = _extension(cert, x509.ExtendedKeyUsage)
        if item.is_ca or eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:  # type: ignore[operator]
            continue
        name, steps = cert.issuer, 0
        while name not in policy.public_roots and name in issuers and steps < 8:
            parent = issuers[name]
            if _self_signed(parent):
                break
            name, steps = parent.issuer, steps + 1
        if name in policy.public_roots:
            item.findings.append(
                PostureFinding(
                    "leaf.public_ca_client",
                    Severity.MEDIUM,
                    "clientAuth certificate from a public CA: public CAs stop issuing these;"
                    " move client identities to a private CA",
                )
            )


def _duplicate_keys(judged: dict[str, Judged]) -> None:
    by_key: dict[str, list[Judged]] = defaultdict(list)
    for item in judged.values():
        by_key[spki_sha256(item.certificate)].append(item)
    for sharing in by_key.values():
        if len(sharing) < 2:
            continue
        for item in sharing:
            item.findings.append(
                PostureFinding(
                    "key.duplicate",
                    Severity.MEDIUM,
                    f"its key is also in {len(sharing) - 1} other certificate(s)",
                )
            )
