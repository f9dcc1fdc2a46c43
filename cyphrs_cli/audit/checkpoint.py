"""Signed checkpoints: (sequence, head hash, time) signed by a CA key, and their
verification against a trust anchor pinned from outside the ledger.

A checkpoint handed out of the CA (in an export bundle, to a log, to a reviewer) makes
any later truncation or rewrite of the ledger up to that point detectable, but only if
its signature is checked against a key the ledger's writer cannot choose. The document
carries the signer's certificate and chain so a verifier has everything it needs; those
certificates are never trusted by themselves: the signer must path-validate (signatures,
CA flags, path lengths, validity at the checkpoint's time) to a CA certificate the
verifier pinned, by file (``--root``) or by SHA-256 fingerprint (``--root-fingerprint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ledger.events import (
    LedgerEvent,
    append_event,
    canonical_json,
    rfc3339,
    sha256_hex,
    utc_now,
)

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.ca.models import Issuer
    from cyphrs_cli.ledger.db import Ledger

CHECKPOINT_SCHEMA = "cyphrs.checkpoint/v1"
# Fields of a checkpoint document that are not signed: the signature itself and the
# certificates that help a verifier find a path to its anchor.
UNSIGNED_FIELDS = ("signature", "certificate", "chain")
MAX_PATH = 8


def create_checkpoint(ledger: Ledger, signer: Issuer) -> dict[str, Any]:
    """Sign the current head inside the write lock, store it, and log that we did."""
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.signing import sign_document

    assert signer.certificate is not None
    with ledger.transaction() as conn:
        head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        body = {
            "schema": CHECKPOINT_SCHEMA,
            "seq": head["seq"],
            "head_hash": head["hash"],
            "at": rfc3339(utc_now()),
            "authority": signer.name,
        }
        document = {
            **body,
            "signature": sign_document(signer.signer, canonical_json(body)),
            "certificate": signer.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "chain": [
                parent.public_bytes(serialization.Encoding.PEM).decode()
                for parent in signer.parents
            ],
        }
        stored = canonical_json(document).decode()
        checkpoint_id = conn.execute(
            "INSERT INTO checkpoints (seq, head_hash, at, authority, document) VALUES (?,?,?,?,?)",
            (body["seq"], body["head_hash"], body["at"], signer.name, stored),
        ).lastrowid
        append_event(
            conn,
            LedgerEvent(
                type="audit.checkpoint",
                target=f"event:{body['seq']}",
                details={
                    "seq": body["seq"],
                    "head_hash": body["head_hash"],
                    "authority": signer.name,
                    # Pins the stored row, so an edited or deleted checkpoint row shows.
                    "checkpoint_id": checkpoint_id,
                    "document_sha256": sha256_hex(stored.encode()),
                },
            ),
        )
    return document


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate, the form ``init-root`` prints."""
    from cryptography.hazmat.primitives import hashes

    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def normalise_fingerprint(text: str) -> str:
    """Accept ``sha256:HEX``, bare hex, upper case and colon-separated bytes (openssl)."""
    from cyphrs_cli.errors import UsageError

    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    value = value.replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"--root-fingerprint {text!r} is not a SHA-256 fingerprint (sha256:HEX)")
    return "sha256:" + value


@dataclass(frozen=True)
class TrustAnchor:
    """A CA certificate pinned from outside the ledger. With only a fingerprint, the
    certificate is found among the candidates a verifier sees (ledger, checkpoint chain,
    bundle); whichever copy matches the fingerprint is the pinned one."""

    fingerprint: str
    source: str  # "--root FILE" or "--root-fingerprint"
    certificate: x509.Certificate | None = None

    def resolve(self, candidates: list[x509.Certificate]) -> x509.Certificate | None:
        if self.certificate is not None:
            return self.certificate
        for cert in candidates:
            if fingerprint(cert) == self.fingerprint:
                return cert
        return None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "fingerprint": self.fingerprint}


