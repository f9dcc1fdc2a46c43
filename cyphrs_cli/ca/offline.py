"""The offline-root flow: an intermediate whose root key never touches this host.

1. ``request_intermediate`` (online host): generate the intermediate key here, write a CSR,
   and remember the pending request in ``config.toml``. Everything that decides the
   intermediate (trust domain, name constraints, permitted subtrees, path length,
   validity) travels *inside* the CSR as one attribute (:data:`REQUEST_OID`, canonical
   JSON), signed by the new key together with the subject;
2. ``sign_intermediate`` (root host): read that request back, show it, refuse flags that it
   makes meaningless, sign through the one issuance path, recorded in the root's ledger,
   and hand back the certificate with the root certificate;
3. ``import_intermediate`` (online host): check the certificate matches the pending key,
   carries the requested constraints and path-validates to the trusted root (this home's
   own, or ``--root``; never one taken from the returned file), then record root and
   intermediate -- with the key's recorded attributes -- in this home's ledger.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cyphrs_cli.config.settings import AuthorityEntry, HomeConfig, load_config, save_config
from cyphrs_cli.errors import ConflictError, InvalidInputError, NotFoundError, UsageError
from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, ensure_private_dir
from cyphrs_cli.ledger.events import (
    LedgerEvent,
    append_event,
    canonical_json,
    rfc3339,
    sha256_hex,
    utc_now,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography import x509

    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.keystore.base import KeyInfo, KeySpec, SecretProvider

PENDING = "pending_intermediates"
#: The CSR attribute that carries an :class:`IntermediateRequest` (UTF8String, canonical
#: JSON), under the same provisional arc as the agent-claims extension.
REQUEST_OID = "1.3.6.1.4.1.32473.77.2"
REQUEST_SCHEMA = "cyphrs.intermediate-params/v1"
_REQUEST_KEYS = frozenset(
    {
        "schema",
        "trust_domain",
        "name_constraints",
        "permit_dns",
        "permit_ip",
        "path_length",
        "validity",
    }
)
#: ``sign-intermediate`` flags that a request carried in the CSR replaces.
REQUEST_FLAGS = (
    "--trust-domain",
    "--name-constraints",
    "--permit-dns",
    "--permit-ip",
    "--path-length",
    "--validity",
)


@dataclass(frozen=True)
class IntermediateRequest:
    """What decides an intermediate, as asked for on the host that holds its key."""

    trust_domain: str | None = None
    name_constraints: bool = False
    permitted_dns: tuple[str, ...] = ()
    permitted_ip: tuple[str, ...] = ()
    path_length: int = 0
    validity: str = "5y"

    def validate(self) -> None:
        """Exit 3 for anything the root host would refuse, before any key exists."""
        from cyphrs_cli.ca.extensions import name_constraint_subtrees, validate_trust_domain
        from cyphrs_cli.durations import parse_duration

        if self.trust_domain is not None:
            validate_trust_domain(self.trust_domain)
        name_constraint_subtrees(
            name_constraints=self.name_constraints,
            trust_domain=self.trust_domain,
            permitted_dns=self.permitted_dns,
            permitted_ip=self.permitted_ip,
        )
        if not 0 <= self.path_length <= 3:
            raise InvalidInputError("path length must be 0 to 3")
        parse_duration(self.validity)

    @property
    def ttl(self) -> timedelta:
        from cyphrs_cli.durations import parse_duration

        return parse_duration(self.validity)

    def subtrees(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        from cyphrs_cli.ca.extensions import name_constraint_subtrees

        return name_constraint_subtrees(
            name_constraints=self.name_constraints,
            trust_domain=self.trust_domain,
            permitted_dns=self.permitted_dns,
            permitted_ip=self.permitted_ip,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REQUEST_SCHEMA,
            "trust_domain": self.trust_domain,
            "name_constraints": self.name_constraints,
            "permit_dns": list(self.permitted_dns),
            "permit_ip": list(self.permitted_ip),
            "path_length": self.path_length,
            "validity": self.validity,
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> IntermediateRequest:
        """Strict: every field typed, nothing unknown (a request someone edited by hand or
        made by another tool must not be half understood)."""

        def fail(what: str) -> InvalidInputError:
            return InvalidInputError(f"{source}: the intermediate request it carries {what}")

        if not isinstance(data, dict) or set(data) != _REQUEST_KEYS:
            raise fail("does not have the fields of " + REQUEST_SCHEMA)
        if data["schema"] != REQUEST_SCHEMA:
            raise fail(f"has an unknown schema {str(data['schema'])[:64]!r}")
        lists = data["permit_dns"], data["permit_ip"]
        if (
            not (data["trust_domain"] is None or isinstance(data["trust_domain"], str))
            or not isinstance(data["name_constraints"], bool)
            or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists)
            or type(data["path_length"]) is not int
            or not isinstance(data["validity"], str)
        ):
            raise fail("has a field of the wrong type")
        request = cls(
            trust_domain=data["trust_domain"],
            name_constraints=data["name_constraints"],
            permitted_dns=tuple(data["permit_dns"]),
            permitted_ip=tuple(data["permit_ip"]),
            path_length=data["path_length"],
            validity=data["validity"],
        )
        request.validate()
        return request

    def lines(self) -> list[tuple[str, str]]:
        """The request as (label, value) rows, for the operator's confirmation."""
        uri, dns, ip = self.subtrees()
        constraints = [f"URI:{u}" for u in uri] + [f"DNS:{d}" for d in dns]
        constraints += [f"IP:{n}" for n in ip]
        return [
            ("trust domain", self.trust_domain or "(none)"),
            ("name constraints", ", ".join(constraints) if constraints else "(none)"),
            ("path length", str(self.path_length)),
            ("validity", self.validity),
        ]


