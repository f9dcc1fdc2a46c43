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
from cyphrs_cli.policy.decide import (
    NameSubtrees,
    _check_key_strength,
    _check_name_constraints,
    check_request_limits,
    decide,
    name_subtrees,
)
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


# --- Exact refusals and boundaries (issue 15: mutation testing found these unchecked) ---


def _limit_refusal(**fields: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        check_request_limits(_request(**fields))
    return caught.value


def test_san_count_includes_ip_addresses_and_the_spiffe_id() -> None:
    hosts = tuple(f"h{i}.x" for i in range(98))
    check_request_limits(
        _request(dns_names=hosts, ip_addresses=("10.0.0.1",), spiffe_id="spiffe://a/b")
    )
    error = _limit_refusal(
        dns_names=(*hosts, "h98.x"), ip_addresses=("10.0.0.1",), spiffe_id="spiffe://a/b"
    )
    assert error.message == "101 subject alternative names requested; the limit is 100"
    assert error.hint == "split the names over several certificates"
    error = _limit_refusal(
        ip_addresses=tuple(f"10.0.0.{i}" for i in range(100)), spiffe_id="spiffe://a/b"
    )
    assert error.message == "101 subject alternative names requested; the limit is 100"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"common_name": "x" * 65}, "common name must be 1-64 characters (got 65)"),
        ({"common_name": ""}, "common name must be 1-64 characters (got 0)"),
        (
            {"common_name": "a\nb"},
            "common name 'a\\nb' contains a control or format character (U+000A)",
        ),
        ({"permissions": ("p",) * 65}, "65 permissions requested; the limit is 64"),
        ({"permissions": ("p" * 129,)}, "permission must be 1-128 characters (got 129)"),
        (
            {"permissions": ("ok", "a\x00")},
            "permission 'a\\x00' contains a control or format character (U+0000)",
        ),
        ({"requester": "r" * 129}, "requester must be 1-128 characters (got 129)"),
        ({"requester": ""}, "requester must be 1-128 characters (got 0)"),
        ({"workflow": "w\n"}, "invalid workflow 'w\\n'"),
        ({"instance": "../x"}, "invalid instance '../x'"),
        ({"workflow": "w", "instance": ""}, "invalid instance ''"),
    ],
)
def test_request_limit_refusals_name_the_field(fields: dict[str, object], message: str) -> None:
    assert _limit_refusal(**fields).message == message


def test_request_limits_accept_absent_fields_and_plain_tokens() -> None:
    check_request_limits(_request())
    check_request_limits(_request(workflow="wf-1", instance="i.2", permissions=()))


def _check(issuer: IssuerFacts, **fields: object) -> list[str]:
    allowed: list[str] = []
    _check_name_constraints(_request(**fields), issuer, allowed)
    return allowed


def _denial(issuer: IssuerFacts, **fields: object) -> str:
    with pytest.raises(PolicyDenied) as denied:
        _check(issuer, **fields)
    assert denied.value.rule == "nc.name_constraints"
    return denied.value.message


NC = "the name constraints of issuer 'nc' (rule nc.name_constraints)"
INSIDE = ["nc.name_constraints: names inside the permitted subtrees"]


def test_unconstrained_issuers_are_not_checked() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "free")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert _check(IssuerFacts("free", cert), common_name="not a host") == []
    assert _check(IssuerFacts("offline", None), common_name="not a host") == []


def test_spiffe_host_against_uri_subtrees() -> None:
    issuer = _constrained_issuer([x509.UniformResourceIdentifier("acme.internal")])
    assert _check(issuer, spiffe_id="spiffe://acme.internal/agent/w/i") == INSIDE
    assert _denial(issuer, spiffe_id="spiffe://evil.internal/x") == (
        f"SPIFFE ID host 'evil.internal' is outside {NC}"
    )
    # A URI constraint names a host, not a domain: a subdomain is outside.
    assert _denial(issuer, spiffe_id="spiffe://sub.acme.internal/x") == (
        f"SPIFFE ID host 'sub.acme.internal' is outside {NC}"
    )
    excluded = _constrained_issuer(
        [x509.DNSName("acme.internal")], [x509.UniformResourceIdentifier("acme.internal")]
    )
    assert _denial(excluded, spiffe_id="spiffe://acme.internal/x") == (
        f"SPIFFE ID host 'acme.internal' is excluded by {NC}"
    )
    # DNS subtrees do not constrain the SPIFFE ID's host.
    dns_only = _constrained_issuer([x509.DNSName("acme.internal")])
    assert _check(dns_only, spiffe_id="spiffe://other.internal/x") == INSIDE


def test_dns_and_ip_refusals_are_exact() -> None:
    issuer = _constrained_issuer(
        [
            x509.DNSName("acme.internal"),
            x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
            x509.IPAddress(ipaddress.ip_network("fd00::/8")),
        ],
        [
            x509.DNSName(".secret.acme.internal"),
            x509.IPAddress(ipaddress.ip_network("10.66.0.0/16")),
        ],
    )
    assert _check(issuer, dns_names=("acme.internal", "secret.acme.internal")) == INSIDE
    assert _check(issuer, ip_addresses=("10.1.2.3", "fd00::1")) == INSIDE
    assert _denial(issuer, dns_names=("api.acme.internal", "evil.internal")) == (
        f"DNS name 'evil.internal' is outside {NC}"
    )
    assert _denial(issuer, dns_names=("db.secret.acme.internal",)) == (
        f"DNS name 'db.secret.acme.internal' is excluded by {NC}"
    )
    assert _denial(issuer, ip_addresses=("10.1.2.3", "11.0.0.1")) == (
        f"IP address 11.0.0.1 is outside {NC}"
    )
    assert (
        _denial(issuer, ip_addresses=("10.66.0.1",)) == f"IP address 10.66.0.1 is excluded by {NC}"
    )
    assert _denial(issuer, ip_addresses=("fe80::1",)) == f"IP address fe80::1 is outside {NC}"


