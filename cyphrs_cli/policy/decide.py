"""Policy decisions for leaf requests.

``decide`` either returns the list of rules that allowed the request (what ``--dry-run``
shows) or raises ``PolicyDenied`` naming the first rule that refused it. Recording the
denial as an audit event is the issuance path's job, not this module's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol

from cyphrs_cli.durations import format_duration
from cyphrs_cli.errors import InvalidInputError, PolicyDenied

if TYPE_CHECKING:
    from datetime import timedelta

    from cryptography import x509

    from cyphrs_cli.ca.models import LeafRequest
    from cyphrs_cli.profiles.model import Profile


class PolicyIssuer(Protocol):
    """The issuer facts a decision depends on (``Issuer`` and ``IssuerFacts`` both fit)."""

    @property
    def name(self) -> str: ...

    @property
    def trust_domain(self) -> str | None: ...

    @property
    def certificate(self) -> x509.Certificate | None: ...

    @property
    def claims_oid(self) -> str: ...

    @property
    def public_url(self) -> str | None: ...


@dataclass(frozen=True)
class PolicyDecision:
    profile: str
    ttl: timedelta
    allowed_by: tuple[str, ...]


def _deny(rule: str, message: str) -> PolicyDenied:
    return PolicyDenied(f"{message} (rule {rule})", rule=rule)


def _name_rule(profile: Profile, kind: str, present: bool, allowed: list[str]) -> None:
    rule = getattr(profile, kind)
    if rule == "required" and not present:
        raise _deny(
            f"{profile.name}.names.{kind}", f"profile {profile.name!r} requires a {kind} name"
        )
    if rule == "forbidden" and present:
        raise _deny(
            f"{profile.name}.names.{kind}", f"profile {profile.name!r} forbids {kind} names"
        )
    if present:
        allowed.append(f"{profile.name}.names.{kind}: {rule}")


def decide(profile: Profile, request: LeafRequest, issuer: PolicyIssuer) -> PolicyDecision:
    """Check ``request`` against ``profile`` and the issuer's constraints."""
    check_request_limits(request)
    allowed: list[str] = []
    if profile.issuers and issuer.name not in profile.issuers:
        raise _deny(
            f"{profile.name}.issuers",
            f"issuer {issuer.name!r} may not use profile {profile.name!r}",
        )
    if profile.issuers:
        allowed.append(f"{profile.name}.issuers: {issuer.name} may use it")

    if request.key_type not in profile.key_types:
        raise _deny(
            f"{profile.name}.key_types",
            f"key type {request.key_type} is not allowed by profile {profile.name!r}"
            f" (allowed: {', '.join(profile.key_types)})",
        )
    allowed.append(f"{profile.name}.key_types: {request.key_type} allowed")
    _check_key_strength(request, allowed)

    ttl = request.ttl or profile.default_ttl
    if ttl > profile.max_ttl:
        raise _deny(
            f"{profile.name}.max_ttl",
            f"TTL {format_duration(ttl)} exceeds the {profile.name!r} maximum of"
            f" {format_duration(profile.max_ttl)}",
        )
    if ttl < profile.min_ttl:
        raise _deny(
            f"{profile.name}.min_ttl",
            f"TTL {format_duration(ttl)} is below the {profile.name!r} minimum of"
            f" {format_duration(profile.min_ttl)}",
        )
    allowed.append(
        f"{profile.name}.max_ttl: {format_duration(ttl)} <= {format_duration(profile.max_ttl)}"
    )
    allowed.append(
        f"{profile.name}.min_ttl: {format_duration(ttl)} >= {format_duration(profile.min_ttl)}"
    )

    _name_rule(profile, "spiffe", request.spiffe_id is not None, allowed)
    _name_rule(profile, "dns", bool(request.dns_names), allowed)
    _name_rule(profile, "ip", bool(request.ip_addresses), allowed)
    if profile.require_one_of:
        present = {
            "dns": bool(request.dns_names),
            "ip": bool(request.ip_addresses),
            "spiffe": request.spiffe_id is not None,
        }
        if not any(present.get(kind) for kind in profile.require_one_of):
            raise _deny(
                f"{profile.name}.names.require_one_of",
                f"profile {profile.name!r} needs one of: {', '.join(profile.require_one_of)}",
            )
    if profile.require_common_name and not request.common_name:
        raise _deny(
            f"{profile.name}.names.require_common_name",
            f"profile {profile.name!r} requires a common name (--cn)",
        )

    if request.spiffe_id is not None:
        _check_spiffe(profile, request.spiffe_id, issuer, allowed)
    for name in request.dns_names:
        if profile.dns_patterns and not any(fnmatchcase(name, p) for p in profile.dns_patterns):
            raise _deny(
                f"{profile.name}.names.dns_patterns",
                f"DNS name {name!r} matches none of {', '.join(profile.dns_patterns)}",
            )
        if profile.dns_patterns:
            allowed.append(f"{profile.name}.names.dns_patterns: {name} matches")
    for text in request.ip_addresses:
        address = ipaddress.ip_address(text)
        if profile.ip_ranges and not any(
            address in ipaddress.ip_network(r, strict=False) for r in profile.ip_ranges
        ):
            raise _deny(
                f"{profile.name}.names.ip_ranges",
                f"IP address {text} is outside {', '.join(profile.ip_ranges)}",
            )
        if profile.ip_ranges:
            allowed.append(f"{profile.name}.names.ip_ranges: {text} inside")
    _check_name_constraints(request, issuer, allowed)
    return PolicyDecision(profile.name, ttl, tuple(allowed))