def carried_request(csr: x509.CertificateSigningRequest, source: str) -> IntermediateRequest | None:
    """The request a cyphrs CSR carries, or None for a CSR made elsewhere."""
    import json

    from cryptography import x509

    try:
        attribute = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier(REQUEST_OID))
    except x509.AttributeNotFound:
        return None
    try:
        data = json.loads(attribute.value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{source}: its intermediate request is not JSON") from exc
    return IntermediateRequest.from_json(data, source=source)


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
    request: IntermediateRequest,
    secrets: SecretProvider,
    existing_key: bool = False,
) -> tuple[str, bytes]:
    """Create the key and a CSR carrying ``request``; returns (alias, CSR PEM). Creates the
    home if needed. The request is validated before the key is made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.hierarchy import (
        alias_from_name,
        ca_subject,
        check_new_alias,
        creating_in,
        new_ca_key,
        open_ledger,
        undo_key,
        validate_alias,
    )
    from cyphrs_cli.ca.issuance import signature_hash

    alias = validate_alias(alias or alias_from_name(common_name))
    subject = ca_subject(common_name, organization)
    request.validate()
    with creating_in(home, create=True) as config:
        if alias in _pending(config):
            raise ConflictError(f"an intermediate request named {alias!r} is already pending")
        with open_ledger(home, create=True) as ledger:
            check_new_alias(home, config, ledger, alias)
            pending = new_ca_key(home, alias, key_uri, key_spec, secrets, existing=existing_key)
            uri = pending.info.uri
            try:
                csr = (
                    x509.CertificateSigningRequestBuilder()
                    .subject_name(subject)
                    .add_attribute(
                        x509.ObjectIdentifier(REQUEST_OID), canonical_json(request.to_json())
                    )
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
                                "request": request.to_json(),
                            },
                        ),
                    )
                # As for every CA key: the file is written (exclusively) after the commit.
                pending.commit()
            except BaseException:
                undo_key(home, pending)
                raise
        _pending(config)[alias] = {
            "key": uri,
            # The public key, so the signed certificate can be matched without unlocking it.
            "public_key": pending.signer.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
            "subject": subject.rfc4514_string(),
            "trust_domain": request.trust_domain or "",
            "key_algorithm": pending.info.algorithm,
            "key_generated_in": pending.info.generated_in,
            "key_storage": pending.info.storage,
        }
        save_config(home, config)
    return alias, csr_pem


@dataclass(frozen=True)
class SignedIntermediate:
    """What ``sign_intermediate`` decided and (unless a dry run) signed."""

    subject: str
    request: IntermediateRequest
    #: True when the request came from the CSR, False when from the command's flags.
    carried: bool
    issued: IssuedCertificate | None = None
    bundle: bytes | None = None


def sign_intermediate(
    home: CaHome,
    csr_pem: bytes,
    *,
    source: str,
    secrets: SecretProvider,
    flags: IntermediateRequest,
    flags_given: tuple[str, ...] = (),
    root_name: str | None = None,
    dry_run: bool = False,
    confirm: Callable[[SignedIntermediate], bool] | None = None,
) -> SignedIntermediate:
    """On the root's host: sign an intermediate CSR; returns the request and the signed
    certificate + root PEM.

    A CSR made by ``create-intermediate --csr-out`` carries its request: that request alone
    decides the certificate, and any of ``REQUEST_FLAGS`` in ``flags_given`` is refused
    (exit 2) rather than silently overriding or being dropped. A foreign CSR (no request)
    is signed as ``flags`` say. ``dry_run`` stops before unlocking the root key;
    ``confirm`` (a terminal prompt) may still decline (exit 2, nothing signed).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from cyphrs_cli.ca.extensions import ca_extensions
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.ca.issuance import issue
    from cyphrs_cli.ca.models import CertificatePlan
    from cyphrs_cli.ca.parsing import load_csr
    from cyphrs_cli.config.trust import anchored_authority

    csr = load_csr(csr_pem, source=source)
    if not csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise InvalidInputError(f"{source}: an intermediate CSR needs a subject common name")
    carried = carried_request(csr, source)
    if carried is not None and flags_given:
        raise UsageError(
            f"{source} carries its own request (trust domain, constraints, path length,"
            f" validity); {', '.join(flags_given)} would be ignored",
            hint="drop the option, or make a new request on the issuing host with it"
            " (create-intermediate --csr-out ...)",
        )
    request = carried if carried is not None else flags
    request.validate()
    subtrees_uri, subtrees_dns, subtrees_ip = request.subtrees()
    result = SignedIntermediate(csr.subject.rfc4514_string(), request, carried is not None)
    config = load_config(home)
    root_entry = config.issuer(root_name) if root_name else config.root
    if root_entry is None or root_entry.role != "root":
        raise NotFoundError(f"{home.root} has no root CA to sign with")
    with open_ledger(home) as ledger:
        # The home's files must match the ledger before the request is even shown.
        anchored_authority(home, config, ledger.conn, root_entry.name)
        if dry_run:
            return result
        if confirm is not None and not confirm(result):
            raise UsageError("not confirmed; nothing signed")
        root = load_issuer(home, config, ledger, root_entry.name, secrets)
        assert root.certificate is not None
        public_key = csr.public_key()
        plan = CertificatePlan(
            profile="intermediate",
            subject=csr.subject,
            public_key=public_key,
            ttl=request.ttl,
            extensions=ca_extensions(
                public_key,
                root.certificate,
                path_length=request.path_length,
                permitted_uri_domains=subtrees_uri,
                permitted_dns=subtrees_dns,
                permitted_ip=subtrees_ip,
                extended_key_usage=("clientAuth", "serverAuth"),
            ),
            is_ca=True,
            key_storage="offline:csr",
        )
        issued = issue(ledger, root, plan)
    bundle = issued.certificate.public_bytes(serialization.Encoding.PEM)
    bundle += root.certificate.public_bytes(serialization.Encoding.PEM)
    return SignedIntermediate(result.subject, request, result.carried, issued, bundle)