def test_ip_versions_never_match_each_other() -> None:
    v6 = _constrained_issuer([x509.IPAddress(ipaddress.ip_network("::/0"))])
    assert _denial(v6, ip_addresses=("10.0.0.1",)) == f"IP address 10.0.0.1 is outside {NC}"
    v4_excluded = _constrained_issuer(
        [x509.IPAddress(ipaddress.ip_network("::/0"))],
        [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0"))],
    )
    assert _check(v4_excluded, ip_addresses=("::ffff:10.0.0.1", "fd00::1")) == INSIDE
    # Only excluded subtrees: everything outside them is fine.
    only_excluded = _constrained_issuer([], [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    assert _check(only_excluded, ip_addresses=("11.0.0.1",), dns_names=("any.host",)) == INSIDE
    assert _denial(only_excluded, ip_addresses=("10.0.0.1",)) == (
        f"IP address 10.0.0.1 is excluded by {NC}"
    )


def test_common_name_under_dns_constraints() -> None:
    def cn_refusal(cn: str) -> str:
        return (
            f"common name {cn!r} is not a DNS name inside the DNS name constraints of issuer"
            " 'nc' (verifiers check a CN as a DNS name); use a CN inside them, or none"
            " (rule nc.name_constraints)"
        )

    permitted = _constrained_issuer([x509.DNSName("acme.internal")])
    assert _check(permitted, dns_names=("api.acme.internal",)) == INSIDE
    assert _check(permitted, common_name="API.acme.internal") == INSIDE
    assert _denial(permitted, common_name="evil.internal") == cn_refusal("evil.internal")
    assert _denial(permitted, common_name="not a host") == cn_refusal("not a host")
    # Only excluded DNS subtrees: a CN must still be a DNS name, and not an excluded one.
    excluded = _constrained_issuer(
        [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], [x509.DNSName("secret.internal")]
    )
    assert _check(excluded, common_name="anything.internal") == INSIDE
    assert _denial(excluded, common_name="db.secret.internal") == cn_refusal("db.secret.internal")
    assert _denial(excluded, common_name="not a host") == cn_refusal("not a host")
    # Without DNS subtrees, a CN is not read as a host name.
    ip_only = _constrained_issuer([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    assert _check(ip_only, common_name="not a host") == INSIDE


def test_name_subtrees_sort_general_names_by_type() -> None:
    assert not name_subtrees(None)
    assert not name_subtrees([x509.RFC822Name("a@b.c")])
    subtrees = name_subtrees(
        [
            x509.DNSName("acme.internal"),
            x509.UniformResourceIdentifier("td.internal"),
            x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
        ]
    )
    assert subtrees == NameSubtrees(
        dns=("acme.internal",), uri=("td.internal",), ip=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    assert NameSubtrees(dns=("a",)) and NameSubtrees(uri=("a",))
    assert NameSubtrees(ip=(ipaddress.ip_network("10.0.0.0/8"),))


def _rsa_of_size(bits: int, exponent: int = 65537) -> rsa.RSAPublicKey:
    """An RSA public key of exactly ``bits`` bits without generating one (an 8192-bit
    key takes minutes); only the size and exponent are read by the floors."""
    return rsa.RSAPublicNumbers(exponent, (1 << (bits - 1)) | 1).public_key()


def test_key_strength_refusals_and_bounds_are_exact() -> None:
    for bits in (2048, 8192):
        allowed: list[str] = []
        _check_key_strength(_request(public_key=_rsa_of_size(bits)), allowed)
        assert allowed == [f"limits.rsa: e=65537, {bits} bits"]
    for bits in (2047, 8193):
        with pytest.raises(PolicyDenied) as denied:
            _check_key_strength(_request(public_key=_rsa_of_size(bits)), [])
        assert denied.value.message == (
            f"RSA key size {bits} is outside 2048-8192 bits (rule limits.rsa_size)"
        )
    with pytest.raises(PolicyDenied) as denied:
        _check_key_strength(_request(public_key=_rsa_of_size(2048, exponent=3)), [])
    assert denied.value.message == (
        "RSA public exponent 3 is not allowed (only 65537) (rule limits.rsa_exponent)"
    )
    with pytest.raises(PolicyDenied) as denied:
        _check_key_strength(
            _request(public_key=ec.generate_private_key(ec.SECP256K1()).public_key()), []
        )
    assert denied.value.message == (
        "EC curve secp256k1 is not allowed (P-256, P-384 or P-521 only) (rule limits.ec_curve)"
    )


def test_excluded_uri_subtrees_name_one_host_only() -> None:
    """RFC 5280 4.2.1.10: a URI constraint's bare host excludes that host, not its
    subdomains (a leading '.' would)."""
    issuer = _constrained_issuer(
        [x509.DNSName("acme.internal")], [x509.UniformResourceIdentifier("acme.internal")]
    )
    assert _check(issuer, spiffe_id="spiffe://sub.acme.internal/x") == INSIDE
    below = _constrained_issuer(
        [x509.DNSName("acme.internal")], [x509.UniformResourceIdentifier(".acme.internal")]
    )
    assert _denial(below, spiffe_id="spiffe://sub.acme.internal/x") == (
        f"SPIFFE ID host 'sub.acme.internal' is excluded by {NC}"
    )


def test_only_ip_networks_are_ip_subtrees() -> None:
    assert name_subtrees([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]).ip == ()
