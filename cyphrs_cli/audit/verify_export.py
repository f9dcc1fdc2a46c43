"""``audit verify-export``: check a bundle offline, with nothing but the bundle (and,
optionally, the root certificate the reviewer trusts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ledger.events import canonical_json, chain_hash, sha256_hex

if TYPE_CHECKING:
    from cryptography import x509

_SIGNATURE_FILES = {"manifest.json", "checkpoint.json", "signature.json"}
_EVENT_FIELDS = (
    "seq",
    "at",
    "type",
    "actor",
    "host",
    "outcome",
    "target",
    "params_hash",
    "details",
)


def verify_bundle(bundle: Path, trusted_root: x509.Certificate | None) -> dict[str, Any]:
    """Returns {"ok", "problems", "files_checked", "window", "events_checked"}."""
    from cryptography import x509

    from cyphrs_cli.ca.chains import chains_to
    from cyphrs_cli.ca.signing import verify_document

    problems: list[str] = []

    def read(name: str) -> bytes | None:
        try:
            return (bundle / name).read_bytes()
        except OSError:
            problems.append(f"{name} is missing")
            return None

    manifest_bytes = read("manifest.json")
    checkpoint_bytes = read("checkpoint.json")
    signature_bytes = read("signature.json")
    if manifest_bytes is None or checkpoint_bytes is None or signature_bytes is None:
        return {"ok": False, "problems": problems, "files_checked": 0}
    try:
        manifest = json.loads(manifest_bytes)
        checkpoint = json.loads(checkpoint_bytes)
        signature = json.loads(signature_bytes)
    except json.JSONDecodeError as exc:
        return {"ok": False, "problems": [f"unreadable JSON: {exc}"], "files_checked": 0}

    listed = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    for name, meta in sorted(listed.items()):
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"manifest lists a path outside the bundle: {name}")
            continue
        data = read(name)
        if data is not None and (sha256_hex(data) != meta["sha256"] or len(data) != meta["bytes"]):
            problems.append(f"{name} was modified (SHA-256 differs from the manifest)")
    present = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    for extra in sorted(present - set(listed) - _SIGNATURE_FILES):
        problems.append(f"{extra} is not listed in the manifest")

    if signature.get("manifest_sha256") != sha256_hex(manifest_bytes):
        problems.append("manifest.json does not match signature.json")
    if signature.get("checkpoint_sha256") != sha256_hex(checkpoint_bytes):
        problems.append("checkpoint.json does not match signature.json")
    signed = {k: signature.get(k) for k in ("manifest_sha256", "checkpoint_sha256", "authority")}
    try:
        signer = x509.load_pem_x509_certificate(signature["certificate"].encode())
        if not verify_document(signer, canonical_json(signed), signature["signature"]):
            problems.append("signature.json: the signature does not verify")
    except (KeyError, ValueError):
        problems.append("signature.json: no usable signer certificate")
        signer = None
    body = {k: v for k, v in checkpoint.items() if k not in ("signature", "certificate")}
    try:
        cp_cert = x509.load_pem_x509_certificate(checkpoint["certificate"].encode())
        if not verify_document(cp_cert, canonical_json(body), checkpoint["signature"]):
            problems.append("checkpoint.json: the signature does not verify")
    except (KeyError, ValueError):
        problems.append("checkpoint.json: no usable signer certificate")

    if signer is not None:
        pool = []
        for name in listed:
            if name.startswith("ca/"):
                try:
                    pool += x509.load_pem_x509_certificates((bundle / name).read_bytes())
                except (OSError, ValueError):
                    problems.append(f"{name} is not a readable certificate")
        roots = [c for c in pool if c.subject == c.issuer]
        anchors = [trusted_root] if trusted_root is not None else roots
        if not chains_to(signer, pool, anchors):
            problems.append(
                "the signing certificate does not chain to "
                + ("the trusted root" if trusted_root is not None else "a root in the bundle")
            )

    events_checked = 0
    previous: dict[str, Any] | None = None
    events_data = (bundle / "events.jsonl").read_bytes() if "events.jsonl" in listed else b""
    for number, line in enumerate(events_data.splitlines(), start=1):
        try:
            event = json.loads(line)
            content = {k: event[k] for k in _EVENT_FIELDS}
            intact = chain_hash(event["prev_hash"], content) == event["hash"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            problems.append(f"events.jsonl: line {number} is not a well-formed event")
            break
        events_checked += 1
        if not intact:
            problems.append(f"events.jsonl: event seq {event['seq']} does not match its hash")
            break
        follows = previous is not None and event["seq"] == previous["seq"] + 1
        if follows and previous is not None and event["prev_hash"] != previous["hash"]:
            problems.append(
                f"events.jsonl: event seq {event['seq']} does not link to its predecessor"
            )
            break
        previous = event
    counts = manifest.get("counts", {})
    if counts.get("events") != events_checked:
        problems.append("events.jsonl: the number of events differs from the manifest")
    if "certificates.jsonl" in listed:
        lines = (bundle / "certificates.jsonl").read_bytes().count(b"\n")
        if counts.get("certificates") != lines:
            problems.append(
                "certificates.jsonl: the number of certificates differs from the manifest"
            )
    return {
        "ok": not problems,
        "problems": problems,
        "files_checked": len(listed),
        "events_checked": events_checked,
        "window": manifest.get("window"),
    }
