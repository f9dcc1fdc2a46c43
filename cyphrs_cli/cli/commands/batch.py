"""``issue --batch``: the CLI side of batch issuance (progress, per-item output, summary)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.cli import render

if TYPE_CHECKING:
    from cyphrs_cli.ca.batch import BatchOutcome
    from cyphrs_cli.ca.models import LeafRequest
    from cyphrs_cli.keystore.base import SecretProvider


def run_batch(
    *,
    source: str,
    default_profile: str | None,
    issuer_name: str | None,
    home: str | None,
    out_dir: Path | None,
    force: bool,
    keep_going: bool,
    secrets: SecretProvider,
) -> None:
    """Parse and validate the whole batch (nothing signed, no key generated), unlock the
    issuer once, then issue item by item, each recorded before it is written or printed."""
    import json
    import sys

    from cyphrs_cli.ca.batch import issue_batch, parse_batch, pause_point, validate_batch
    from cyphrs_cli.ca.delivery import pem_bundle, write_confined
    from cyphrs_cli.ca.hierarchy import issuer_facts, load_issuer, open_ledger
    from cyphrs_cli.ca.issuance import check_instance_unique, record_denial
    from cyphrs_cli.cli.views import issued_view, pem_view, refuse_key_on_terminal
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.errors import PolicyDenied, StorageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.ledger.events import rfc3339, utc_now
    from cyphrs_cli.profiles.model import load_profiles

    base_dir = Path.cwd() if source == "-" else Path(source).parent
    items = parse_batch(
        read_input(source), source=source, default_profile=default_profile, base_dir=base_dir
    )
    if out_dir is None and any(item.order.csr_pem is None for item in items):
        refuse_key_on_terminal(force=force)  # --json would print the generated keys
    ca_home = resolve_home(home)
    config = load_config(ca_home)
    facts = issuer_facts(ca_home, config, issuer_name)
    profiles = load_profiles(ca_home.profiles_dir)

    def record_refusal(denial: PolicyDenied, request: LeafRequest) -> None:
        # A batch is a request, not a question: its refusal is evidence, as for one issue.
        with open_ledger(ca_home) as ledger:
            record_denial(ledger, denial, request, facts)

    with open_ledger(ca_home) as ledger:
        now = rfc3339(utc_now())
        items = validate_batch(
            items,
            profiles=profiles,
            issuer=facts,
            out_dir=out_dir,
            stdout_ok=render.json_mode(),
            force=force,
            source=source,
            on_denied=record_refusal,
            check_plan=lambda plan: check_instance_unique(ledger.conn, plan, now),
        )
    pause_point("batch-validated")

    failures: list[BatchOutcome] = []
    progress = _progress(len(items))

    def deliver(outcome: BatchOutcome) -> None:
        assert outcome.issued is not None
        item = outcome.item
        bundle = pem_bundle(outcome.issued, outcome.private_key)
        view = issued_view(outcome.issued)
        if out_dir is not None and item.out_dir is not None:
            view["files"] = write_confined(out_dir, item.out_dir, bundle, force=force)
        else:
            view["pem"] = pem_view(bundle)
        if render.json_mode():
            line = {
                "schema": "cyphrs.issue-batch-item/v1",
                "index": item.index,
                "name": item.name,
                "ok": True,
                "certificate": view,
            }
            try:
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            except OSError as exc:
                _silence_stdout()
                raise StorageError(f"cannot write to standard output: {exc.strerror}") from exc

    def report(outcome: BatchOutcome) -> None:
        item = outcome.item
        if outcome.error is not None:
            failures.append(outcome)
            if render.json_mode():
                line: dict[str, Any] = {
                    "schema": "cyphrs.issue-batch-item/v1",
                    "index": item.index,
                    "name": item.name,
                    "ok": False,
                    "error": {
                        "code": int(outcome.error.exit_code),
                        "slug": outcome.error.slug,
                        "message": outcome.error.message,
                    },
                }
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                render.console(stderr=True).print(
                    f"item {item.index} ({item.name}) failed: {outcome.error.message}",
                    markup=False,
                    highlight=False,
                )
        if progress is not None:
            progress.advance(task, 1)

    with open_ledger(ca_home) as ledger:
        issuer = load_issuer(ca_home, config, ledger, issuer_name, secrets)
        if progress is not None:
            progress.start()
            task = progress.add_task("issuing", total=len(items))
        try:
            result = issue_batch(
                ledger,
                issuer,
                profiles,
                items,
                deliver=deliver,
                report=report,
                keep_going=keep_going,
            )
        finally:
            if progress is not None:
                progress.stop()
    summary = {
        "schema": "cyphrs.issue-batch-summary/v1",
        "items": result.items,
        "issued": result.issued,
        "failed": len(result.failures),
        "not_attempted": result.items - result.attempted,
    }
    if render.json_mode():
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        render.console().print(
            f"Issued {result.issued} of {result.items} certificate(s)"
            + (f"; {len(result.failures)} failed" if result.failures else "")
            + (f"; {summary['not_attempted']} not attempted" if summary["not_attempted"] else "")
        )
    if result.failures:
        first = result.failures[0]
        assert first.error is not None
        first.error.message = (
            f"batch item {first.item.index} ({first.item.name}): {first.error.message}"
        )
        raise first.error


def _silence_stdout() -> None:
    """Standard output is gone (a closed pipe): send the rest to /dev/null so the failure
    line, the summary and the interpreter's final flush cannot fail again; the error
    itself goes to stderr."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _progress(total: int) -> Any:
    """A Rich progress bar on an interactive stderr only: never in pipes, CI or --json."""
    import sys

    if render.json_mode() or render.quiet() or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=render.console(stderr=True).rich,
        transient=True,
    )
