"""Handing an issued certificate over: PEM bundles and an output directory.

Called only after the ledger has committed the certificate (the issuance path's step 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.fsutil import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    atomic_write,
    ensure_private_dir,
    refuse_existing,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.models import IssuedCertificate

OUTPUT_NAMES = ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem")


@dataclass(frozen=True)
class PemBundle:
    certificate: str
    chain: str  # intermediates, nearest first, without the root
    root: str
    # An unencrypted PEM private key: never in repr() (tracebacks, logs, assertion output).
    private_key: str | None = field(repr=False)

    @property
    def fullchain(self) -> str:
        return self.certificate + self.chain


def pem_bundle(
    issued: IssuedCertificate, private_key: CertificateIssuerPrivateKeyTypes | None
) -> PemBundle:
    from cryptography.hazmat.primitives import serialization

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    intermediates = [c for c in issued.chain if c.subject != c.issuer]
    roots = [c for c in issued.chain if c.subject == c.issuer]
    key_pem = None
    if private_key is not None:
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return PemBundle(
        certificate=pem(issued.certificate),
        chain="".join(pem(c) for c in intermediates),
        root="".join(pem(c) for c in roots),
        private_key=key_pem,
    )


def planned_paths(out_dir: Path, *, with_key: bool) -> list[Path]:
    names = OUTPUT_NAMES if with_key else OUTPUT_NAMES[:-1]
    return [out_dir / name for name in names]


def check_output_dir(out_dir: Path, *, with_key: bool, force: bool) -> None:
    """Run before any signing: an existing output without --force is a conflict."""
    refuse_existing(planned_paths(out_dir, with_key=with_key), force=force)


def write_output_dir(out_dir: Path, bundle: PemBundle) -> dict[str, str]:
    """Write the bundle (key 0600) and return {role: path}."""
    ensure_private_dir(out_dir)
    files = {
        "certificate": ("cert.pem", bundle.certificate, PUBLIC_FILE),
        "chain": ("chain.pem", bundle.chain, PUBLIC_FILE),
        "fullchain": ("fullchain.pem", bundle.fullchain, PUBLIC_FILE),
        "ca": ("ca.pem", bundle.root, PUBLIC_FILE),
    }
    if bundle.private_key is not None:
        files["private_key"] = ("key.pem", bundle.private_key, PRIVATE_FILE)
    written = {}
    # The key first: a certificate on disk without its key would be useless and confusing.
    for role in sorted(files, key=lambda r: r != "private_key"):
        name, text, mode = files[role]
        atomic_write(out_dir / name, text.encode(), mode=mode)
        written[role] = str(out_dir / name)
    return written
