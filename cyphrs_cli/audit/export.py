"""Audit export bundles: registers, events, CRLs, an HTML report, a signed manifest.

Layout of a bundle directory::

    certificates.csv / certificates.jsonl   certificate register (as of the window's end)
    keys.csv / keys.jsonl                   CA key register
    events.jsonl                            the window's events with their chain hashes
    timelines/N-KIND.json / .csv            with ``--timeline``: one scope's timeline
    ca/ALIAS.pem                            CA certificates, for offline verification
    crls/ALIAS.crl.pem                      the newest CRL per CA issued before the window's end
    report.html                             self-contained reviewer report
    manifest.json                           SHA-256 of every file above, counts, window
    checkpoint.json                         signed ledger checkpoint taken at export
    signature.json                          signature over manifest and checkpoint

Everything up to ``manifest.json`` is a pure function of the ledger and the window, so two
exports of the same window are byte-identical there; the checkpoint and signature record
when the export was made.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import ConflictError, InvalidInputError, StorageError
from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, ensure_private_dir
from cyphrs_cli.ledger.events import (
    LedgerEvent,
    append_event,
    canonical_json,
    event_body,
    rfc3339,
    sha256_hex,
)
from cyphrs_cli.ledger.queries import REGISTER_COLUMNS, register_in_window
from cyphrs_cli.safe_text import csv_safe

if TYPE_CHECKING:
    from cyphrs_cli.audit.checkpoint import TrustAnchor
    from cyphrs_cli.audit.report_sections import ReportExtras
    from cyphrs_cli.ca.models import Issuer
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.ledger.verify import HomeFacts

KEY_COLUMNS = (
    "name",
    "role",
    "parent",
    "subject",
    "ski",
    "key_uri",
    "key_storage",
    "key_algorithm",
    "key_generated_in",
    "key_attributes",
    "trust_domain",
    "activated_at",
    "certificate_serial",
    "certificate_not_after",
)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(canonical_json(r) + b"\n" for r in rows)


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    # CRLF records (RFC 4180 sec. 2): the writer then quotes any cell holding a CR or LF, so
    # a value can never split or forge a row (with "\n" a bare CR went out unquoted).
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        # csv_safe: every text cell is neutralised against spreadsheet formulas (OWASP).
        writer.writerow(
            [
                csv_safe(";".join(map(str, v)))
                if isinstance(v, list)
                else csv_safe(json.dumps(v, sort_keys=True))
                if isinstance(v, dict)
                else ""
                if v is None
                else csv_safe(v)
                if isinstance(v, str)
                else v
                for v in (row[c] for c in columns)
            ]
        )
    return buffer.getvalue().encode()


def records_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> bytes:
    """Any table as RFC 4180 CSV with formula-safe cells (``scan --csv`` uses it too)."""
    return _csv(rows, columns)


def register_csv(certificates: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> bytes:
    """The certificate register as CSV (``list --csv`` and exports share it); ``extra``
    columns follow the register's own (``list --valid-at``'s point-in-time fields)."""
    return _csv(certificates, REGISTER_COLUMNS + extra)


TIMELINE_COLUMNS = (
    "seq",
    "at",
    "type",
    "actor",
    "host",
    "outcome",
    "target",
    "serial",
    "spiffe_id",
    "summary",
    "chain_ok",
    "hash",
)


def timeline_csv(events: list[dict[str, Any]]) -> bytes:
    """A timeline's events as CSV (``timeline --csv`` and exports share it)."""
    return _csv(events, TIMELINE_COLUMNS)


def key_register(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT a.*, p.name AS parent_name, c.serial AS cert_serial, c.not_after AS cert_not_after"
        " FROM authorities a LEFT JOIN authorities p ON p.id = a.parent_id"
        " LEFT JOIN certificates c ON c.id = a.certificate_id ORDER BY a.id"
    )
    return [
        {
            "name": r["name"],
            "role": r["role"],
            "parent": r["parent_name"],
            "subject": r["subject"],
            "ski": r["ski"],
            "key_uri": shown_key_uri(r["key_uri"]),
            "key_storage": r["key_storage"],
            "key_algorithm": r["key_algorithm"],
            "key_generated_in": r["key_generated_in"],
            "key_attributes": json.loads(r["key_attributes"]),
            "trust_domain": r["trust_domain"],
            "activated_at": r["created_at"],
            "certificate_serial": r["cert_serial"],
            "certificate_not_after": r["cert_not_after"],
        }
        for r in rows
    ]


