"""``audit verify-export``: check a bundle offline, with nothing but the bundle and a
trust anchor the reviewer chose.

The anchor is the root certificate the reviewer trusts (``--root``), or its fingerprint
(``--root-fingerprint``, matched against the bundle's ``ca/`` certificates). Trusting the
bundle's own root proves only that the bundle is self-consistent, so it happens only when
asked for (``--trust-bundle-root``) and the result says so.

A bundle that is not well-formed (missing files, unreadable or mistyped JSON, paths
outside the bundle) is invalid input (exit 3); a well-formed bundle whose content does
not verify is a check not met (exit 10).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.errors import InvalidInputError
from cyphrs_cli.ledger.events import EVENT_BODY_FIELDS, canonical_json, chain_hash, sha256_hex

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.audit.checkpoint import TrustAnchor

_SIGNATURE_FILES = {"manifest.json", "checkpoint.json", "signature.json"}
SELF_TRUST_SOURCE = "bundle root (self-trusted: --trust-bundle-root)"


def _malformed(bundle: Path, what: str) -> InvalidInputError:
    return InvalidInputError(f"{bundle}: not a well-formed cyphrs bundle ({what})")


def _read(bundle: Path, name: str) -> bytes:
    path = bundle / name
    if path.is_symlink() or not path.is_file():
        raise _malformed(bundle, f"{name} is missing")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _malformed(bundle, f"{name} is unreadable: {exc}") from exc


def _json_object(bundle: Path, name: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _malformed(bundle, f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _malformed(bundle, f"{name} is not a JSON object")
    return value


def _check_manifest_types(bundle: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _malformed(bundle, "manifest.json has no file list")
    for name, meta in files.items():
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("sha256"), str)
            or not isinstance(meta.get("bytes"), int)
        ):
            raise _malformed(bundle, f"manifest.json entry {name!r} is malformed")
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name in _SIGNATURE_FILES:
            raise _malformed(bundle, f"manifest.json lists a path outside the bundle: {name!r}")
    if not isinstance(manifest.get("counts"), dict) or not isinstance(manifest.get("window"), dict):
        raise _malformed(bundle, "manifest.json lacks counts or window")
    if not isinstance(manifest.get("ledger_verified"), bool):
        raise _malformed(bundle, "manifest.json lacks ledger_verified")
    return files


def _bundle_certificates(bundle: Path, listed: dict[str, Any]) -> list[x509.Certificate]:
    from cryptography import x509

    pool: list[x509.Certificate] = []
    for name in sorted(listed):
        if name.startswith("ca/"):
            try:
                pool += x509.load_pem_x509_certificates(_read(bundle, name))
            except ValueError as exc:
                raise _malformed(bundle, f"{name} is not a readable certificate") from exc
    return pool


def _anchors(
    anchor: TrustAnchor | None,
    trust_bundle_root: bool,
    pool: list[x509.Certificate],
    problems: list[str],
) -> tuple[list[x509.Certificate], dict[str, Any] | None]:
    """The certificates to validate against, and how the output names the anchor."""
    from cyphrs_cli.audit.checkpoint import fingerprint

    if anchor is not None:
        pinned = anchor.resolve(pool)
        if pinned is None:
            problems.append(
                f"no CA certificate in the bundle has the pinned fingerprint {anchor.fingerprint}"
            )
            return [], anchor.to_json()
        return [pinned], anchor.to_json()
    assert trust_bundle_root
    roots = [c for c in pool if c.subject == c.issuer]
    if len(roots) != 1:
        problems.append(f"the bundle holds {len(roots)} root certificates; pin one with --root")
        return [], {"source": SELF_TRUST_SOURCE, "fingerprint": None}
    return roots, {"source": SELF_TRUST_SOURCE, "fingerprint": fingerprint(roots[0])}


def _time(text: Any) -> datetime | None:
    from cyphrs_cli.times import parse_time

    if not isinstance(text, str):
        return None
    try:
        return parse_time(text)
    except InvalidInputError:
        return None


def verify_bundle(
    bundle: Path, anchor: TrustAnchor | None, *, trust_bundle_root: bool = False
) -> dict[str, Any]:
    """Returns {"ok", "problems", "files_checked", "window", "events_checked", "anchor"};
    raises ``InvalidInputError`` for a bundle that is not well-formed."""
    from cryptography import x509

    from cyphrs_cli.audit.checkpoint import (
        TrustAnchor,
        checkpoint_problem,
        fingerprint,
        path_problem,
    )
    from cyphrs_cli.ca.signing import verify_document

    if anchor is None and not trust_bundle_root:
        raise ValueError("verify_bundle needs an anchor or explicit self-trust")
    problems: list[str] = []
    manifest_bytes = _read(bundle, "manifest.json")
    checkpoint_bytes = _read(bundle, "checkpoint.json")
    signature_bytes = _read(bundle, "signature.json")
    manifest = _json_object(bundle, "manifest.json", manifest_bytes)
    checkpoint = _json_object(bundle, "checkpoint.json", checkpoint_bytes)
    signature = _json_object(bundle, "signature.json", signature_bytes)
    listed = _check_manifest_types(bundle, manifest)
    signed_fields = (
        "manifest_sha256",
        "checkpoint_sha256",
        "authority",
        "signature",
        "certificate",
    )
    if not all(isinstance(signature.get(k), str) for k in signed_fields):
        raise _malformed(bundle, "signature.json lacks a field or has one of the wrong type")

    for name, meta in sorted(listed.items()):
        data = _read(bundle, name)
        if sha256_hex(data) != meta["sha256"] or len(data) != meta["bytes"]:
            problems.append(f"{name} was modified (SHA-256 differs from the manifest)")
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if not p.is_dir()}
    for extra in sorted(present - set(listed) - _SIGNATURE_FILES):
        problems.append(f"{extra} is not listed in the manifest")
    if manifest["ledger_verified"] is not True:
        problems.append(
            "the bundle was exported from a ledger that did not verify (ledger_verified: false)"
        )

    if signature["manifest_sha256"] != sha256_hex(manifest_bytes):
        problems.append("manifest.json does not match signature.json")
    if signature["checkpoint_sha256"] != sha256_hex(checkpoint_bytes):
        problems.append("checkpoint.json does not match signature.json")
    signed = {k: signature[k] for k in ("manifest_sha256", "checkpoint_sha256", "authority")}
    try:
        signer = x509.load_pem_x509_certificate(signature["certificate"].encode())
    except ValueError as exc:
        raise _malformed(bundle, "signature.json has no readable signer certificate") from exc
    if not verify_document(signer, canonical_json(signed), signature["signature"]):
        problems.append("signature.json: the signature does not verify")

    pool = _bundle_certificates(bundle, listed)
    anchors, anchor_json = _anchors(anchor, trust_bundle_root, pool, problems)
    at = _time(checkpoint.get("at"))
    if at is None:
        problems.append("checkpoint.json has no readable time; nothing could be anchored")
        anchors = []
    for root in anchors:
        assert at is not None
        problem = path_problem(signer, pool, root, at)
        if problem is not None:
            problems.append(
                f"signature.json: the signing certificate does not chain to the anchor: {problem}"
            )
        problem = checkpoint_problem(
            checkpoint, TrustAnchor(fingerprint(root), "pinned", root), pool
        )
        if problem is not None:
            problems.append(f"checkpoint.json: {problem}")

    events_checked = 0
    previous: dict[str, Any] | None = None
    events_data = _read(bundle, "events.jsonl") if "events.jsonl" in listed else b""
    for number, line in enumerate(events_data.splitlines(), start=1):
        try:
            event = json.loads(line)
            content = {k: event[k] for k in EVENT_BODY_FIELDS}
            intact = chain_hash(event["prev_hash"], content) == event["hash"]
            seq = event["seq"]
            if not isinstance(seq, int):
                raise TypeError("seq")
        except (
            json.JSONDecodeError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            ValueError,
            RecursionError,
        ):
            problems.append(f"events.jsonl: line {number} is not a well-formed event")
            break
        events_checked += 1
        if not intact:
            problems.append(f"events.jsonl: event seq {seq} does not match its hash")
            break
        if seq == checkpoint.get("seq") and event["hash"] != checkpoint.get("head_hash"):
            problems.append(f"events.jsonl: event seq {seq} differs from the checkpointed head")
        follows = previous is not None and seq == previous["seq"] + 1
        if follows and previous is not None and event["prev_hash"] != previous["hash"]:
            problems.append(f"events.jsonl: event seq {seq} does not link to its predecessor")
            break
        previous = event
    counts = manifest["counts"]
    if counts.get("events") != events_checked:
        problems.append("events.jsonl: the number of events differs from the manifest")
    if "certificates.jsonl" in listed:
        lines = _read(bundle, "certificates.jsonl").count(b"\n")
        if counts.get("certificates") != lines:
            problems.append(
                "certificates.jsonl: the number of certificates differs from the manifest"
            )
    window = manifest["window"]
    return {
        "ok": not problems,
        "problems": problems,
        "files_checked": len(listed),
        "events_checked": events_checked,
        "window": {"since": str(window.get("since")), "until": str(window.get("until"))},
        "anchor": anchor_json,
    }