def _check_spiffe(
    profile: Profile, spiffe_id: str, issuer: PolicyIssuer, allowed: list[str]
) -> None:
    from cyphrs_cli.ca.extensions import parse_spiffe_id

    domain, segments = parse_spiffe_id(spiffe_id)
    permitted = profile.trust_domains or ((issuer.trust_domain,) if issuer.trust_domain else ())
    if not permitted:
        raise _deny(
            f"{issuer.name}.trust_domain",
            f"issuer {issuer.name!r} has no SPIFFE trust domain",
        )
    rule = (
        f"{profile.name}.names.trust_domains"
        if profile.trust_domains
        else f"{issuer.name}.trust_domain"
    )
    if domain not in permitted:
        raise _deny(
            rule, f"trust domain {domain!r} is not permitted (permitted: {', '.join(permitted)})"
        )
    allowed.append(f"{rule}: {domain} permitted")
    path = "/" + "/".join(segments)
    if profile.spiffe_path_patterns and not any(
        fnmatchcase(path, p) for p in profile.spiffe_path_patterns
    ):
        raise _deny(
            f"{profile.name}.names.spiffe_path_patterns",
            f"SPIFFE path {path!r} matches none of {', '.join(profile.spiffe_path_patterns)}",
        )
    if profile.spiffe_path_patterns:
        allowed.append(f"{profile.name}.names.spiffe_path_patterns: {path} matches")


def check_request_limits(request: LeafRequest) -> None:
    """Sizes and characters every leaf request must respect, whoever built it (CLI, batch,
    renewal, a server): exit 3 with the field named. Validation, not policy: no profile can
    lift these, and a refusal is not an audit event."""
    from cyphrs_cli.ca.extensions import (
        COMMON_NAME_MAX,
        PERMISSION_MAX,
        PERMISSIONS_MAX_COUNT,
        REQUESTER_MAX,
        SAN_MAX_COUNT,
        validate_name_token,
        validate_text,
    )

    sans = len(request.dns_names) + len(request.ip_addresses) + int(request.spiffe_id is not None)
    if sans > SAN_MAX_COUNT:
        raise InvalidInputError(
            f"{sans} subject alternative names requested; the limit is {SAN_MAX_COUNT}",
            hint="split the names over several certificates",
        )
    if request.common_name is not None:
        validate_text("common name", request.common_name, max_length=COMMON_NAME_MAX)
    if len(request.permissions) > PERMISSIONS_MAX_COUNT:
        raise InvalidInputError(
            f"{len(request.permissions)} permissions requested;"
            f" the limit is {PERMISSIONS_MAX_COUNT}"
        )
    for permission in request.permissions:
        validate_text("permission", permission, max_length=PERMISSION_MAX)
    if request.requester is not None:
        validate_text("requester", request.requester, max_length=REQUESTER_MAX)
    if request.workflow is not None:
        validate_name_token("workflow", request.workflow)
    if request.instance is not None:
        validate_name_token("instance", request.instance)


