"""Use cases authenticated by a presented client certificate (mTLS): renew yourself, revoke
yourself, and prove you are an administrator.

The TLS layer has already verified the presented chain against the home's roots; here the
ledger decides. The presented leaf is looked up by its SHA-256 fingerprint: a certificate
the ledger does not know (another CA, or a forgery that somehow chained) is refused, and so
is one that is expired, revoked or already renewed -- whatever the TLS layer accepted.
Renewal keeps the identity (names, SPIFFE ID, agent claims, profile, issuing CA), takes the
new public key from a CSR (the agent's key never leaves it), goes through
``Authority.commit_leaf`` (group commit when serving) and marks the predecessor
``superseded`` in the same transaction (ledger ``replaces``).

``renew_online`` is renewal for a server's event loop: checked, decided and signed on the
loop (``start_renewal``) and recorded by the loop's group, the blocking ``renew_presented``
on a worker thread taking whatever the fast path cannot decide alone (see
``start_renewal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cyphrs_cli.errors import ConflictError, PolicyDenied

if TYPE_CHECKING:
    import asyncio
    import sqlite3
    from collections.abc import Awaitable, Callable
    from concurrent.futures import Future
    from datetime import timedelta

    from cryptography import x509

    from cyphrs_cli.ca.models import IssuedCertificate, LeafRequest
    from cyphrs_cli.ca.revocation import Revocation
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import IssueResult


def presented_row(authority: Authority, presented_der: bytes) -> sqlite3.Row:
    """The ledger row of the presented certificate, which must be a leaf valid right now.

    Raises:
        PolicyDenied: no certificate presented (``mtls.required``), not one of this
            ledger's (``mtls.unknown-certificate``), a CA certificate (``mtls.ca``),
            expired (``mtls.expired``), or issued by a CA whose own certificate (or an
            ancestor's) is revoked (``mtls.issuer-revoked``).
    """
    from cryptography import x509

    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    if not presented_der:
        raise PolicyDenied(
            "this operation needs a client certificate (mTLS)",
            rule="mtls.required",
            hint="connect with the current certificate and key (curl --cert cert.pem --key key)",
        )
    try:
        cert = x509.load_der_x509_certificate(presented_der)
    except ValueError as exc:
        raise PolicyDenied(
            "the presented client certificate cannot be parsed", rule="mtls.unparsable"
        ) from exc
    row = authority.ledger.conn.execute(
        "SELECT * FROM certificates WHERE fingerprint = ?", (fingerprint(cert),)
    ).fetchone()
    if row is None:
        raise PolicyDenied(
            "the presented client certificate is not in this CA's ledger",
            rule="mtls.unknown-certificate",
        )
    if row["is_ca"]:
        raise PolicyDenied("a CA certificate cannot authenticate a client", rule="mtls.ca")
    if str(row["not_after"]) < rfc3339(utc_now()):
        raise PolicyDenied(
            f"the presented certificate {row['serial']} expired at {row['not_after']}",
            rule="mtls.expired",
            hint="enroll again with a new token",
        )
    revoked_ca = _revoked_issuer(authority.ledger.conn, row["authority_id"])
    if revoked_ca is not None:
        # The TLS layer checks no CRL: a leaf under a revoked CA still chains to the root.
        raise PolicyDenied(
            f"the presented certificate {row['serial']} was issued by {revoked_ca!r},"
            " whose certificate is revoked",
            rule="mtls.issuer-revoked",
            hint="enroll again under a current issuer",
        )
    found: sqlite3.Row = row
    return found


def _revoked_issuer(conn: sqlite3.Connection, authority_id: int | None) -> str | None:
    """The name of the first CA up the chain from ``authority_id`` whose own certificate
    is revoked, or None. Bounded by the depth of the hierarchy (a cycle stops it too)."""
    seen: set[int] = set()
    while authority_id is not None and authority_id not in seen:
        seen.add(authority_id)
        found = conn.execute(
            "SELECT a.name, a.parent_id, c.status FROM authorities a"
            " LEFT JOIN certificates c ON c.id = a.certificate_id WHERE a.id = ?",
            (authority_id,),
        ).fetchone()
        if found is None:
            return None
        if found["status"] == "revoked":
            return str(found["name"])
        authority_id = found["parent_id"]
    return None


def renew_presented(
    authority: Authority, presented_der: bytes, csr_pem: bytes, *, ttl: timedelta | None = None
) -> IssueResult:
    """Issue the successor of the presented certificate for the CSR's public key.

    Raises:
        CyphrsError: 5 as ``presented_row`` or a policy refusal of the renewal (recorded),
            7 the certificate is revoked or was already renewed (also when a concurrent
            renewal won the race), 3 a bad CSR, 8 a ledger failure.
    """
    from cyphrs_cli.service.issuing import deliver

    renewal = _renewal(authority, presented_der, csr_pem, ttl=ttl)
    profile = authority.profile(renewal.profile)
    issued = authority.commit_leaf(profile, renewal.leaf, issuer=renewal.issuer)
    return deliver(issued, None, None, replaces=renewal.replaces)


@dataclass(frozen=True)
class _Renewal:
    """A renewal decided from the ledger, not signed yet."""

    leaf: LeafRequest
    profile: str
    issuer: str  # the CA that signed the predecessor signs its successor
    replaces: str  # the predecessor's serial


def _renewal(
    authority: Authority,
    presented_der: bytes,
    csr_pem: bytes,
    *,
    ttl: timedelta | None,
    csr: x509.CertificateSigningRequest | None = None,
) -> _Renewal:
    """What ``renew_presented`` and ``start_renewal`` check before signing: the presented
    certificate (``presented_row``), that it may still be renewed, the TTL, and the
    successor's request. Records nothing (none of these refusals is an event)."""
    from cyphrs_cli.ca.renewal import check_renewable, lifetime, renewal_request
    from cyphrs_cli.durations import format_duration

    row = presented_row(authority, presented_der)
    conn = authority.ledger.conn
    check_renewable(row, conn)
    granted = lifetime(row)
    if ttl is not None and ttl > granted:
        # Self-service renewal must not outgrow what was granted (a token's max TTL is
        # not in the row; the predecessor's lifetime carries it).
        raise PolicyDenied(
            f"a renewal lives at most as long as the certificate it replaces"
            f" ({format_duration(granted)}); asked for {format_duration(ttl)}",
            rule="renew.ttl",
            hint="omit ttl to keep the current lifetime; enroll again for a longer one",
        )
    leaf, _ = renewal_request(
        row,
        public_key_mode="csr",
        csr_pem=csr_pem,
        csr=csr,
        ttl=ttl,
        # The claims keep who asked for the identity originally.
        requester=row["requester"],
    )
    signed_by = conn.execute(
        "SELECT name FROM authorities WHERE id = ?", (row["authority_id"],)
    ).fetchone()
    return _Renewal(leaf, str(row["profile"]), str(signed_by["name"]), str(row["serial"]))


async def renew_online(
    authority: Authority,
    presented_der: bytes,
    csr_pem: bytes,
    *,
    ttl: timedelta | None,
    offload: Callable[[Callable[[], IssueResult]], Awaitable[IssueResult]],
) -> IssueResult:
    """``renew_presented`` for a serving authority on an event loop: decided and signed on
    the loop and recorded by the group committer (``start_renewal``) when it can be,
    else ``renew_presented`` through ``offload`` (a worker thread). Same results, same
    records, same errors as ``renew_presented``; shielded like
    ``enrollment.enroll_online``, so a caller that stops waiting does not stop a renewal
    half-way."""
    from cyphrs_cli.service.enrollment import shielded

    return await shielded(_renew_online(authority, presented_der, csr_pem, ttl, offload))


async def _renew_online(
    authority: Authority,
    presented_der: bytes,
    csr_pem: bytes,
    ttl: timedelta | None,
    offload: Callable[[Callable[[], IssueResult]], Awaitable[IssueResult]],
) -> IssueResult:
    import asyncio

    from cyphrs_cli.service.issuing import deliver

    started = start_renewal(
        authority, presented_der, csr_pem, ttl=ttl, loop=asyncio.get_running_loop()
    )
    if started is not None:
        future, replaces = started
        try:
            issued = await asyncio.wrap_future(future)
        except (PolicyDenied, ConflictError):
            pass  # renewed or revoked meanwhile: the blocking path decides again
        else:
            return deliver(issued, None, None, replaces=replaces)
    return await offload(lambda: authority.renew_presented(presented_der, csr_pem, ttl=ttl))


def start_renewal(
    authority: Authority,
    presented_der: bytes,
    csr_pem: bytes,
    *,
    ttl: timedelta | None,
    loop: asyncio.AbstractEventLoop,
) -> tuple[Future[IssuedCertificate], str] | None:
    """The fast path of ``renew_online``, on the calling thread: check the presented
    certificate, the CSR and the TTL, decide and sign; queue the signed successor for the
    group committer (its transaction marks the predecessor superseded, or refuses if
    another renewal or a revocation came first). Returns its future and the
    predecessor's serial; nothing is recorded here.

    Returns None, having recorded nothing, when the blocking ``renew_presented`` must
    handle the request: no group committer, an RSA CSR (``ca.parsing.verifies_cheaply``),
    a predecessor signed by a CA not unlocked yet (unlocking may run a KDF for a
    passphrase) or whose key is in a PKCS#11 token, or a policy refusal (which that path
    records).

    Raises:
        CyphrsError: what ``renew_presented`` raises without recording anything: 5 the
            presented certificate (``presented_row``) or the TTL (``renew.ttl``), 7 revoked
            or already renewed, 3 a bad CSR, 8 a closed committer.
    """
    from cyphrs_cli.ca.issuance import sign_leaf
    from cyphrs_cli.ca.parsing import checked_csr, parse_csr, verifies_cheaply
    from cyphrs_cli.keystore.base import signs_in_process
    from cyphrs_cli.ledger.events import utc_now

    committer = authority.group_committer
    if committer is None:
        return None
    csr = parse_csr(csr_pem, source="CSR")
    if not verifies_cheaply(csr):
        return None
    renewal = _renewal(
        authority, presented_der, csr_pem, ttl=ttl, csr=checked_csr(csr, source="CSR")
    )
    signer = authority.unlocked_issuer(renewal.issuer)
    if signer is None or not signs_in_process(signer.signer):
        return None
    try:
        signed = sign_leaf(
            authority.ledger,
            signer,
            authority.profile(renewal.profile),
            renewal.leaf,
            utc_now(),
            record_denials=False,
        )
    except (PolicyDenied, ConflictError):  # to be recorded by the blocking path
        return None
    return committer.submit_here(loop, signer, signed), renewal.replaces


def revoke_presented(authority: Authority, presented_der: bytes, reason: str | None) -> Revocation:
    """Revoke the presented certificate (self-revocation; 7 when already revoked)."""
    from cyphrs_cli.ca.revocation import revoke_certificate

    row = presented_row(authority, presented_der)
    return revoke_certificate(authority.ledger, row, reason)


def admin_identity(authority: Authority, presented_der: bytes, *, profile: str = "admin") -> str:
    """Who the administrator is (their certificate's subject, or SPIFFE ID, and serial).

    Raises:
        PolicyDenied: as ``presented_row``; a certificate of another profile
            (``admin.profile``: agents are never administrators) or not valid any more
            (``admin.status``: revoked or superseded).
    """
    row = presented_row(authority, presented_der)
    if row["profile"] != profile:
        raise PolicyDenied(
            f"certificate {row['serial']} (profile {row['profile']!r}) is not an"
            f" administrator certificate (profile {profile!r})",
            rule="admin.profile",
        )
    if row["status"] != "valid":
        raise PolicyDenied(
            f"administrator certificate {row['serial']} is {row['status']}", rule="admin.status"
        )
    name = row["spiffe_id"] or row["subject"]
    return f"{name} (serial {row['serial']})"


def server_certificate(
    authority: Authority,
    *,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    ttl: str,
) -> IssueResult:
    """The serving process's own TLS certificate (profile ``server``), its key generated
    here and returned in memory only, issued and recorded like any other leaf."""
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.service.issuing import deliver

    profile = authority.profile("server")
    order = LeafOrder(
        "server",
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        ttl=ttl,
        requester="cyphrs serve",
    )
    leaf, private_key = prepare_request(order, profile, authority.facts.trust_domain)
    issued = authority.commit_leaf(profile, leaf)
    return deliver(issued, private_key, None)


def readiness(authority: Authority) -> dict[str, str]:
    """Can this authority issue right now: the ledger answers a read, and the issuing key
    signs a probe that verifies against the issuer's certificate. Each check says ``ok``
    or why not; nothing is recorded."""
    import secrets

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    from cyphrs_cli.errors import CyphrsError

    checks: dict[str, str] = {}
    try:
        authority.ledger.conn.execute("SELECT 1 FROM events LIMIT 1").fetchone()
        checks["ledger"] = "ok"
    except Exception as exc:  # any failure means "not ready", with its reason
        checks["ledger"] = f"unavailable: {exc}"
    try:
        issuer = authority.issuer
        if issuer.revoked:
            raise CyphrsError(f"issuer {issuer.name} is revoked")
        assert issuer.certificate is not None
        probe = secrets.token_bytes(32)
        key, public = issuer.signer, issuer.certificate.public_key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert isinstance(public, ec.EllipticCurvePublicKey)
            ecdsa = ec.ECDSA(hashes.SHA256())
            public.verify(key.sign(probe, ecdsa), probe, ecdsa)
        elif isinstance(key, rsa.RSAPrivateKey):
            assert isinstance(public, rsa.RSAPublicKey)
            signature = key.sign(probe, padding.PKCS1v15(), hashes.SHA256())
            public.verify(signature, probe, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            assert isinstance(public, ed25519.Ed25519PublicKey)
            public.verify(key.sign(probe), probe)
        checks["key"] = "ok"
    except Exception as exc:
        checks["key"] = f"unusable: {type(exc).__name__}: {exc}"
    return checks
