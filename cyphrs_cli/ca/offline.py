"""The offline-root flow: an intermediate whose root key never touches this host.

1. ``request_intermediate`` (online host): generate the intermediate key here, write a CSR,
   and remember the pending request in ``config.toml``;
2. ``sign_intermediate`` (root host): sign the CSR through the one issuance path, recorded
   in the root's ledger, and hand back the certificate with the root certificate;
3. ``import_intermediate`` (online host): check the certificate matches the pending key and
   chains to the root, then record root and intermediate in this home's ledger.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.config.settings import AuthorityEntry, HomeConfig, load_config, save_config
from cyphrs_cli.errors import ConflictError, InvalidInputError, NotFoundError
from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, ensure_private_dir
from cyphrs_cli.ledger.events import LedgerEvent, append_event, rfc3339, sha256_hex, utc_now

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.keystore.base import KeyInfo, KeySpec, SecretProvider

PENDING = "pending_intermediates"


def _home_config(home: CaHome) -> HomeConfig:
    return load_config(home) if home.is_initialised() else HomeConfig()


def _pending(config: HomeConfig) -> dict[str, Any]:
    pending: dict[str, Any] = config.extra.setdefault(PENDING, {})
    return pending


def request_intermediate(
    home: CaHome,
    *,
    common_name: str,
    organization: str | None,
    alias: str | None,
    key_spec: KeySpec,
    key_uri: str | None,
    trust_domain: str | None,
    secrets: SecretProvider,
    existing_key: bool = False,
) -> tuple[str, bytes]:
    """Create the key and a CSR; returns (alias, CSR PEM). Creates the home if needed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.extensions import validate_trust_domain
    from cyphrs_cli.ca.hierarchy import (
        alias_from_name,
        ca_subject,
        check_new_alias,
        new_ca_key,
        open_ledger,
        undo_key,
        validate_alias,
    )
    from cyphrs_cli.ca.issuance import signature_hash

    alias = validate_alias(alias or alias_from_name(common_name))
    subject = ca_subject(common_name, organization)
    if trust_domain is not None:
        validate_trust_domain(trust_domain)
    config = _home_config(home)
    if alias in _pending(config):
        raise ConflictError(f"an intermediate request named {alias!r} is already pending")
    ensure_private_dir(home.root)
    with open_ledger(home, create=True) as ledger:
        check_new_alias(home, config, ledger, alias)
        pending = new_ca_key(home, alias, key_uri, key_spec, secrets, existing=existing_key)
        uri = pending.info.uri
        try:
            pending.commit()
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(subject)
                .sign(pending.signer, signature_hash(pending.signer))  # type: ignore[arg-type]
            )
            csr_pem = csr.public_bytes(serialization.Encoding.PEM)
            with ledger.transaction() as conn:
                append_event(
                    conn,
                    LedgerEvent(
                        type="authority.requested",
                        target=f"authority:{alias}",
                        details={
                            "alias": alias,
                            "subject": subject.rfc4514_string(),
                            "key_uri": uri,
                            "csr_sha256": sha256_hex(csr_pem),
                            "key": pending.info.__dict__,
                        },
                    ),
                )
        except BaseException:
            undo_key(home, pending)
            raise
    _pending(config)[alias] = {
        "key": uri,
        # The public key, so the signed certificate can be matched without unlocking the key.
        "public_key": pending.signer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        "subject": subject.rfc4514_string(),
        "trust_domain": trust_domain or "",
        "key_algorithm": pending.info.algorithm,
        "key_generated_in": pending.info.generated_in,
        "key_storage": pending.info.storage,
    }
    save_config(home, config)
    return alias, csr_pem


