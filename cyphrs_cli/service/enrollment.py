"""The enroll use case: an agent's CSR plus one credential (a one-time token, or a
provisioner's JWT) becomes a certificate, through the one issuance path.

What decides what: the credential's binding decides profile, workflow, permissions,
trust domain and the TTL ceiling; the profile bounds the rest; the CSR contributes its
key only (its signature is checked: proof of possession). The CSR's subject is ignored;
its SANs are refused unless they are exactly the one SPIFFE ID the credential grants
(``spiffe://<domain>/agent/<workflow>/<instance>``), in which case its instance is used.
The request may narrow (never widen) the grant: ``workflow`` must equal the credential's,
``permissions`` must be a subset, ``ttl`` at most the ceiling.

The credential is spent in the certificate's own transaction (``after_record`` hook of
``Authority.commit_leaf``): a token use or a JWT's ``jti`` pays for exactly one
certificate even under concurrent replay. Every refusal is a ``PolicyDenied`` (exit 5)
naming its rule and is recorded as a ``token.refused`` / ``jwt.refused`` event (a profile
refusal is also the issuance path's ``policy.denied`` event).

``enroll_online`` is the same use case for a server's event loop, where most enrollments
are clean token redemptions and every thread hand-off costs (a request used to cross four
threads). Its fast path decides and signs on the calling thread, records nothing itself,
and awaits the group committer's future: same checks, same ``sign_leaf``, same
transaction with the same spending hook. Whatever the fast path would have to record --
a refusal, a policy denial, a token spent or an instance taken meanwhile -- it leaves
unrecorded and hands the whole request to the blocking ``enroll`` on a worker thread,
which decides again from the start and records exactly as above, once. JWT credentials
(a JWKS may be fetched over the network), keys in a PKCS#11 token (a signature may wait
on a device) and RSA CSRs (a hostile exponent makes their check slow) always take the
blocking path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import ConflictError, InvalidInputError, PolicyDenied, UsageError
from cyphrs_cli.service.tokens import CredentialRefused

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable
    from concurrent.futures import Future
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

    from cyphrs_cli.ca.issuance import AfterRecord
    from cyphrs_cli.ca.models import IssuedCertificate, LeafRequest
    from cyphrs_cli.profiles.model import Profile
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import IssueResult

REQUESTER_LIMIT = 128


@dataclass(frozen=True)
class EnrollRequest:
    """An agent's enrollment: its CSR and exactly one credential."""

    csr_pem: bytes
    token: str | None = field(default=None, repr=False)  # a one-time token, or
    jwt: str | None = field(default=None, repr=False)  # a provisioner's bearer JWT
    ttl: str | None = None  # bounded by the credential's max TTL and the profile
    instance: str | None = None  # else the CSR's SPIFFE ID's, the JWT claim's, or random
    workflow: str | None = None  # optional: must equal the credential's
    permissions: tuple[str, ...] | None = None  # optional: a subset of the credential's


@dataclass(frozen=True)
class Grant:
    """What one verified credential authorises, and the hook that spends it."""

    kind: str  # "token" | "jwt": the prefix of its rules and events
    evidence: dict[str, Any]  # what its refusal and use events name
    profile: str
    workflow: str
    permissions: tuple[str, ...]
    trust_domain: str | None
    max_ttl: timedelta | None
    instance: str | None
    requester: str
    spend: AfterRecord
    # Raises the credential's refusal if it has been spent meanwhile: a loser of a replay
    # race may first meet the winner's certificate (same instance, a conflict).
    recheck: Callable[[], None]


def _refused(kind: str, what: str, message: str) -> CredentialRefused:
    rule = f"{kind}.{what}"
    return CredentialRefused(f"{message} (rule {rule})", rule=rule)


def token_grant(authority: Authority, token: str) -> Grant:
    from cyphrs_cli.service.tokens import consume_hook, redeemable_token

    info = redeemable_token(authority.ledger.conn, token)
    if info.workflow is None:  # tokens are created with one; an edited row is refused
        raise _refused("token", "workflow", f"token {info.token_id} binds no workflow")
    return Grant(
        kind="token",
        evidence={"token_id": info.token_id},
        profile=info.profile,
        workflow=info.workflow,
        permissions=info.permissions,
        trust_domain=info.trust_domain,
        max_ttl=info.max_ttl,
        instance=None,
        requester=f"token:{info.token_id}",
        spend=consume_hook(info),
        recheck=lambda: _still_redeemable(authority, token),
    )


def _still_redeemable(authority: Authority, token: str) -> None:
    from cyphrs_cli.service.tokens import redeemable_token

    redeemable_token(authority.ledger.conn, token)


