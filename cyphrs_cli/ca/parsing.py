"""Loading PEM/DER certificates, chains and CSRs, and summarising them as plain data.

``inspect`` and every ``--json`` output share these summaries, so a field means the same
thing everywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.ca.extensions import AgentClaims

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_CSR = (b"-----BEGIN CERTIFICATE REQUEST-----", b"-----BEGIN NEW CERTIFICATE REQUEST-----")


def load_csr(data: bytes, *, source: str) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER whose self-signature verifies (proof of key possession)."""
    return checked_csr(parse_csr(data, source=source), source=source)


def parse_csr(data: bytes, *, source: str) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER, its signature NOT checked yet: for a caller that first looks
    at the key (``service.enrollment``), then calls ``checked_csr``."""
    from cryptography import x509

    try:
        if any(marker in data for marker in _PEM_CSR):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidInputError(f"{source}: not a valid certificate signing request") from exc
    try:
        # cryptography parses the extensions on first use (then keeps them) and raises
        # DuplicateExtension, UnsupportedGeneralNameType or ValueError for unreadable
        # ones: parsed here, where such a CSR is bad input, not deep in a caller.
        csr.extensions  # noqa: B018 - parsed for its errors
    except Exception as exc:
        raise InvalidInputError(f"{source}: unreadable CSR extensions ({exc})") from exc
    return csr


def checked_csr(
    csr: x509.CertificateSigningRequest, *, source: str
) -> x509.CertificateSigningRequest:
    """``csr`` once its self-signature verifies (proof of key possession)."""
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported key types surface as assorted errors
        raise InvalidInputError(f"{source}: cannot check the CSR signature ({exc})") from exc
    if not valid:
        raise InvalidInputError(f"{source}: the CSR signature does not verify")
    return csr


def load_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, or one DER certificate."""
    from cryptography import x509

    try:
        if _PEM_CERT in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise InvalidInputError(f"{source}: not a valid PEM or DER certificate") from exc


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """cryptography's short name for an OID, or its dotted form when it has none."""
    from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID

    if oid.dotted_string == AGENT_CLAIMS_OID:
        return "agentClaims"
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else str(name)


def is_csr(data: bytes) -> bool:
    return any(marker in data for marker in _PEM_CSR)


def _rfc3339(moment: datetime) -> str:
    from cyphrs_cli.ledger.events import rfc3339

    return rfc3339(moment)


def _general_name(name: x509.GeneralName) -> str:
    from cryptography import x509

    prefix = {
        x509.DNSName: "DNS",
        x509.UniformResourceIdentifier: "URI",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.DirectoryName: "dirName",
    }.get(type(name), "other")
    value = name.value
    if isinstance(name, x509.DirectoryName):
        value = name.value.rfc4514_string()
    return f"{prefix}:{value}"


def key_description(public_key: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"type": "ec", "curve": public_key.curve.name, "bits": public_key.curve.key_size}
    if isinstance(public_key, rsa.RSAPublicKey):
        return {"type": "rsa", "bits": public_key.key_size}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return {"type": "ed25519", "bits": 256}
    return {"type": type(public_key).__name__}


def _extension_value(ext: x509.Extension[x509.ExtensionType], claims_oid: str) -> Any:
    from cryptography import x509

    from cyphrs_cli.ca.extensions import decode_agent_claims

    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        return {"ca": value.ca, "path_length": value.path_length}
    if isinstance(value, x509.KeyUsage):
        names = [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ]
        used = [n for n in names if getattr(value, n)]
        if value.key_agreement:
            used += [n for n in ("encipher_only", "decipher_only") if getattr(value, n)]
        return used
    if isinstance(value, x509.ExtendedKeyUsage):
        return [oid_name(oid) for oid in value]
    if isinstance(value, x509.SubjectAlternativeName):
        return [_general_name(n) for n in value]
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest.hex()
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier.hex() if value.key_identifier else None
    if isinstance(value, x509.NameConstraints):
        return {
            "permitted": [_general_name(n) for n in value.permitted_subtrees or []],
            "excluded": [_general_name(n) for n in value.excluded_subtrees or []],
        }
    if isinstance(value, x509.UnrecognizedExtension):
        if value.oid.dotted_string == claims_oid:
            return decode_agent_claims(value.value).to_json()
        return value.value.hex()
    return str(value)


