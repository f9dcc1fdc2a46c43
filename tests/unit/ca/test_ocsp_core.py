"""``ca.ocsp`` pieces against openssl: CertID hashes for every key type we issue with, the
GET form's decoding, and the profile rule that keeps id-pkix-ocsp-nocheck off TLS certs."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from cyphrs_cli.ca.ocsp import decode_get_path, issuer_hashes
from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.profiles.model import profile_from_toml
from tests.helpers import Hierarchy


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
def test_certid_hashes_match_openssl(any_hierarchy: Hierarchy, tmp_path: Path, digest: str) -> None:
    req = tmp_path / "req.der"
    subprocess.run(
        [
            *("openssl", "ocsp", f"-{digest}", "-issuer", str(any_hierarchy.inter_cert)),
            *("-serial", "0x42", "-reqout", str(req)),
        ],
        check=True,
        capture_output=True,
    )
    request = ocsp.load_der_ocsp_request(req.read_bytes())
    inter = x509.load_pem_x509_certificate(any_hierarchy.inter_cert.read_bytes())
    assert request.hash_algorithm.name == digest
    assert issuer_hashes(inter, digest) == (request.issuer_name_hash, request.issuer_key_hash)


def test_get_path_forms() -> None:
    data = bytes(range(256)) * 2
    standard = base64.b64encode(data).decode()
    assert decode_get_path(standard) == data
    assert decode_get_path(standard.replace("+", "%2B").replace("/", "%2F")) == data
    assert decode_get_path(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert decode_get_path(standard.replace("+", " ")) == data
    for bad in ("***", "a", "A" * 10000):
        with pytest.raises(InvalidInputError):
            decode_get_path(bad)


def test_ocsp_signing_must_stand_alone_in_a_profile() -> None:
    base = {"default_ttl": "1h", "min_ttl": "1m", "max_ttl": "2h"}
    with pytest.raises(InvalidInputError, match="OCSPSigning must be the only usage"):
        profile_from_toml(
            "mixed", {**base, "extended_key_usage": ["serverAuth", "OCSPSigning"]}, source="t"
        )
    alone = profile_from_toml("resp", {**base, "extended_key_usage": ["OCSPSigning"]}, source="t")
    assert alone.extended_key_usage == ("OCSPSigning",)
