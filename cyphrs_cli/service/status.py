"""Certificate status use cases: OCSP answers, the current CRL, CA certificates, roots.

``StatusService`` is what an ``Authority`` opened for serving uses to answer status
questions (``Authority.ocsp_response``, ``current_crl``, ``trust_bundle``,
``ca_certificate`` delegate here). It owns:

- the table of this home's CAs (ledger-anchored certificates, read once) and the OCSP
  CertID hashes of each, to find which CA a request names;
- one delegated OCSP responder certificate per issuer (profile ``ocsp-responder``: EKU
  OCSPSigning only, id-pkix-ocsp-nocheck, 24 hours), issued through the one issuance path
  with a key generated in memory and never written anywhere, and re-issued when less than
  a third of its lifetime is left or when it has been revoked;
- when the stored CRL of an issuer is stale (missing or past half its validity), the
  publication of the next one through ``service.lifecycle`` under the home lock.

Threads: one ``StatusService`` serves many threads. Responder renewal is single-flight
per issuer: while the current certificate is still valid, the other threads keep
signing with it and never wait; only when there is none (or it expired) do they wait
for the one renewal. ``clock`` is injectable so tests move time without sleeping; it
decides when a responder is due and stamps thisUpdate, while certificates are issued at
the real time (the issuance path's own clock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.errors import CyphrsError, InvalidInputError, NotFoundError, StorageError

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.ca.ocsp import CertificateStatus, OcspQuery, Responder
    from cyphrs_cli.service.authority import Authority

RESPONDER_PROFILE = "ocsp-responder"
#: Renew a responder certificate when less than this share of its lifetime is left.
RESPONDER_RENEW_REMAINING = 1 / 3
#: How long a CA whose key cannot be used (offline root, expired, wrong passphrase) is
#: answered ``unauthorized`` before trying again: each try may record a failed unlock.
UNAVAILABLE_RETRY = timedelta(minutes=5)


@dataclass(frozen=True)
class OcspAnswer:
    """An OCSP response ready to send, with what a front end needs for logs and caching.

    ``der`` is always a well-formed OCSPResponse (``application/ocsp-response``), also for
    refusals. ``status``: ``good``, ``revoked``, ``unknown`` (signed answers) or
    ``malformed``, ``unauthorized``, ``try-later``, ``internal-error`` (unsigned).
    """

    der: bytes
    status: str
    serial: str | None = None
    issuer: str | None = None
    this_update: datetime | None = None
    next_update: datetime | None = None
    nonce: bool = False

    @property
    def cacheable(self) -> bool:
        """A signed answer without a nonce may be cached until ``next_update`` (RFC 5019)."""
        return self.next_update is not None and not self.nonce

    def max_age(self, now: datetime) -> int:
        """Seconds a cache may keep this answer (0 when it must not)."""
        if not self.cacheable or self.next_update is None:
            return 0
        return max(0, int((self.next_update - now).total_seconds()))


@dataclass(frozen=True)
class _CertificateAuthority:
    name: str
    role: str
    authority_id: int
    certificate: x509.Certificate
    ski: str  # what the certificates it issued carry as issuer_ski in the ledger


def _offline(ca: _CertificateAuthority) -> bool:
    """A root's key is never unlocked by the online CA, whatever is on disk: anonymous
    requests (a root's CRL, an OCSP question about what it issued) would otherwise make
    the server try its passphrase on the root key, recording a failed unlock, or, with a
    reused passphrase, bring the root key online. A root's CRL is published where its key
    is (``cyphrs crl --issuer ROOT``) and served from the ledger until its nextUpdate."""
    return ca.role == "root"


@dataclass(frozen=True)
class _Delegate:
    """A responder certificate in use: what signs, and when to replace it."""

    responder: Responder
    record_id: int
    renew_at: datetime
    not_after: datetime


class StatusService:
    """Status answers for one ``Authority``; see the module docstring."""

    def __init__(
        self, authority: Authority, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        from cyphrs_cli.ledger.events import utc_now

        self._authority = authority
        self._clock = clock or utc_now
        self._lock = threading.Lock()
        self._cas: tuple[_CertificateAuthority, ...] | None = None
        self._hashes: dict[str, dict[tuple[bytes, bytes], _CertificateAuthority]] = {}
        self._delegates: dict[str, _Delegate] = {}
        self._renewing: dict[str, threading.Lock] = {}
        self._unavailable: dict[str, datetime] = {}
        self._crl_lock = threading.Lock()

    # -- the home's CAs ---------------------------------------------------------------

    def _authorities(self) -> tuple[_CertificateAuthority, ...]:
        with self._lock:
            if self._cas is None:
                from cyphrs_cli.config.trust import anchored_authority

                authority = self._authority
                found = []
                for name in sorted(authority.config.authorities):
                    anchored = anchored_authority(
                        authority.home, authority.config, authority.ledger.conn, name
                    )
                    found.append(
                        _CertificateAuthority(
                            name,
                            anchored.role,
                            anchored.authority_id,
                            anchored.certificate,
                            _ski_hex(anchored.certificate),
                        )
                    )
                self._cas = tuple(found)
            return self._cas

    def _authority_named(self, name: str) -> _CertificateAuthority:
        for ca in self._authorities():
            if ca.name == name:
                return ca
        raise NotFoundError(f"no certificate authority named {name!r}")

    def _match(self, query: OcspQuery) -> _CertificateAuthority | None:
        from cyphrs_cli.ca.ocsp import issuer_hashes

        table = self._hashes.get(query.hash_name)
        if table is None:
            table = {
                issuer_hashes(ca.certificate, query.hash_name): ca for ca in self._authorities()
            }
            self._hashes[query.hash_name] = table
        return table.get((query.issuer_name_hash, query.issuer_key_hash))

    # -- OCSP -------------------------------------------------------------------------

    def ocsp_response(self, request_der: bytes) -> OcspAnswer:
        """Answer one DER OCSP request; never raises for anything a client sends."""
        from cyphrs_cli.ca.ocsp import (
            RESPONSE_VALIDITY,
            parse_request,
            signed_response,
            unsuccessful_response,
        )
        from cyphrs_cli.ca.serials import serial_hex

        try:
            query = parse_request(request_der)
        except InvalidInputError:
            return OcspAnswer(unsuccessful_response("malformed"), "malformed")
        serial = serial_hex(query.serial)
        try:
            ca = self._match(query)
            if ca is None:
                # Not one of our CAs: we are not authoritative (RFC 6960 2.3, RFC 5019 2.2.3).
                return OcspAnswer(unsuccessful_response("unauthorized"), "unauthorized", serial)
            delegate = self._delegate(ca)
            if delegate is None:
                return OcspAnswer(
                    unsuccessful_response("unauthorized"), "unauthorized", serial, ca.name
                )
            status = self._status(ca, serial)
            now = self._clock()
            next_update = min(now + RESPONSE_VALIDITY, delegate.not_after)
            der = signed_response(
                query, status, delegate.responder, this_update=now, next_update=next_update
            )
        except CyphrsError:
            # The ledger or a key store is unavailable: the client may ask again.
            return OcspAnswer(unsuccessful_response("try-later"), "try-later", serial)
        return OcspAnswer(
            der,
            status.status,
            serial,
            ca.name,
            now.replace(microsecond=0),
            next_update.replace(microsecond=0),
            query.nonce is not None,
        )

    def ocsp_get_response(self, encoded: str) -> OcspAnswer:
        """Answer the GET form ``/ocsp/<encoded>``; undecodable input is ``malformed``."""
        from cyphrs_cli.ca.ocsp import decode_get_path, unsuccessful_response

        try:
            request_der = decode_get_path(encoded)
        except InvalidInputError:
            return OcspAnswer(unsuccessful_response("malformed"), "malformed")
        return self.ocsp_response(request_der)

    def _status(self, ca: _CertificateAuthority, serial: str) -> CertificateStatus:
        """The ledger's word on ``serial`` under ``ca``: unknown if it never issued it."""
        from cyphrs_cli.ca.ocsp import CertificateStatus

        row = self._authority.ledger.conn.execute(
            "SELECT c.status, r.revoked_at, r.reason FROM certificates c"
            " LEFT JOIN revocations r ON r.certificate_id = c.id"
            " WHERE c.issuer_ski = ? AND c.serial = ? AND c.authority_id = ? AND c.id != ?"
            " ORDER BY c.id LIMIT 1",
            (ca.ski, serial, ca.authority_id, self._own_certificate_id(ca)),
        ).fetchone()
        if row is None:
            return CertificateStatus("unknown")
        if row["status"] == "revoked":
            revoked_at = datetime.fromisoformat(str(row["revoked_at"]).replace("Z", "+00:00"))
            return CertificateStatus("revoked", revoked_at, row["reason"])
        return CertificateStatus("good")

    def _own_certificate_id(self, ca: _CertificateAuthority) -> int:
        """A root's row names itself as its authority; it is not a certificate it issued
        to anyone, so a CertID for the root's own serial is ``unknown``, not ``good``."""
        if ca.role != "root":
            return -1
        row = self._authority.ledger.conn.execute(
            "SELECT certificate_id FROM authorities WHERE id = ?", (ca.authority_id,)
        ).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else -1

    # -- delegated responder certificates ---------------------------------------------

    def responder_certificate(self, issuer_name: str) -> x509.Certificate | None:
        """The responder certificate now in use for ``issuer_name`` (None before the
        first request for it): operators and tests look, nothing is issued."""
        delegate = self._delegates.get(issuer_name)
        return delegate.responder.certificate if delegate is not None else None

    def _delegate(self, ca: _CertificateAuthority) -> _Delegate | None:
        """The responder for ``ca``, renewed when due; None when ``ca`` cannot sign here.
        A root never signs here (see ``_offline``)."""
        if _offline(ca):
            return None
        now = self._clock()
        current = self._delegates.get(ca.name)
        if current is not None and now < current.renew_at and not self._revoked(current):
            return current
        blocked_until = self._unavailable.get(ca.name)
        if blocked_until is not None and now < blocked_until:
            return current if current is not None and now < current.not_after else None
        with self._lock:
            renewing = self._renewing.setdefault(ca.name, threading.Lock())
        usable = current is not None and now < current.not_after and not self._revoked(current)
        # Single flight: while the current certificate still works, nobody waits.
        if not renewing.acquire(blocking=not usable):
            return current
        try:
            latest = self._delegates.get(ca.name)
            if latest is not None and latest is not current:
                return latest  # another thread renewed while this one waited
            try:
                fresh = self._issue_delegate(ca)
            except StorageError:
                raise  # the ledger is busy or failing: try later, nothing remembered
            except CyphrsError:
                # The CA cannot sign here (its key is offline or locked with another
                # passphrase, it expired): remember it for a while, so anonymous requests
                # cannot make it record a failed unlock each time.
                self._unavailable[ca.name] = self._clock() + UNAVAILABLE_RETRY
                return current if usable else None
            self._delegates[ca.name] = fresh
            self._unavailable.pop(ca.name, None)
            return fresh
        finally:
            renewing.release()

    def _revoked(self, delegate: _Delegate) -> bool:
        if delegate.record_id < 0:
            return False
        row = self._authority.ledger.conn.execute(
            "SELECT status FROM certificates WHERE id = ?", (delegate.record_id,)
        ).fetchone()
        return row is None or row[0] == "revoked"

    def _issue_delegate(self, ca: _CertificateAuthority) -> _Delegate:
        """A new responder certificate for ``ca``: in-memory P-256 key, one issuance path.

        A revoked CA gets no new certificates; it answers with its own key (RFC 6960
        allows the CA itself as responder), so its certificates' status stays available.
        """
        from cryptography.hazmat.primitives.asymmetric import ec

        from cyphrs_cli.ca.issuance import issue_leaf
        from cyphrs_cli.ca.models import LeafRequest
        from cyphrs_cli.ca.ocsp import Responder

        authority = self._authority
        issuer = authority.signing_issuer(ca.name)
        assert issuer.certificate is not None
        if issuer.revoked:
            return _Delegate(
                Responder(issuer.certificate, issuer.signer, ()),
                -1,
                renew_at=issuer.certificate.not_valid_after_utc,
                not_after=issuer.certificate.not_valid_after_utc,
            )
        key = ec.generate_private_key(ec.SECP256R1())
        profile = authority.profile(RESPONDER_PROFILE)
        issued = issue_leaf(
            authority.ledger,
            issuer,
            profile,
            LeafRequest(
                profile=RESPONDER_PROFILE,
                public_key=key.public_key(),
                common_name=f"OCSP responder {ca.name}"[:64],
                requester="cyphrs ocsp",
                key_type="p256",
                key_storage="memory",
            ),
        )
        lifetime = issued.not_after - issued.not_before
        renew_at = issued.not_after - lifetime * RESPONDER_RENEW_REMAINING
        return _Delegate(
            Responder(issued.certificate, key, (issued.certificate,)),
            issued.record_id,
            renew_at,
            issued.not_after,
        )

    # -- CRLs and CA certificates -----------------------------------------------------

    def current_crl(self, issuer_name: str) -> bytes:
        """The issuer's CRL (DER): the latest recorded one while it is in the first half
        of its validity, else a new one published now (under the home lock, so numbers
        only go up). If the issuer cannot sign (offline root), the latest one is served
        until its nextUpdate.

        Raises:
            NotFoundError: no such CA, or it has no CRL and cannot publish one now.
            CyphrsError: the ledger or key store failed and no CRL is in date.
        """
        from cyphrs_cli.fsutil import home_lock
        from cyphrs_cli.service.lifecycle import publish_locked
        from cyphrs_cli.service.requests import CrlRequest

        ca = self._authority_named(issuer_name)
        stored = self._latest_crl(ca)
        if stored is not None and self._fresh(stored):
            return stored.der
        with self._crl_lock:
            stored = self._latest_crl(ca)
            if stored is not None and self._fresh(stored):
                return stored.der
            blocked_until = self._unavailable.get(ca.name)
            try:
                if _offline(ca):
                    raise NotFoundError(f"{ca.name!r} is a root: its CRL is published offline")
                if blocked_until is not None and self._clock() < blocked_until:
                    raise NotFoundError(f"{ca.name!r} cannot publish a CRL here now")
                try:
                    self._authority.signing_issuer(ca.name)  # unlock before taking the lock
                except StorageError:
                    raise
                except CyphrsError:
                    self._unavailable[ca.name] = self._clock() + UNAVAILABLE_RETRY
                    raise
                with home_lock(self._authority.home.root):
                    stored = self._latest_crl(ca)
                    if stored is not None and self._fresh(stored):
                        return stored.der
                    result = publish_locked(self._authority, CrlRequest(issuer=ca.name))
            except StorageError:
                raise
            except CyphrsError as exc:
                # An offline root still has its last CRL: serve it until its nextUpdate.
                if stored is not None and self._clock() < stored.next_update:
                    return stored.der
                raise NotFoundError(
                    f"no current CRL of {ca.name!r}, and its key cannot sign here",
                    hint=f"publish it where the key is: cyphrs crl --issuer {ca.name}",
                ) from exc
        from cryptography.hazmat.primitives import serialization

        return result.published.crl.public_bytes(serialization.Encoding.DER)

    def _fresh(self, crl: _StoredCrl) -> bool:
        return self._clock() < crl.this_update + (crl.next_update - crl.this_update) / 2

    def _latest_crl(self, ca: _CertificateAuthority) -> _StoredCrl | None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        row = self._authority.ledger.conn.execute(
            "SELECT pem FROM crls WHERE authority_id = ? AND pem IS NOT NULL"
            " ORDER BY number DESC LIMIT 1",
            (ca.authority_id,),
        ).fetchone()
        if row is None:
            return None
        crl = x509.load_pem_x509_crl(str(row["pem"]).encode())
        next_update = crl.next_update_utc
        if next_update is None or not crl.is_signature_valid(ca.certificate.public_key()):  # type: ignore[arg-type]
            return None
        return _StoredCrl(
            crl.public_bytes(serialization.Encoding.DER), crl.last_update_utc, next_update
        )

    def ca_certificate(self, issuer_name: str) -> bytes:
        """The DER certificate of CA ``issuer_name`` (the caIssuers target).

        Raises:
            NotFoundError: no such CA in this home.
        """
        from cryptography.hazmat.primitives import serialization

        return self._authority_named(issuer_name).certificate.public_bytes(
            serialization.Encoding.DER
        )

    def trust_bundle(self) -> bytes:
        """The PEM certificates of this home's root CA(s), as the ledger records them."""
        from cryptography.hazmat.primitives import serialization

        return b"".join(
            ca.certificate.public_bytes(serialization.Encoding.PEM)
            for ca in self._authorities()
            if ca.role == "root"
        )


@dataclass(frozen=True)
class _StoredCrl:
    der: bytes
    this_update: datetime
    next_update: datetime


def _ski_hex(cert: x509.Certificate) -> str:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()
