"""``list``: query the ledger's certificates (table, --json or --csv)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

LIST_EPILOG = f"""\
Examples:

  cyphrs list --status valid --workflow payments-recon

  cyphrs list --expiring-within 1h --json | jq -r '.certificates[].serial'

  cyphrs list --status revoked --issued-after 2026-11-01 --csv > revoked.csv

Statuses: valid, expired, revoked, superseded (renewed and not yet expired).

{EXIT_CODE_HELP}"""


MAX_LIMIT = 1_000_000_000


def register(app: typer.Typer) -> None:
    app.command("list", epilog=LIST_EPILOG)(list_certificates)


def list_certificates(
    status: Annotated[
        str | None, typer.Option("--status", help="valid, expired, revoked or superseded.")
    ] = None,
    profile: Annotated[str | None, typer.Option("--profile")] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", help="Issuing CA alias.")] = None,
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
    san: Annotated[
        str | None, typer.Option("--san", help="A DNS name, IP or URI among the SANs.")
    ] = None,
    issued_after: Annotated[
        str | None, typer.Option("--issued-after", help="RFC 3339 time or date.")
    ] = None,
    issued_before: Annotated[str | None, typer.Option("--issued-before")] = None,
    expiring_within: Annotated[
        str | None, typer.Option("--expiring-within", help="e.g. 1h, 7d.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV with a header row.")] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """List certificates from the ledger, newest first, with renewal links."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import InvalidInputError, UsageError
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.ledger.queries import STATUSES, CertificateFilter
    from cyphrs_cli.ledger.queries import iter_certificates as query
    from cyphrs_cli.times import parse_time

    if status is not None and status not in STATUSES:
        raise InvalidInputError(
            f"unknown status {status!r}", hint=f"choose one of {', '.join(STATUSES)}"
        )
    if limit is not None and limit > MAX_LIMIT:  # SQLite integers are 64-bit
        raise InvalidInputError(f"--limit must be at most {MAX_LIMIT}")
    if csv_output and json_output:
        raise UsageError("choose --csv or --json")
    ca_home = resolve_home(home)
    ca_home.require_initialised()
    criteria = CertificateFilter(
        status=status,
        profile=profile,
        issuer=issuer,
        spiffe_id=spiffe_id,
        workflow=workflow,
        san=san,
        issued_after=parse_time(issued_after) if issued_after else None,
        issued_before=parse_time(issued_before) if issued_before else None,
        expiring_within=parse_duration(expiring_within) if expiring_within else None,
        limit=limit,
    )
    with open_ledger(ca_home) as ledger:
        rows = query(ledger.conn, criteria, utc_now())
        if render.json_mode():
            _stream_json(rows)
        elif csv_output:
            _stream_csv(rows)
        elif sys.stdout.isatty():
            _print_terminal_table(rows)
        else:
            _print_plain_table(rows)


#: Rows a terminal table shows before it stops and says how to see the rest.
TERMINAL_ROWS = 1000


def _stream_json(rows: Iterator[dict[str, Any]]) -> None:
    """The ``cyphrs.list/v1`` document, written one certificate per line as the cursor
    yields it (constant memory); ``count`` comes after the array, once it is known.

    An error in the middle (a storage error, a broken pipe) leaves an unterminated document
    on stdout and the error on stderr with its exit code; a reader sees invalid JSON, never
    a shorter list that parses.
    """
    import json

    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    write = sys.stdout.write
    write('{"schema":"cyphrs.list/v1","certificates":[')
    count = 0
    for row in rows:
        write(("\n" if count == 0 else ",\n") + encode(row))
        count += 1
    write(f"\n],\"count\":{count}}}\n")
    sys.stdout.flush()


def _stream_csv(rows: Iterator[dict[str, Any]]) -> None:
    """CSV in chunks: ``register_csv`` (shared with the exports) per chunk, one header."""
    from itertools import islice

    from cyphrs_cli.audit.export import register_csv

    first = True
    while chunk := list(islice(rows, 1000)):
        text = register_csv(chunk).decode()
        if not first:
            text = text.split("\r\n", 1)[1]  # the header row (column names, never quoted)
        sys.stdout.write(text)
        first = False
    if first:
        sys.stdout.write(register_csv([]).decode())
    sys.stdout.flush()


COLUMNS = ("serial", "profile", "identity", "not after", "status", "replaces")


def _cells(row: dict[str, Any], *, short: bool) -> tuple[str, ...]:
    sans = row["sans"]
    identity = row["spiffe_id"] or (sans[0] if isinstance(sans, list) and sans else row["subject"])
    serial, replaces = str(row["serial"]), str(row["replaces"] or "")
    if short:
        # A terminal is read by people; piped output is read by tools (and `revoke --serial`
        # needs the whole serial), so only the terminal cuts it.
        serial = serial[:16] + "…"
        replaces = replaces[:16] + "…" if replaces else ""
    return (
        serial,
        str(row["profile"]),
        str(identity),
        str(row["not_after"]),
        str(row["status"]),
        replaces,
    )


def _print_plain_table(rows: Iterator[dict[str, Any]]) -> None:
    """Aligned plain text with full serials for pipes and files: no Rich, one string per
    cell kept (not a renderable per row), every cell escaped like the terminal's."""
    from cyphrs_cli.safe_text import terminal_safe

    table = [tuple(terminal_safe(c) for c in _cells(row, short=False)) for row in rows]
    widths = [len(h) for h in COLUMNS]
    for cells in table:
        for i, cell in enumerate(cells):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    out = sys.stdout
    last = len(COLUMNS) - 1

    def line(cells: tuple[str, ...]) -> str:
        return (
            "  ".join(c.ljust(widths[i]) if i < last else c for i, c in enumerate(cells)).rstrip()
            + "\n"
        )

    if not render.quiet():  # --quiet silences human output, as the Rich console does
        out.write(line(COLUMNS))
        for cells in table:
            out.write(line(cells))
        out.flush()
    render.note(f"{len(table)} certificate(s)")


def _print_terminal_table(rows: Iterator[dict[str, Any]]) -> None:
    """A Rich table of at most ``TERMINAL_ROWS`` rows; the rest are counted, not rendered."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        table.add_column(column)
    total = 0
    for row in rows:
        total += 1
        if total <= TERMINAL_ROWS:
            table.add_row(*_cells(row, short=True))
    render.console().print(table)
    if total > TERMINAL_ROWS:
        render.note(
            f"{total} certificate(s); showing the newest {TERMINAL_ROWS}"
            " (narrow with filters or --limit, or pipe / use --json or --csv for all)"
        )
    else:
        render.note(f"{total} certificate(s)")
