"""Batch issuance: many leaf orders, one issuer unlock, certificates recorded in groups.

A batch file is TOML (``[[certificate]]`` tables) or JSON Lines (one object per line).
Three steps, kept apart so that each can be reused and reasoned about on its own:

1. ``iter_batch``: the file's shape (fields, types, names, ``out_dir`` syntax), one item
   at a time (JSON Lines streams; a TOML document is parsed whole);
2. ``BatchValidator``: every item fully checked with no side effect and no key pair
   generated (names, TTL, key type, CSR signature, profile, the policy decision and the
   plan against the issuer's facts, duplicates, confined and unique output directories),
   so one bad item refuses the whole batch before the first signature. It keeps only
   8-byte digests per item, so the pre-pass is flat in memory; the items are parsed
   again from the same bytes for issuance (a random agent instance is derived from a
   per-batch secret and the item's index, so both passes see the same one);
3. ``issue_group``: a group of items through the one issuance path
   (``issuance.issue_leaves``), all committed in one transaction before any of them is
   delivered; a delivery that fails after the commit is recorded as a
   ``certificate.delivery_failed`` event, so no recorded certificate is left unexplained.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import signal
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cyphrs_cli.ca.delivery import (
    check_confined_outputs,
    check_path_component,
    confine_output,
    output_key,
    relative_output_path,
)
from cyphrs_cli.ca.orders import LeafOrder
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


class DeliveryFailed(StorageError):
    """A recorded certificate whose files could not be written (recorded as such)."""


def _records(data: bytes, source: str) -> Iterator[dict[str, Any]]:
    """The batch's objects one at a time: JSON Lines are decoded line by line (the
    decoded text is the only copy held); a TOML document is parsed whole."""
    text = data.decode("utf-8", errors="strict")
    stripped = text.lstrip()
    if stripped.startswith("{") or not stripped:
        for number, line in enumerate(io.StringIO(text, newline=None), start=1):
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
            yield value
        return
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{source}: neither JSON Lines nor TOML ({exc})") from exc
    items = document.get("certificate")
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: a TOML batch lists [[certificate]] tables")
    yield from items


def _digest(*parts: str) -> int:
    """An 8-byte digest standing in for a name or path in the duplicate checks: 100k
    items cost 100k small ints, not 100k strings (a false match needs a 64-bit collision)."""
    data = "\x00".join(parts).encode("utf-8", errors="surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def derived_instance(seed: bytes, index: int) -> str:
    """The random instance of an agent item that names none: 64 bits derived from a
    per-batch secret and the item's index, so the pre-pass and the issuing pass (which
    parse the file twice) see the same instance, and no one can predict it."""
    return hmac.new(seed, str(index).encode(), hashlib.sha256).hexdigest()[:16]


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
    data: bytes,
    *,
    source: str,
    default_profile: str | None,
    base_dir: Path,
    seed: bytes | None = None,
) -> list[BatchItem]:
    """``iter_batch`` as a list (for small batches and tests)."""
    return list(
        iter_batch(
            data, source=source, default_profile=default_profile, base_dir=base_dir, seed=seed
        )
    )


def iter_batch(
    data: bytes,
    *,
    source: str,
    default_profile: str | None,
    base_dir: Path,
    seed: bytes | None = None,
) -> Iterator[BatchItem]:
    """The file's shape: fields, types, names and ``out_dir`` syntax; errors name the item.

    An agent item without an instance gets ``derived_instance(seed, index)``: pass the
    same ``seed`` to every pass over one batch so that what the pre-pass checked is
    exactly what is signed. Holds one digest per item name, nothing else per item.
    """
    if seed is None:
        seed = os.urandom(16)
    try:
        yield from _iter_items(data, source, default_profile, base_dir, seed)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text") from exc


def _iter_items(
    data: bytes, source: str, default_profile: str | None, base_dir: Path, seed: bytes
) -> Iterator[BatchItem]:
    names: dict[int, int] = {}
    index = 0
    for index, record in enumerate(_records(data, source), start=1):
        if index > MAX_ITEMS:
            raise InvalidInputError(f"{source}: more than {MAX_ITEMS} items; split the batch")
        yield _item(record, index, source, default_profile, base_dir, seed, names)
    if index == 0:
        raise InvalidInputError(f"{source}: the batch is empty")


def _item(
    record: Any,
    index: int,
    source: str,
    default_profile: str | None,
    base_dir: Path,
    seed: bytes,
    names: dict[int, int],
) -> BatchItem:
    where = f"{source}: item {index}"
    if not isinstance(record, dict):
        raise InvalidInputError(f"{where} is not a table")
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
    first = names.setdefault(_digest(output_key(PurePosixPath(name))), index)
    if first != index:
        raise InvalidInputError(
            f"{where}: name {name!r} is already used by item {first}"
            " (names are compared ignoring case)"
        )
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
        instance = derived_instance(seed, index)
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
    return BatchItem(index, name, order, out_dir)


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


class BatchValidator:
    """Check every item as the issuance path will, before anything is signed.

    Pure: reads profiles, CSR bytes already loaded and the output tree, writes nothing.
    A policy refusal is handed to ``on_denied`` (the caller records it) and raised;
    ``check_plan`` asks the ledger (read-only) what only it knows, such as an agent
    instance that already holds a valid certificate. ``check`` returns the item with its
    output directory (relative to ``out_dir``) set, or raises the item's error, naming it.
    Keeps per item only 8-byte digests (SPIFFE ID, output directory, CSR), never the item.
    """

    def __init__(
        self,
        *,
        profiles: Mapping[str, Profile],
        issuer: PolicyIssuer,
        out_dir: Path | None,
        stdout_ok: bool,
        force: bool,
        source: str = "batch",
        on_denied: Callable[[PolicyDenied, LeafRequest], None] | None = None,
        check_plan: Callable[[CertificatePlan], None] | None = None,
    ) -> None:
        self.profiles, self.issuer, self.out_dir = profiles, issuer, out_dir
        self.stdout_ok, self.force, self.source = stdout_ok, force, source
        self.on_denied, self.check_plan = on_denied, check_plan
        self.count = 0
        self._stand_in = _StandIns()
        self._spiffe_ids: dict[int, int] = {}
        self._targets: dict[int, int] = {}
        self._csrs: dict[int, int] = {}  # item index -> digest of the CSR checked

    def check(self, item: BatchItem) -> BatchItem:
        from cyphrs_cli.ca.issuance import plan_leaf
        from cyphrs_cli.ca.orders import prepare_request
        from cyphrs_cli.policy.decide import decide

        request: LeafRequest | None = None
        try:
            profile = self.profiles.get(item.order.profile)
            if profile is None:
                raise NotFoundError(f"unknown profile {item.order.profile!r}")
            request, _ = prepare_request(
                item.order, profile, self.issuer.trust_domain, stand_in=self._stand_in
            )
            decision = decide(profile, request, self.issuer)
            plan = plan_leaf(request, profile, self.issuer, decision)
            if self.check_plan is not None:
                self.check_plan(plan)
            if request.spiffe_id is not None:
                first = self._spiffe_ids.setdefault(_digest(request.spiffe_id), item.index)
                if first != item.index:
                    raise InvalidInputError(
                        f"SPIFFE ID {request.spiffe_id} is also item {first}'s"
                        " (one certificate per agent instance)"
                    )
            relative = self.output_of(item)
            if self.out_dir is not None:
                assert relative is not None
                target = confine_output(self.out_dir, relative)
                first = self._targets.setdefault(_digest(output_key(relative)), item.index)
                if first != item.index:
                    raise InvalidInputError(
                        f"output directory {relative} is also item {first}'s"
                        " (compared ignoring case)"
                    )
                check_confined_outputs(
                    target, with_key=item.order.csr_pem is None, force=self.force
                )
            elif relative is not None:
                raise InvalidInputError("out_dir is relative to --out-dir; pass --out-dir")
            elif not self.stdout_ok:
                raise UsageError("no output directory; pass --out-dir or --json")
            if item.order.csr_pem is not None:
                self._csrs[item.index] = _digest(item.order.csr_pem.hex())
        except PolicyDenied as denial:
            if self.on_denied is not None and request is not None:
                self.on_denied(denial, request)
            denial.message = f"{self.source}: item {item.index} ({item.name}): {denial.message}"
            raise
        except CyphrsError as error:
            error.message = f"{self.source}: item {item.index} ({item.name}): {error.message}"
            raise
        self.count += 1
        return item if relative is item.out_dir else replace(item, out_dir=relative)

    def output_of(self, item: BatchItem) -> PurePosixPath | None:
        """The item's directory relative to ``out_dir`` (its name unless it names one)."""
        if self.out_dir is None:
            return item.out_dir
        return item.out_dir or PurePosixPath(item.name)

    def same_as_checked(self, item: BatchItem) -> BatchItem:
        """The issuing pass's item with its output directory, refused if its CSR file
        changed since the pre-pass checked it (the issuing pass reads the file again)."""
        if item.order.csr_pem is not None and self._csrs.get(item.index) != _digest(
            item.order.csr_pem.hex()
        ):
            raise InvalidInputError(
                f"{self.source}: item {item.index} ({item.name}): its CSR file changed"
                " after the batch was checked"
            )
        relative = self.output_of(item)
        return item if relative is item.out_dir else replace(item, out_dir=relative)