def sign_intermediate(
    home: CaHome,
    csr_pem: bytes,
    *,
    source: str,
    ttl: timedelta,
    trust_domain: str | None,
    name_constraints: bool,
    permitted_dns: tuple[str, ...],
    path_length: int,
    secrets: SecretProvider,
    root_name: str | None = None,
) -> tuple[IssuedCertificate, bytes]:
    """On the root's host: sign an intermediate CSR; returns (issued, cert + root PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from cyphrs_cli.ca.extensions import ca_extensions, validate_trust_domain
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.ca.issuance import issue
    from cyphrs_cli.ca.models import CertificatePlan
    from cyphrs_cli.ca.parsing import load_csr

    csr = load_csr(csr_pem, source=source)
    if not csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise InvalidInputError(f"{source}: an intermediate CSR needs a subject common name")
    if trust_domain is not None:
        validate_trust_domain(trust_domain)
    if name_constraints and not (trust_domain or permitted_dns):
        raise InvalidInputError("--name-constraints needs --trust-domain and/or --permit-dns")
    config = load_config(home)
    root_entry = config.issuer(root_name) if root_name else config.root
    if root_entry is None or root_entry.role != "root":
        raise NotFoundError(f"{home.root} has no root CA to sign with")
    with open_ledger(home) as ledger:
        root = load_issuer(home, config, ledger, root_entry.name, secrets)
        assert root.certificate is not None
        public_key = csr.public_key()
        plan = CertificatePlan(
            profile="intermediate",
            subject=csr.subject,
            public_key=public_key,
            ttl=ttl,
            extensions=ca_extensions(
                public_key,
                root.certificate,
                path_length=path_length,
                permitted_uri_domains=(trust_domain,) if name_constraints and trust_domain else (),
                permitted_dns=permitted_dns if name_constraints else (),
                extended_key_usage=("clientAuth", "serverAuth"),
            ),
            is_ca=True,
            key_storage="offline:csr",
        )
        issued = issue(ledger, root, plan)
    bundle = issued.certificate.public_bytes(serialization.Encoding.PEM)
    bundle += root.certificate.public_bytes(serialization.Encoding.PEM)
    return issued, bundle


@dataclass(frozen=True)
class Imported:
    alias: str
    root_alias: str
    certificate: x509.Certificate


def import_intermediate(
    home: CaHome, bundle_pem: bytes, *, source: str, root_pem: bytes | None
) -> Imported:
    """Match the signed certificate to a pending key, verify it chains to the root, record
    both CA certificates in this home's ledger in one transaction, then write the files."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.hierarchy import alias_from_name, load_certificate_file, open_ledger
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.keystore.base import KeyInfo
    from cyphrs_cli.keystore.uri import OFFLINE_URI
    from cyphrs_cli.ledger.records import authority_by_name

    home.require_initialised()
    config = load_config(home)
    certs = load_certificates(bundle_pem, source=source)
    if root_pem is not None:
        certs += load_certificates(root_pem, source="--root")
    roots = [c for c in certs if c.subject == c.issuer]
    if not roots:
        raise InvalidInputError(
            f"{source}: no root certificate (add it to the file or pass --root)"
        )
    root = roots[0]
    alias, request, cert = _match_pending(
        config, [c for c in certs if c.subject != c.issuer], source
    )
    try:
        cert.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{source}: the intermediate is not signed by that root") from exc
    if cert.not_valid_after_utc <= utc_now():
        raise InvalidInputError(f"{source}: the intermediate has already expired")
    existing_root = config.root
    if existing_root is not None and fingerprint(
        load_certificate_file(home, existing_root)
    ) != fingerprint(root):
        raise ConflictError("this home already has a different root CA")
    root_alias = existing_root.name if existing_root else alias_from_name(_common_name(root))
    intermediate_key = KeyInfo(
        request["key"],
        request["key_storage"],
        request["key_algorithm"],
        request["key_generated_in"],
        {},
    )

    with open_ledger(home) as ledger, ledger.transaction() as conn:
        known = authority_by_name(conn, root_alias) if existing_root else None
        if known is not None:
            root_id = int(known["id"])
        else:
            offline = KeyInfo(OFFLINE_URI, "offline", _algorithm(root), "unknown", {})
            root_id = _record_ca(
                conn, root, root_alias, "root", offline, parent_id=None, trust_domain=None
            )
        _record_ca(
            conn,
            cert,
            alias,
            "intermediate",
            intermediate_key,
            parent_id=root_id,
            trust_domain=request["trust_domain"] or None,
        )

    ensure_private_dir(home.certs_dir)
    if existing_root is None:
        entry = AuthorityEntry(root_alias, "root", OFFLINE_URI, f"certs/{root_alias}.pem")
        atomic_write(
            home.resolve(entry.cert_path),
            root.public_bytes(serialization.Encoding.PEM),
            mode=PUBLIC_FILE,
        )
        config.authorities[root_alias] = entry
    entry = AuthorityEntry(
        alias,
        "intermediate",
        request["key"],
        f"certs/{alias}.pem",
        parent=root_alias,
        trust_domain=request["trust_domain"] or None,
    )
    atomic_write(
        home.resolve(entry.cert_path),
        cert.public_bytes(serialization.Encoding.PEM),
        mode=PUBLIC_FILE,
    )
    config.authorities[alias] = entry
    del _pending(config)[alias]
    if config.default_issuer is None:
        config.default_issuer = alias
    save_config(home, config)
    return Imported(alias, root_alias, cert)


