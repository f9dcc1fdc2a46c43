"""THE issuance path. Every certificate (root, intermediate, leaf, renewal, batch item)
is signed and recorded here, in this order:

1. the caller hands a fully validated ``CertificatePlan`` (leaf plans come from
   ``issue_leaf``, which runs the policy decision and records denials);
2. serial from the CSPRNG, notBefore backdated 60 s, notAfter clamped to the issuer's;
3. sign through the key store's signer (software key or PKCS#11 token);
4. self-check the result; a failure records and outputs nothing;
5. ONE ``BEGIN IMMEDIATE`` transaction inserts the certificate row and its ``issued``
   event (plus the authority row when a CA is being created), then COMMIT;
6. only then does the caller write files or print.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.ca.serials import MIN_SERIAL, SERIAL_BITS, new_serial, serial_hex
from cyphrs_cli.errors import ConflictError, CyphrsError, InvalidInputError, PolicyDenied
from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, utc_now
from cyphrs_cli.ledger.records import (
    CertificateRow,
    authority_row_digest,
    insert_authority,
    insert_certificate,
    row_digest,
)
from cyphrs_cli.numerals import is_decimal

if TYPE_CHECKING:
    import sqlite3

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificatePublicKeyTypes,
    )

    from cyphrs_cli.ca.extensions import AgentClaims
    from cyphrs_cli.ca.models import CertificatePlan, IssuedCertificate, Issuer, LeafRequest
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.policy.decide import PolicyDecision, PolicyIssuer
    from cyphrs_cli.profiles.model import Profile

    #: A per-item hook of ``issue_leaves``: runs in the item's savepoint right after its
    #: row and event are written, in the same transaction (see ``issue_leaves``).
    AfterRecord = Callable[[sqlite3.Connection, IssuedCertificate], None]

BACKDATE = timedelta(seconds=60)
# Fault injection for the crash-safety tests: the process dies at the named point.
FAULT_ENV = "CYPHRS_TEST_FAULT"


class SelfCheckFailed(CyphrsError):
    """A certificate we just signed broke one of our own invariants: a bug, never output."""


#: Delay injection for the race tests: ``NAME=SECONDS`` sleeps at the named point.
DELAY_ENV = "CYPHRS_TEST_DELAY"


def fault_point(name: str, *, seq: int | range | None = None) -> None:
    """Die (exit 86) at ``name``; ``name@N`` dies only where the caller passes ``seq`` N
    (a batch item's index, or a range: the items of one group)."""
    fault = os.environ.get(FAULT_ENV)
    if fault:
        wanted, _, at = fault.partition("@")
        if wanted == name and (
            not at
            or (isinstance(seq, int) and at == str(seq))
            or (isinstance(seq, range) and is_decimal(at) and int(at) in seq)
        ):
            os._exit(86)
    delay = os.environ.get(DELAY_ENV)
    if delay and delay.partition("=")[0] == name:
        import time

        time.sleep(float(delay.partition("=")[2]))


def signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm | None:
    """SHA-384 for P-384 keys, none for Ed25519 (pure EdDSA), SHA-256 otherwise."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def key_algorithm_name(public_key: CertificatePublicKeyTypes) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "p256", "secp384r1": "p384"}.get(
            public_key.curve.name, public_key.curve.name
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    raise InvalidInputError(f"unsupported public key type {type(public_key).__name__}")


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def issue(ledger: Ledger, issuer: Issuer, plan: CertificatePlan) -> IssuedCertificate:
    """Sign ``plan`` as ``issuer``, self-check, record durably, and return the result."""
    now = utc_now()
    signed = _sign(ledger, issuer, plan, now)
    with ledger.transaction(issuance=True) as conn:
        issued = _record(conn, issuer, signed)
    fault_point("after-record")
    return issued


@dataclass(frozen=True)
class SignedLeaf:
    """A certificate that passed its self-check and is not recorded yet: never output.
    Only ``record_signed`` (in the ledger transaction) turns it into an issued one."""

    plan: CertificatePlan
    certificate: x509.Certificate
    row: CertificateRow
    now: datetime
    clamped: bool
    # ``row_digest(row)`` and the DER's SHA-1 (hex), computed with the row, outside the
    # transaction: the writer lock is then held for the writes only (every serving
    # process waits on it).
    digest: str
    sha1: str


def _sign(
    ledger: Ledger, issuer: Issuer, plan: CertificatePlan, now: datetime, *, seq: int | None = None
) -> SignedLeaf:
    """Steps 2-4: validity, serial, signature, self-check (step 5 is ``_record``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    if issuer.revoked:
        raise PolicyDenied(
            f"issuer {issuer.name!r} has been revoked", rule=f"{issuer.name}.revoked"
        )
    issuer_cert = issuer.certificate
    not_before = now - BACKDATE
    # RFC 5280 validity is inclusive at both ends: a TTL of T spans exactly T seconds.
    not_after = not_before + plan.ttl - timedelta(seconds=1)
    clamped = False
    if issuer_cert is not None:
        not_before = max(not_before, issuer_cert.not_valid_before_utc)
        if not_after > issuer_cert.not_valid_after_utc:
            not_after, clamped = issuer_cert.not_valid_after_utc, True
        if not_after <= now and clamped:
            raise PolicyDenied(
                f"issuer {issuer.name!r} expired at {rfc3339(issuer_cert.not_valid_after_utc)}",
                rule=f"{issuer.name}.validity",
            )
    if not_after <= now:
        # The span includes the backdate, so a TTL of 60 s or less would end before it
        # is issued; say that, not something about the issuer.
        raise InvalidInputError(
            f"a TTL of {int(plan.ttl.total_seconds())} s ends before the certificate is"
            f" issued: notBefore is backdated {int(BACKDATE.total_seconds())} s for clock"
            " skew and the validity includes it",
            hint="ask for a TTL above 1 minute (the certificate is usable for TTL - 60 s)",
        )

    # Cheap early refusal (nothing signed); the check inside the transaction decides races.
    check_instance_unique(ledger.conn, plan, rfc3339(now))
    serial = new_serial()
    issuer_name = issuer_cert.subject if issuer_cert is not None else plan.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(plan.subject)
        .issuer_name(issuer_name)
        .public_key(plan.public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in plan.extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(issuer.signer, signature_hash(issuer.signer))  # type: ignore[arg-type]

    self_check(cert, issuer, plan)
    fault_point("after-sign", seq=seq)
    row = _certificate_row(cert, issuer, plan, issued_at=rfc3339(now))
    sha1 = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - an index, not a signature
    return SignedLeaf(plan, cert, row, now, clamped, row_digest(row), sha1)


def _record(conn: sqlite3.Connection, issuer: Issuer, signed: SignedLeaf) -> IssuedCertificate:
    """Step 5 inside the caller's ``BEGIN IMMEDIATE`` transaction: the uniqueness check
    that decides races, the row, its hash-chained event, the superseded predecessor."""
    from cyphrs_cli.ca.models import IssuedCertificate

    plan, cert, row, now = signed.plan, signed.certificate, signed.row, signed.now
    check_instance_unique(conn, plan, row.issued_at)
    authority_id = issuer.authority_id
    new = plan.new_authority
    if new is not None:
        authority_id = insert_authority(
            conn,
            name=new.name,
            role=new.role,
            parent_id=new.parent_id,
            ski=_ski_hex(cert),
            subject=cert.subject.rfc4514_string(),
            key_uri=new.key.uri,
            key_storage=new.key.storage,
            key_algorithm=new.key.algorithm,
            key_generated_in=new.key.generated_in,
            key_attributes=new.key.attributes,
            trust_domain=new.trust_domain,
            created_at=rfc3339(now),
        )
        row = _replace_authority(row, issuer, authority_id)
    record_id = insert_certificate(conn, row, sha1=signed.sha1)
    if new is not None:
        conn.execute(
            "UPDATE authorities SET certificate_id = ? WHERE id = ?", (record_id, authority_id)
        )
    append_event(
        conn,
        LedgerEvent(
            type=_event_type(plan),
            target=f"certificate:{row.serial}",
            details={
                "certificate_id": record_id,
                "serial": row.serial,
                "fingerprint": row.fingerprint,
                "profile": plan.profile,
                "issuer": issuer.name if new is None or new.role != "root" else new.name,
                "subject": row.subject,
                "spiffe_id": plan.spiffe_id,
                "not_after": row.not_after,
                "replaces_id": plan.replaces_id,
                # Who asked (the claim); the event's own ``actor`` is who ran the command.
                **({"requester": plan.requester} if plan.requester else {}),
                "row_digest": signed.digest if row is signed.row else row_digest(row),
                **({"profile_sha256": plan.profile_sha256} if plan.profile_sha256 else {}),
                **(
                    {
                        "authority": new.name,
                        "key_uri": new.key.uri,
                        "authority_id": authority_id,
                        "authority_digest": authority_row_digest(conn, authority_id),
                    }
                    if new and authority_id is not None
                    else {}
                ),
            },
        ),
    )
    if plan.replaces_id is not None:
        updated = conn.execute(
            "UPDATE certificates SET status = 'superseded' WHERE id = ? AND status = 'valid'",
            (plan.replaces_id,),
        ).rowcount
        if updated != 1:
            # Renewed or revoked by another process since we looked: roll back.
            raise ConflictError("the certificate being renewed is no longer valid")
    issuer_cert = issuer.certificate
    chain = ((issuer_cert,) if issuer_cert is not None else ()) + issuer.parents
    return IssuedCertificate(
        certificate=cert,
        record_id=record_id,
        serial=row.serial,
        fingerprint=row.fingerprint,
        profile=plan.profile,
        issuer_name=issuer.name,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        clamped=signed.clamped,
        spiffe_id=plan.spiffe_id,
        chain=chain,
        authority_id=authority_id,
        claims=plan.claims,
    )


def check_instance_unique(conn: sqlite3.Connection, plan: CertificatePlan, now: str) -> None:
    """One valid certificate per SPIFFE ID (agent instance): refuse a second unless the
    plan allows duplicates. Renewal supersedes its predecessor, so it never adds one.

    Run under ``BEGIN IMMEDIATE`` this is race-free: two processes issuing for the same
    instance serialise on the write lock and the second sees the first's row (exit 7).
    "Valid" is status 'valid' and not yet expired; expiry is time, not a row change, so
    a (partial) unique index cannot express it.
    """
    if plan.spiffe_id is None or plan.is_ca or plan.replaces_id is not None or plan.allow_duplicate:
        return
    # The unary "+" keeps SQLite's planner on the spiffe_id index (a handful of rows per
    # instance): without statistics it preferred (status, not_after), a scan of every
    # valid certificate, 2 ms per item at a few thousand rows and growing with the ledger.
    found = conn.execute(
        "SELECT serial, not_after FROM certificates"
        " WHERE spiffe_id = ? AND +status = 'valid' AND +is_ca = 0 AND +not_after > ?"
        " ORDER BY id LIMIT 1",
        (plan.spiffe_id, now),
    ).fetchone()
    if found is not None:
        raise ConflictError(
            f"{plan.spiffe_id} already has a valid certificate (serial {found[0]},"
            f" until {found[1]})",
            hint="renew it (cyphrs renew), revoke it first, or pass --allow-duplicate",
        )


def _event_type(plan: CertificatePlan) -> str:
    if plan.new_authority is not None:
        return "authority.created"
    return "certificate.renewed" if plan.replaces_id is not None else "certificate.issued"


def _ski_hex(cert: x509.Certificate) -> str:
    from cryptography import x509

    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def _replace_authority(row: CertificateRow, issuer: Issuer, new_id: int) -> CertificateRow:
    """A root is its own issuing authority; its row can only name itself once it exists."""
    from dataclasses import replace

    return replace(row, authority_id=new_id) if issuer.authority_id is None else row


def _certificate_row(
    cert: x509.Certificate, issuer: Issuer, plan: CertificatePlan, *, issued_at: str
) -> CertificateRow:
    return certificate_row(
        cert,
        authority_id=issuer.authority_id,
        profile=plan.profile,
        is_ca=plan.is_ca,
        sans=plan.sans,
        spiffe_id=plan.spiffe_id,
        claims=plan.claims,
        requester=plan.requester,
        key_storage=plan.key_storage,
        replaces_id=plan.replaces_id,
        issued_at=issued_at,
    )


def certificate_row(
    cert: x509.Certificate,
    *,
    authority_id: int | None,
    profile: str,
    is_ca: bool,
    issued_at: str,
    sans: tuple[str, ...] = (),
    spiffe_id: str | None = None,
    claims: AgentClaims | None = None,
    requester: str | None = None,
    key_storage: str | None = None,
    replaces_id: int | None = None,
) -> CertificateRow:
    """The ledger row of a certificate (ours, or an imported CA certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.parsing import oid_name

    try:
        issuer_key_id = cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except x509.ExtensionNotFound:
        issuer_key_id = None
    if issuer_key_id is None:  # a self-signed root may omit AKI (RFC 5280 4.2.1.1)
        issuer_key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return CertificateRow(
        serial=serial_hex(cert.serial_number),
        issuer_ski=issuer_key_id.hex(),
        authority_id=authority_id,
        fingerprint=fingerprint(cert),
        subject=cert.subject.rfc4514_string(),
        sans=json.dumps(list(sans)),
        spiffe_id=spiffe_id,
        workflow=claims.workflow if claims else None,
        permissions=json.dumps(list(claims.permissions)) if claims else None,
        profile=profile,
        key_algorithm=key_algorithm_name(cert.public_key()),
        signature_algorithm=oid_name(cert.signature_algorithm_oid),
        is_ca=int(is_ca),
        not_before=rfc3339(cert.not_valid_before_utc),
        not_after=rfc3339(cert.not_valid_after_utc),
        replaces_id=replaces_id,
        requester=requester,
        key_storage=key_storage,
        issued_at=issued_at,
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def self_check(cert: x509.Certificate, issuer: Issuer, plan: CertificatePlan) -> None:
    """Our own profile checks on what we just signed; see the module docstring, step 4."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    def fail(what: str) -> SelfCheckFailed:
        return SelfCheckFailed(f"self-check failed, nothing recorded or written: {what}")

    serial = cert.serial_number
    if not MIN_SERIAL <= serial < (1 << SERIAL_BITS):
        raise fail("serial out of range")
    if cert.not_valid_after_utc < cert.not_valid_before_utc:
        raise fail("validity inverted")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc + timedelta(seconds=1)
    if lifetime > plan.ttl:
        raise fail("validity longer than requested")
    issuer_cert = issuer.certificate or cert
    if (
        cert.not_valid_before_utc < issuer_cert.not_valid_before_utc
        or cert.not_valid_after_utc > issuer_cert.not_valid_after_utc
    ):
        raise fail("validity outside the issuer's")
    try:
        cert.verify_directly_issued_by(issuer_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise fail(f"signature does not verify against the issuer ({exc!r})") from exc

    if cert.public_key() != plan.public_key:
        raise fail("public key differs from the request")
    got = [(e.oid.dotted_string, e.critical, e.value) for e in cert.extensions]
    want = [(e.oid.dotted_string, c, e) for e, c in plan.extensions]
    if got != want:
        raise fail("extensions differ from the profile")
    if plan.spiffe_id is not None:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris != [plan.spiffe_id]:
            raise fail("an X509-SVID must carry exactly one URI SAN, its SPIFFE ID")
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise fail("an X509-SVID must not be a CA")
    der = cert.public_bytes(serialization.Encoding.DER)
    if x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) != der:
        raise fail("DER does not round-trip")


def plan_leaf(
    request: LeafRequest, profile: Profile, issuer: PolicyIssuer, decision: PolicyDecision
) -> CertificatePlan:
    """Turn an allowed request into the exact subject and extensions to sign."""
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from cyphrs_cli.ca.extensions import (
        COMMON_NAME_MAX,
        REQUESTER_MAX,
        AgentClaims,
        distribution_extensions,
        is_ocsp_responder,
        leaf_extensions,
        validate_text,
    )
    from cyphrs_cli.ca.models import CertificatePlan
    from cyphrs_cli.ledger.events import default_actor

    assert issuer.certificate is not None
    common_name = leaf_common_name(request)
    if common_name is not None:
        validate_text("common name", common_name, max_length=COMMON_NAME_MAX)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )

    general_names: list[x509.GeneralName] = []
    sans: list[str] = []
    if request.spiffe_id is not None:
        general_names.append(x509.UniformResourceIdentifier(request.spiffe_id))
        sans.append(f"URI:{request.spiffe_id}")
    for name in request.dns_names:
        general_names.append(x509.DNSName(name))
        sans.append(f"DNS:{name}")
    for text in request.ip_addresses:
        general_names.append(x509.IPAddress(ipaddress.ip_address(text)))
        sans.append(f"IP:{text}")
    if not general_names and not common_name:
        raise InvalidInputError("a certificate needs a subject alternative name or a common name")

    # The default comes from the environment (CYPHRS_ACTOR, a CI user variable, the OS
    # user): it goes into the claims and the ledger, so it meets the same rules.
    requester = validate_text(
        "requester", request.requester or default_actor(), max_length=REQUESTER_MAX
    )
    claims = None
    if request.workflow is not None:
        claims = AgentClaims(request.workflow, request.permissions, requester, utc_now())
    extensions = leaf_extensions(
        request.public_key,
        issuer.certificate,
        sans=general_names,
        extended_key_usage=profile.extended_key_usage,
        claims=claims,
        subject_empty=not common_name,
        key_usage=profile.key_usage,
        claims_oid=issuer.claims_oid,
    )
    if issuer.public_url and not is_ocsp_responder(profile.extended_key_usage):
        extensions += distribution_extensions(issuer.public_url, issuer.name)
    return CertificatePlan(
        profile=profile.name,
        subject=subject,
        public_key=request.public_key,
        ttl=decision.ttl,
        extensions=extensions,
        sans=tuple(sans),
        spiffe_id=request.spiffe_id,
        claims=claims,
        requester=requester,
        key_storage=request.key_storage,
        replaces_id=request.replaces_id,
        allow_duplicate=request.allow_duplicate,
        profile_sha256=profile.sha256 or None,
    )


def leaf_common_name(request: LeafRequest) -> str | None:
    """The CN a leaf gets: the one asked for, else its first DNS name, else none.

    Agents and IP-only certificates get an empty subject (RFC 5280 4.2.1.6 then makes
    the SAN critical): a default CN such as ``workflow/instance`` or ``10.0.0.1`` is
    checked as a DNS name by GnuTLS and OpenSSL under DNS name constraints and fails
    there, while the SPIFFE ID in the URI SAN is the identity anyway (X509-SVID 2).
    """
    if request.common_name is not None:
        return request.common_name
    return request.dns_names[0] if request.dns_names else None


def record_denial(
    ledger: Ledger, denial: PolicyDenied, request: LeafRequest, issuer: PolicyIssuer
) -> None:
    """Policy denials are audit evidence too; they get their own committed event."""
    with ledger.transaction() as conn:
        append_event(
            conn,
            LedgerEvent(
                type="policy.denied",
                target=f"profile:{request.profile}",
                outcome="denied",
                details={
                    "rule": denial.rule,
                    "message": denial.message,
                    "issuer": issuer.name,
                    "spiffe_id": request.spiffe_id,
                    "dns": list(request.dns_names),
                    "ip": list(request.ip_addresses),
                    "ttl_seconds": int(request.ttl.total_seconds()) if request.ttl else None,
                    "key_type": request.key_type,
                },
            ),
        )


def authorize_leaf(
    ledger: Ledger, issuer: Issuer, profile: Profile, request: LeafRequest
) -> PolicyDecision:
    """Run the policy decision; a denial is recorded before it is raised."""
    from cyphrs_cli.policy.decide import decide

    try:
        return decide(profile, request, issuer)
    except PolicyDenied as denial:
        record_denial(ledger, denial, request, issuer)
        raise


def issue_leaf(
    ledger: Ledger, issuer: Issuer, profile: Profile, request: LeafRequest
) -> IssuedCertificate:
    """Policy, plan, sign, record: the entry point for every end-entity certificate."""
    from cyphrs_cli.config.trust import check_profile

    check_profile(ledger.conn, profile)  # the profile text must be the one recorded
    decision = authorize_leaf(ledger, issuer, profile, request)
    try:
        return issue(ledger, issuer, plan_leaf(request, profile, issuer, decision))
    except PolicyDenied as denial:  # the issuer itself is revoked or expired
        record_denial(ledger, denial, request, issuer)
        raise


def sign_leaf(
    ledger: Ledger,
    issuer: Issuer,
    profile: Profile,
    request: LeafRequest,
    now: datetime,
    *,
    checked: set[str] | None = None,
    seq: int | None = None,
    record_denials: bool = True,
) -> SignedLeaf:
    """Steps 1-4 of one leaf, before any transaction: the profile text checked against
    the ledger (once per name in ``checked``), policy, plan, signature, self-check.

    A policy denial, or a revoked or expired issuer, is recorded (its own committed
    ``policy.denied`` event) before it is raised, unless ``record_denials`` is off: the
    serving fast path (``service.enrollment``) must not wait for an fsync on its event
    loop, so it raises unrecorded and hands the request to the blocking path, which
    decides again and records.
    """
    from cyphrs_cli.config.trust import check_profile
    from cyphrs_cli.policy.decide import decide

    if checked is None or profile.name not in checked:
        check_profile(ledger.conn, profile)  # the text must be the one recorded
        if checked is not None:
            checked.add(profile.name)
    try:
        decision = decide(profile, request, issuer)
        return _sign(ledger, issuer, plan_leaf(request, profile, issuer, decision), now, seq=seq)
    except PolicyDenied as denial:  # the profile's rules, or the issuer revoked or expired
        if record_denials:
            record_denial(ledger, denial, request, issuer)
        raise


def record_signed(
    ledger: Ledger,
    issuer: Issuer,
    items: Sequence[tuple[SignedLeaf, AfterRecord | None]],
) -> list[IssuedCertificate | CyphrsError]:
    """Step 5 for signed leaves of one issuer: ONE ``BEGIN IMMEDIATE`` transaction, a
    savepoint per item. Returns one entry per item, in order: the issued certificate, or
    the item's own refusal (a conflict found inside the transaction, or a
    ``CyphrsError`` from its ``after_record`` hook), its savepoint rolled back while the
    rest commit. Any other failure raises and records nothing of the group."""
    with ledger.transaction(issuance=True) as conn:
        return record_in_transaction(conn, issuer, items)


def record_in_transaction(
    conn: sqlite3.Connection,
    issuer: Issuer,
    items: Sequence[tuple[SignedLeaf, AfterRecord | None]],
) -> list[IssuedCertificate | CyphrsError]:
    """``record_signed``'s work inside a transaction the caller began and will end (the
    serving event loop commits on another thread: ``service.committer``)."""
    results: list[IssuedCertificate | CyphrsError] = []
    for one, hook in items:
        conn.execute("SAVEPOINT item")
        try:
            issued = _record(conn, issuer, one)
            if hook is not None:
                hook(conn, issued)
            results.append(issued)
        except ConflictError as conflict:
            conn.execute("ROLLBACK TO item")
            results.append(conflict)
        except CyphrsError as refused:
            if hook is None:
                raise  # only a hook's refusal is per item; the rest fails the group
            conn.execute("ROLLBACK TO item")
            results.append(refused)
        conn.execute("RELEASE item")
    return results


def issue_leaves(
    ledger: Ledger,
    issuer: Issuer,
    entries: Sequence[tuple[Profile, LeafRequest]],
    *,
    stop_on_error: bool = True,
    first_seq: int = 1,
    after_record: Sequence[AfterRecord | None] | None = None,
) -> list[IssuedCertificate | CyphrsError | None]:
    """Group commit: ``issue_leaf`` for many requests, every row and event in ONE
    ``BEGIN IMMEDIATE`` transaction. Same steps, same code: ``sign_leaf`` per item
    (profile check, policy with denials recorded, plan, sign, self-check), then
    ``record_signed`` for all of them in the one transaction.

    Returns one entry per request, in order: the issued certificate, the item's error, or
    None for an item not attempted because an earlier one failed with ``stop_on_error``.
    A refusal before signing stops the signing there (``stop_on_error``) but the items
    already signed are still recorded. A conflict found inside the transaction (another
    process issued for the same agent instance meanwhile) drops only that item: its
    savepoint is rolled back, the error is returned for it, and the rest commit. Any
    other failure of the transaction raises and records nothing of this group (earlier
    groups were committed by earlier calls and stay). ``first_seq`` numbers the items for
    the crash-test fault points only.

    ``after_record`` (one optional hook per entry, in the order of ``entries``) runs in
    the item's savepoint right after its row and event are written: what it writes
    commits with the certificate or not at all. A ``CyphrsError`` from it rolls back that
    item (no row, no event) and becomes its result, like a conflict; anything else
    aborts the whole group. This is how an enrollment token is consumed in the same
    transaction as the certificate it pays for.
    """
    from cyphrs_cli.ca.batch import pause_point

    if after_record is not None and len(after_record) != len(entries):
        raise ValueError("after_record needs one hook (or None) per entry")
    results: list[IssuedCertificate | CyphrsError | None] = [None] * len(entries)
    signed: list[tuple[int, SignedLeaf]] = []
    checked: set[str] = set()
    now = utc_now()
    for position, (profile, request) in enumerate(entries):
        try:
            one = sign_leaf(
                ledger, issuer, profile, request, now, checked=checked, seq=first_seq + position
            )
            signed.append((position, one))
        except CyphrsError as error:
            results[position] = error
            if stop_on_error:
                break
    if not signed:
        return results
    pause_point("group-signed")
    recorded = record_signed(
        ledger,
        issuer,
        [(one, after_record[p] if after_record is not None else None) for p, one in signed],
    )
    for (position, _), result in zip(signed, recorded, strict=True):
        results[position] = result
    fault_point("after-record", seq=range(first_seq, first_seq + len(entries)))
    return results


def explain_leaf(
    issuer: PolicyIssuer, profile: Profile, request: LeafRequest
) -> tuple[PolicyDecision, CertificatePlan]:
    """``--dry-run``: the decision and the exact plan, with no key unlocked and nothing
    signed or recorded (a question is not a request, so a refusal here is not logged)."""
    from cyphrs_cli.policy.decide import decide

    decision = decide(profile, request, issuer)
    return decision, plan_leaf(request, profile, issuer, decision)