def validate_batch(items: Iterable[BatchItem], **options: Any) -> list[BatchItem]:
    """``BatchValidator`` over a list (for small batches and tests)."""
    validator = BatchValidator(**options)
    return [validator.check(item) for item in items]


def issue_group(
    ledger: Ledger,
    issuer: Issuer,
    profiles: Mapping[str, Profile],
    items: list[BatchItem],
    *,
    keep_going: bool,
    precheck: Callable[[BatchItem], BatchItem] | None = None,
    deadline: float | None = None,
) -> tuple[list[BatchOutcome], list[BatchItem]]:
    """Generate the keys of one group, then sign and commit it with ``issue_leaves`` (one
    transaction for the group's rows and events). Returns the outcomes of the items
    attempted, in order, and the items left for the next group because ``deadline``
    (``time.monotonic()``) passed while keys were generated (slow RSA keys must not hold
    back the output of a group for minutes). Without ``keep_going`` the first refusal ends
    the group there (items signed before it are still recorded) and the caller stops the
    batch. ``precheck`` maps each item first (the caller's check that it is the item the
    pre-pass checked). Nothing is delivered here: the caller writes or prints only after
    this returns."""
    import time

    from cyphrs_cli.ca.issuance import issue_leaves
    from cyphrs_cli.ca.orders import prepare_request

    outcomes: list[BatchOutcome] = []
    entries: list[tuple[Profile, LeafRequest]] = []
    pending: list[BatchOutcome] = []
    rest: list[BatchItem] = []
    for position, item in enumerate(items):
        if outcomes and deadline is not None and time.monotonic() >= deadline:
            rest = items[position:]
            break
        outcome = BatchOutcome(item)
        outcomes.append(outcome)
        try:
            if precheck is not None:
                outcome.item = item = precheck(item)
            profile = profiles.get(item.order.profile)
            if profile is None:
                raise NotFoundError(f"unknown profile {item.order.profile!r}")
            request, outcome.private_key = prepare_request(item.order, profile, issuer.trust_domain)
        except CyphrsError as error:
            outcome.error = error
            if not keep_going:
                break
            continue
        entries.append((profile, request))
        pending.append(outcome)
    if entries:
        results = issue_leaves(
            ledger,
            issuer,
            entries,
            stop_on_error=not keep_going,
            first_seq=pending[0].item.index,
        )
        for outcome, result in zip(pending, results, strict=True):
            if result is None:
                outcome.error = _NOT_ATTEMPTED
            elif isinstance(result, CyphrsError):
                outcome.error = result
            else:
                outcome.issued = result
            if outcome.error is not None:
                outcome.private_key = None
    return [o for o in outcomes if o.error is not _NOT_ATTEMPTED], rest