# Key strength floors that no profile can lower (exit 5, recorded as a denial).
RSA_EXPONENT = 65537
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _check_key_strength(request: LeafRequest, allowed: list[str]) -> None:
    """RSA e = 65537 and 2048-8192 bits; EC on P-256, P-384 or P-521 only. A CSR carries
    whatever key its author chose; e = 3 or a 1024-bit modulus must not be certified."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = request.public_key
    if isinstance(key, rsa.RSAPublicKey):
        exponent = key.public_numbers().e
        if exponent != RSA_EXPONENT:
            raise _deny(
                "limits.rsa_exponent",
                f"RSA public exponent {exponent} is not allowed (only {RSA_EXPONENT})",
            )
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise _deny(
                "limits.rsa_size",
                f"RSA key size {key.key_size} is outside {RSA_MIN_BITS}-{RSA_MAX_BITS} bits",
            )
        allowed.append(f"limits.rsa: e={exponent}, {key.key_size} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise _deny(
                "limits.ec_curve",
                f"EC curve {key.curve.name} is not allowed (P-256, P-384 or P-521 only)",
            )
        allowed.append(f"limits.ec_curve: {key.curve.name}")


@dataclass(frozen=True)
class NameSubtrees:
    """An issuer's name constraints by type (RFC 5280 4.2.1.10), as plain values."""

    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dns or self.uri or self.ip)


def name_subtrees(
    subtrees: list[x509.GeneralName] | None,
) -> NameSubtrees:
    from cryptography import x509

    names = subtrees or []
    return NameSubtrees(
        dns=tuple(g.value for g in names if isinstance(g, x509.DNSName)),
        uri=tuple(g.value for g in names if isinstance(g, x509.UniformResourceIdentifier)),
        ip=tuple(
            g.value
            for g in names
            if isinstance(g, x509.IPAddress)
            and isinstance(g.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
        ),
    )


def _check_name_constraints(request: LeafRequest, issuer: PolicyIssuer, allowed: list[str]) -> None:
    """Refuse before signing what a verifier would reject anyway: any name outside the
    issuer's permitted subtrees or inside its excluded ones, and a common name that
    OpenSSL (a CN that looks like a host name) or GnuTLS (the CN of a serverAuth
    certificate without DNS SANs) would check as a DNS name. Under DNS constraints a CN
    must therefore be a DNS name inside them; see docs/name-constraints.md."""
    if issuer.certificate is None:
        return
    from cryptography import x509

    from cyphrs_cli.ca.issuance import leaf_common_name

    try:
        constraints = issuer.certificate.extensions.get_extension_for_class(
            x509.NameConstraints
        ).value
    except x509.ExtensionNotFound:
        return
    permitted = name_subtrees(constraints.permitted_subtrees)
    excluded = name_subtrees(constraints.excluded_subtrees)
    rule = f"{issuer.name}.name_constraints"

    def refuse(what: str, where: str) -> PolicyDenied:
        return _deny(rule, f"{what} is {where} the name constraints of issuer {issuer.name!r}")

    if request.spiffe_id is not None:
        host = request.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        if permitted.uri and not any(_within(host, b, exact_host=True) for b in permitted.uri):
            raise refuse(f"SPIFFE ID host {host!r}", "outside")
        if any(_within(host, b, exact_host=True) for b in excluded.uri):
            raise refuse(f"SPIFFE ID host {host!r}", "excluded by")
    for name in request.dns_names:
        if permitted.dns and not any(_within(name, b) for b in permitted.dns):
            raise refuse(f"DNS name {name!r}", "outside")
        if any(_within(name, b) for b in excluded.dns):
            raise refuse(f"DNS name {name!r}", "excluded by")
    for text in request.ip_addresses:
        address = ipaddress.ip_address(text)
        if permitted.ip and not any(_ip_within(address, n) for n in permitted.ip):
            raise refuse(f"IP address {text}", "outside")
        if any(_ip_within(address, n) for n in excluded.ip):
            raise refuse(f"IP address {text}", "excluded by")
    common_name = leaf_common_name(request)
    if common_name is not None and (permitted.dns or excluded.dns):
        from cyphrs_cli.ca.orders import is_dns_name

        inside = is_dns_name(common_name) and (
            not permitted.dns or any(_within(common_name, b) for b in permitted.dns)
        )
        if not inside or any(_within(common_name, b) for b in excluded.dns):
            raise _deny(
                rule,
                f"common name {common_name!r} is not a DNS name inside the DNS name"
                f" constraints of issuer {issuer.name!r} (verifiers check a CN as a DNS"
                " name); use a CN inside them, or none",
            )
    allowed.append(f"{rule}: names inside the permitted subtrees")


def _ip_within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    """Same family and inside; an IPv4 address never matches an IPv6 subtree (as OpenSSL)."""
    return address.version == network.version and address in network


def _within(name: str, base: str, *, exact_host: bool = False) -> bool:
    """RFC 5280 4.2.1.10 subtree matching.

    ``.x`` means strictly below x. A bare ``x`` means x or below for DNS names, but only
    the host x itself for URI constraints.
    """
    name, base = name.lower().rstrip("."), base.lower().rstrip(".")
    if base.startswith("."):
        return name.endswith(base)
    return name == base or (not exact_host and name.endswith("." + base))
