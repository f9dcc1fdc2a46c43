"""Path validation of checkpoint signers: real certificates, each rule broken once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.audit.checkpoint import (
    TrustAnchor,
    checkpoint_problem,
    fingerprint,
    normalise_fingerprint,
    path_problem,
)
from cyphrs_cli.ca.signing import sign_document
from cyphrs_cli.errors import UsageError
from cyphrs_cli.ledger.events import canonical_json, rfc3339

NOW = datetime.now(UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = True,
    path_length: int | None = None,
    days: tuple[int, int] = (-1, 30),
    key_cert_sign: bool = True,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + timedelta(days=days[0]))
        .not_valid_after(NOW + timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def chain() -> dict[str, object]:
    root_key, inter_key, sub_key = _key(), _key(), _key()
    root = _cert("Root", root_key, path_length=0)
    inter = _cert("Inter", inter_key, (root.subject, root_key))
    sub = _cert("Sub", sub_key, (inter.subject, inter_key))
    return {"root": root, "inter": inter, "sub": sub, "inter_key": inter_key, "root_key": root_key}


def test_direct_child_of_the_anchor_passes(chain: dict[str, x509.Certificate]) -> None:
    assert path_problem(chain["inter"], [], chain["root"], NOW) is None
    assert path_problem(chain["root"], [], chain["root"], NOW) is None


def test_path_length_of_the_anchor_is_enforced(chain: dict[str, x509.Certificate]) -> None:
    problem = path_problem(chain["sub"], [chain["inter"]], chain["root"], NOW)
    assert problem is not None and "does not chain" in problem


def test_validity_at_the_checkpoint_time(chain: dict[str, x509.Certificate]) -> None:
    problem = path_problem(chain["inter"], [], chain["root"], NOW + timedelta(days=60))
    assert problem is not None and "was not valid at" in problem
    problem = path_problem(chain["inter"], [], chain["root"], NOW - timedelta(days=5))
    assert problem is not None and "was not valid at" in problem


def test_non_ca_signer_and_non_signing_parent_fail() -> None:
    root_key, leaf_key = _key(), _key()
    root = _cert("Root", root_key)
    leaf = _cert("Leaf", leaf_key, (root.subject, root_key), ca=False)
    problem = path_problem(leaf, [], root, NOW)
    assert problem is not None and "is not a CA certificate" in problem
    weak_root = _cert("Weak", root_key, key_cert_sign=False)
    child = _cert("Child", leaf_key, (weak_root.subject, root_key))
    assert path_problem(child, [], weak_root, NOW) is not None


def test_look_alike_issuer_never_chains(chain: dict[str, x509.Certificate]) -> None:
    impostor_key = _key()
    impostor_root = _cert("Root", impostor_key)  # same name as the genuine root
    forged = _cert("Inter", _key(), (impostor_root.subject, impostor_key))
    problem = path_problem(forged, [impostor_root], chain["root"], NOW)
    assert problem is not None and "does not chain to the pinned anchor" in problem


def test_checkpoint_problem_on_hostile_documents(chain: dict[str, object]) -> None:
    root = chain["root"]
    assert isinstance(root, x509.Certificate)
    anchor = TrustAnchor(fingerprint(root), "test", root)
    body = {
        "schema": "cyphrs.checkpoint/v1",
        "seq": 1,
        "head_hash": "0" * 64,
        "at": rfc3339(NOW),
        "authority": "inter",
    }
    inter_key = chain["inter_key"]
    assert isinstance(inter_key, ec.EllipticCurvePrivateKey)
    from cryptography.hazmat.primitives import serialization

    good = {
        **body,
        "signature": sign_document(inter_key, canonical_json(body)),
        "certificate": chain["inter"].public_bytes(serialization.Encoding.PEM).decode(),  # type: ignore[attr-defined]
    }
    assert checkpoint_problem(good, anchor, []) is None
    for hostile in (
        [],
        "x",
        {},
        {**good, "schema": "other"},
        {**good, "signature": 5},
        {**good, "certificate": "garbage"},
        {**good, "chain": "not a list"},
        {**good, "chain": [1]},
        {**good, "at": "yesterday"},
        {**good, "at": 7},
        {**good, "seq": 2},  # signed body changed
    ):
        assert checkpoint_problem(hostile, anchor, []) is not None, hostile
    fp_only = TrustAnchor("sha256:" + "00" * 32, "--root-fingerprint")
    assert "pinned fingerprint" in str(checkpoint_problem(good, fp_only, [root]))  # type: ignore[list-item]
    by_fp = TrustAnchor(fingerprint(root), "--root-fingerprint")
    assert checkpoint_problem(good, by_fp, [root]) is None  # type: ignore[list-item]


@pytest.mark.parametrize(
    "text",
    ["sha256:" + "AB" * 32, "ab" * 32, ":".join(["AB"] * 32), " sha256:" + "ab" * 32 + "\n"],
)
def test_fingerprint_spellings(text: str) -> None:
    assert normalise_fingerprint(text) == "sha256:" + "ab" * 32


@pytest.mark.parametrize("text", ["", "sha256:", "sha1:" + "ab" * 20, "ab" * 31, "zz" * 32])
def test_bad_fingerprints_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        normalise_fingerprint(text)
