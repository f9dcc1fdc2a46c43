"""The ``Authority``: one CA home opened once, serving every use case.

Front ends (the CLI today, ``serve`` later) open an ``Authority`` on a home and call its
methods -- ``issue``, ``dry_run``, ``check_renewal``, ``renew``, ``revoke``, ``crl``,
``checkpoint``, ``export`` -- with the typed requests of ``service.requests``; they parse
input and render results, and decide nothing. Decisions (policy, what is due, CRL
validity, output checks before signing) live in these use cases and in ``ca/`` beneath.

What is loaded when: opening holds the ledger and nothing else; ``config``, ``profiles``
and ``facts`` are read on first use and kept; the issuing key is unlocked at ``open``
when ``unlock`` (the server's case: a bad passphrase fails at start, not at the first
request) or on first use otherwise (so ``dry_run`` never touches a key). Every trust
fact comes from the ledger through ``config.trust.anchored_authority``: a home whose
files disagree with the ledger is refused before anything is signed.

Threads: several threads may call one ``Authority`` at once. Each thread gets its own
SQLite connection (``ledger`` is per thread), so writers serialise on SQLite's
``BEGIN IMMEDIATE`` lock exactly as separate processes do -- the path the concurrency
tests already prove -- while signing runs in parallel. Lazy loading is guarded by one
lock. A software key is a pyca/cryptography object, safe for concurrent signing; a
PKCS#11 key serialises its calls on its session (``keystore.pkcs11.TokenSession``).
What is cached (config, profiles, anchored facts) is read once: a long-lived front end
reopens the ``Authority`` to see changed profiles or a new intermediate. A server calls
``start_group_commit``: then ``commit_leaf`` (every online issuance) is batched across
threads into one transaction per group by ``service.committer``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import NotFoundError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import timedelta
    from types import TracebackType

    from jwt import PyJWKClient

    from cyphrs_cli.ca.issuance import AfterRecord
    from cyphrs_cli.ca.models import IssuedCertificate, Issuer, IssuerFacts, LeafRequest
    from cyphrs_cli.ca.revocation import Revocation
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.config.settings import HomeConfig
    from cyphrs_cli.keystore.base import SecretProvider
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.queries import CertificateFilter
    from cyphrs_cli.profiles.model import Profile
    from cyphrs_cli.service.committer import CommitObserver, GroupCommitter
    from cyphrs_cli.service.enrollment import EnrollRequest
    from cyphrs_cli.service.provisioners import ProvisionerSpec
    from cyphrs_cli.service.requests import (
        CheckpointResult,
        CrlRequest,
        CrlResult,
        DryRunResult,
        ExportRequest,
        ExportSummary,
        IssueRequest,
        IssueResult,
        LeafOrder,
        RenewalCheck,
        RenewalCheckRequest,
        RenewRequest,
        RevokeRequest,
    )
    from cyphrs_cli.service.status import OcspAnswer, StatusService
    from cyphrs_cli.service.tokens import CreatedToken, TokenInfo, TokenSpec


class Authority:
    """A CA home opened for use: see the module docstring. Use as a context manager."""

    def __init__(self, home: CaHome, *, issuer: str | None, secrets: SecretProvider) -> None:
        self._home = home
        self._issuer_name = issuer
        self._secrets = secrets
        self._lock = threading.RLock()
        self._local = threading.local()
        self._ledgers: list[Ledger] = []
        self._config: HomeConfig | None = None
        self._profiles: dict[str, Profile] | None = None
        self._facts: IssuerFacts | None = None
        self._issuers: dict[str, Issuer] = {}
        self._unlocking: dict[str, threading.Lock] = {}  # one per CA being unlocked
        self._closed = False
        self._committer: GroupCommitter | None = None
        self._jwks_clients: dict[str, PyJWKClient] = {}
        self._status: StatusService | None = None

    @classmethod
    def open(
        cls,
        home: CaHome,
        *,
        issuer: str | None = None,
        secrets: SecretProvider,
        unlock: bool = True,
    ) -> Authority:
        """Open ``home`` for signing as ``issuer`` (default: the home's default issuer).

        Raises:
            CyphrsError: not a CA home (6), a missing or unusable ledger (8), a home whose
                files disagree with the ledger (8), a wrong passphrase or PIN (4) or an
                unavailable key store (9) when ``unlock``.
        """
        home.require_initialised()
        authority = cls(home, issuer=issuer, secrets=secrets)
        try:
            authority.ledger  # noqa: B018 -- open (and check) the ledger now
            if unlock:
                authority.issuer  # noqa: B018
        except BaseException:
            authority.close()
            raise
        return authority

    # -- what the use cases share ---------------------------------------------------

    @property
    def home(self) -> CaHome:
        return self._home

    @property
    def ledger(self) -> Ledger:
        """This thread's ledger connection (opened on first use, closed by ``close``)."""
        ledger: Ledger | None = getattr(self._local, "ledger", None)
        if ledger is None:
            from cyphrs_cli.ca.hierarchy import open_ledger
            from cyphrs_cli.errors import UsageError

            with self._lock:
                if self._closed:
                    raise UsageError("this authority has been closed")
                ledger = open_ledger(self._home, shared=True)
                self._ledgers.append(ledger)
            self._local.ledger = ledger
        return ledger

    @property
    def config(self) -> HomeConfig:
        # Read first without the lock: once loaded, the hot path never waits on it.
        config = self._config
        if config is not None:
            return config
        with self._lock:
            if self._config is None:
                from cyphrs_cli.config.settings import load_config

                self._config = load_config(self._home)
            return self._config

    @property
    def profiles(self) -> dict[str, Profile]:
        """Built-in and home profiles (home files are checked against the ledger when a
        certificate is signed under them)."""
        profiles = self._profiles
        if profiles is not None:
            return profiles
        with self._lock:
            if self._profiles is None:
                from cyphrs_cli.profiles.model import load_profiles

                self._profiles = load_profiles(self._home.profiles_dir)
            return self._profiles

    def profile(self, name: str) -> Profile:
        """The profile ``name``, or NotFoundError (exit 6) listing the known ones."""
        profiles = self.profiles
        if name not in profiles:
            raise NotFoundError(
                f"unknown profile {name!r}", hint=f"known profiles: {', '.join(sorted(profiles))}"
            )
        return profiles[name]

    @property
    def issuer_name(self) -> str:
        """The alias of the CA this authority signs as (config's default if none given)."""
        return self.config.issuer(self._issuer_name).name

    @property
    def facts(self) -> IssuerFacts:
        """The issuer's ledger-anchored facts (certificate, trust domain, claims OID), for
        policy and planning: no key is unlocked to get them."""
        facts = self._facts
        if facts is not None:
            return facts
        with self._lock:
            if self._facts is None:
                from cyphrs_cli.ca.models import IssuerFacts
                from cyphrs_cli.config.trust import anchored_authority

                anchored = anchored_authority(
                    self._home, self.config, self.ledger.conn, self.issuer_name
                )
                self._facts = IssuerFacts(
                    anchored.name,
                    anchored.certificate,
                    anchored.trust_domain,
                    anchored.claims_oid,
                    anchored.public_url,
                )
            return self._facts

    @property
    def issuer(self) -> Issuer:
        """The unlocked issuing CA (as ``ca.hierarchy.load_issuer`` returns it)."""
        return self.signing_issuer(self.issuer_name)

    def signing_issuer(self, name: str) -> Issuer:
        """Any CA of this home, unlocked once with this authority's secrets and kept.

        Its revocation is re-read from the ledger on every call: an intermediate revoked
        while this authority is open (by another process) must stop signing at once, not
        when the front end restarts.
        """
        found = self._issuers.get(name)  # one dict read: no lock (see ``_unlock``)
        if found is None:
            found = self._unlock(name)
        if not found.revoked and found.authority_id is not None:
            status = self.ledger.conn.execute(
                "SELECT c.status FROM authorities a JOIN certificates c"
                " ON c.id = a.certificate_id WHERE a.id = ?",
                (found.authority_id,),
            ).fetchone()
            if status is not None and status[0] == "revoked":
                from dataclasses import replace

                found = replace(found, revoked=True)
                with self._lock:
                    self._issuers[name] = found
        return found

    def _unlock(self, name: str) -> Issuer:
        """Load and unlock CA ``name`` once, under a lock of its own: unlocking (the secrets
        callback, the KDF, a PKCS#11 login) may take a second, and a server's event loop
        reads the other, already unlocked issuers meanwhile without waiting for it."""
        with self._lock:
            lock = self._unlocking.setdefault(name, threading.Lock())
        with lock:
            found = self._issuers.get(name)
            if found is None:
                from cyphrs_cli.ca.hierarchy import load_issuer

                found = load_issuer(self._home, self.config, self.ledger, name, self._secrets)
                with self._lock:
                    if self._closed:  # closed while unlocking: do not keep a session open
                        close = getattr(found.signer, "close", None)
                        if callable(close):
                            close()
                        from cyphrs_cli.errors import UsageError

                        raise UsageError("this authority has been closed")
                    self._issuers[name] = found
            return found

    def commit_leaf(
        self,
        profile: Profile,
        request: LeafRequest,
        *,
        issuer: str | None = None,
        after_record: AfterRecord | None = None,
    ) -> IssuedCertificate:
        """Decide, sign and record one leaf through the one issuance path
        (``ca.issuance.issue_leaves`` with one item), signed by ``issuer`` (default: this
        authority's). ``after_record`` runs in the same transaction right after the row
        and its event are written; a ``CyphrsError`` it raises undoes the certificate
        (no row, no event) and is raised here. Every online issuance goes through here.

        Raises:
            CyphrsError: the item's refusal (5 policy, recorded; 7 a duplicate instance),
                the hook's error, or 8 a ledger failure (nothing recorded).
        """
        from cyphrs_cli.ca.issuance import issue_leaves, sign_leaf
        from cyphrs_cli.errors import CyphrsError
        from cyphrs_cli.ledger.events import utc_now

        signer = self.signing_issuer(issuer) if issuer is not None else self.issuer
        committer = self._committer
        if committer is not None:
            signed = sign_leaf(self.ledger, signer, profile, request, utc_now())
            return committer.submit(signer, signed, after_record=after_record).result()
        (result,) = issue_leaves(
            self.ledger, signer, [(profile, request)], after_record=[after_record]
        )
        if isinstance(result, CyphrsError):
            raise result
        assert result is not None  # one item: either issued or its error
        return result

    def start_group_commit(
        self,
        *,
        max_items: int | None = None,
        max_wait: float | None = None,
        observer: CommitObserver | None = None,
        checkpoint_items: int | None = None,
    ) -> GroupCommitter:
        """From now on ``commit_leaf`` calls of every thread are batched by one writer
        thread (``service.committer``), whose WAL checkpoints run on a thread of their own
        every ``checkpoint_items`` items (0: in its COMMITs, as SQLite does by default);
        ``close`` drains both. The server's mode."""
        from cyphrs_cli.service import committer as group

        with self._lock:
            if self._committer is None:
                self._committer = group.GroupCommitter(
                    self,
                    max_items=max_items or group.DEFAULT_MAX_ITEMS,
                    max_wait=group.DEFAULT_MAX_WAIT if max_wait is None else max_wait,
                    observer=observer,
                    checkpoint_items=checkpoint_items,
                )
            return self._committer

    @property
    def group_committer(self) -> GroupCommitter | None:
        return self._committer

    def _expecting_leaf(self) -> contextlib.AbstractContextManager[None]:
        """Tell the group committer a leaf is probably on its way (see ``expecting``)."""
        committer = self._committer
        return committer.expecting() if committer is not None else contextlib.nullcontext()

    # -- use cases ------------------------------------------------------------------

    def issue(self, request: IssueRequest) -> IssueResult:
        """Issue one leaf: validate, decide, sign, record, then write its files."""
        from cyphrs_cli.service.issuing import issue_one

        return issue_one(self, request)

    def dry_run(self, order: LeafOrder) -> DryRunResult:
        """Decide and plan ``order`` without unlocking a key or recording anything."""
        from cyphrs_cli.service.issuing import dry_run

        return dry_run(self, order)

    def check_renewal(self, request: RenewalCheckRequest) -> RenewalCheck:
        from cyphrs_cli.service.lifecycle import check_renewal

        return check_renewal(self, request)

    def renew(self, request: RenewRequest) -> IssueResult:
        from cyphrs_cli.service.lifecycle import renew

        return renew(self, request)

    def revoke(self, request: RevokeRequest) -> Revocation:
        from cyphrs_cli.service.lifecycle import revoke

        return revoke(self, request)

    def crl(self, request: CrlRequest) -> CrlResult:
        from cyphrs_cli.service.lifecycle import publish

        return publish(self, request)

    def checkpoint(self) -> CheckpointResult:
        from cyphrs_cli.service.evidence import checkpoint

        return checkpoint(self)

    def export(self, request: ExportRequest) -> ExportSummary:
        from cyphrs_cli.service.evidence import export

        return export(self, request)

    def renew_presented(
        self, presented_der: bytes, csr_pem: bytes, *, ttl: timedelta | None = None
    ) -> IssueResult:
        from cyphrs_cli.service.online import renew_presented

        with self._expecting_leaf():
            return renew_presented(self, presented_der, csr_pem, ttl=ttl)

    def revoke_presented(self, presented_der: bytes, reason: str | None) -> Revocation:
        from cyphrs_cli.service.online import revoke_presented

        return revoke_presented(self, presented_der, reason)

    def admin_identity(self, presented_der: bytes, *, profile: str = "admin") -> str:
        from cyphrs_cli.service.online import admin_identity

        return admin_identity(self, presented_der, profile=profile)

    def server_certificate(
        self, *, dns_names: tuple[str, ...], ip_addresses: tuple[str, ...], ttl: str
    ) -> IssueResult:
        from cyphrs_cli.service.online import server_certificate

        return server_certificate(self, dns_names=dns_names, ip_addresses=ip_addresses, ttl=ttl)

    def readiness(self) -> dict[str, str]:
        from cyphrs_cli.service.online import readiness

        return readiness(self)

    def list_certificates(self, query: CertificateFilter) -> list[dict[str, Any]]:
        """Ledger rows matching ``query`` as ``cyphrs.list/v1`` entries, newest first."""
        from cyphrs_cli.ledger.events import utc_now
        from cyphrs_cli.ledger.queries import list_certificates

        return list_certificates(self.ledger.conn, query, utc_now())

    # -- enrollment (tokens, JWT provisioners) ----------------------------------------

    def create_token(self, spec: TokenSpec) -> CreatedToken:
        """A new one-time enrollment token; its secret is returned once, stored hashed."""
        from cyphrs_cli.service.tokens import create_token

        return create_token(self, spec)

    def list_tokens(self, *, include_inactive: bool = False) -> list[TokenInfo]:
        from cyphrs_cli.service.tokens import list_tokens

        return list_tokens(self, include_inactive=include_inactive)

    def revoke_token(self, token_id: str) -> TokenInfo:
        from cyphrs_cli.service.tokens import revoke_token

        return revoke_token(self, token_id)

    def enroll(self, request: EnrollRequest) -> IssueResult:
        """Issue for an agent's CSR under a token's or a provisioner JWT's binding, the
        credential spent in the certificate's own transaction."""
        from cyphrs_cli.service.enrollment import enroll

        with self._expecting_leaf():
            return enroll(self, request)

    async def enroll_online(
        self,
        request: EnrollRequest,
        *,
        offload: Callable[[Callable[[], IssueResult]], Awaitable[IssueResult]],
    ) -> IssueResult:
        """``enroll`` from a server's event loop: a clean token redemption is decided and
        signed on the loop and recorded by the group committer; anything else runs
        ``enroll`` through ``offload`` (a worker thread). See ``service.enrollment``."""
        from cyphrs_cli.service.enrollment import enroll_online

        return await enroll_online(self, request, offload)

    def set_provisioner(self, spec: ProvisionerSpec, *, replace: bool = False) -> bool:
        from cyphrs_cli.service.provisioners import set_provisioner

        return set_provisioner(self, spec, replace=replace)

    def list_provisioners(self) -> list[ProvisionerSpec]:
        from cyphrs_cli.service.provisioners import list_provisioners

        return list_provisioners(self)

    def remove_provisioner(self, name: str) -> None:
        from cyphrs_cli.service.provisioners import remove_provisioner

        remove_provisioner(self, name)

    def jwks_client(self, url: str) -> PyJWKClient:
        """One JWKS fetcher per URL for this authority's life (keys cached 5 minutes;
        an unknown ``kid`` refetches once)."""
        with self._lock:
            client = self._jwks_clients.get(url)
            if client is None:
                from cyphrs_cli.service.jwks import JwksFetcher

                client = JwksFetcher(url)  # bounded, no redirects, backs off after a failure
                self._jwks_clients[url] = client
            return client

    # -- status (OCSP, CRL distribution, CA certificates): service.status -----------

    @property
    def status(self) -> StatusService:
        """The status service of this authority (responder certificates, CRL freshness)."""
        with self._lock:
            if self._status is None:
                from cyphrs_cli.service.status import StatusService

                self._status = StatusService(self)
            return self._status

    def ocsp_response(self, request_der: bytes) -> OcspAnswer:
        """Answer a DER OCSP request (POST body); always a sendable response."""
        return self.status.ocsp_response(request_der)

    def ocsp_get_response(self, encoded: str) -> OcspAnswer:
        """Answer the GET form ``/ocsp/<url-encoded base64 DER>``."""
        return self.status.ocsp_get_response(encoded)

    def current_crl(self, issuer_name: str) -> bytes:
        """The issuer's current CRL (DER), published anew when stale."""
        return self.status.current_crl(issuer_name)

    def trust_bundle(self) -> bytes:
        """PEM of this home's root certificate(s)."""
        return self.status.trust_bundle()

    def ca_certificate(self, issuer_name: str) -> bytes:
        """DER certificate of one of this home's CAs (caIssuers)."""
        return self.status.ca_certificate(issuer_name)

    # -- life cycle -----------------------------------------------------------------

    def close(self) -> None:
        """Drain the group committer, then close every ledger connection and token
        session this authority opened."""
        committer = self._committer
        if committer is not None:
            committer.close()
        with self._lock:
            self._closed = True
            ledgers, self._ledgers = self._ledgers, []
            issuers, self._issuers = list(self._issuers.values()), {}
        for issuer in issuers:
            close = getattr(issuer.signer, "close", None)
            if callable(close):
                close()
        for ledger in ledgers:
            ledger.close()

    def __enter__(self) -> Authority:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
