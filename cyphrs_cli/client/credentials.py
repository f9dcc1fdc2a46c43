"""The agent's credentials: a key made here (never sent), its CSR, and the checks of what
the CA sent back before anything is written.

A CA answer is not trusted because it came over TLS: the certificate must carry the
public key of our CSR, chain (signature by signature) to the root the operator gave,
be valid now, and on renewal keep the SPIFFE ID it replaces. A server that answers
otherwise (a bug, or a proxy in the path) leaves the agent's files untouched.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.client.api import CaUnavailable
from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.delivery import PemBundle
    from cyphrs_cli.client.api import Issued

DEFAULT_KEY_TYPE = "p256"
#: Clock skew tolerated when checking that a new certificate is already valid.
SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyRequest:
    """A fresh private key and the CSR proving we hold it (the CA takes only the CSR)."""

    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    csr_pem: bytes

    @classmethod
    def generate(cls, key_type: str = DEFAULT_KEY_TYPE) -> KeyRequest:
        """A new key of ``key_type`` (``p256``, ``rsa3072``, ``ed25519`` ...) and its CSR.

        The CSR has an empty subject: the identity (SPIFFE ID, claims) comes from the
        token or, on renewal, from the certificate it replaces -- never from the agent.
        """
        from cyphrs_cli.keystore.base import KeySpec

        return cls.for_key(KeySpec.parse(key_type).generate_software_key())

    @classmethod
    def for_key(cls, key: CertificateIssuerPrivateKeyTypes) -> KeyRequest:
        """A CSR (empty subject, as ``generate``) for a key this agent already holds."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from cyphrs_cli.ca.issuance import signature_hash

        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, signature_hash(key))  # type: ignore[arg-type]
        )
        return cls(key, csr.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def from_pem(cls, key_pem: bytes) -> KeyRequest | None:
        """``for_key`` of an unencrypted PEM key this agent kept; None if it is not one
        (garbage, encrypted, or of an algorithm this agent does not make)."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return None
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            return None
        from cyphrs_cli.ca.issuance import key_algorithm_name
        from cyphrs_cli.errors import CyphrsError
        from cyphrs_cli.keystore.base import KeySpec

        try:  # a curve or size this agent never makes (secp256k1, RSA-1024) is not ours
            KeySpec.parse(key_algorithm_name(key.public_key()))
        except CyphrsError:
            return None
        return cls.for_key(key)

    def public_key_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()


def key_type_of(certificate: x509.Certificate) -> str:
    """The short key-type name (``p256`` ...) of a certificate's public key, so a
    renewal makes a key of the same kind."""
    from cyphrs_cli.ca.issuance import key_algorithm_name

    return key_algorithm_name(certificate.public_key())


def accept_issued(
    issued: Issued,
    request: KeyRequest,
    trusted_roots: list[x509.Certificate],
    *,
    spiffe_id: str | None = None,
    now: datetime | None = None,
) -> PemBundle:
    """Check the CA's answer against our key, our root and (renewal) the old identity;
    return the PEM bundle to write. Raises ``CaUnavailable`` for an answer that fails
    (exit 8: the CA misbehaved; nothing is written)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.delivery import PemBundle
    from cyphrs_cli.ca.extensions import parse_spiffe_id

    def bad(reason: str) -> CaUnavailable:
        return CaUnavailable(f"the CA's answer was refused: {reason}; nothing was written")

    try:
        leaf = x509.load_pem_x509_certificate(issued.certificate.encode())
        chain = x509.load_pem_x509_certificates(issued.chain.encode()) if issued.chain else []
        roots = x509.load_pem_x509_certificates(issued.ca.encode())
    except ValueError as exc:
        raise bad("a certificate in it is not valid PEM") from exc
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, raw) != request.private_key.public_key().public_bytes(
        der, raw
    ):
        raise bad("the certificate does not carry the key of our request")
    from cryptography.hazmat.primitives import hashes

    trusted = {r.fingerprint(hashes.SHA256()) for r in trusted_roots}
    if not roots or any(r.fingerprint(hashes.SHA256()) not in trusted for r in roots):
        raise bad("its root is not the one given by --root")
    _verify_path(leaf, chain, roots[0], bad)
    moment = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc - SKEW <= moment < leaf.not_valid_after_utc:
        raise bad("the certificate is not valid now")
    got = _uri_sans(leaf)
    if spiffe_id is not None and got != [spiffe_id]:
        raise bad(f"the SPIFFE ID changed from {spiffe_id} to {', '.join(got) or 'none'}")
    for uri in got:
        if uri.startswith("spiffe://"):
            parse_spiffe_id(uri)
    _fields_match(issued, leaf, got, bad)
    pem = serialization.Encoding.PEM
    return PemBundle(
        certificate=leaf.public_bytes(pem).decode(),
        chain="".join(c.public_bytes(pem).decode() for c in chain),
        root="".join(r.public_bytes(pem).decode() for r in roots),
        private_key=request.key_pem(),
    )


def _fields_match(
    issued: Issued,
    leaf: x509.Certificate,
    uris: list[str],
    bad: Callable[[str], CaUnavailable],
) -> None:
    """The answer's JSON fields must say what its certificate says: the daemon's report
    (``--json``) and the ``--exec`` hook's environment (``CYPHRS_SERIAL``,
    ``CYPHRS_NOT_AFTER``) are taken from them, so a CA or a proxy must not be able to put
    there anything but the checked certificate's own values (a serial of shell text)."""
    import re

    from cryptography.hazmat.primitives import hashes

    if not re.fullmatch(r"[0-9a-f]{1,64}", issued.serial) or (
        int(issued.serial, 16) != leaf.serial_number
    ):
        raise bad("its serial is not the certificate's")
    if (issued.not_before, issued.not_after) != (
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
    ):
        raise bad("its validity is not the certificate's")
    spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
    if issued.spiffe_id != (spiffe[0] if spiffe else None):
        raise bad("its SPIFFE ID is not the certificate's")
    if issued.fingerprint != "sha256:" + leaf.fingerprint(hashes.SHA256()).hex():
        raise bad("its fingerprint is not the certificate's")


def _verify_path(
    leaf: x509.Certificate,
    chain: list[x509.Certificate],
    root: x509.Certificate,
    bad: Callable[[str], CaUnavailable],
) -> None:
    """Each certificate is signed by the next one, the last by the root."""
    from cryptography.exceptions import InvalidSignature

    path = [leaf, *chain, root]
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            who = child.subject.rfc4514_string() or "the leaf"
            raise bad(f"{who} is not signed by the next certificate of the chain") from exc


def _uri_sans(certificate: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.value.get_values_for_type(x509.UniformResourceIdentifier)]


def load_roots(data: bytes, *, source: str) -> list[x509.Certificate]:
    """The trusted root(s) from ``--root``: PEM, at least one, all self-signed CAs."""
    from cyphrs_cli.ca.parsing import load_certificates

    roots = load_certificates(data, source=source)
    for root in roots:
        if root.subject != root.issuer:
            raise InvalidInputError(f"{source}: {root.subject.rfc4514_string()} is not a root")
    return roots
