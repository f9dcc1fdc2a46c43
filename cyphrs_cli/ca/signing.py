"""Detached signatures over our own documents (audit checkpoints, export manifests).

The same signers that sign certificates sign these, so a token-held key never leaves the
token for audit evidence either. Verification needs only the signer's certificate.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


def sign_document(signer: CertificateIssuerPrivateKeyTypes, data: bytes) -> str:
    """Base64 signature: ECDSA/SHA-2 (DER), RSA PKCS#1 v1.5/SHA-256, or Ed25519."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    from cyphrs_cli.ca.issuance import signature_hash

    if isinstance(signer, ed25519.Ed25519PrivateKey):
        signature = signer.sign(data)
    elif isinstance(signer, ec.EllipticCurvePrivateKey):
        algorithm = signature_hash(signer)
        assert algorithm is not None
        signature = signer.sign(data, ec.ECDSA(algorithm))
    elif isinstance(signer, rsa.RSAPrivateKey):
        from cryptography.hazmat.primitives import hashes

        signature = signer.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise TypeError(f"cannot sign documents with {type(signer).__name__}")
    return base64.b64encode(signature).decode()


def verify_document(certificate: x509.Certificate, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is the certificate key's signature over ``data``."""
    import binascii

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    key = certificate.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