def jwt_grant(authority: Authority, token: str) -> Grant:
    from cyphrs_cli.service.provisioners import check_unused, consume_jwt_hook, verify_jwt

    grant = verify_jwt(authority, token)
    spec = grant.provisioner
    who = f"jwt:{spec.name}:{grant.subject or grant.jti}"
    return Grant(
        kind="jwt",
        evidence={"provisioner": spec.name, "jti": grant.jti, "subject": grant.subject},
        profile=spec.profile,
        workflow=grant.workflow,
        permissions=grant.permissions,
        trust_domain=authority.facts.trust_domain,
        max_ttl=spec.max_ttl,
        instance=grant.instance,
        requester=who[:REQUESTER_LIMIT],
        spend=consume_jwt_hook(grant),
        recheck=lambda: check_unused(authority.ledger.conn, spec.name, grant.jti),
    )


def enroll(authority: Authority, request: EnrollRequest) -> IssueResult:
    """Verify the credential, issue for the CSR's key under the credential's binding, and
    spend the credential in the same transaction; see the module docstring.

    Raises:
        CyphrsError: 2 not exactly one credential, 3 a bad CSR or TTL text, 5 a refused
            credential or request (recorded, the rule named), 6 the bound profile no
            longer exists, 7 the agent instance already has a valid certificate, 8 a
            ledger failure or a provisioner that differs from its ledger record.
    """
    from cyphrs_cli.ca.parsing import load_csr
    from cyphrs_cli.service.issuing import deliver
    from cyphrs_cli.service.tokens import record_refusal

    if (request.token is None) == (request.jwt is None):
        raise UsageError("enroll with a token or a JWT, exactly one")
    kind = "token" if request.token is not None else "jwt"
    csr = load_csr(request.csr_pem, source="CSR")  # bad input (exit 3), not a refusal
    evidence: dict[str, Any] = {}
    try:
        if request.token is not None:
            grant = token_grant(authority, request.token)
        else:
            assert request.jwt is not None
            grant = jwt_grant(authority, request.jwt)
        evidence = grant.evidence
        profile, leaf = _leaf_request(authority, grant, request, csr)
        try:
            issued = authority.commit_leaf(profile, leaf, after_record=grant.spend)
        except ConflictError:
            grant.recheck()
            raise
    except PolicyDenied as refused:
        record_refusal(authority.ledger, kind, refused, evidence)
        raise
    return deliver(issued, None, None)


async def enroll_online(
    authority: Authority,
    request: EnrollRequest,
    offload: Callable[[Callable[[], IssueResult]], Awaitable[IssueResult]],
) -> IssueResult:
    """``enroll`` for a serving authority on an event loop: the fast path when it applies
    and succeeds, else the blocking ``Authority.enroll`` through ``offload``; see the
    module docstring. Same results, same records, same errors as ``enroll``.

    Shielded: a caller that stops waiting (its task cancelled: a client gone, a server
    stopping) does not stop the enrollment half-way, so a refusal the fast path handed
    over is still recorded by the blocking path."""
    import asyncio

    task = asyncio.ensure_future(_enroll_online(authority, request, offload))
    # Its outcome is the awaiting caller's; once that caller is gone, nobody reads it: mark
    # it read so a refusal is not reported again as "exception never retrieved".
    task.add_done_callback(_outcome_read)
    return await asyncio.shield(task)


def _outcome_read(task: asyncio.Future[IssueResult]) -> None:
    if not task.cancelled():
        task.exception()


async def _enroll_online(
    authority: Authority,
    request: EnrollRequest,
    offload: Callable[[Callable[[], IssueResult]], Awaitable[IssueResult]],
) -> IssueResult:
    import asyncio

    from cyphrs_cli.service.issuing import deliver

    started = start_enrollment(authority, request, asyncio.get_running_loop())
    if started is not None:
        try:
            issued = await asyncio.wrap_future(started)
        except (PolicyDenied, ConflictError):
            pass  # spent or taken meanwhile: the blocking path decides again and records
        else:
            return deliver(issued, None, None)
    return await offload(lambda: authority.enroll(request))


def start_enrollment(
    authority: Authority, request: EnrollRequest, loop: asyncio.AbstractEventLoop
) -> Future[IssuedCertificate] | None:
    """The fast path of ``enroll_online``: on the calling thread, check the CSR and the
    token, decide and sign; queue the signed leaf with the token's spending hook for the
    group committer and return its future (resolved after the commit). Nothing is
    recorded here.

    Returns None, having recorded nothing, when the blocking ``enroll`` must handle the
    request: no group committer, a JWT, an RSA CSR (see ``_cheap_to_verify``), a key in a
    PKCS#11 token, any refusal (which that path records), or an instance that already has
    a certificate (which that path checks against the token again).

    Raises:
        CyphrsError: what ``enroll`` raises without recording anything (a bad CSR or TTL
            text 3, an unknown bound profile 6, a closed committer 8).
    """
    from cyphrs_cli.ca.issuance import sign_leaf
    from cyphrs_cli.ca.parsing import checked_csr, parse_csr
    from cyphrs_cli.keystore.base import signs_in_process
    from cyphrs_cli.ledger.events import utc_now

    committer = authority.group_committer
    if committer is None or request.token is None or request.jwt is not None:
        return None
    csr = parse_csr(request.csr_pem, source="CSR")  # not a CSR: exit 3, nothing checked
    csr_key = _cheap_to_verify(csr)
    if csr_key is None:
        return None
    signer = authority.issuer  # re-reads the issuer's revocation
    if not signs_in_process(signer.signer):
        return None
    checked_csr(csr, source="CSR")
    try:
        grant = token_grant(authority, request.token)
        profile, leaf = _leaf_request(authority, grant, request, csr, csr_key)
        signed = sign_leaf(authority.ledger, signer, profile, leaf, utc_now(), record_denials=False)
    except (PolicyDenied, ConflictError):  # to be recorded, or rechecked against the token
        return None
    return committer.submit_here(loop, signer, signed, after_record=grant.spend)