def events_in_window(
    conn: sqlite3.Connection, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM events WHERE at >= ? AND at < ? ORDER BY seq",
        (rfc3339(since), rfc3339(until)),
    )
    return [{**event_body(r), "prev_hash": r["prev_hash"], "hash": r["hash"]} for r in rows]


def _latest_crls(conn: sqlite3.Connection, until: datetime) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.name, c.pem FROM crls c JOIN authorities a ON a.id = c.authority_id"
        " WHERE c.pem IS NOT NULL AND c.this_update < ? AND c.number = ("
        "   SELECT max(number) FROM crls x WHERE x.authority_id = c.authority_id"
        "   AND x.pem IS NOT NULL AND x.this_update < ?)",
        (rfc3339(until), rfc3339(until)),
    )
    return {r["name"]: r["pem"] for r in rows}


def _fingerprint_of(pem: str) -> str:
    from cryptography import x509

    from cyphrs_cli.ca.issuance import fingerprint

    return fingerprint(x509.load_pem_x509_certificate(pem.encode()))


def shown_key_uri(uri: str) -> str:
    """A key URI as registers and reports show it: a ``pin-source`` names where a secret
    lives, which an export must not disclose, so its value is replaced."""
    import re

    return re.sub(r"(?i)(pin-source=)[^&]*", r"\1(withheld)", uri)


def _ca_certificates(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.name, c.pem FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
    )
    return {r["name"]: r["pem"] for r in rows}


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    checkpoint: dict[str, Any]