def load_anchor(root_file: str | None, root_fingerprint: str | None) -> TrustAnchor | None:
    """The anchor from ``--root FILE`` and/or ``--root-fingerprint``; both must agree."""
    from pathlib import Path

    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.errors import InvalidInputError, UsageError
    from cyphrs_cli.fsutil import read_input

    pinned = normalise_fingerprint(root_fingerprint) if root_fingerprint is not None else None
    if root_file is None:
        return TrustAnchor(pinned, "--root-fingerprint") if pinned else None
    path = Path(root_file)
    # A missing file is exit 6 and an unreadable one exit 8, like every other input file;
    # the absolute path keeps a file named "-" from being read as standard input.
    data = read_input(str(path.absolute()))
    certs = load_certificates(data, source=str(path))
    if len(certs) != 1:
        raise InvalidInputError(f"{path}: expected exactly one certificate, found {len(certs)}")
    cert = certs[0]
    if not _is_ca(cert):
        raise InvalidInputError(f"{path}: not a CA certificate; pin this home's root CA")
    if pinned is not None and fingerprint(cert) != pinned:
        raise UsageError(f"{path} does not have the fingerprint given by --root-fingerprint")
    return TrustAnchor(fingerprint(cert), f"--root {path}", cert)


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return bool(constraints.ca)


def _path_length(cert: x509.Certificate) -> int | None:
    from cryptography import x509

    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length


def _may_sign_certificates(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return bool(usage.key_cert_sign)


def _label(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} ({fingerprint(cert)[:19]}…)"


def path_problem(
    signer: x509.Certificate,
    pool: list[x509.Certificate],
    anchor: x509.Certificate,
    at: datetime,
) -> str | None:
    """``None`` when ``signer`` path-validates to ``anchor`` at time ``at``; else why not.

    Every certificate on the path must be a CA valid at ``at``; every link is a verified
    signature by a CA allowed to sign certificates within its path length. The anchor is
    trusted as given (it was pinned), but it too must be a CA valid at ``at``.
    """
    from cryptography.exceptions import InvalidSignature

    current, below = signer, -1  # below: CA certificates strictly between parent and signer
    for _ in range(MAX_PATH):
        if not _is_ca(current):
            return f"{_label(current)} is not a CA certificate"
        if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
            return f"{_label(current)} was not valid at {rfc3339(at)}"
        if current == anchor:
            length = _path_length(current)
            if length is not None and below > length:
                return f"the path exceeds the path length of {_label(current)}"
            return None
        below += 1
        for parent in [*pool, anchor]:
            if parent == current or parent.subject != current.issuer:
                continue
            if not _is_ca(parent) or not _may_sign_certificates(parent):
                continue
            length = _path_length(parent)
            if length is not None and below > length:
                continue
            try:
                current.verify_directly_issued_by(parent)
            except (InvalidSignature, ValueError, TypeError):
                continue
            current = parent
            break
        else:
            return f"{_label(current)} does not chain to the pinned anchor"
    return "the certificate path is too long"


def checkpoint_problem(
    document: Any,
    anchor: TrustAnchor,
    candidates: list[x509.Certificate],
) -> str | None:
    """``None`` when the checkpoint is signed by a CA that path-validates to the pinned
    anchor at the checkpoint's own time; else one line saying why not.

    ``candidates`` are extra certificates (for example the ledger's CA certificates) that
    may help build the path or resolve a fingerprint-only anchor; they are not trusted.
    """
    from cryptography import x509

    from cyphrs_cli.ca.signing import verify_document
    from cyphrs_cli.errors import InvalidInputError
    from cyphrs_cli.times import parse_time

    if not isinstance(document, dict):
        return "not a checkpoint document (not a JSON object)"
    body = {k: v for k, v in document.items() if k not in UNSIGNED_FIELDS}
    if body.get("schema") != CHECKPOINT_SCHEMA:
        return f"not a {CHECKPOINT_SCHEMA} document"
    signature, cert_pem, chain = (
        document.get("signature"),
        document.get("certificate"),
        document.get("chain", []),
    )
    if not isinstance(signature, str) or not isinstance(cert_pem, str):
        return "the signature or signer certificate is missing"
    if not isinstance(chain, list) or not all(isinstance(c, str) for c in chain):
        return "the chain is not a list of PEM certificates"
    at_text = body.get("at")
    try:
        signer = x509.load_pem_x509_certificate(cert_pem.encode())
        carried = [x509.load_pem_x509_certificate(c.encode()) for c in chain]
    except ValueError as exc:
        return f"malformed certificate in the checkpoint ({exc})"
    try:
        at = parse_time(at_text) if isinstance(at_text, str) else None
    except InvalidInputError:
        at = None
    if at is None:
        return f"malformed checkpoint time {at_text!r}"
    pinned = anchor.resolve([*candidates, *carried, signer])
    if pinned is None:
        return f"no certificate with the pinned fingerprint {anchor.fingerprint} is known"
    if not verify_document(signer, canonical_json(body), signature):
        return "signature does not verify"
    problem = path_problem(signer, [*carried, *candidates], pinned, at)
    if problem is not None:
        return f"signer is not anchored: {problem}"
    return None
