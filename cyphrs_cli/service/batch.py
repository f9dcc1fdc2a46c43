"""The batch use case: check a whole batch, then issue it group by group.

``check_batch`` is the pre-pass (nothing signed, no key generated, a policy refusal
recorded); ``run_batch`` parses the same bytes again and, per group of up to
``group_size`` items (or what ``group_seconds`` of key generation allows):

1. generates the keys, signs, self-checks and commits the group's rows and hash-chained
   events in ONE ``BEGIN IMMEDIATE`` transaction (``issuance.issue_leaves``);
2. only then writes the group's files (no per-file fsync) and makes them durable with one
   ``syncfs`` (``delivery.sync_outputs``);
3. only then hands each item to ``emit`` (the front end prints its line), in order.

A crash before 1 commits leaves nothing of the group anywhere; a crash between 1 and 3
leaves recorded certificates without files or lines (the ledger shows them, as for a
single ``issue``), never a file or line for an unrecorded one. A delivery failure after
the commit is recorded as ``certificate.delivery_failed`` (exit 8); the rest of that group
is still delivered (it is recorded), and the batch stops after the group.

Memory is flat in the number of items: the pre-pass keeps 8-byte digests per item, the
issuing pass holds one group, and only counts and the first failure are kept.

Typed against ``BatchContext``/``BatchAuthority`` (Protocols), so the CLI's small frozen
dataclass and the service ``Authority`` both serve.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cyphrs_cli.errors import CyphrsError, StorageError

if TYPE_CHECKING:
    from cyphrs_cli.ca.batch import BatchItem, BatchOutcome, BatchValidator
    from cyphrs_cli.ca.delivery import PemBundle
    from cyphrs_cli.ca.models import IssuedCertificate, Issuer, LeafRequest
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.config.settings import HomeConfig
    from cyphrs_cli.errors import PolicyDenied
    from cyphrs_cli.ledger.db import Ledger
    from cyphrs_cli.policy.decide import PolicyIssuer
    from cyphrs_cli.profiles.model import Profile

DEFAULT_GROUP_SIZE = 128
DEFAULT_GROUP_SECONDS = 1.0
MAX_GROUP_SIZE = 4096


class BatchContext(Protocol):
    """What the pre-pass needs: no unlocked key."""

    @property
    def home(self) -> CaHome: ...
    @property
    def config(self) -> HomeConfig: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def facts(self) -> PolicyIssuer: ...
    @property
    def profiles(self) -> Mapping[str, Profile]: ...


class BatchAuthority(BatchContext, Protocol):
    """An opened authority: the context plus the unlocked issuer."""

    @property
    def issuer(self) -> Issuer: ...


@dataclass(frozen=True)
class BatchRequest:
    data: bytes  # the batch file's bytes (JSON Lines or TOML)
    source: str  # its name in messages
    base_dir: Path  # CSR paths in the file are relative to this
    default_profile: str | None = None
    out_dir: Path | None = None  # write each item's files below this
    stdout: bool = False  # without out_dir: deliver through ``emit`` (PEM in the result)
    force: bool = False
    keep_going: bool = False
    group_size: int = DEFAULT_GROUP_SIZE
    group_seconds: float = DEFAULT_GROUP_SECONDS


@dataclass(frozen=True)
class ItemResult:
    """One attempted item, handed to ``emit`` only after its group is committed (and its
    files durable). ``bundle`` carries the private key only for stdout delivery."""

    index: int
    name: str
    issued: IssuedCertificate | None = None
    files: dict[str, str] | None = None
    bundle: PemBundle | None = field(default=None, repr=False)
    error: CyphrsError | None = None


@dataclass
class BatchSummary:
    items: int
    attempted: int = 0
    issued: int = 0
    failed: int = 0
    first_failure: ItemResult | None = None

    @property
    def not_attempted(self) -> int:
        return self.items - self.attempted


@dataclass(frozen=True)
class CheckedBatch:
    """A batch that passed the pre-pass; ``run_batch`` issues exactly these items."""

    request: BatchRequest
    validator: BatchValidator
    seed: bytes = field(repr=False)

    @property
    def count(self) -> int:
        return self.validator.count


def check_batch(context: BatchContext, request: BatchRequest) -> CheckedBatch:
    """Parse and check every item (see ``ca.batch``); raises the first error, naming the
    item. A policy refusal is recorded as ``policy.denied`` before it is raised."""
    from cyphrs_cli.ca.batch import BatchValidator, iter_batch
    from cyphrs_cli.ca.issuance import check_instance_unique, record_denial
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    if not 1 <= request.group_size <= MAX_GROUP_SIZE:
        raise UsageError(f"the group size must be between 1 and {MAX_GROUP_SIZE}")
    if request.group_seconds <= 0:
        raise UsageError("the group time must be positive")

    def record_refusal(denial: PolicyDenied, leaf: LeafRequest) -> None:
        # A batch is a request, not a question: its refusal is evidence, as for one issue.
        record_denial(context.ledger, denial, leaf, context.facts)

    now = rfc3339(utc_now())
    validator = BatchValidator(
        profiles=context.profiles,
        issuer=context.facts,
        out_dir=request.out_dir,
        stdout_ok=request.stdout,
        force=request.force,
        source=request.source,
        on_denied=record_refusal,
        check_plan=lambda plan: check_instance_unique(context.ledger.conn, plan, now),
    )
    seed = os.urandom(16)
    for item in iter_batch(
        request.data,
        source=request.source,
        default_profile=request.default_profile,
        base_dir=request.base_dir,
        seed=seed,
    ):
        validator.check(item)
    return CheckedBatch(request, validator, seed)


def run_batch(
    authority: BatchAuthority, checked: CheckedBatch, *, emit: Callable[[ItemResult], None]
) -> BatchSummary:
    """Issue a checked batch group by group (see the module docstring). ``emit`` gets
    every attempted item in order; a ``StorageError`` from it for an issued item means
    that item was not delivered (recorded, exit 8). Returns the counts."""
    from cyphrs_cli.ca.batch import issue_group, iter_batch

    request = checked.request
    summary = BatchSummary(items=checked.count)
    items = iter_batch(
        request.data,
        source=request.source,
        default_profile=request.default_profile,
        base_dir=request.base_dir,
        seed=checked.seed,
    )
    shared = _SharedPem(authority.issuer)
    waiting: list[BatchItem] = []
    exhausted = False
    while True:
        while not exhausted and len(waiting) < request.group_size:
            item = next(items, None)
            if item is None:
                exhausted = True
            else:
                waiting.append(item)
        if not waiting:
            break
        outcomes, waiting = issue_group(
            authority.ledger,
            authority.issuer,
            authority.profiles,
            waiting,
            keep_going=request.keep_going,
            precheck=checked.validator.same_as_checked,
            deadline=time.monotonic() + request.group_seconds,
        )
        stop = _deliver(authority, request, outcomes, shared, emit, summary)
        if stop:
            break
    return summary


class _SharedPem:
    """The issuer's chain and root as PEM, encoded once per batch (not once per item);
    every item directory still gets its own chain.pem and ca.pem files."""

    def __init__(self, issuer: Issuer) -> None:
        self._issuer = issuer
        self._chain: tuple[str, str] | None = None

    def bundle(self, issued: IssuedCertificate, outcome: BatchOutcome) -> PemBundle:
        from cyphrs_cli.ca.delivery import PemBundle, pem_bundle

        if self._chain is None:
            full = pem_bundle(issued, None)
            self._chain = (full.chain, full.root)
        from cryptography.hazmat.primitives import serialization

        key_pem = None
        if outcome.private_key is not None:
            key_pem = outcome.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        return PemBundle(
            certificate=issued.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            chain=self._chain[0],
            root=self._chain[1],
            private_key=key_pem,
        )


def _deliver(
    authority: BatchAuthority,
    request: BatchRequest,
    outcomes: list[BatchOutcome],
    shared: _SharedPem,
    emit: Callable[[ItemResult], None],
    summary: BatchSummary,
) -> bool:
    """Write, sync, then emit one committed group; returns True when the batch stops."""
    from cyphrs_cli.ca.batch import record_delivery_failures
    from cyphrs_cli.ca.delivery import sync_outputs, write_confined

    bundles: dict[int, PemBundle] = {}
    files: dict[int, dict[str, str]] = {}
    failed: list[tuple[BatchOutcome, CyphrsError]] = []
    for outcome in outcomes:
        if outcome.issued is not None and outcome.error is None:
            bundles[outcome.item.index] = shared.bundle(outcome.issued, outcome)
            outcome.private_key = None
    if request.out_dir is not None:
        for outcome in outcomes:
            bundle = bundles.get(outcome.item.index)
            if bundle is None:
                continue
            assert outcome.item.out_dir is not None
            try:
                files[outcome.item.index] = write_confined(
                    request.out_dir, outcome.item.out_dir, bundle, force=request.force, sync=False
                )
            except StorageError as error:
                failed.append((outcome, error))
        if files:
            try:
                sync_outputs(request.out_dir, list(files.values()))
            except StorageError as error:
                failed += [(o, error) for o in outcomes if o.item.index in files]
                files.clear()
    if failed:
        record_delivery_failures(authority.ledger, failed)

    broken: StorageError | None = None
    late: list[tuple[BatchOutcome, CyphrsError]] = []
    for outcome in outcomes:
        item = outcome.item
        if outcome.error is None and outcome.issued is not None:
            if broken is None:
                try:
                    emit(
                        ItemResult(
                            item.index,
                            item.name,
                            issued=outcome.issued,
                            files=files.get(item.index),
                            bundle=bundles[item.index] if request.out_dir is None else None,
                        )
                    )
                except StorageError as error:
                    broken = error
            if broken is not None:
                late.append((outcome, broken))
            else:
                summary.issued += 1
        else:
            _emit_failure(outcome, emit, summary)
        summary.attempted += 1
    if late:  # the reader went away: every later item of the group is undelivered too
        record_delivery_failures(authority.ledger, late)
        for outcome, _ in late:
            _emit_failure(outcome, emit, summary)
    errors = [o.error for o in outcomes if o.error is not None]
    return bool(errors) and (
        not request.keep_going or any(isinstance(e, StorageError) for e in errors)
    )


def _emit_failure(
    outcome: BatchOutcome, emit: Callable[[ItemResult], None], summary: BatchSummary
) -> None:
    result = ItemResult(outcome.item.index, outcome.item.name, error=outcome.error)
    summary.failed += 1
    if summary.first_failure is None:
        summary.first_failure = result
    with contextlib.suppress(StorageError):  # counted as failed; its error is in the summary
        emit(result)
