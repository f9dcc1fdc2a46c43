"""Building and loading the CA hierarchy: root, intermediates, the offline-root flow.

Creation order keeps a failed command from leaving partial state: every input is checked
first; then, under the home lock (``fsutil.home_lock``), the alias and root checks are
made again, the key is generated, the certificate and its authority are recorded in one
ledger transaction, and only then are the key file (created exclusively), the certificate
file and ``config.toml`` (read under the same lock) written. A failure removes only what
this process created.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from cyphrs_cli.config.settings import AuthorityEntry, HomeConfig, load_config, save_config
from cyphrs_cli.errors import ConflictError, InvalidInputError, NotFoundError, SecretError
from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, ensure_private_dir, home_lock
from cyphrs_cli.ledger.events import LedgerEvent, append_event

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography import x509

    from cyphrs_cli.ca.models import IssuedCertificate, Issuer, IssuerFacts
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.keystore.base import KeySpec, PendingKey, SecretProvider
    from cyphrs_cli.ledger.db import Ledger

_ALIAS = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def alias_from_name(name: str) -> str:
    """``Acme Agents CA`` → ``acme-agents-ca``: the handle used by --issuer and file names."""
    alias = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]
    if not alias:
        raise InvalidInputError(f"cannot derive an alias from {name!r}; pass --alias")
    return alias


def validate_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise InvalidInputError(
            f"invalid alias {alias!r}", hint="use lowercase letters, digits and '-'"
        )
    return alias


def ca_subject(common_name: str, organization: str | None) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not 1 <= len(common_name) <= 64:
        raise InvalidInputError("a CA name must be 1-64 characters")
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CaCreated:
    """The result of creating a root or intermediate."""

    issued: IssuedCertificate
    alias: str
    role: str
    key_uri: str
    cert_path: str


def open_ledger(home: CaHome, *, create: bool = False, shared: bool = False) -> Ledger:
    from cyphrs_cli.ledger.db import Ledger

    return Ledger(home.ledger_path, create=create, shared=shared)


def _write_outputs(
    home: CaHome, config: HomeConfig, entry: AuthorityEntry, cert_pem: bytes
) -> None:
    ensure_private_dir(home.certs_dir)
    atomic_write(home.resolve(entry.cert_path), cert_pem, mode=PUBLIC_FILE)
    config.authorities[entry.name] = entry
    if entry.role == "intermediate" and config.default_issuer is None:
        config.default_issuer = entry.name
    save_config(home, config)


def _create_ca(
    home: CaHome,
    config: HomeConfig,
    ledger: Ledger,
    *,
    issuer_for: Issuer | None,
    entry: AuthorityEntry,
    pending: PendingKey,
    subject: x509.Name,
    ttl: timedelta,
    path_length: int | None,
    trust_domain: str | None,
    permitted_uri: tuple[str, ...],
    permitted_dns: tuple[str, ...],
    ekus: tuple[str, ...],
    permitted_ip: tuple[str, ...] = (),
) -> CaCreated:
    """Sign, record, then write key, certificate and config. The caller holds the home
    lock and loaded ``config`` under it, so the alias checks it made still hold here."""
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.extensions import ca_extensions, distribution_extensions
    from cyphrs_cli.ca.issuance import issue
    from cyphrs_cli.ca.models import CertificatePlan, Issuer, NewAuthority

    public_key = pending.signer.public_key()
    issuer = issuer_for or Issuer(
        name=entry.name, authority_id=None, certificate=None, signer=pending.signer
    )
    issuer_of = issuer.certificate or public_key  # AKI: the issuer's SKI, or its own key
    extensions = ca_extensions(
        public_key,
        issuer_of,
        path_length=path_length,
        permitted_uri_domains=permitted_uri,
        permitted_dns=permitted_dns,
        permitted_ip=permitted_ip,
        extended_key_usage=ekus,
    )
    if issuer_for is not None and issuer_for.public_url:
        extensions += distribution_extensions(issuer_for.public_url, issuer_for.name)
    plan = CertificatePlan(
        profile=entry.role,
        subject=subject,
        public_key=public_key,
        ttl=ttl,
        extensions=extensions,
        is_ca=True,
        key_storage=pending.info.uri,
        new_authority=NewAuthority(
            name=entry.name,
            role=entry.role,
            key=pending.info,
            parent_id=issuer.authority_id,
            trust_domain=trust_domain,
        ),
    )
    try:
        issued = issue(ledger, issuer, plan)
        # A file key is written only once its certificate is recorded: a crash before the
        # commit leaves nothing behind; one after it leaves a recorded CA that was never
        # delivered (visible in the ledger, harmless). Token keys exist already. The file
        # is created exclusively, so it can never replace another CA's key.
        pending.commit()
    except BaseException:
        undo_key(home, pending)
        raise
    _write_outputs(home, config, entry, issued.certificate.public_bytes(serialization.Encoding.PEM))
    return CaCreated(issued, entry.name, entry.role, entry.key_uri, entry.cert_path)


def new_ca_key(
    home: CaHome,
    alias: str,
    key_uri: str | None,
    spec: KeySpec,
    secrets: SecretProvider,
    *,
    existing: bool,
) -> PendingKey:
    """Generate the CA key in the store its URI names (default: an encrypted file in the
    home), or adopt a token key that already exists."""
    from cyphrs_cli.keystore.uri import open_keystore

    uri = key_uri or f"file:keys/{alias}.key.pem"
    store = open_keystore(uri, home.root, secrets)
    return store.adopt_key(uri) if existing else store.create_key(spec, uri)


def undo_key(home: CaHome, pending: PendingKey) -> None:
    """Remove a key that was stored for a CA that never came to exist: only what this
    process wrote (a file it created, a token object it generated; an adopted token key
    and a file another process made are never touched)."""
    pending.discard()


def check_new_alias(home: CaHome, config: HomeConfig, ledger: Ledger, alias: str) -> None:
    """Refuse a taken alias (exit 7). Meaningful only under the home lock, with ``config``
    loaded under it: outside the lock, another process may take the alias right after."""
    if alias in config.authorities:
        raise ConflictError(f"an authority named {alias!r} already exists in {home.root}")
    from cyphrs_cli.ledger.records import authority_by_name

    if authority_by_name(ledger.conn, alias) is not None:
        raise ConflictError(f"the ledger already records an authority named {alias!r}")


@contextlib.contextmanager
def creating_in(home: CaHome, *, create: bool) -> Iterator[HomeConfig]:
    """Hold the home lock for a creation and yield the config as read under it.

    If the command fails and the home has no ``config.toml`` afterwards (no other process
    finished a creation in it), what this process created is removed again: the ledger it
    created, the ``keys``/``certs`` directories it made (only if empty), the lock file and
    the home directory it made (only if empty). Nothing another process made is touched:
    the lock makes "did not exist when we looked" mean "we created it".
    """
    with home_lock(home.root, create=create) as lock:
        had_ledger = home.ledger_path.exists()
        dirs = [d for d in (home.root / "keys", home.certs_dir) if not d.exists()]
        try:
            yield load_config(home) if home.is_initialised() else HomeConfig()
        except BaseException:
            if not home.config_path.exists():
                if not had_ledger:
                    for suffix in ("", "-wal", "-shm", "-journal", "-lock"):
                        with contextlib.suppress(OSError):
                            home.ledger_path.with_name(home.ledger_path.name + suffix).unlink()
                for directory in dirs:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                lock.abandon_fresh_home()
            raise


def create_root(
    home: CaHome,
    *,
    common_name: str,
    organization: str | None,
    alias: str | None,
    key_spec: KeySpec,
    key_uri: str | None,
    ttl: timedelta,
    secrets: SecretProvider,
    existing_key: bool = False,
) -> CaCreated:
    """Create the home (if needed), its ledger and a self-signed root. Refuses a second root.

    Everything from the "is there a root yet?" check to the last file written happens
    under the home lock: of several concurrent ``init-root`` runs exactly one creates a
    root; the others exit 7 and remove only what they themselves created.
    """

    alias = validate_alias(alias or alias_from_name(common_name))
    subject = ca_subject(common_name, organization)
    if home.is_initialised() and load_config(home).root is not None:
        raise _second_root(home)  # fast path; re-checked under the lock
    with creating_in(home, create=True) as config:
        if config.root is not None:
            raise _second_root(home)
        with open_ledger(home, create=True) as ledger:
            check_new_alias(home, config, ledger, alias)
            if ledger.conn.execute("SELECT 1 FROM authorities WHERE role = 'root'").fetchone():
                raise ConflictError(f"the ledger in {home.root} already records a root CA")
            pending = new_ca_key(home, alias, key_uri, key_spec, secrets, existing=existing_key)
            entry = AuthorityEntry(alias, "root", pending.info.uri, f"certs/{alias}.pem")
            return _create_ca(
                home,
                config,
                ledger,
                issuer_for=None,
                entry=entry,
                pending=pending,
                subject=subject,
                ttl=ttl,
                path_length=None,
                trust_domain=None,
                permitted_uri=(),
                permitted_dns=(),
                ekus=(),
            )


def _second_root(home: CaHome) -> ConflictError:
    return ConflictError(
        f"{home.root} already has a root CA", hint="use another --home for a new hierarchy"
    )


def create_intermediate(
    home: CaHome,
    *,
    common_name: str,
    organization: str | None,
    alias: str | None,
    key_spec: KeySpec,
    key_uri: str | None,
    ttl: timedelta,
    trust_domain: str | None,
    name_constraints: bool,
    permitted_dns: tuple[str, ...],
    path_length: int,
    ekus: tuple[str, ...],
    secrets: SecretProvider,
    root_secrets: SecretProvider,
    existing_key: bool = False,
    permitted_ip: tuple[str, ...] = (),
) -> CaCreated:
    """Sign a new intermediate with this home's root, under the home lock (alias check,
    key, ledger, certificate file and the config update form one serialised step)."""
    from cyphrs_cli.ca.extensions import name_constraint_subtrees, validate_trust_domain

    alias = validate_alias(alias or alias_from_name(common_name))
    subject = ca_subject(common_name, organization)
    if trust_domain is not None:
        validate_trust_domain(trust_domain)
    subtrees_uri, subtrees_dns, subtrees_ip = name_constraint_subtrees(
        name_constraints=name_constraints,
        trust_domain=trust_domain,
        permitted_dns=permitted_dns,
        permitted_ip=permitted_ip,
    )
    home.require_initialised()
    with creating_in(home, create=False) as config:
        root_entry = config.root
        if root_entry is None:
            raise NotFoundError(f"{home.root} has no root CA to sign with")
        with open_ledger(home) as ledger:
            check_new_alias(home, config, ledger, alias)
            root = load_issuer(home, config, ledger, root_entry.name, root_secrets)
            pending = new_ca_key(home, alias, key_uri, key_spec, secrets, existing=existing_key)
            entry = AuthorityEntry(
                alias,
                "intermediate",
                pending.info.uri,
                f"certs/{alias}.pem",
                parent=root_entry.name,
                trust_domain=trust_domain,
            )
            return _create_ca(
                home,
                config,
                ledger,
                issuer_for=root,
                entry=entry,
                pending=pending,
                subject=subject,
                ttl=ttl,
                path_length=path_length,
                trust_domain=trust_domain,
                permitted_uri=subtrees_uri,
                permitted_dns=subtrees_dns,
                permitted_ip=subtrees_ip,
                ekus=ekus,
            )


def load_certificate_file(home: CaHome, entry: AuthorityEntry) -> x509.Certificate:
    """The certificate file config.toml names, as it is on disk (NOT checked against the
    ledger: for display only; signing paths use ``load_issuer``/``issuer_facts``)."""
    from cryptography import x509

    path = home.resolve(entry.cert_path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise NotFoundError(f"certificate of {entry.name!r} missing at {path}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not a PEM certificate") from exc


def load_issuer(
    home: CaHome, config: HomeConfig, ledger: Ledger, name: str | None, secrets: SecretProvider
) -> Issuer:
    """Open an authority for signing: certificate, parents, and the unlocked signer.

    Every trust fact comes from the ledger; ``config.trust.anchored_authority`` refuses
    (exit 8) before any key is touched when config.toml or a certificate file disagrees.
    A wrong passphrase or PIN is recorded as a ``key.unlock_failed`` event before it is
    reported, so repeated guessing shows up in the audit trail.
    """
    from cyphrs_cli.ca.models import Issuer
    from cyphrs_cli.config.trust import anchored_authority
    from cyphrs_cli.keystore.uri import open_keystore

    anchored = anchored_authority(home, config, ledger.conn, name)
    key_uri = anchored.key_uri
    try:
        signer = open_keystore(key_uri, home.root, secrets).open_signer(key_uri)
    except SecretError as exc:
        with ledger.transaction() as conn:
            append_event(
                conn,
                LedgerEvent(
                    type="key.unlock_failed",
                    target=f"authority:{anchored.name}",
                    outcome="failure",
                    details={"key_uri": key_uri, "reason": exc.message},
                ),
            )
        raise
    if signer.public_key() != anchored.certificate.public_key():
        raise InvalidInputError(
            f"the key at {key_uri} does not match the certificate of {anchored.name!r}"
        )
    return Issuer(
        name=anchored.name,
        authority_id=anchored.authority_id,
        certificate=anchored.certificate,
        signer=signer,
        trust_domain=anchored.trust_domain,
        parents=anchored.parents,
        revoked=anchored.revoked,
        claims_oid=anchored.claims_oid,
        public_url=anchored.public_url,
    )


def issuer_facts(home: CaHome, config: HomeConfig, name: str | None) -> IssuerFacts:
    """The issuer's certificate, trust domain and claims OID from the ledger (files checked
    against it), without unlocking its key."""
    from cyphrs_cli.ca.models import IssuerFacts
    from cyphrs_cli.config.trust import anchored_authority

    with open_ledger(home) as ledger:
        anchored = anchored_authority(home, config, ledger.conn, name)
    return IssuerFacts(
        anchored.name,
        anchored.certificate,
        anchored.trust_domain,
        anchored.claims_oid,
        anchored.public_url,
    )
