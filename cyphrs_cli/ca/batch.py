"""Batch issuance: many leaf orders, one issuer unlock, each certificate recorded on its own.

A batch file is TOML (``[[certificate]]`` tables) or JSON Lines (one object per line).
Items go through the one issuance path in order; each is committed to the ledger before
it is delivered, so a failure at item N never loses items before it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ca.orders import LeafOrder
from cyphrs_cli.errors import CyphrsError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.models import IssuedCertificate, Issuer
    from cyphrs_cli.ledger.db import Ledger

_LIST_FIELDS = ("permissions", "dns", "ip")
_TEXT_FIELDS = (
    "profile",
    "name",
    "workflow",
    "instance",
    "spiffe_id",
    "cn",
    "ttl",
    "key_type",
    "csr",
    "requester",
    "out_dir",
)
MAX_ITEMS = 100_000


@dataclass(frozen=True)
class BatchItem:
    index: int  # 1-based, as people count lines and tables
    name: str
    order: LeafOrder
    out_dir: Path | None


@dataclass
class BatchOutcome:
    item: BatchItem
    issued: IssuedCertificate | None = None
    private_key: CertificateIssuerPrivateKeyTypes | None = None
    error: CyphrsError | None = None


def _records(data: bytes, source: str) -> list[dict[str, Any]]:
    text = data.decode("utf-8", errors="strict")
    stripped = text.lstrip()
    if stripped.startswith("{") or not stripped:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{source}: line {number} is not JSON ({exc.msg})") from exc
            if not isinstance(value, dict):
                raise InvalidInputError(f"{source}: line {number} is not a JSON object")
            records.append(value)
        return records
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{source}: neither JSON Lines nor TOML ({exc})") from exc
    items = document.get("certificate")
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: a TOML batch lists [[certificate]] tables")
    return items


def parse_batch(
    data: bytes, *, source: str, default_profile: str | None, base_dir: Path
) -> list[BatchItem]:
    """Validate the whole file before anything is issued; errors name the item."""
    try:
        records = _records(data, source)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text") from exc
    if not records:
        raise InvalidInputError(f"{source}: the batch is empty")
    if len(records) > MAX_ITEMS:
        raise InvalidInputError(f"{source}: more than {MAX_ITEMS} items; split the batch")
    items, names = [], set()
    for index, record in enumerate(records, start=1):
        where = f"{source}: item {index}"
        unknown = set(record) - set(_LIST_FIELDS) - set(_TEXT_FIELDS)
        if unknown:
            raise InvalidInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for key in _TEXT_FIELDS:
            if key in record and not isinstance(record[key], str):
                raise InvalidInputError(f"{where}: {key} must be a string")
        for key in _LIST_FIELDS:
            value = record.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidInputError(f"{where}: {key} must be a list of strings")
        profile = record.get("profile", default_profile)
        if profile is None:
            raise InvalidInputError(f"{where}: no profile (set it per item or on the command line)")
        name = record.get("name") or f"{index:05d}"
        if "/" in name or name in (".", "..") or name in names:
            raise InvalidInputError(f"{where}: name {name!r} must be unique and contain no '/'")
        names.add(name)
        csr_pem = None
        if "csr" in record:
            csr_path = base_dir / record["csr"]
            try:
                csr_pem = csr_path.read_bytes()
            except OSError as exc:
                raise InvalidInputError(
                    f"{where}: cannot read CSR {csr_path} ({exc.strerror})"
                ) from exc
        order = LeafOrder(
            profile=profile,
            common_name=record.get("cn"),
            dns_names=tuple(record.get("dns", [])),
            ip_addresses=tuple(record.get("ip", [])),
            spiffe_id=record.get("spiffe_id"),
            workflow=record.get("workflow"),
            instance=record.get("instance"),
            permissions=tuple(record.get("permissions", [])),
            requester=record.get("requester"),
            ttl=record.get("ttl"),
            key_type=record.get("key_type"),
            csr_pem=csr_pem,
            csr_source=f"{where} CSR",
        )
        out_dir = base_dir / record["out_dir"] if "out_dir" in record else None
        items.append(BatchItem(index, name, order, out_dir))
    return items


def issue_batch(
    ledger: Ledger,
    issuer: Issuer,
    profiles_dir: Path | None,
    items: list[BatchItem],
    *,
    deliver: Callable[[BatchOutcome], None],
    report: Callable[[BatchOutcome], None],
    keep_going: bool,
) -> list[BatchOutcome]:
    """Issue item by item. ``deliver`` runs after each commit (writes files; its failure is
    the item's failure); ``report`` runs for every item, issued or not."""
    from cyphrs_cli.ca.issuance import issue_leaf
    from cyphrs_cli.ca.orders import prepare_request
    from cyphrs_cli.profiles.model import load_profiles

    profiles = load_profiles(profiles_dir)
    outcomes = []
    for item in items:
        outcome = BatchOutcome(item)
        try:
            profile = profiles.get(item.order.profile)
            if profile is None:
                raise NotFoundError(f"unknown profile {item.order.profile!r}")
            request, outcome.private_key = prepare_request(item.order, profile, issuer.trust_domain)
            outcome.issued = issue_leaf(ledger, issuer, profile, request)
            deliver(outcome)
        except CyphrsError as error:
            outcome.error = error
        outcomes.append(outcome)
        report(outcome)
        if outcome.error is not None and not keep_going:
            break
    return outcomes