@dataclass(frozen=True)
class Imported:
    alias: str
    root_alias: str
    certificate: x509.Certificate


def import_intermediate(
    home: CaHome, bundle_pem: bytes, *, source: str, root_pem: bytes | None
) -> Imported:
    """Match the signed certificate to a pending key, verify it chains to the trusted root,
    record both CA certificates in this home's ledger in one transaction, then write the
    files; all under the home lock, so two imports cannot both adopt one request.

    The trust anchor is this home's own root, else the one certificate in ``root_pem``
    (``--root``), which the operator obtained from the root's host. It is never taken from
    the imported file: a self-signed certificate in the file that is not the anchor (for
    example a forged root with the genuine root's name) is refused (exit 3), as is an
    intermediate that does not path-validate to the anchor. Nothing is recorded then.
    """
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.hierarchy import (
        alias_from_name,
        check_new_alias,
        open_ledger,
    )
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.config.trust import anchored_authority
    from cyphrs_cli.fsutil import home_lock
    from cyphrs_cli.keystore.base import KeyInfo
    from cyphrs_cli.keystore.uri import OFFLINE_URI
    from cyphrs_cli.ledger.records import authority_by_name

    home.require_initialised()
    certs = load_certificates(bundle_pem, source=source)
    given_root = _given_root(root_pem) if root_pem is not None else None
    with home_lock(home.root):
        config = load_config(home)
        existing_root = config.root
        if existing_root is not None:
            # The root as the ledger records it (the file must match it): a swapped
            # certs/ROOT.pem can neither anchor the import nor pass unnoticed.
            with open_ledger(home) as ledger:
                anchor = anchored_authority(
                    home, config, ledger.conn, existing_root.name
                ).certificate
            if given_root is not None and fingerprint(given_root) != fingerprint(anchor):
                raise ConflictError(
                    f"--root ({fingerprint(given_root)}) is not this home's root"
                    f" {existing_root.name!r} ({fingerprint(anchor)})"
                )
        elif given_root is not None:
            anchor = given_root
        else:
            raise UsageError(
                "this home has no root yet: name the trusted root with --root ROOT.pem",
                hint="copy the root certificate from the root's host and compare its"
                " fingerprint with the one init-root printed there",
            )
        for cert in certs:
            if _self_signed(cert) and fingerprint(cert) != fingerprint(anchor):
                raise InvalidInputError(
                    f"{source}: carries a root certificate ({fingerprint(cert)}) that is not"
                    f" the trusted root ({fingerprint(anchor)}); nothing imported"
                )
        candidates = [c for c in certs if not _self_signed(c)]
        with open_ledger(home) as ledger:
            for candidate in candidates:
                if ledger.conn.execute(
                    "SELECT 1 FROM certificates WHERE fingerprint = ?", (fingerprint(candidate),)
                ).fetchone():
                    raise ConflictError(f"{source}: this intermediate is already imported")
        alias, request, cert = _match_pending(config, candidates, source)
        _check_chain(cert, anchor, source)
        root_alias = existing_root.name if existing_root else alias_from_name(_common_name(anchor))

        with open_ledger(home) as ledger:
            intermediate_key, asked = _requested_key(ledger.conn, alias, request)
            _check_carries(cert, anchor, asked, source)
            check_new_alias(home, config, ledger, alias)
            if existing_root is None:
                check_new_alias(home, config, ledger, root_alias)
            with ledger.transaction() as conn:
                known = authority_by_name(conn, root_alias) if existing_root else None
                if known is not None:
                    root_id = int(known["id"])
                else:
                    offline = KeyInfo(OFFLINE_URI, "offline", _algorithm(anchor), "unknown", {})
                    root_id = _record_ca(
                        conn, anchor, root_alias, "root", offline, parent_id=None, trust_domain=None
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
                anchor.public_bytes(serialization.Encoding.PEM),
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


def _requested_key(
    conn: sqlite3.Connection, alias: str, pending: dict[str, Any]
) -> tuple[KeyInfo, IntermediateRequest | None]:
    """The key as the ledger recorded it when the request was made (URI, storage,
    algorithm, where generated, token attributes): config.toml is only a cache, and the
    attributes (NEVER_EXTRACTABLE ...) must reach the authority row and the registers.
    Also the request recorded with it (None for one made before requests were carried)."""
    import json

    from cyphrs_cli.keystore.base import KeyInfo

    rows = conn.execute(
        "SELECT details FROM events WHERE +type = 'authority.requested' AND target = ?"
        " ORDER BY seq DESC",
        (f"authority:{alias}",),
    ).fetchall()
    for row in rows:
        details = json.loads(row["details"])
        key = details.get("key") or {}
        if details.get("key_uri") == pending["key"] and isinstance(key, dict):
            asked = details.get("request")
            return KeyInfo(
                str(key.get("uri", pending["key"])),
                str(key.get("storage", pending["key_storage"])),
                str(key.get("algorithm", pending["key_algorithm"])),
                str(key.get("generated_in", pending["key_generated_in"])),
                dict(key.get("attributes") or {}),
            ), (IntermediateRequest.from_json(asked, source="the ledger") if asked else None)
    raise NotFoundError(
        f"the ledger has no request for {alias!r} with key {pending['key']}",
        hint="the request must be made in this home (create-intermediate --csr-out)",
    )


def _check_carries(
    cert: x509.Certificate,
    anchor: x509.Certificate,
    request: IntermediateRequest | None,
    source: str,
) -> None:
    """The signed intermediate must carry exactly the path length and name constraints
    that were requested: a root host that dropped or widened them is refused (exit 3)."""
    from cryptography import x509

    from cyphrs_cli.ca.extensions import ca_extensions

    if request is None:  # a request pending from before requests were carried
        return
    uri, dns, ip = request.subtrees()
    wanted = {
        type(value): value
        for value, _ in ca_extensions(
            cert.public_key(),
            anchor,
            path_length=request.path_length,
            permitted_uri_domains=uri,
            permitted_dns=dns,
            permitted_ip=ip,
        )
    }
    for kind, label in (
        (x509.BasicConstraints, "path length"),
        (x509.NameConstraints, "name constraints"),
    ):
        try:
            got: object = cert.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            got = None
        if got != wanted.get(kind):
            raise InvalidInputError(
                f"{source}: the intermediate's {label} differ from the request; nothing imported"
            )


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _given_root(root_pem: bytes) -> x509.Certificate:
    """The ``--root`` file: exactly one self-signed CA certificate whose signature is its own."""
    from cyphrs_cli.ca.parsing import load_certificates

    certs = load_certificates(root_pem, source="--root")
    if len(certs) != 1:
        raise InvalidInputError(f"--root: expected one root certificate, found {len(certs)}")
    root = certs[0]
    if not _self_signed(root):
        raise InvalidInputError("--root: not a self-signed root certificate")
    _require_ca(root, "--root")
    _check_signature(root, root, "--root: the root's self-signature does not verify")
    return root


def _check_chain(cert: x509.Certificate, anchor: x509.Certificate, source: str) -> None:
    """RFC 5280 path validation of the two-certificate path anchor → intermediate: names,
    signature, validity of both, CA flags, key usage and the anchor's path length."""
    from cryptography import x509

    now = utc_now()
    _require_ca(anchor, "the trusted root")
    _require_ca(cert, source)
    if cert.issuer != anchor.subject:
        raise InvalidInputError(f"{source}: the intermediate was not issued by the trusted root")
    _check_signature(cert, anchor, f"{source}: the intermediate is not signed by the trusted root")
    for what, c in (("the trusted root", anchor), (f"{source}: the intermediate", cert)):
        if c.not_valid_after_utc <= now:
            raise InvalidInputError(f"{what} has already expired")
        if c.not_valid_before_utc > now:
            raise InvalidInputError(f"{what} is not valid yet")
    try:
        limit = anchor.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        limit = None
    if limit is not None and limit < 0:
        raise InvalidInputError("the trusted root's path length forbids intermediates")


def _require_ca(cert: x509.Certificate, what: str) -> None:
    from cryptography import x509

    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise InvalidInputError(f"{what}: not a CA certificate (basicConstraints cA is not set)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise InvalidInputError(f"{what}: its key usage does not allow signing certificates")


def _check_signature(cert: x509.Certificate, issuer: x509.Certificate, message: str) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidInputError(message) from exc


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
    from cyphrs_cli.ledger.records import (
        authority_row_digest,
        insert_authority,
        insert_certificate,
        row_digest,
    )

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
                "authority_id": authority_id,
                "authority_digest": authority_row_digest(conn, authority_id),
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
