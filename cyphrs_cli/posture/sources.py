"""Where scanned certificates come from: files and directories (PEM, DER, PKCS#12 without
keys), TLS endpoints (the chain the server presents) and this home's ledger.

Each certificate keeps its source and position, so chain checks can ask "what else did
this file / this server hand out". Private keys inside PEM or PKCS#12 files are never
read into results: only certificates are kept.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from cyphrs_cli.errors import InvalidInputError, NotFoundError
from cyphrs_cli.numerals import is_decimal

#: Files larger than this are skipped (a certificate store is small; a disk image is not).
MAX_FILE_BYTES = 10 * 1024 * 1024
#: Files a directory walk reads at most (a bounded walk of a hostile tree).
MAX_FILES = 100_000


@dataclass(frozen=True)
class ScannedCertificate:
    """One certificate as found: ``source`` is a path, ``tls:host:port`` or ``ledger``;
    ``kind`` says whether the source is a chain a peer presents (``endpoint``), a file or
    the ledger."""

    certificate: x509.Certificate
    source: str
    position: int
    kind: str  # "file" | "endpoint" | "ledger"


@dataclass
class Loaded:
    certificates: list[ScannedCertificate]
    skipped: list[str]  # files that hold no certificate we can read, with why


def _certificates_in(data: bytes) -> list[x509.Certificate]:
    """PEM (any number), DER, or PKCS#12 (no password or an empty one); [] otherwise."""
    import warnings

    with warnings.catch_warnings():  # a non-positive serial is a finding, not a crash
        warnings.simplefilter("ignore")
        return _parse_certificates(data)


def _parse_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            return []
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    for password in (None, b""):
        try:
            bundle = pkcs12.load_pkcs12(data, password)
        except (ValueError, TypeError):
            continue
        found = [bundle.cert.certificate] if bundle.cert is not None else []
        return found + [extra.certificate for extra in bundle.additional_certs]
    return []


def load_paths(paths: list[Path]) -> Loaded:
    """Every certificate in the files, and in the regular files below the directories
    (symbolic links are not followed inside a directory walk)."""
    loaded = Loaded([], [])
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and not found.is_symlink():
                    files.append(found)
                if len(files) > MAX_FILES:
                    raise InvalidInputError(f"{path}: more than {MAX_FILES} files to scan")
        elif path.is_file():
            files.append(path)
        else:
            raise NotFoundError(f"{path}: no such file or directory")
    for file in files:
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                loaded.skipped.append(f"{file}: larger than {MAX_FILE_BYTES} bytes")
                continue
            data = file.read_bytes()
        except OSError as exc:
            loaded.skipped.append(f"{file}: {exc.strerror}")
            continue
        certificates = _certificates_in(data)
        if not certificates:
            loaded.skipped.append(f"{file}: no certificate")
        for position, certificate in enumerate(certificates):
            loaded.certificates.append(ScannedCertificate(certificate, str(file), position, "file"))
    return loaded


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not is_decimal(port) or not 0 < int(port) < 65536:
        raise InvalidInputError(f"{text!r} is not host:port")
    return host, int(port)


def fetch_endpoint(text: str, *, timeout: float = 10.0) -> list[ScannedCertificate]:
    """The certificate chain a TLS server presents, as sent (not verified: a scan must
    see broken chains too). SNI is the host name when it is one."""
    host, port = parse_endpoint(text)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            server_name = None if _is_address(host) else host
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                ders = _presented_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise NotFoundError(f"{text}: no TLS certificate ({exc})") from exc
    return [
        ScannedCertificate(x509.load_der_x509_certificate(der), f"tls:{text}", i, "endpoint")
        for i, der in enumerate(ders)
    ]


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    # Python 3.13 has SSLSocket.get_unverified_chain(); 3.11 and 3.12 have it on the
    # underlying _ssl object. Without either, only the leaf is known.
    for owner in (tls, getattr(tls, "_sslobj", None)):
        method = getattr(owner, "get_unverified_chain", None)
        if callable(method):
            chain = method() or []
            return [
                c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                for c in chain
            ]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ledger_certificates(conn: object, now: str) -> list[ScannedCertificate]:
    """The home's certificates that are still in force (not expired, revoked or
    superseded): the posture is about what can be used today."""
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    rows = conn.execute(
        "SELECT c.pem, c.serial FROM certificates c LEFT JOIN revocations r"
        " ON r.certificate_id = c.id WHERE r.certificate_id IS NULL AND c.not_after >= ?"
        " AND c.status = 'valid' ORDER BY c.id",
        (now,),
    ).fetchall()
    return [
        ScannedCertificate(x509.load_pem_x509_certificate(str(pem).encode()), "ledger", i, "ledger")
        for i, (pem, _) in enumerate(rows)
    ]
