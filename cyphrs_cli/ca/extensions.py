"""Extension sets per role, SPIFFE ID rules, and the agent-claims private extension.

Agent claims live under ``CYPHRS_OID_ARC``; ``.1`` is::

    AgentClaims ::= SEQUENCE {
        version     INTEGER,            -- 1
        workflow    UTF8String,
        permissions SEQUENCE OF UTF8String,
        requester   UTF8String,
        issuedAt    GeneralizedTime }
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

# Not the UUID arc 2.25.<uuid> the design first named: its 128-bit arc makes Go's x509
# parser (arcs < 2^31) reject the whole certificate, and pkilint's DER decoder refuses it.
# Provisional arc under RFC 5612's example enterprise number until cyphrs has its own
# IANA PEN; see docs/design-notes.md. A home may record its own organisation's OID instead
# (``cyphrs config claims-oid``, ``init-root --claims-oid``); this is only the default.
CYPHRS_OID_ARC = "1.3.6.1.4.1.32473.77"
AGENT_CLAIMS_OID = CYPHRS_OID_ARC + ".1"

# Full-string patterns only (used with ``fullmatch``): an anchored ``match`` with ``$``
# accepts a trailing newline, which is how "\n" once reached a SPIFFE URI SAN.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_NAME_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

SPIFFE_ID_MAX_BYTES = 2048  # X509-SVID / SPIFFE ID spec: URI SANs up to 2048 bytes
TRUST_DOMAIN_MAX = 255
# Free-text limits (ub-common-name is 64 characters in RFC 5280 Appendix A).
COMMON_NAME_MAX = 64
PERMISSION_MAX = 128
PERMISSIONS_MAX_COUNT = 64
REQUESTER_MAX = 128
SAN_MAX_COUNT = 100

# Unicode categories refused in any free-text field that ends up in a certificate or the
# ledger: controls (C0, DEL, C1), format characters (bidi overrides, zero-width), surrogates,
# private use, unassigned, and line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def forbidden_character(value: str) -> str | None:
    """The first character of ``value`` that may not appear in a name, as ``U+XXXX``."""
    import unicodedata

    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


def validate_text(kind: str, value: str, *, max_length: int) -> str:
    """A free-text field (CN, permission, requester): 1..max_length characters, printable."""
    if not value or len(value) > max_length:
        raise InvalidInputError(
            f"{kind} must be 1-{max_length} characters (got {len(value)})",
            hint=f"shorten the {kind}",
        )
    bad = forbidden_character(value)
    if bad is not None:
        raise InvalidInputError(
            f"{kind} {value!r} contains a control or format character ({bad})",
            hint="names may hold printable characters only",
        )
    return value


def validate_trust_domain(domain: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(domain) or len(domain) > TRUST_DOMAIN_MAX:
        raise InvalidInputError(
            f"invalid SPIFFE trust domain {domain!r}",
            hint="use lowercase letters, digits, '.', '-' and '_' (e.g. acme.internal)",
        )
    return domain


def validate_name_token(kind: str, value: str) -> str:
    """Workflow and instance names become SPIFFE path segments: keep them plain."""
    if not _NAME_TOKEN.fullmatch(value):
        raise InvalidInputError(
            f"invalid {kind} {value!r}",
            hint="use 1-63 letters, digits, '.', '-', '_', starting with a letter or digit",
        )
    return value


def parse_spiffe_id(value: str, *, leaf: bool = True) -> tuple[str, tuple[str, ...]]:
    """Split a SPIFFE ID into (trust domain, path segments) per the SPIFFE ID spec.

    The scheme is exactly ``spiffe`` (lowercase); the authority is a bare trust domain
    (its character set leaves no room for userinfo ``@`` or a port ``:``); no query,
    fragment or percent-encoding; each path segment is non-empty, not ``.``/``..``, of
    ``[A-Za-z0-9._-]``; at most 2048 bytes. X509-SVID section 3.1: a leaf's ID MUST have
    a non-root path, so ``spiffe://td`` and ``spiffe://td/`` are refused when ``leaf``.
    """

    def bad(reason: str) -> InvalidInputError:
        return InvalidInputError(
            f"invalid SPIFFE ID {value!r}: {reason}",
            hint="use spiffe://<trust-domain>/<path>, e.g. spiffe://acme.internal/agent/x/1",
        )

    if len(value.encode("utf-8", "surrogatepass")) > SPIFFE_ID_MAX_BYTES:
        raise bad(f"longer than {SPIFFE_ID_MAX_BYTES} bytes")
    if not value.startswith("spiffe://"):
        raise bad("must start with spiffe:// (lowercase scheme)")
    rest = value[len("spiffe://") :]
    for char, what in (("?", "query"), ("#", "fragment"), ("%", "percent-encoding")):
        if char in rest:
            raise bad(f"a {what} is not allowed")
    domain, slash, path = rest.partition("/")
    if not domain:
        raise bad("missing trust domain")
    if "@" in domain:
        raise bad("userinfo is not allowed")
    if ":" in domain:
        raise bad("a port is not allowed")
    if not _TRUST_DOMAIN.fullmatch(domain) or len(domain) > TRUST_DOMAIN_MAX:
        raise bad("the trust domain may hold only lowercase letters, digits, '.', '-', '_'")
    segments = tuple(path.split("/")) if slash else ()
    if leaf and (not segments or segments == ("",)):
        raise bad("a leaf certificate's SPIFFE ID needs a path (X509-SVID section 3.1)")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise bad(f"empty, '.' or '..' path segment {segment!r}")
        if not _PATH_SEGMENT.fullmatch(segment):
            raise bad(f"path segment {segment!r} may hold only letters, digits, '.', '-', '_'")
    return domain, segments


def name_constraint_subtrees(
    *,
    name_constraints: bool,
    trust_domain: str | None,
    permitted_dns: tuple[str, ...],
    permitted_ip: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Validate ``--name-constraints`` subtrees into (URI hosts, DNS, IP CIDRs).

    A ``--permit-dns``/``--permit-ip`` without ``--name-constraints`` is refused rather
    than silently dropped: an operator who asks for a subtree expects it to be enforced.
    DNS subtrees are host names, optionally with a leading ``.`` ("strictly below");
    IP subtrees are CIDR networks with no host bits set (``10.0.0.0/8``, ``fd00::/8``).
    """
    import ipaddress

    if not name_constraints:
        if permitted_dns or permitted_ip:
            raise InvalidInputError(
                "--permit-dns/--permit-ip take effect only with --name-constraints",
                hint="add --name-constraints",
            )
        return (), (), ()
    if not (trust_domain or permitted_dns or permitted_ip):
        raise InvalidInputError(
            "--name-constraints needs --trust-domain, --permit-dns and/or --permit-ip"
        )
    label = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
    dns = []
    for base in permitted_dns:
        lowered = base.lower()
        if len(lowered) > 253 or not re.fullmatch(rf"\.?({label}\.)*{label}", lowered):
            raise InvalidInputError(
                f"invalid --permit-dns subtree {base!r}",
                hint="a host name such as acme.internal, or .acme.internal for below it only",
            )
        dns.append(lowered)
    ips = []
    for text in permitted_ip:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise InvalidInputError(
                f"invalid --permit-ip subtree {text!r}: {exc}",
                hint="a CIDR network with no host bits set, e.g. 10.20.0.0/16 or fd00::/8",
            ) from exc
        ips.append(str(network))
    uri = (validate_trust_domain(trust_domain),) if trust_domain else ()
    return uri, tuple(dns), tuple(ips)