_NOT_ATTEMPTED = CyphrsError("not attempted")


def record_delivery_failures(
    ledger: Ledger, failed: list[tuple[BatchOutcome, CyphrsError]]
) -> None:
    """Record, in one transaction, why committed certificates never reached their owners;
    sets each outcome's error to the ``DeliveryFailed`` to report (exit 8). If even this
    record cannot be written, each error says so with its serial."""
    from cyphrs_cli.ledger.events import LedgerEvent, append_event

    record_error: CyphrsError | None = None
    try:
        with ledger.transaction() as conn:
            for outcome, error in failed:
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
                append_event(
                    conn,
                    LedgerEvent(
                        type="certificate.delivery_failed",
                        target=f"certificate:{issued.serial}",
                        outcome="failure",
                        details=details,
                    ),
                )
    except CyphrsError as exc:
        record_error = exc
    for outcome, error in failed:
        serial = outcome.issued.serial if outcome.issued is not None else "?"
        outcome.private_key = None
        if record_error is not None:
            outcome.error = DeliveryFailed(
                f"certificate {serial} was recorded but not delivered ({error.message});"
                f" recording that failed too: {record_error.message}",
                hint=f"revoke it: cyphrs revoke --serial {serial}",
            )
        else:
            outcome.error = DeliveryFailed(
                f"certificate {serial} was recorded but not delivered: {error.message}"
                " (recorded as certificate.delivery_failed)",
                hint=f"revoke it if its key is lost: cyphrs revoke --serial {serial}",
            )


def pause_point(name: str) -> None:
    """Test hook: with ``CYPHRS_TEST_FAULT=name`` the process stops itself (SIGSTOP) so a
    test can change the file system between validation and signing, then continue it."""
    from cyphrs_cli.ca.issuance import FAULT_ENV

    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