def issued_summary(cert: x509.Certificate, claims: AgentClaims | None) -> dict[str, Any]:
    """``certificate_summary``'s subject, sans, agent_claims and key for a certificate we
    just signed, without decoding what we encoded: the claims extension is compared byte
    for byte with the encoding of ``claims`` (the signed ones) and decoded only if it
    differs. The batch's --json lines use this once per item."""
    from cryptography import x509

    from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, encode_agent_claims

    sans: list[str] = []
    shown_claims = None
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            sans = [_general_name(n) for n in value]
        elif ext.oid.dotted_string == AGENT_CLAIMS_OID:
            if (
                claims is not None
                and isinstance(value, x509.UnrecognizedExtension)
                and value.value == encode_agent_claims(claims)
            ):
                shown_claims = claims.to_json()
            else:
                shown_claims = _extension_value(ext, AGENT_CLAIMS_OID)
    return {
        "subject": cert.subject.rfc4514_string(),
        "sans": sans,
        "agent_claims": shown_claims,
        "key": key_description(cert.public_key()),
    }


def certificate_summary(
    cert: x509.Certificate, *, now: datetime | None = None, claims_oid: str | None = None
) -> dict[str, Any]:
    """The stable, JSON-ready view of one certificate (schema cyphrs.inspect/v1).
    ``claims_oid``: the home's recorded agent-claims OID (default: the provisional one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID
    from cyphrs_cli.ca.serials import serial_hex
    from cyphrs_cli.ledger.events import utc_now

    now = now or utc_now()
    claims_oid = claims_oid or AGENT_CLAIMS_OID
    extensions = []
    sans: list[str] = []
    claims = None
    is_ca = False
    for ext in cert.extensions:
        value = _extension_value(ext, claims_oid)
        extensions.append(
            {
                "oid": ext.oid.dotted_string,
                "name": "agentClaims"
                if ext.oid.dotted_string == claims_oid
                else getattr(ext.oid, "_name", ext.oid.dotted_string),
                "critical": ext.critical,
                "value": value,
            }
        )
        if isinstance(ext.value, x509.SubjectAlternativeName):
            sans = value
        if isinstance(ext.value, x509.BasicConstraints):
            is_ca = ext.value.ca
        if ext.oid.dotted_string == claims_oid:
            claims = value
    spiffe = [s[4:] for s in sans if s.startswith("URI:spiffe://")]
    seconds_left = int((cert.not_valid_after_utc - now).total_seconds())
    return {
        "type": "certificate",
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert.serial_number),
        "not_before": _rfc3339(cert.not_valid_before_utc),
        "not_after": _rfc3339(cert.not_valid_after_utc),
        "seconds_left": max(seconds_left, 0),
        "expired": seconds_left < 0,
        "not_yet_valid": cert.not_valid_before_utc > now,
        "is_ca": is_ca,
        "self_signed": cert.subject == cert.issuer,
        "key": key_description(cert.public_key()),
        "signature_algorithm": oid_name(cert.signature_algorithm_oid),
        "fingerprints": {
            "sha256": "sha256:" + cert.fingerprint(hashes.SHA256()).hex(),
        },
        "sans": sans,
        "spiffe_id": spiffe[0] if len(spiffe) == 1 else None,
        "agent_claims": claims,
        "extensions": extensions,
    }


def csr_summary(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    from cryptography import x509

    sans: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [_general_name(n) for n in san]
    except x509.ExtensionNotFound:
        pass
    return {
        "type": "csr",
        "subject": csr.subject.rfc4514_string(),
        "key": key_description(csr.public_key()),
        "requested_sans": sans,
        "signature_valid": csr.is_signature_valid,
    }