def _cheap_to_verify(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes | None:
    """The CSR's public key if the event loop may check this CSR's signature, else None:
    its key is P-256, P-384 or Ed25519, whose check takes tens of microseconds. An RSA
    key's check grows with its exponent and modulus (a hostile 3,000-bit exponent: 4.6 ms,
    measured), and anyone may send one: such CSRs go whole to the blocking path on a
    worker thread. The key is returned for the request to reuse: cryptography loads it
    anew (and checks the point) on every ``public_key()`` call, about 15 µs."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = csr.public_key()
    except Exception:  # a key type this build cannot load: the blocking path explains
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key if key.curve.name in ("secp256r1", "secp384r1") else None
    return key if isinstance(key, ed25519.Ed25519PublicKey) else None


def _leaf_request(
    authority: Authority,
    grant: Grant,
    request: EnrollRequest,
    csr: x509.CertificateSigningRequest,
    csr_key: CertificatePublicKeyTypes | None = None,
) -> tuple[Profile, LeafRequest]:
    """The leaf the grant allows for this CSR's key (``csr_key``, when already loaded),
    narrowed by the request."""
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.durations import format_duration, parse_duration

    kind = grant.kind
    profile = authority.profile(grant.profile)
    issuer_domain = authority.facts.trust_domain
    if grant.trust_domain != issuer_domain:
        raise _refused(
            kind,
            "trust_domain",
            f"the {kind} is for trust domain {grant.trust_domain!r}; this CA issues in"
            f" {issuer_domain!r}",
        )
    if request.workflow is not None and request.workflow != grant.workflow:
        raise _refused(kind, "workflow", f"the {kind} grants workflow {grant.workflow!r} only")
    permissions = grant.permissions
    if request.permissions is not None:
        extra = [p for p in request.permissions if p not in grant.permissions]
        if extra:
            raise _refused(
                kind, "permission", f"the {kind} does not grant permission {extra[0][:100]!r}"
            )
        permissions = tuple(request.permissions)
    instance = _csr_instance(csr, kind, issuer_domain, grant.workflow)
    for other in (request.instance, grant.instance):
        if other is not None and instance is not None and other != instance:
            raise _refused(kind, "names", f"instance {other!r} differs from the CSR's {instance!r}")
        instance = instance or other
    ttl = parse_duration(request.ttl) if request.ttl else None
    if ttl is not None and grant.max_ttl is not None and ttl > grant.max_ttl:
        raise _refused(
            kind,
            "ttl",
            f"TTL {format_duration(ttl)} exceeds the {kind}'s max of"
            f" {format_duration(grant.max_ttl)}",
        )
    if ttl is None and grant.max_ttl is not None:
        ttl = min(profile.default_ttl, grant.max_ttl)
    order = LeafOrder(
        profile=profile.name,
        workflow=grant.workflow,
        instance=instance,
        permissions=permissions,
        requester=grant.requester,
        csr_pem=request.csr_pem,
    )
    leaf, _ = prepare_request(order, profile, issuer_domain, csr=csr, csr_key=csr_key)
    return profile, replace(leaf, ttl=ttl)


def _csr_instance(
    csr: x509.CertificateSigningRequest, kind: str, trust_domain: str | None, workflow: str
) -> str | None:
    """The instance named by the CSR's SPIFFE ID, if it carries one; any other name it
    asks for is refused (the credential, not the CSR, decides the identity)."""
    from cryptography import x509

    from cyphrs_cli.ca.extensions import parse_spiffe_id

    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise InvalidInputError(f"CSR: unreadable extensions ({exc})") from exc
    names = list(san)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(names) != 1:
        raise _refused(
            kind, "names", f"the CSR asks for names the {kind} does not grant (only its SPIFFE ID)"
        )
    try:
        domain, path = parse_spiffe_id(uris[0])
    except InvalidInputError as exc:
        raise _refused(
            kind, "names", f"the CSR's URI SAN is not a SPIFFE ID ({exc.message})"
        ) from exc
    if domain != trust_domain:
        raise _refused(kind, "trust_domain", f"the CSR's SPIFFE ID is in {domain!r}")
    if len(path) != 3 or path[:2] != ("agent", workflow):
        raise _refused(
            kind, "workflow", f"the CSR's SPIFFE ID is not under /agent/{workflow}/ (the {kind}'s)"
        )
    return path[2]