def agent_spiffe_id(trust_domain: str, workflow: str, instance: str) -> str:
    return f"spiffe://{trust_domain}/agent/{workflow}/{instance}"


@dataclass(frozen=True)
class AgentClaims:
    """What an agent instance may do and on whose behalf; decoded by ``inspect``."""

    workflow: str
    permissions: tuple[str, ...]
    requester: str
    issued_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "permissions": list(self.permissions),
            "requester": self.requester,
            "issued_at": self.issued_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@cache
def _claims_asn1() -> Any:
    """The asn1crypto type for AgentClaims, built on first use (asn1crypto loads lazily)."""
    from asn1crypto import core

    class Permissions(core.SequenceOf):  # type: ignore[misc]
        _child_spec = core.UTF8String

    class Claims(core.Sequence):  # type: ignore[misc]
        _fields = [  # noqa: RUF012 - asn1crypto reads this class attribute
            ("version", core.Integer),
            ("workflow", core.UTF8String),
            ("permissions", Permissions),
            ("requester", core.UTF8String),
            ("issued_at", core.GeneralizedTime),
        ]

    return Claims


# A pure function of frozen claims (issued_at has whole seconds): the items of a batch
# share a handful of workflows, and asn1crypto's encoder was a tenth of a batch item's CPU.
@lru_cache(maxsize=256)
def encode_agent_claims(claims: AgentClaims) -> bytes:
    value = _claims_asn1()(
        {
            "version": 1,
            "workflow": claims.workflow,
            "permissions": list(claims.permissions),
            "requester": claims.requester,
            "issued_at": claims.issued_at.astimezone(UTC),
        }
    )
    return bytes(value.dump())


