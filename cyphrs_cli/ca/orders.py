"""Leaf orders: what a caller (CLI flag set, batch line, server request) asks for, turned
into a ``LeafRequest`` with its public key, generating the key pair when there is no CSR.

One order type serves every caller, so a batch line and a command line mean the same.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cyphrs_cli.errors import InvalidInputError, UsageError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificatePublicKeyTypes,
    )

    from cyphrs_cli.ca.models import LeafRequest
    from cyphrs_cli.keystore.base import KeySpec
    from cyphrs_cli.profiles.model import Profile


@dataclass(frozen=True)
class LeafOrder:
    profile: str
    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    spiffe_id: str | None = None
    workflow: str | None = None
    instance: str | None = None
    permissions: tuple[str, ...] = ()
    requester: str | None = None
    ttl: str | None = None
    key_type: str | None = None
    csr_pem: bytes | None = None
    csr_source: str = "CSR"
    # One valid certificate per SPIFFE ID unless the caller asks for a second one.
    allow_duplicate: bool = False


def new_instance_id() -> str:
    """A fresh agent instance name: 64 random bits, enough to never collide."""
    return os.urandom(8).hex()  # secrets.token_hex(8) without importing secrets


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}")


def is_dns_name(name: str) -> bool:
    """True for an ASCII LDH host name (optionally ``*.``-wildcarded), matched whole."""
    lowered = name.lower().rstrip(".")
    return lowered.isascii() and len(lowered) <= 253 and bool(_DNS_NAME.fullmatch(lowered))


def _validate_dns(name: str) -> str:
    """A lowercase LDH name, optionally one leading ``*.`` wildcard label."""
    lowered = name.lower().rstrip(".")
    if not lowered.isascii():
        raise InvalidInputError(
            f"invalid DNS name {name!r}: not ASCII",
            hint="write internationalised names as A-labels (punycode), e.g. xn--bcher-kva.example",
        )
    if not is_dns_name(name):
        raise InvalidInputError(f"invalid DNS name {name!r}")
    return lowered


def _validate_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise InvalidInputError(f"invalid IP address {text!r}") from exc


def prepare_request(
    order: LeafOrder,
    profile: Profile,
    trust_domain: str | None,
    *,
    stand_in: Callable[[KeySpec], CertificatePublicKeyTypes] | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    csr_key: CertificatePublicKeyTypes | None = None,
) -> tuple[LeafRequest, CertificateIssuerPrivateKeyTypes | None]:
    """Validate the order and produce the request plus a generated key (None for a CSR).

    ``csr`` is ``order.csr_pem`` as the caller already loaded it with ``load_csr`` (its
    signature verified): enrollment parses the CSR first to read its SPIFFE ID, and a
    second parse and signature check of the same bytes would only cost time. ``csr_key``
    is that CSR's public key, when the caller loaded it already (the same reason).

    With ``stand_in`` (the batch pre-pass) no key pair is generated: the request carries a
    public key of the requested type from ``stand_in`` so that the policy decision and the
    plan can be checked without a key per item; such a request must never be signed.
    """
    from cyphrs_cli.ca.extensions import (
        agent_spiffe_id,
        parse_spiffe_id,
        validate_name_token,
    )
    from cyphrs_cli.ca.issuance import key_algorithm_name
    from cyphrs_cli.ca.models import LeafRequest
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.keystore.base import KeySpec
    from cyphrs_cli.policy.decide import check_request_limits

    workflow = validate_name_token("workflow", order.workflow) if order.workflow else None
    instance = order.instance
    spiffe_id = order.spiffe_id
    if spiffe_id is not None:
        parse_spiffe_id(spiffe_id)
        if workflow or instance:
            raise UsageError("give --spiffe-id or --workflow/--instance, not both")
    elif workflow is not None:
        if trust_domain is None:
            raise InvalidInputError(
                "the issuer has no SPIFFE trust domain to build the agent ID in",
                hint="create the intermediate with --trust-domain, or pass --spiffe-id",
            )
        instance = validate_name_token("instance", instance or new_instance_id())
        spiffe_id = agent_spiffe_id(trust_domain, workflow, instance)
    elif instance is not None:
        raise UsageError("--instance needs --workflow")
    elif profile.spiffe == "required":
        raise UsageError(f"profile {profile.name!r} needs --workflow (or --spiffe-id)")
    if order.permissions and workflow is None:
        raise UsageError("--permission needs --workflow (permissions travel in the agent claims)")

    dns = tuple(_validate_dns(n) for n in order.dns_names)
    ips = tuple(_validate_ip(a) for a in order.ip_addresses)
    ttl = parse_duration(order.ttl) if order.ttl else None

    private_key = None
    if order.csr_pem is not None:
        from cyphrs_cli.ca.parsing import load_csr

        if order.key_type:
            raise UsageError("--key-type applies to generated keys, not to a CSR")
        loaded = csr if csr is not None else load_csr(order.csr_pem, source=order.csr_source)
        public_key = csr_key if csr is not None and csr_key is not None else loaded.public_key()
        key_type = key_algorithm_name(public_key)
        key_storage = "csr"
    else:
        spec = KeySpec.parse(order.key_type or "p256")
        if stand_in is not None:
            public_key = stand_in(spec)
        else:
            private_key = spec.generate_software_key()
            public_key = private_key.public_key()
        key_type = spec.name
        key_storage = "generated"
    request = LeafRequest(
        profile=profile.name,
        public_key=public_key,
        common_name=order.common_name,
        dns_names=dns,
        ip_addresses=ips,
        spiffe_id=spiffe_id,
        workflow=workflow,
        instance=instance,
        permissions=tuple(order.permissions),
        requester=order.requester,
        ttl=ttl,
        key_type=key_type,
        key_storage=key_storage,
        allow_duplicate=order.allow_duplicate,
    )
    check_request_limits(request)
    return request, private_key
