"""``issue --batch``: the CLI side of batch issuance (progress, per-item output, summary)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.cli import render

if TYPE_CHECKING:
    from cyphrs_cli.ca.batch import BatchItem, BatchOutcome
    from cyphrs_cli.keystore.base import SecretProvider


def _item_dir(item: BatchItem, out_dir: Path | None) -> Path | None:
    if item.out_dir is not None:
        return item.out_dir
    return out_dir / item.name if out_dir is not None else None


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
    """Parse and check the whole batch, unlock the issuer once, then issue item by item."""
    import json
    import sys

    from cyphrs_cli.ca.batch import issue_batch, parse_batch
    from cyphrs_cli.ca.delivery import check_output_dir, pem_bundle, write_output_dir
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.cli.views import issued_view, pem_view, refuse_key_on_terminal
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input

    base_dir = Path.cwd() if source == "-" else Path(source).parent
    items = parse_batch(
        read_input(source), source=source, default_profile=default_profile, base_dir=base_dir
    )
    for item in items:
        target = _item_dir(item, out_dir)
        if target is None and not render.json_mode():
            raise UsageError(f"batch item {item.index} has no out_dir; pass --out-dir or --json")
        if target is not None:
            check_output_dir(target, with_key=item.order.csr_pem is None, force=force)
        elif item.order.csr_pem is None:
            refuse_key_on_terminal(force=force)  # --json would print the generated key

    ca_home = resolve_home(home)
    config = load_config(ca_home)
    views: dict[int, dict[str, Any]] = {}
    failures: list[BatchOutcome] = []
    progress = _progress(len(items))

    def deliver(outcome: BatchOutcome) -> None:
        assert outcome.issued is not None
        bundle = pem_bundle(outcome.issued, outcome.private_key)
        view = issued_view(outcome.issued)
        target = _item_dir(outcome.item, out_dir)
        if target is not None:
            view["files"] = write_output_dir(target, bundle)
        else:
            view["pem"] = pem_view(bundle)
        views[outcome.item.index] = view

    def report(outcome: BatchOutcome) -> None:
        item = outcome.item
        if outcome.error is not None:
            failures.append(outcome)
        if render.json_mode():
            line: dict[str, Any] = {
                "schema": "cyphrs.issue-batch-item/v1",
                "index": item.index,
                "name": item.name,
                "ok": outcome.error is None,
            }
            if outcome.error is None:
                line["certificate"] = views[item.index]
            else:
                line["error"] = {
                    "code": int(outcome.error.exit_code),
                    "slug": outcome.error.slug,
                    "message": outcome.error.message,
                }
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif outcome.error is not None:
            render.console(stderr=True).print(
                f"item {item.index} ({item.name}) failed: {outcome.error.message}"
            )
        if progress is not None:
            progress.advance(task, 1)

    with open_ledger(ca_home) as ledger:
        issuer = load_issuer(ca_home, config, ledger, issuer_name, secrets)
        if progress is not None:
            progress.start()
            task = progress.add_task("issuing", total=len(items))
        try:
            outcomes = issue_batch(
                ledger,
                issuer,
                ca_home.profiles_dir,
                items,
                deliver=deliver,
                report=report,
                keep_going=keep_going,
            )
        finally:
            if progress is not None:
                progress.stop()
    issued = sum(1 for o in outcomes if o.error is None)
    summary = {
        "schema": "cyphrs.issue-batch-summary/v1",
        "items": len(items),
        "issued": issued,
        "failed": len(failures),
        "not_attempted": len(items) - len(outcomes),
    }
    if render.json_mode():
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        render.console().print(
            f"Issued {issued} of {len(items)} certificate(s)"
            + (f"; {len(failures)} failed" if failures else "")
            + (f"; {summary['not_attempted']} not attempted" if summary["not_attempted"] else "")
        )
    if failures:
        first = failures[0]
        assert first.error is not None
        first.error.message = (
            f"batch item {first.item.index} ({first.item.name}): {first.error.message}"
        )
        raise first.error


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
        console=render.console(stderr=True),
        transient=True,
    )