def decode_agent_claims(der: bytes) -> AgentClaims:
    try:
        native = _claims_asn1().load(der, strict=True).native
        if native["version"] != 1:
            raise ValueError(f"unsupported claims version {native['version']}")
        return AgentClaims(
            workflow=native["workflow"],
            permissions=tuple(native["permissions"]),
            requester=native["requester"],
            issued_at=native["issued_at"],
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInputError(f"malformed agent claims extension: {exc}") from exc


def authority_key_identifier(
    issuer: x509.Certificate | CertificatePublicKeyTypes,
) -> x509.AuthorityKeyIdentifier:
    """The AKI for what ``issuer`` signs: the SKI its certificate carries, whatever method
    computed it (an imported CA may use RFC 7093 SHA-256 ids), since path builders match
    AKI to SKI byte for byte; RFC 5280 method 1 of the key only when there is no certificate
    yet (a root signing itself) or it has no SKI."""
    from cryptography import x509

    if isinstance(issuer, x509.Certificate):
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer)  # type: ignore[arg-type]


def key_identifier(public_key: CertificatePublicKeyTypes) -> bytes:
    """RFC 5280 method 1 (SHA-1 of the subjectPublicKey BIT STRING), as OpenSSL does."""
    from cryptography import x509

    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def ca_extensions(
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate | CertificatePublicKeyTypes,
    *,
    path_length: int | None,
    permitted_uri_domains: tuple[str, ...] = (),
    permitted_dns: tuple[str, ...] = (),
    permitted_ip: tuple[str, ...] = (),
    extended_key_usage: tuple[str, ...] = (),
) -> list[tuple[x509.ExtensionType, bool]]:
    """Root (path_length None, self-issued) and intermediate extension sets."""
    from cryptography import x509

    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(cert_sign=True), True),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (authority_key_identifier(issuer), False),
    ]
    if extended_key_usage:
        extensions.append((x509.ExtendedKeyUsage(eku_oids(extended_key_usage)), False))
    if permitted_uri_domains or permitted_dns or permitted_ip:
        import ipaddress

        subtrees: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(d) for d in permitted_uri_domains
        ]
        subtrees += [x509.DNSName(d) for d in permitted_dns]
        subtrees += [x509.IPAddress(ipaddress.ip_network(n)) for n in permitted_ip]
        # RFC 5280 4.2.1.10: conforming CAs MUST mark name constraints critical.
        extensions.append((x509.NameConstraints(subtrees, None), True))
    return extensions


_EKU_NAMES = {
    "serverAuth": "1.3.6.1.5.5.7.3.1",
    "clientAuth": "1.3.6.1.5.5.7.3.2",
    "codeSigning": "1.3.6.1.5.5.7.3.3",
    "emailProtection": "1.3.6.1.5.5.7.3.4",
    "timeStamping": "1.3.6.1.5.5.7.3.8",
    "OCSPSigning": "1.3.6.1.5.5.7.3.9",
}


