"""Batch issuance: many leaf orders, one issuer unlock, each certificate recorded on its own.

A batch file is TOML (``[[certificate]]`` tables) or JSON Lines (one object per line).
Three steps, kept apart so that each can be reused and reasoned about on its own:

1. ``parse_batch``: the file's shape (fields, types, names, ``out_dir`` syntax);
2. ``validate_batch``: every item fully checked with no side effect and no key pair
   generated (names, TTL, key type, CSR signature, profile, the policy decision and the
   plan against the issuer's facts, duplicates, confined and unique output directories),
   so one bad item refuses the whole batch before the first signature;
3. ``issue_batch``: item by item through the one issuance path, each committed to the
   ledger before it is delivered; a delivery that fails after the commit is recorded as a
   ``certificate.delivery_failed`` event, so no recorded certificate is left unexplained.
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ca.delivery import (
    check_confined_outputs,
    check_path_component,
    confine_output,
    output_key,
    relative_output_path,
)
from cyphrs_cli.ca.orders import LeafOrder, new_instance_id
from cyphrs_cli.errors import (
    CyphrsError,
    InvalidInputError,
    NotFoundError,
    PolicyDenied,
    StorageError,
    UsageError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificatePublicKeyTypes,
    )

    from cyphrs_cli.ca.models import CertificatePlan, IssuedCertificate, Issuer, LeafRequest
    from cyphrs_cli.keystore.base import KeySpec
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.policy.decide import PolicyIssuer
    from cyphrs_cli.profiles.model import Profile

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
MAX_NAME = 128  # characters in an item name (it is also the default directory name)


@dataclass(frozen=True)
class BatchItem:
    index: int  # 1-based, as people count lines and tables
    name: str
    order: LeafOrder
    # Relative to --out-dir; validate_batch sets it (to the name when not given) whenever
    # there is an --out-dir, and leaves it None for stdout. The absolute target is not kept:
    # write_confined walks the same components again without following links.
    out_dir: PurePosixPath | None


@dataclass
class BatchOutcome:
    item: BatchItem
    issued: IssuedCertificate | None = None
    private_key: CertificateIssuerPrivateKeyTypes | None = None
    error: CyphrsError | None = None


@dataclass
class BatchResult:
    """Counts, and only the failed outcomes: 100k issued items are not kept in memory."""

    items: int
    attempted: int = 0
    issued: int = 0
    failures: list[BatchOutcome] = field(default_factory=list)


class DeliveryFailed(StorageError):
    """A recorded certificate whose files could not be written (recorded as such)."""


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
            except RecursionError as exc:  # a deeply nested JSON "bomb"
                raise InvalidInputError(f"{source}: line {number} nests too deeply") from exc
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


def _check_strings(value: Any, where: str) -> None:
    """No NUL and no lone surrogate anywhere: neither survives the kernel, a DER encoder
    or a UTF-8 writer, and each would otherwise fail only after an item was signed."""
    values = value if isinstance(value, list) else [value]
    for text in values:
        if "\x00" in text:
            raise InvalidInputError(f"{where} contains a NUL byte")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(f"{where} is not valid UTF-8 (lone surrogate)") from exc


def parse_batch(
    data: bytes, *, source: str, default_profile: str | None, base_dir: Path
) -> list[BatchItem]:
    """The file's shape: fields, types, names and ``out_dir`` syntax; errors name the item.

    An agent item without an instance gets its random instance here, once, so that what
    ``validate_batch`` checked is exactly what ``issue_batch`` signs.
    """
    try:
        records = _records(data, source)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text") from exc
    if not records:
        raise InvalidInputError(f"{source}: the batch is empty")
    if len(records) > MAX_ITEMS:
        raise InvalidInputError(f"{source}: more than {MAX_ITEMS} items; split the batch")
    items = []
    names: dict[str, int] = {}
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
        for key, value in record.items():
            _check_strings(value, f"{where}: {key}")
        profile = record.get("profile", default_profile)
        if profile is None:
            raise InvalidInputError(f"{where}: no profile (set it per item or on the command line)")
        name = record.get("name", f"{index:05d}")
        check_path_component(name, f"{where}: name")
        if len(name) > MAX_NAME:
            raise InvalidInputError(f"{where}: name is longer than {MAX_NAME} characters")
        key = output_key(PurePosixPath(name))
        if key in names:
            raise InvalidInputError(
                f"{where}: name {name!r} is already used by item {names[key]}"
                " (names are compared ignoring case)"
            )
        names[key] = index
        out_dir = None
        if "out_dir" in record:
            out_dir = relative_output_path(record["out_dir"], f"{where}: out_dir")
        csr_pem = None
        if "csr" in record:
            csr_path = base_dir / record["csr"]
            try:
                csr_pem = csr_path.read_bytes()
            except OSError as exc:
                raise InvalidInputError(
                    f"{where}: cannot read CSR {csr_path} ({exc.strerror})"
                ) from exc
        workflow, instance = record.get("workflow"), record.get("instance")
        if workflow and instance is None and "spiffe_id" not in record:
            instance = new_instance_id()
        order = LeafOrder(
            profile=profile,
            common_name=record.get("cn"),
            dns_names=tuple(record.get("dns", [])),
            ip_addresses=tuple(record.get("ip", [])),
            spiffe_id=record.get("spiffe_id"),
            workflow=workflow,
            instance=instance,
            permissions=tuple(record.get("permissions", [])),
            requester=record.get("requester"),
            ttl=record.get("ttl"),
            key_type=record.get("key_type"),
            csr_pem=csr_pem,
            csr_source=f"{where} CSR" if csr_pem is not None else "CSR",
        )
        items.append(BatchItem(index, name, order, out_dir))
    return items


class _StandIns:
    """One public key per key type for the pre-pass: the policy decision and the plan need
    a key of the right type, not a fresh pair per item (100k RSA keys would take hours and
    memory). Lives for one ``validate_batch`` call; its keys are never signed."""

    def __init__(self) -> None:
        self._keys: dict[str, CertificatePublicKeyTypes] = {}

    def __call__(self, spec: KeySpec) -> CertificatePublicKeyTypes:
        if spec.name not in self._keys:
            self._keys[spec.name] = spec.generate_software_key().public_key()
        return self._keys[spec.name]


def validate_batch(
    items: list[BatchItem],
    *,
    profiles: dict[str, Profile],
    issuer: PolicyIssuer,
    out_dir: Path | None,
    stdout_ok: bool,
    force: bool,
    source: str = "batch",
    on_denied: Callable[[PolicyDenied, LeafRequest], None] | None = None,
    check_plan: Callable[[CertificatePlan], None] | None = None,
) -> list[BatchItem]:
    """Check every item as the issuance path will, before anything is signed.

    Pure: reads profiles, CSR bytes already loaded and the output tree, writes nothing.
    A policy refusal is handed to ``on_denied`` (the caller records it) and raised;
    ``check_plan`` asks the ledger (read-only) what only it knows, such as an agent
    instance that already holds a valid certificate. Returns
    the items with their output directory (relative to ``out_dir``) set. Raises the first
    error, naming the item. Holds no key pair and keeps nothing per item beyond the item.
    """
    from cyphrs_cli.ca.issuance import plan_leaf
    from cyphrs_cli.ca.orders import prepare_request
    from cyphrs_cli.policy.decide import decide

    stand_in = _StandIns()
    spiffe_ids: dict[str, int] = {}
    targets: dict[str, int] = {}
    checked = []
    for item in items:
        request: LeafRequest | None = None
        try:
            profile = profiles.get(item.order.profile)
            if profile is None:
                raise NotFoundError(f"unknown profile {item.order.profile!r}")
            request, _ = prepare_request(
                item.order, profile, issuer.trust_domain, stand_in=stand_in
            )
            decision = decide(profile, request, issuer)
            plan = plan_leaf(request, profile, issuer, decision)
            if check_plan is not None:
                check_plan(plan)
            if request.spiffe_id is not None:
                first = spiffe_ids.setdefault(request.spiffe_id, item.index)
                if first != item.index:
                    raise InvalidInputError(
                        f"SPIFFE ID {request.spiffe_id} is also item {first}'s"
                        " (one certificate per agent instance)"
                    )
            relative = item.out_dir
            if out_dir is not None:
                relative = relative or PurePosixPath(item.name)
                target = confine_output(out_dir, relative)
                key = output_key(relative)
                first = targets.setdefault(key, item.index)
                if first != item.index:
                    raise InvalidInputError(
                        f"output directory {relative} is also item {first}'s"
                        " (compared ignoring case)"
                    )
                check_confined_outputs(target, with_key=item.order.csr_pem is None, force=force)
            elif relative is not None:
                raise InvalidInputError("out_dir is relative to --out-dir; pass --out-dir")
            elif not stdout_ok:
                raise UsageError("no output directory; pass --out-dir or --json")
        except PolicyDenied as denial:
            if on_denied is not None and request is not None:
                on_denied(denial, request)
            denial.message = f"{source}: item {item.index} ({item.name}): {denial.message}"
            raise
        except CyphrsError as error:
            error.message = f"{source}: item {item.index} ({item.name}): {error.message}"
            raise
        checked.append(item if relative is item.out_dir else replace(item, out_dir=relative))
    return checked


def issue_batch(
    ledger: Ledger,
    issuer: Issuer,
    profiles: dict[str, Profile],
    items: list[BatchItem],
    *,
    deliver: Callable[[BatchOutcome], None],
    report: Callable[[BatchOutcome], None],
    keep_going: bool,
) -> BatchResult:
    """Issue validated items one by one. ``deliver`` runs after each commit (writes files
    or prints); if it fails, a ``certificate.delivery_failed`` event records the serial and
    the reason before the item is reported failed, and the batch stops (a storage failure
    is not an item's fault; ``keep_going`` covers refusals at signing time only).
    ``report`` runs for every attempted item."""
    from cyphrs_cli.ca.issuance import issue_leaf
    from cyphrs_cli.ca.orders import prepare_request

    result = BatchResult(items=len(items))
    for item in items:
        outcome = BatchOutcome(item)
        result.attempted += 1
        try:
            profile = profiles.get(item.order.profile)
            if profile is None:
                raise NotFoundError(f"unknown profile {item.order.profile!r}")
            request, outcome.private_key = prepare_request(item.order, profile, issuer.trust_domain)
            outcome.issued = issue_leaf(ledger, issuer, profile, request)
            try:
                deliver(outcome)
            except CyphrsError as error:
                raise record_delivery_failure(ledger, outcome, error) from error
        except CyphrsError as error:
            outcome.error = error
        outcome.private_key = None  # never hold more than one generated key
        if outcome.error is None:
            result.issued += 1
        else:
            result.failures.append(outcome)
        report(outcome)
        if outcome.error is not None and (
            not keep_going or isinstance(outcome.error, StorageError)
        ):
            break
    return result


def record_delivery_failure(
    ledger: Ledger, outcome: BatchOutcome, error: CyphrsError
) -> CyphrsError:
    """Record why a committed certificate never reached its owner; returns the error to
    raise (exit 8). If even this record cannot be written, say so with the serial."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    issued = outcome.issued
    assert issued is not None
    item = outcome.item
    details = {
        "certificate_id": issued.record_id,
        "serial": issued.serial,
        "fingerprint": issued.fingerprint,
        "batch_item": item.index,
        "name": item.name,
        "out_dir": str(item.out_dir) if item.out_dir is not None else None,
        "reason": error.message,
    }
    try:
        with ledger.transaction() as conn:
            append_event(
                conn,
                LedgerEvent(
                    type="certificate.delivery_failed",
                    target=f"certificate:{issued.serial}",
                    outcome="failure",
                    details=details,
                ),
            )
    except CyphrsError as record_error:
        return DeliveryFailed(
            f"certificate {issued.serial} was recorded but not delivered ({error.message});"
            f" recording that failed too: {record_error.message}",
            hint=f"revoke it: cyphrs revoke --serial {issued.serial}",
        )
    return DeliveryFailed(
        f"certificate {issued.serial} was recorded but not delivered: {error.message}"
        " (recorded as certificate.delivery_failed)",
        hint=f"revoke it if its key is lost: cyphrs revoke --serial {issued.serial}",
    )


def pause_point(name: str) -> None:
    """Test hook: with ``CYPHRS_TEST_FAULT=name`` the process stops itself (SIGSTOP) so a
    test can change the file system between validation and signing, then continue it."""
    from cyphrs_cli.ca.issuance import FAULT_ENV

    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
