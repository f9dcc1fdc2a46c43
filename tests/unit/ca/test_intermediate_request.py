"""The intermediate request carried in a CSR: strict in what it accepts (issue 14)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.ca.offline import REQUEST_OID, IntermediateRequest, carried_request
from cyphrs_cli.errors import InvalidInputError

GOOD = IntermediateRequest(
    trust_domain="acme.internal",
    name_constraints=True,
    permitted_dns=("acme.internal",),
    permitted_ip=("10.0.0.0/8",),
    path_length=1,
    validity="2y",
)


def _csr(value: bytes | None) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Agents CA")])
    )
    if value is not None:
        builder = builder.add_attribute(x509.ObjectIdentifier(REQUEST_OID), value)
    return builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


def test_round_trip_through_a_csr() -> None:
    from cyphrs_cli.ledger.events import canonical_json

    assert carried_request(_csr(canonical_json(GOOD.to_json())), "x.csr") == GOOD
    assert carried_request(_csr(None), "x.csr") is None


@pytest.mark.parametrize(
    "change",
    [
        {"schema": "cyphrs.intermediate-params/v2"},
        {"path_length": True},
        {"path_length": 7},
        {"path_length": "1"},
        {"validity": "forever"},
        {"validity": "200y"},
        {"trust_domain": "Evil Domain"},
        {"trust_domain": 5},
        {"name_constraints": "yes"},
        {"permit_dns": "acme.internal"},
        {"permit_dns": ["bad..name"]},
        {"permit_ip": ["10.0.0.1/8"]},
        {"name_constraints": False},  # subtrees without constraints are refused, not dropped
        {"extra": 1},
    ],
)
def test_hostile_or_inconsistent_requests_are_invalid_input(change: dict[str, Any]) -> None:
    data = {**GOOD.to_json(), **change}
    with pytest.raises(InvalidInputError):
        IntermediateRequest.from_json(data, source="x.csr")


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"schema": null}', b"1e999999"])
def test_garbage_in_the_attribute_is_invalid_input(value: bytes) -> None:
    with pytest.raises(InvalidInputError):
        carried_request(_csr(value), "x.csr")


def test_missing_field_is_refused() -> None:
    data = GOOD.to_json()
    del data["validity"]
    with pytest.raises(InvalidInputError, match="fields"):
        IntermediateRequest.from_json(data, source="x.csr")