def eku_oids(names: tuple[str, ...]) -> list[x509.ObjectIdentifier]:
    from cryptography import x509

    try:
        return [x509.ObjectIdentifier(_EKU_NAMES[n]) for n in names]
    except KeyError as exc:
        raise InvalidInputError(
            f"unknown extended key usage {exc.args[0]!r}",
            hint=f"known: {', '.join(_EKU_NAMES)}",
        ) from exc


LEAF_KEY_USAGES = ("digitalSignature", "keyEncipherment", "keyAgreement")


def _key_usage(
    *, cert_sign: bool, usages: tuple[str, ...] = ("digitalSignature",)
) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature="digitalSignature" in usages or cert_sign,
        content_commitment=False,
        key_encipherment="keyEncipherment" in usages,
        data_encipherment=False,
        key_agreement="keyAgreement" in usages,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_key_usages(
    profile_usages: tuple[str, ...], public_key: CertificatePublicKeyTypes
) -> tuple[str, ...]:
    """The profile's usages that the key can honour: keyEncipherment needs RSA,
    keyAgreement needs EC (RFC 5480 / RFC 8813); Ed25519 signs only."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    usable = {"digitalSignature"}
    if isinstance(public_key, rsa.RSAPublicKey):
        usable.add("keyEncipherment")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        usable.add("keyAgreement")
    return tuple(u for u in profile_usages if u in usable)


def leaf_extensions(
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate | CertificatePublicKeyTypes,
    *,
    sans: list[x509.GeneralName],
    extended_key_usage: tuple[str, ...],
    claims: AgentClaims | None,
    subject_empty: bool,
    key_usage: tuple[str, ...] = ("digitalSignature",),
    claims_oid: str = AGENT_CLAIMS_OID,
) -> list[tuple[x509.ExtensionType, bool]]:
    """End-entity set: not a CA; digitalSignature unless the profile adds usages the key
    can honour (TLS 1.3 and ECDHE suites need nothing else). ``claims_oid`` is the home's
    recorded agent-claims OID (``config.trust``)."""
    from cryptography import x509

    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(cert_sign=False, usages=leaf_key_usages(key_usage, public_key)), True),
        (x509.ExtendedKeyUsage(eku_oids(extended_key_usage)), False),
    ]
    if sans:
        # RFC 5280 4.2.1.6: SAN MUST be critical when the subject is empty.
        extensions.append((x509.SubjectAlternativeName(sans), subject_empty))
    extensions += [
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (authority_key_identifier(issuer), False),
    ]
    if claims is not None:
        extensions.append(
            (
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(claims_oid), encode_agent_claims(claims)
                ),
                False,
            )
        )
    if is_ocsp_responder(extended_key_usage):
        # RFC 6960 4.2.2.2.1: clients need not check a short-lived responder's status.
        extensions.append((x509.OCSPNoCheck(), False))
    return extensions


def is_ocsp_responder(extended_key_usage: tuple[str, ...]) -> bool:
    """A delegated OCSP responder: OCSPSigning is its only usage (profiles may not mix it)."""
    return tuple(extended_key_usage) == ("OCSPSigning",)


def distribution_extensions(
    public_url: str, issuer_name: str
) -> list[tuple[x509.ExtensionType, bool]]:
    """AIA (OCSP and caIssuers) and CRL Distribution Points of a certificate signed by
    ``issuer_name``, under the home's public URL (``cyphrs serve`` answers there);
    non-critical, as RFC 5280 4.2.2.1 and 4.2.1.13 require."""
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    base = public_url.rstrip("/")
    return [
        (
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(f"{base}/ocsp"),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(f"{base}/v1/ca/{issuer_name}.der"),
                    ),
                ]
            ),
            False,
        ),
        (
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[
                            x509.UniformResourceIdentifier(f"{base}/v1/crl/{issuer_name}.crl")
                        ],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            False,
        ),
    ]
