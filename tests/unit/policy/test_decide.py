"""``policy.decide``: each rule allows what it should, refuses what it should, names itself.

Pure-function tests: a Profile, a LeafRequest and the issuer's facts go in, a decision or a
``PolicyDenied`` naming the rule comes out. Name-constrained issuers are real certificates
built with cryptography.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyphrs_cli.ca.models import IssuerFacts, LeafRequest
from cyphrs_cli.errors import InvalidInputError, PolicyDenied
from cyphrs_cli.policy.decide import decide
from cyphrs_cli.profiles.model import Profile

H = timedelta(hours=1)


@cache
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _profile(**changes: object) -> Profile:
    base = Profile(
        name="p",
        description="",
        extended_key_usage=("clientAuth",),
        default_ttl=4 * H,
        min_ttl=timedelta(minutes=5),
        max_ttl=24 * H,
        key_types=("p256", "p384"),
        spiffe="optional",
        dns="optional",
        ip="optional",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _request(**changes: object) -> LeafRequest:
    base = LeafRequest(profile="p", public_key=_key().public_key())
    return replace(base, **changes)  # type: ignore[arg-type]


ISSUER = IssuerFacts("issuing", None, "acme.internal")


def _constrained(uri_hosts: list[str], dns: list[str]) -> IssuerFacts:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Constrained")])
    now = datetime.now(UTC)
    subtrees: list[x509.GeneralName] = [x509.UniformResourceIdentifier(h) for h in uri_hosts]
    subtrees += [x509.DNSName(d) for d in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1 << 70)
        .not_valid_before(now)
        .not_valid_after(now + H)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.NameConstraints(subtrees, None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return IssuerFacts("constrained", cert, "acme.internal")


def _denied(profile: Profile, request: LeafRequest, issuer: IssuerFacts = ISSUER) -> str:
    with pytest.raises(PolicyDenied) as caught:
        decide(profile, request, issuer)
    error = caught.value
    assert f"(rule {error.rule})" in error.message
    return error.rule


def test_allowed_request_reports_ttl_and_every_rule_that_allowed_it() -> None:
    decision = decide(
        _profile(issuers=("issuing",)),
        _request(dns_names=("a.acme.internal",), spiffe_id="spiffe://acme.internal/x"),
        ISSUER,
    )
    assert decision.profile == "p" and decision.ttl == 4 * H
    assert decision.allowed_by == (
        "p.issuers: issuing may use it",
        "p.key_types: p256 allowed",
        "limits.ec_curve: secp256r1",
        "p.max_ttl: 4h <= 1d",
        "p.min_ttl: 4h >= 5m",
        "p.names.spiffe: optional",
        "p.names.dns: optional",
        "issuing.trust_domain: acme.internal permitted",
    )


def test_requested_ttl_wins_over_the_default() -> None:
    assert decide(_profile(), _request(ttl=2 * H), ISSUER).ttl == 2 * H


def test_ttl_bounds_are_inclusive() -> None:
    assert decide(_profile(), _request(ttl=24 * H), ISSUER).ttl == 24 * H
    assert decide(_profile(), _request(ttl=timedelta(minutes=5)), ISSUER).ttl == timedelta(
        minutes=5
    )
    assert _denied(_profile(), _request(ttl=24 * H + timedelta(seconds=1))) == "p.max_ttl"
    assert _denied(_profile(), _request(ttl=timedelta(minutes=5, seconds=-1))) == "p.min_ttl"


def test_a_default_ttl_above_the_maximum_is_still_refused() -> None:
    assert _denied(_profile(default_ttl=25 * H), _request()) == "p.max_ttl"


def test_issuers_list() -> None:
    assert _denied(_profile(issuers=("other",)), _request()) == "p.issuers"
    allowed = decide(_profile(), _request(), ISSUER).allowed_by
    assert not any(rule.startswith("p.issuers") for rule in allowed)  # no list, no claim


def test_key_types() -> None:
    assert _denied(_profile(), _request(key_type="rsa3072")) == "p.key_types"
    assert decide(_profile(), _request(key_type="p384"), ISSUER).ttl == 4 * H


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("spiffe", "spiffe_id", "spiffe://acme.internal/agent/w/i"),
        ("dns", "dns_names", ("a.acme.internal",)),
        ("ip", "ip_addresses", ("10.0.0.1",)),
    ],
)
def test_name_rules(kind: str, field: str, value: object) -> None:
    present = _request(**{field: value})
    absent = _request(common_name="x")
    assert _denied(_profile(**{kind: "required"}), absent) == f"p.names.{kind}"
    assert _denied(_profile(**{kind: "forbidden"}), present) == f"p.names.{kind}"
    decision = decide(_profile(**{kind: "required"}), present, ISSUER)
    assert f"p.names.{kind}: required" in decision.allowed_by
    decision = decide(_profile(**{kind: "forbidden"}), absent, ISSUER)
    assert not any(r.startswith(f"p.names.{kind}") for r in decision.allowed_by)


def test_require_one_of() -> None:
    profile = _profile(require_one_of=("dns", "ip"))
    assert _denied(profile, _request(spiffe_id="spiffe://acme.internal/x")) == (
        "p.names.require_one_of"
    )
    decide(profile, _request(ip_addresses=("10.0.0.1",)), ISSUER)
    decide(profile, _request(dns_names=("a.acme.internal",)), ISSUER)
    decide(
        _profile(require_one_of=("spiffe",)), _request(spiffe_id="spiffe://acme.internal/x"), ISSUER
    )
    assert _denied(_profile(require_one_of=("spiffe",)), _request(ip_addresses=("10.0.0.1",))) == (
        "p.names.require_one_of"
    )


def test_require_common_name() -> None:
    profile = _profile(require_common_name=True)
    assert _denied(profile, _request()) == "p.names.require_common_name"
    # An empty CN is malformed input (exit 3) before it is a policy question.
    with pytest.raises(InvalidInputError, match="common name must be 1-64 characters"):
        decide(profile, _request(common_name=""), ISSUER)
    decide(profile, _request(common_name="deployer"), ISSUER)


def test_spiffe_trust_domain_comes_from_the_issuer_or_the_profile() -> None:
    ok = _request(spiffe_id="spiffe://acme.internal/agent/w/i")
    other = _request(spiffe_id="spiffe://other.internal/agent/w/i")
    assert _denied(_profile(), other) == "issuing.trust_domain"
    decide(_profile(), ok, ISSUER)
    profile = _profile(trust_domains=("other.internal",))
    assert (
        "p.names.trust_domains: other.internal permitted"
        in decide(profile, other, ISSUER).allowed_by
    )
    assert _denied(profile, ok) == "p.names.trust_domains"
    no_domain = IssuerFacts("bare", None, None)
    assert _denied(_profile(), ok, no_domain) == "bare.trust_domain"
    decide(profile, other, no_domain)


def test_spiffe_ids_are_parsed_strictly() -> None:
    with pytest.raises(InvalidInputError):
        decide(_profile(), _request(spiffe_id="spiffe://acme.internal/a/../b"), ISSUER)


def test_spiffe_path_patterns() -> None:
    profile = _profile(spiffe_path_patterns=("/agent/payments-*/*",))
    allowed = decide(
        profile, _request(spiffe_id="spiffe://acme.internal/agent/payments-recon/i1"), ISSUER
    ).allowed_by
    assert "p.names.spiffe_path_patterns: /agent/payments-recon/i1 matches" in allowed
    denied = _request(spiffe_id="spiffe://acme.internal/agent/billing/i1")
    assert _denied(profile, denied) == "p.names.spiffe_path_patterns"
    # fnmatchcase: case-sensitive
    upper = _request(spiffe_id="spiffe://acme.internal/agent/PAYMENTS-recon/i1")
    assert _denied(profile, upper) == "p.names.spiffe_path_patterns"


def test_dns_patterns() -> None:
    profile = _profile(dns_patterns=("*.web.acme.internal", "api.acme.internal"))
    decision = decide(
        profile, _request(dns_names=("a.web.acme.internal", "api.acme.internal")), ISSUER
    )
    assert "p.names.dns_patterns: api.acme.internal matches" in decision.allowed_by
    assert "p.names.dns_patterns: a.web.acme.internal matches" in decision.allowed_by
    mixed = _request(dns_names=("api.acme.internal", "db.acme.internal"))
    assert _denied(profile, mixed) == "p.names.dns_patterns"  # every name must match
    assert not any(
        r.startswith("p.names.dns_patterns")
        for r in decide(_profile(), _request(dns_names=("x.y",)), ISSUER).allowed_by
    )


def test_ip_ranges() -> None:
    profile = _profile(ip_ranges=("10.0.0.0/24", "fd00::/8"))
    decision = decide(profile, _request(ip_addresses=("10.0.0.255", "fd00::1")), ISSUER)
    assert "p.names.ip_ranges: 10.0.0.255 inside" in decision.allowed_by
    assert _denied(profile, _request(ip_addresses=("10.0.1.0",))) == "p.names.ip_ranges"
    assert _denied(profile, _request(ip_addresses=("10.0.0.1", "192.0.2.1"))) == (
        "p.names.ip_ranges"
    )
    assert not any(
        r.startswith("p.names.ip_ranges")
        for r in decide(_profile(), _request(ip_addresses=("192.0.2.1",)), ISSUER).allowed_by
    )


def test_name_constraints_of_the_issuer_certificate() -> None:
    issuer = _constrained(["acme.internal"], ["acme.internal"])
    inside = _request(
        spiffe_id="spiffe://acme.internal/agent/w/i", dns_names=("api.acme.internal",)
    )
    allowed = decide(_profile(), inside, issuer).allowed_by
    assert allowed[-1] == "constrained.name_constraints: names inside the permitted subtrees"
    outside_dns = _request(dns_names=("api.example.com",))
    assert _denied(_profile(), outside_dns, issuer) == "constrained.name_constraints"
    lookalike = _request(dns_names=("evilacme.internal",))
    assert _denied(_profile(), lookalike, issuer) == "constrained.name_constraints"
    # A URI constraint names one host: a subdomain trust domain is outside it.
    sub = _profile(trust_domains=("sub.acme.internal",))
    below = _request(spiffe_id="spiffe://sub.acme.internal/agent/w/i")
    assert _denied(sub, below, issuer) == "constrained.name_constraints"


def test_only_uri_subtrees_leave_dns_names_free() -> None:
    issuer = _constrained(["acme.internal"], [])
    decide(_profile(), _request(dns_names=("api.example.com",)), issuer)
    dns_only = _constrained([], ["acme.internal"])
    decide(
        _profile(trust_domains=("other.internal",)),
        _request(spiffe_id="spiffe://other.internal/x"),
        dns_only,
    )


def test_issuer_without_constraints_adds_no_constraint_rule() -> None:
    allowed = decide(_profile(), _request(dns_names=("a.example.com",)), ISSUER).allowed_by
    assert not any("name_constraints" in rule for rule in allowed)


def test_first_failing_rule_is_reported() -> None:
    """Rules are checked in a documented order: issuers, key type, TTL, names."""
    profile = _profile(issuers=("other",), spiffe="required")
    assert _denied(profile, _request(key_type="rsa3072", ttl=48 * H)) == "p.issuers"
    profile = _profile(spiffe="required")
    assert _denied(profile, _request(key_type="rsa3072", ttl=48 * H)) == "p.key_types"
    assert _denied(profile, _request(ttl=48 * H)) == "p.max_ttl"


def _message(profile: Profile, request: LeafRequest, issuer: IssuerFacts = ISSUER) -> str:
    with pytest.raises(PolicyDenied) as caught:
        decide(profile, request, issuer)
    return caught.value.message


SPIFFE = "spiffe://acme.internal/agent/w/i"


@pytest.mark.parametrize(
    ("profile", "request_", "message"),
    [
        (
            {"issuers": ("a", "b")},
            {},
            "issuer 'issuing' may not use profile 'p' (rule p.issuers)",
        ),
        (
            {},
            {"key_type": "rsa3072"},
            "key type rsa3072 is not allowed by profile 'p' (allowed: p256, p384)"
            " (rule p.key_types)",
        ),
        (
            {},
            {"ttl": 25 * H},
            "TTL 1d1h exceeds the 'p' maximum of 1d (rule p.max_ttl)",
        ),
        (
            {},
            {"ttl": timedelta(minutes=1)},
            "TTL 1m is below the 'p' minimum of 5m (rule p.min_ttl)",
        ),
        ({"dns": "required"}, {}, "profile 'p' requires a dns name (rule p.names.dns)"),
        (
            {"ip": "forbidden"},
            {"ip_addresses": ("10.0.0.1",)},
            "profile 'p' forbids ip names (rule p.names.ip)",
        ),
        (
            {"require_one_of": ("dns", "ip")},
            {"common_name": "x"},
            "profile 'p' needs one of: dns, ip (rule p.names.require_one_of)",
        ),
        (
            {"require_common_name": True},
            {},
            "profile 'p' requires a common name (--cn) (rule p.names.require_common_name)",
        ),
        (
            {"dns_patterns": ("*.a.internal", "*.b.internal")},
            {"dns_names": ("x.c.internal",)},
            "DNS name 'x.c.internal' matches none of *.a.internal, *.b.internal"
            " (rule p.names.dns_patterns)",
        ),
        (
            {"ip_ranges": ("10.0.0.0/24", "10.1.0.0/24")},
            {"ip_addresses": ("10.2.0.1",)},
            "IP address 10.2.0.1 is outside 10.0.0.0/24, 10.1.0.0/24 (rule p.names.ip_ranges)",
        ),
        (
            {"trust_domains": ("a.internal", "b.internal")},
            {"spiffe_id": SPIFFE},
            "trust domain 'acme.internal' is not permitted (permitted: a.internal, b.internal)"
            " (rule p.names.trust_domains)",
        ),
        (
            {"spiffe_path_patterns": ("/x/*", "/y/*")},
            {"spiffe_id": SPIFFE},
            "SPIFFE path '/agent/w/i' matches none of /x/*, /y/* (rule p.names.spiffe_path_patterns)",
        ),
    ],
)
def test_refusal_messages(
    profile: dict[str, object], request_: dict[str, object], message: str
) -> None:
    assert _message(_profile(**profile), _request(**request_)) == message


def test_refusal_messages_about_the_issuer() -> None:
    assert _message(_profile(), _request(spiffe_id=SPIFFE), IssuerFacts("bare", None, None)) == (
        "issuer 'bare' has no SPIFFE trust domain (rule bare.trust_domain)"
    )
    issuer = _constrained(["acme.internal"], ["acme.internal"])
    outside = _request(spiffe_id="spiffe://other.internal/x")
    assert _message(_profile(trust_domains=("other.internal",)), outside, issuer) == (
        "SPIFFE ID host 'other.internal' is outside the name constraints of issuer"
        " 'constrained'"
        " (rule constrained.name_constraints)"
    )
    assert _message(_profile(), _request(dns_names=("a.example",)), issuer) == (
        "DNS name 'a.example' is outside the name constraints of issuer 'constrained'"
        " (rule constrained.name_constraints)"
    )


def test_ip_ranges_with_host_bits_are_networks() -> None:
    """Profiles may write 10.0.0.5/24 (host bits set): it means 10.0.0.0/24, as at load."""
    profile = _profile(ip_ranges=("10.0.0.5/24",))
    decide(profile, _request(ip_addresses=("10.0.0.200",)), ISSUER)
    assert _denied(profile, _request(ip_addresses=("10.0.1.1",))) == "p.names.ip_ranges"
