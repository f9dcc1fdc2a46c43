"""CSRs that cryptography's builder refuses to make (a duplicated extension), built with
asn1crypto and signed with a real key: hostile input for the enrollment paths."""

from __future__ import annotations

from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def csr_with_duplicate_san(spiffe_id: str, *, rsa_key: bool = False) -> bytes:
    """PEM of a CSR asking for the subjectAltName extension twice, self-signed validly
    (P-256, or RSA-3072 for the blocking path)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=3072)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    san = asn1_x509.Extension(
        {
            "extn_id": "subject_alt_name",
            "critical": False,
            "extn_value": [
                asn1_x509.GeneralName(name="uniform_resource_identifier", value=spiffe_id)
            ],
        }
    )
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.build({}),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(public),
            "attributes": [{"type": "extension_request", "values": [[san, san]]}],
        }
    )
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(info.dump(), padding.PKCS1v15(), hashes.SHA256())
        algorithm = "sha256_rsa"
    else:
        signature = key.sign(info.dump(), ec.ECDSA(hashes.SHA256()))
        algorithm = "sha256_ecdsa"
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": algorithm},
            "signature": signature,
        }
    )
    return asn1_pem.armor("CERTIFICATE REQUEST", request.dump())


def csr_with_foreign_key(
    public_key: ec.EllipticCurvePublicKey, signer: ec.EllipticCurvePrivateKey
) -> bytes:
    """PEM of a CSR that carries ``public_key`` but is signed by ``signer``: a request
    for a key its sender does not hold (the self-signature does not verify)."""
    public = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.build({}),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(public),
            "attributes": [],
        }
    )
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signer.sign(info.dump(), ec.ECDSA(hashes.SHA256())),
        }
    )
    return asn1_pem.armor("CERTIFICATE REQUEST", request.dump())
