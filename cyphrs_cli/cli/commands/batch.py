"""``issue --batch``: parse the options, call the batch use case, render its lines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.cli import render
from cyphrs_cli.cli.authority import open_authority

if TYPE_CHECKING:
    from cyphrs_cli.keystore.base import SecretProvider
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.batch import CheckedBatch, ItemResult


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
    group_size: int | None = None,
) -> None:
    """Check the whole batch (nothing signed, no key generated), unlock the issuer once,
    then issue it group by group, each group recorded before it is written or printed."""
    import sys

    from cyphrs_cli.ca.batch import pause_point
    from cyphrs_cli.cli.views import refuse_key_on_terminal
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.batch import DEFAULT_GROUP_SIZE, BatchRequest, check_batch

    base_dir = Path.cwd() if source == "-" else Path(source).parent
    request = BatchRequest(
        data=read_input(source),
        source=source,
        base_dir=base_dir,
        default_profile=default_profile,
        out_dir=out_dir,
        stdout=render.json_mode(),
        force=force,
        keep_going=keep_going,
        group_size=group_size or DEFAULT_GROUP_SIZE,
    )
    if out_dir is None and sys.stdout.isatty() and not force:
        from cyphrs_cli.ca.batch import iter_batch

        items = iter_batch(
            request.data, source=source, default_profile=default_profile, base_dir=base_dir
        )
        if any(item.order.csr_pem is None for item in items):
            refuse_key_on_terminal(force=force)  # --json would print the generated keys
    # One Authority serves the check (no key unlocked) and then the issuance (the issuer
    # is unlocked on first use, after every item was checked).
    authority = open_authority(home, issuer=issuer_name, secrets=secrets)
    with authority:
        checked = check_batch(authority, request)
        pause_point("batch-validated")
        _issue_and_render(authority, checked)


def _issue_and_render(authority: Authority, checked: CheckedBatch) -> None:
    """Issue the checked batch group by group and render each item's line as its group
    is delivered, then the summary; the first failure becomes the exit code."""
    import json
    import sys

    from cyphrs_cli.cli.views import issued_view, pem_view
    from cyphrs_cli.errors import StorageError
    from cyphrs_cli.service.batch import run_batch as issue_checked

    progress = _progress(checked.count)
    task: Any = None
    stdout_gone = False

    def emit(result: ItemResult) -> None:
        nonlocal stdout_gone
        if result.error is None:
            assert result.issued is not None
            if not render.json_mode():
                _advance(progress, task)
                return
            view = issued_view(result.issued)
            if result.files is not None:
                view["files"] = result.files
            elif result.bundle is not None:
                view["pem"] = pem_view(result.bundle)
            line: dict[str, Any] = {
                "schema": "cyphrs.issue-batch-item/v1",
                "index": result.index,
                "name": result.name,
                "ok": True,
                "certificate": view,
            }
        else:
            _advance(progress, task)
            if not render.json_mode():
                render.console(stderr=True).print(
                    f"item {result.index} ({result.name}) failed: {result.error.message}",
                    markup=False,
                    highlight=False,
                )
                return
            line = {
                "schema": "cyphrs.issue-batch-item/v1",
                "index": result.index,
                "name": result.name,
                "ok": False,
                "error": {
                    "code": int(result.error.exit_code),
                    "slug": result.error.slug,
                    "message": result.error.message,
                },
            }
        if stdout_gone:
            raise StorageError("standard output is closed")
        try:
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        except OSError as exc:
            stdout_gone = True
            _silence_stdout()
            raise StorageError(f"cannot write to standard output: {exc.strerror}") from exc

    if progress is not None:
        progress.start()
        task = progress.add_task("issuing", total=checked.count)
    try:
        summary = issue_checked(authority, checked, emit=emit)
    finally:
        if progress is not None:
            progress.stop()
    if render.json_mode():
        line = {
            "schema": "cyphrs.issue-batch-summary/v1",
            "items": summary.items,
            "issued": summary.issued,
            "failed": summary.failed,
            "not_attempted": summary.not_attempted,
        }
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        render.console().print(
            f"Issued {summary.issued} of {summary.items} certificate(s)"
            + (f"; {summary.failed} failed" if summary.failed else "")
            + (f"; {summary.not_attempted} not attempted" if summary.not_attempted else "")
        )
    first = summary.first_failure
    if first is not None:
        assert first.error is not None
        first.error.message = f"batch item {first.index} ({first.name}): {first.error.message}"
        raise first.error


def _advance(progress: Any, task: Any) -> None:
    if progress is not None:
        progress.advance(task, 1)


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
