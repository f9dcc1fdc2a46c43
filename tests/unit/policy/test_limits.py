"""Issue 8, limits and class 11: key-strength floors, request size limits, name-constraint
subtrees (IP, excluded, CN) decided by the pure policy functions on real keys and certs."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from cyphrs_cli.ca.extensions import name_constraint_subtrees
from cyphrs_cli.ca.models import IssuerFacts, LeafRequest
from cyphrs_cli.errors import InvalidInputError, PolicyDenied
from cyphrs_cli.policy.decide import _check_key_strength, check_request_limits, decide
from cyphrs_cli.profiles.model import get_profile

P256 = ec.generate_private_key(ec.SECP256R1()).public_key()


def _request(**fields: object) -> LeafRequest:
    base: dict[str, object] = {"profile": "server", "public_key": P256}
    return LeafRequest(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        (rsa.generate_private_key(3, 2048).public_key(), "limits.rsa_exponent"),
        (rsa.generate_private_key(65537, 1024).public_key(), "limits.rsa_size"),  # noqa: S505
        (ec.generate_private_key(ec.SECP256K1()).public_key(), "limits.ec_curve"),
        (ec.generate_private_key(ec.SECP224R1()).public_key(), "limits.ec_curve"),
    ],
)
def test_weak_keys_are_denied(key: object, rule: str) -> None:
    with pytest.raises(PolicyDenied) as denied:
        _check_key_strength(_request(public_key=key), [])
    assert denied.value.rule == rule


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 2048).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        P256,
    ],
)
def test_strong_keys_pass(key: object) -> None:
    _check_key_strength(_request(public_key=key), [])


@pytest.mark.parametrize(
    "fields",
    [
        {"dns_names": tuple(f"h{i}.x" for i in range(101))},
        {"dns_names": tuple(f"h{i}.x" for i in range(50)), "ip_addresses": ("10.0.0.1",) * 51},
        {"common_name": "x" * 65},
        {"common_name": "a\nb"},
        {"permissions": ("p",) * 65, "workflow": "w"},
        {"permissions": ("a\x00",), "workflow": "w"},
        {"requester": "r\x1b[2J"},
        {"workflow": "w\n"},
        {"instance": "../x"},
    ],
)
def test_request_limits_refuse_with_exit_3(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        check_request_limits(_request(**fields))


def test_request_limits_boundaries() -> None:
    check_request_limits(
        _request(
            dns_names=tuple(f"h{i}.x" for i in range(99)),
            spiffe_id="spiffe://a/b",
            common_name="x" * 64,
            permissions=("p" * 128,) * 64,
            requester="r" * 128,
        )
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"permitted_dns": ("acme.internal",)}, "only with --name-constraints"),
        ({"permitted_ip": ("10.0.0.0/8",)}, "only with --name-constraints"),
        ({"name_constraints": True}, "needs --trust-domain"),
        ({"name_constraints": True, "permitted_ip": ("10.0.0.1/8",)}, "host bits"),
        ({"name_constraints": True, "permitted_ip": ("10.0.0.0/33",)}, "invalid --permit-ip"),
        ({"name_constraints": True, "permitted_dns": ("acme.internal\n",)}, "--permit-dns"),
        ({"name_constraints": True, "permitted_dns": ("*.acme.internal",)}, "--permit-dns"),
        ({"name_constraints": True, "trust_domain": "Acme"}, "trust domain"),
    ],
)
def test_bad_subtrees_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "name_constraints": False,
        "trust_domain": None,
        "permitted_dns": (),
        "permitted_ip": (),
        **kwargs,
    }
    with pytest.raises(InvalidInputError, match=message):
        name_constraint_subtrees(**args)  # type: ignore[arg-type]


def test_subtrees_are_normalised() -> None:
    assert name_constraint_subtrees(
        name_constraints=True,
        trust_domain="acme.internal",
        permitted_dns=("Acme.Internal", ".svc.acme.internal"),
        permitted_ip=("10.20.0.0/16", "FD00:20::/32"),
    ) == (
        ("acme.internal",),
        ("acme.internal", ".svc.acme.internal"),
        ("10.20.0.0/16", "fd00:20::/32"),
    )


def _constrained_issuer(
    permitted: list[x509.GeneralName], excluded: list[x509.GeneralName] | None = None
) -> IssuerFacts:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nc")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.NameConstraints(permitted or None, excluded), critical=True)
        .sign(key, hashes.SHA256())
    )
    return IssuerFacts("nc", cert, trust_domain="acme.internal")


def _decide(issuer: IssuerFacts, **fields: object) -> None:
    decide(get_profile(None, "server"), _request(**fields), issuer)


def test_ip_and_excluded_subtrees() -> None:
    issuer = _constrained_issuer(
        [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), x509.DNSName("acme.internal")],
        [
            x509.IPAddress(ipaddress.ip_network("10.66.0.0/16")),
            x509.DNSName("secret.acme.internal"),
        ],
    )
    _decide(issuer, ip_addresses=("10.1.2.3",))
    _decide(issuer, dns_names=("api.acme.internal",))
    for fields in (
        {"ip_addresses": ("11.0.0.1",)},
        {"ip_addresses": ("10.66.1.1",)},  # excluded
        {"ip_addresses": ("::ffff:10.1.2.3",)},  # IPv6 never matches an IPv4 subtree
        {"dns_names": ("db.secret.acme.internal",)},  # excluded
        {"dns_names": ("api.acme.internal",), "common_name": "db.secret.acme.internal"},
        {"ip_addresses": ("10.1.2.3",), "common_name": "not a host"},
    ):
        with pytest.raises(PolicyDenied) as denied:
            _decide(issuer, **fields)
        assert denied.value.rule == "nc.name_constraints", fields


def test_cn_is_free_without_dns_subtrees() -> None:
    """Only DNS subtrees make verifiers read the CN as a DNS name."""
    issuer = _constrained_issuer([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    _decide(issuer, ip_addresses=("10.1.2.3",), common_name="any label at all")
