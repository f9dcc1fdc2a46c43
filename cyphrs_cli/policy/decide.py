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
from cyphrs_cli.errors import PolicyDenied

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


def _check_name_constraints(request: LeafRequest, issuer: PolicyIssuer, allowed: list[str]) -> None:
    """Refuse what a verifier would reject anyway: names outside the issuer's subtrees."""
    if issuer.certificate is None:
        return
    from cryptography import x509

    try:
        constraints = issuer.certificate.extensions.get_extension_for_class(
            x509.NameConstraints
        ).value
    except x509.ExtensionNotFound:
        return
    permitted = constraints.permitted_subtrees or []
    uri_bases = [g.value for g in permitted if isinstance(g, x509.UniformResourceIdentifier)]
    dns_bases = [g.value for g in permitted if isinstance(g, x509.DNSName)]
    if request.spiffe_id is not None and uri_bases:
        host = request.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        if not any(_within(host, base, exact_host=True) for base in uri_bases):
            raise _deny(
                f"{issuer.name}.name_constraints",
                f"SPIFFE ID host {host!r} is outside the issuer's name constraints",
            )
    if dns_bases:
        for name in request.dns_names:
            if not any(_within(name, base) for base in dns_bases):
                raise _deny(
                    f"{issuer.name}.name_constraints",
                    f"DNS name {name!r} is outside the issuer's name constraints",
                )
    allowed.append(f"{issuer.name}.name_constraints: names inside the permitted subtrees")


def _within(name: str, base: str, *, exact_host: bool = False) -> bool:
    """RFC 5280 4.2.1.10 subtree matching.

    ``.x`` means strictly below x. A bare ``x`` means x or below for DNS names, but only
    the host x itself for URI constraints.
    """
    name, base = name.lower().rstrip("."), base.lower().rstrip(".")
    if base.startswith("."):
        return name.endswith(base)
    return name == base or (not exact_host and name.endswith("." + base))
