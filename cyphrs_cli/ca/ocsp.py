"""RFC 6960 OCSP in the core: read a request, match its CertID to a CA, build the response.

This module owns the protocol only -- parsing (``parse_request``), the CertID hashes of a
CA (``issuer_hashes``), and the signed or unsuccessful responses (``signed_response``,
``unsuccessful_response``), all through pyca/cryptography's OCSP builders. Which CA a
request names, what the ledger says of the serial, and which delegated responder
certificate signs are decided in ``service.status``.

Choices (see docs/design-notes.md, "Status: OCSP responder"):
- one CertID per request (cryptography's request parser and response builder handle one;
  a request for several is answered ``malformedRequest``, as Boulder does);
- CertIDs hashed with SHA-1, SHA-256, SHA-384 or SHA-512 are answered with the same hash;
- a nonce (RFC 8954) is echoed; one of more than 32 octets, or empty, is refused with
  ``malformedRequest`` (RFC 8954 section 2.1);
- the responder is named by key hash and its certificate travels in ``certs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

#: RFC 8954 section 2.1: nonces of 1 to 32 octets; longer ones MUST be refused.
MAX_NONCE_OCTETS = 32
#: How long a response is good for: short enough that a revocation shows within the
#: hour in caches, long enough that GET responses are worth caching (RFC 5019).
RESPONSE_VALIDITY = timedelta(hours=1)
#: Requests are tiny (one CertID, a nonce); anything larger is not a request of ours.
MAX_REQUEST_BYTES = 4096

_HASH_NAMES = ("sha1", "sha256", "sha384", "sha512")


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    algorithms: dict[str, hashes.HashAlgorithm] = {
        "sha1": hashes.SHA1(),  # noqa: S303 -- RFC 6960's default CertID hash, not a signature
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    return algorithms[name]


@dataclass(frozen=True)
class OcspQuery:
    """One parsed request: the CertID (hash name, issuer hashes, serial) and the nonce."""

    hash_name: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    nonce: bytes | None


def parse_request(der: bytes) -> OcspQuery:
    """Parse a DER OCSPRequest.

    Raises:
        InvalidInputError: anything that is not one well-formed request for one CertID
            with a supported hash and an acceptable nonce (the caller answers it with
            ``malformedRequest``).
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.x509 import ocsp

    if not der or len(der) > MAX_REQUEST_BYTES:
        raise InvalidInputError(f"an OCSP request is 1-{MAX_REQUEST_BYTES} bytes of DER")
    try:
        request = ocsp.load_der_ocsp_request(der)
        algorithm = request.hash_algorithm
        serial = request.serial_number
        name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
        extensions = list(request.extensions)
    except (ValueError, UnsupportedAlgorithm, NotImplementedError) as exc:
        # NotImplementedError: cryptography's word for a request with several CertIDs.
        raise InvalidInputError(f"not a supported OCSP request: {exc}") from exc
    if serial < 0:
        # Never issued (serials are positive) and not encodable back: cryptography's
        # response builder refuses negative integers.
        raise InvalidInputError("negative certificate serial number")
    if algorithm.name not in _HASH_NAMES:
        raise InvalidInputError(f"unsupported CertID hash {algorithm.name}")
    if len(name_hash) != algorithm.digest_size or len(key_hash) != algorithm.digest_size:
        raise InvalidInputError("CertID hashes do not match their algorithm's length")
    nonce = None
    for extension in extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            nonce = extension.value.nonce
            if not 1 <= len(nonce) <= MAX_NONCE_OCTETS:
                raise InvalidInputError(
                    f"OCSP nonce of {len(nonce)} octets (RFC 8954: 1-{MAX_NONCE_OCTETS})"
                )
        elif extension.critical:
            raise InvalidInputError(f"unsupported critical extension {extension.oid.dotted_string}")
    return OcspQuery(algorithm.name, name_hash, key_hash, serial, nonce)


def issuer_hashes(issuer: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """The CertID hashes of CA ``issuer``: of its DER subject, and of the bits of its
    subjectPublicKey (RFC 6960 section 4.1.1; tag, length and unused-bits octet excluded)."""
    from asn1crypto import keys
    from cryptography.hazmat.primitives import hashes, serialization

    def digest(data: bytes) -> bytes:
        hasher = hashes.Hash(hash_algorithm(hash_name))
        hasher.update(data)
        return hasher.finalize()

    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_bits = bytes(keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
    return digest(issuer.subject.public_bytes()), digest(key_bits)


@dataclass(frozen=True)
class Responder:
    """Who signs: a delegated responder certificate and its key (or a CA and its own key),
    with the certificates a client needs to check it (sent in ``certs``)."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    send_certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class CertificateStatus:
    """What the ledger says: ``good``, ``revoked`` (with time and reason) or ``unknown``."""

    status: str
    revoked_at: datetime | None = None
    reason: str | None = None


def signed_response(
    query: OcspQuery,
    status: CertificateStatus,
    responder: Responder,
    *,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """A successful, signed BasicOCSPResponse for ``query`` (DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import ocsp

    from cyphrs_cli.ca.issuance import signature_hash
    from cyphrs_cli.ca.revocation import reason_flag

    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status.status]
    revoked = status.status == "revoked"
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=query.issuer_name_hash,
            issuer_key_hash=query.issuer_key_hash,
            serial_number=query.serial,
            algorithm=hash_algorithm(query.hash_name),
            cert_status=cert_status,
            this_update=this_update.replace(microsecond=0),
            next_update=next_update.replace(microsecond=0),
            revocation_time=status.revoked_at.replace(microsecond=0)
            if revoked and status.revoked_at
            else None,
            revocation_reason=reason_flag(status.reason) if revoked and status.reason else None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.certificate)
    )
    if responder.send_certificates:
        builder = builder.certificates(list(responder.send_certificates))
    if query.nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)
    response = builder.sign(responder.key, signature_hash(responder.key))
    return response.public_bytes(serialization.Encoding.DER)


#: Unsuccessful responses by the name ``OcspAnswer.status`` uses for them.
UNSUCCESSFUL = ("malformed", "internal-error", "try-later", "unauthorized")


def unsuccessful_response(kind: str) -> bytes:
    """An unsigned OCSPResponse with only a status (RFC 6960 section 2.3)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import ocsp

    status = {
        "malformed": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        "internal-error": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
        "try-later": ocsp.OCSPResponseStatus.TRY_LATER,
        "unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
    }[kind]
    response = ocsp.OCSPResponseBuilder.build_unsuccessful(status)
    return response.public_bytes(serialization.Encoding.DER)


def decode_get_path(encoded: str) -> bytes:
    """The request bytes of the GET form ``/ocsp/<url-encoded base64 of the DER>``
    (RFC 6960 appendix A.1). Accepts percent-encoding (or not: a router may have decoded
    it already), the base64url alphabet and missing padding, as clients differ here.

    Raises:
        InvalidInputError: not base64 of at most ``MAX_REQUEST_BYTES`` bytes.
    """
    import base64
    import binascii
    from urllib.parse import unquote

    text = unquote(encoded.strip()).replace("-", "+").replace("_", "/")
    # A '+' that a form decoder turned into a space is a '+' again.
    text = text.replace(" ", "+")
    if len(text) > (MAX_REQUEST_BYTES * 4) // 3 + 4:
        raise InvalidInputError("OCSP GET request too long")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError("OCSP GET request is not base64") from exc