def build_bundle_files(
    conn: sqlite3.Connection,
    since: datetime,
    until: datetime,
    verification: dict[str, Any],
    extras: ReportExtras | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every deterministic file of the bundle, and the counts for the manifest."""
    from cyphrs_cli.audit.report import render_report

    certificates = register_in_window(conn, since, until)
    keys = key_register(conn)
    events = events_in_window(conn, since, until)
    files: dict[str, bytes] = {
        "certificates.csv": register_csv(certificates),
        "certificates.jsonl": _jsonl(certificates),
        "keys.csv": _csv(keys, KEY_COLUMNS),
        "keys.jsonl": _jsonl(keys),
        "events.jsonl": _jsonl(events),
    }
    for name, pem in sorted(_ca_certificates(conn).items()):
        files[f"ca/{name}.pem"] = pem.encode()
    crls = _latest_crls(conn, until)
    for name, pem in sorted(crls.items()):
        files[f"crls/{name}.crl.pem"] = pem.encode()
    counts = _counts(certificates, events, keys)
    ca_pems = _ca_certificates(conn)
    roots = {
        k["name"]: _fingerprint_of(ca_pems[k["name"]])
        for k in keys
        if k["role"] == "root" and k["name"] in ca_pems
    }
    files["report.html"] = render_report(
        root_fingerprints=roots,
        since=since,
        until=until,
        certificates=certificates,
        keys=keys,
        events=events,
        counts=counts,
        verification=verification,
        crls=crls,
        conn=conn,
        extras=extras,
    )
    return files, counts


def _counts(
    certificates: list[dict[str, Any]], events: list[dict[str, Any]], keys: list[dict[str, Any]]
) -> dict[str, Any]:
    def tally(field: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for cert in certificates:
            out[cert[field]] = out.get(cert[field], 0) + 1
        return dict(sorted(out.items()))

    by_type: dict[str, int] = {}
    for event in events:
        by_type[event["type"]] = by_type.get(event["type"], 0) + 1
    return {
        "certificates": len(certificates),
        "certificates_by_status": tally("status"),
        "certificates_by_profile": tally("profile"),
        "ca_keys": len(keys),
        "events": len(events),
        "events_by_type": dict(sorted(by_type.items())),
        "revocations": sum(1 for c in certificates if c["status"] == "revoked"),
        "policy_denials": by_type.get("policy.denied", 0),
    }


def export_bundle(
    ledger: Ledger,
    signer: Issuer,
    out_dir: Path,
    since: datetime,
    until: datetime,
    *,
    force: bool,
    allow_unverified: bool = False,
    anchor: TrustAnchor | None = None,
    home: HomeFacts | None = None,
    extras: ReportExtras | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> ExportResult:
    """Write a bundle for [since, until) to ``out_dir`` and record the export.

    A ledger that does not verify is refused before anything is signed or written: a
    signed bundle of tampered records would lend them the CA's signature. With
    ``allow_unverified`` the bundle is made for forensics, marked ``ledger_verified:
    false`` with the problems listed, and ``verify-export`` rejects it. ``extra_files``
    (timelines) join the bundle and its manifest.
    """
    from cyphrs_cli.audit.checkpoint import create_checkpoint
    from cyphrs_cli.ca.signing import sign_document
    from cyphrs_cli.ledger.verify import verify_ledger

    if until <= since:
        raise InvalidInputError("the export window is empty: --until must be after --since")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConflictError(f"{out_dir} is not empty", hint="use --force or another directory")
    verification = verify_ledger(ledger.conn, anchor=anchor, home=home).to_json()
    if not verification["ok"] and not allow_unverified:
        problems = verification["problems"]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StorageError(
            f"the ledger does not verify, nothing exported: {problems[0]}{more}",
            hint="run 'cyphrs audit verify'; --allow-unverified exports a marked bundle",
        )
    files, counts = build_bundle_files(ledger.conn, since, until, verification, extras)
    files.update(extra_files or {})
    manifest = {
        "schema": "cyphrs.audit-manifest/v1",
        "window": {"since": rfc3339(since), "until": rfc3339(until)},
        "counts": counts,
        "ledger_verified": verification["ok"],
        "ledger_problems": verification["problems"],
        "checkpoint_signatures_verified": verification["checkpoint_signatures_verified"],
        "files": {
            name: {"sha256": sha256_hex(data), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    checkpoint = create_checkpoint(ledger, signer)
    checkpoint_bytes = json.dumps(checkpoint, indent=2, sort_keys=True).encode() + b"\n"
    assert signer.certificate is not None
    from cryptography.hazmat.primitives import serialization

    signed = {
        "manifest_sha256": sha256_hex(manifest_bytes),
        "checkpoint_sha256": sha256_hex(checkpoint_bytes),
        "authority": signer.name,
    }
    signature = {
        "schema": "cyphrs.audit-signature/v1",
        **signed,
        "signature": sign_document(signer.signer, canonical_json(signed)),
        "certificate": signer.certificate.public_bytes(serialization.Encoding.PEM).decode(),
    }
    files["manifest.json"] = manifest_bytes
    files["checkpoint.json"] = checkpoint_bytes
    files["signature.json"] = json.dumps(signature, indent=2, sort_keys=True).encode() + b"\n"
    ensure_private_dir(out_dir)
    for name, data in files.items():
        path = out_dir / name
        ensure_private_dir(path.parent)
        atomic_write(path, data, mode=PUBLIC_FILE)
    with ledger.transaction() as conn:
        append_event(
            conn,
            LedgerEvent(
                type="audit.exported",
                target=f"window:{rfc3339(since)}/{rfc3339(until)}",
                details={
                    "manifest_sha256": signed["manifest_sha256"],
                    "directory": str(out_dir),
                    "counts": counts,
                    "checkpoint_seq": checkpoint["seq"],
                },
            ),
        )
    return ExportResult(out_dir, manifest, checkpoint)


def write_archive(directory: Path, archive: Path) -> str:
    """A reproducible ``.tar.gz`` of a bundle (sorted names, zeroed times and owners);
    returns its SHA-256, which a reviewer can note down on receipt."""
    import gzip
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{directory.name}/{path.relative_to(directory).as_posix()}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    compressed = gzip.compress(buffer.getvalue(), mtime=0)
    atomic_write(archive, compressed, mode=PUBLIC_FILE)
    return sha256_hex(compressed)


def extract_archive(archive: Path, target: Path) -> Path:
    """Unpack a bundle archive safely: one top directory, regular files and directories
    only, no absolute or climbing names; anything else is invalid input (exit 3)."""
    import tarfile
    import zlib

    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            tops = set()
            for member in members:
                parts = Path(member.name).parts
                if (
                    not parts
                    or member.name.startswith(("/", "\\"))
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise InvalidInputError(
                        f"{archive}: refusing archive member {member.name!r}"
                        " (absolute, climbing, a link or a special file)"
                    )
                tops.add(parts[0])
            if len(tops) != 1:
                raise InvalidInputError(f"{archive}: not a cyphrs bundle archive")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidInputError(f"{archive}: unreadable archive ({exc})") from exc
    top = target / tops.pop()
    if not top.is_dir():
        raise InvalidInputError(f"{archive}: not a cyphrs bundle archive")
    return top