def _match_pending(
    config: HomeConfig, candidates: list[x509.Certificate], source: str
) -> tuple[str, dict[str, Any], x509.Certificate]:
    """The pending request whose public key the signed certificate carries."""
    from cryptography.hazmat.primitives import serialization

    for cert in candidates:
        for alias, request in _pending(config).items():
            if cert.public_key() == serialization.load_pem_public_key(
                request["public_key"].encode()
            ):
                return alias, request, cert
    raise NotFoundError(f"{source}: no certificate matches the key of a pending request")


def _record_ca(
    conn: sqlite3.Connection,
    cert: x509.Certificate,
    name: str,
    role: str,
    key: KeyInfo,
    *,
    parent_id: int | None,
    trust_domain: str | None,
) -> int:
    """Authority row, certificate row and ``authority.imported`` event; returns the
    authority id. A root is its own issuing authority; an intermediate's is its parent."""
    from cyphrs_cli.ca.issuance import certificate_row
    from cyphrs_cli.ledger.records import insert_authority, insert_certificate, row_digest

    now = rfc3339(utc_now())
    authority_id = insert_authority(
        conn,
        name=name,
        role=role,
        parent_id=parent_id,
        ski=_ski(cert),
        subject=cert.subject.rfc4514_string(),
        key_uri=key.uri,
        key_storage=key.storage,
        key_algorithm=key.algorithm,
        key_generated_in=key.generated_in,
        key_attributes=key.attributes,
        trust_domain=trust_domain,
        created_at=now,
    )
    row = certificate_row(
        cert,
        authority_id=parent_id or authority_id,
        profile=role,
        is_ca=True,
        issued_at=now,
        key_storage=key.uri,
    )
    cert_id = insert_certificate(conn, row)
    conn.execute("UPDATE authorities SET certificate_id = ? WHERE id = ?", (cert_id, authority_id))
    append_event(
        conn,
        LedgerEvent(
            type="authority.imported",
            target=f"certificate:{row.serial}",
            details={
                "certificate_id": cert_id,
                "serial": row.serial,
                "fingerprint": row.fingerprint,
                "authority": name,
                "role": role,
                "key_uri": key.uri,
                "row_digest": row_digest(row),
            },
        ),
    )
    return authority_id


def _common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _ski(cert: x509.Certificate) -> str:
    from cryptography import x509

    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def _algorithm(cert: x509.Certificate) -> str:
    from cyphrs_cli.ca.issuance import key_algorithm_name

    return key_algorithm_name(cert.public_key())
