"""``list``: query the ledger's certificates (table, --json or --csv)."""

from __future__ import annotations

from typing import Annotated

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
    import sys

    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import InvalidInputError, UsageError
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.ledger.queries import STATUSES, CertificateFilter
    from cyphrs_cli.ledger.queries import list_certificates as query
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
        render.emit_json({"schema": "cyphrs.list/v1", "count": len(rows), "certificates": rows})
    elif csv_output:
        from cyphrs_cli.audit.export import register_csv

        sys.stdout.write(register_csv(rows).decode())
    else:
        _print_table(rows)


def _print_table(rows: list[dict[str, object]]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("serial", "profile", "identity", "not after", "status", "replaces"):
        table.add_column(column)
    for row in rows:
        sans = row["sans"]
        identity = row["spiffe_id"] or (
            sans[0] if isinstance(sans, list) and sans else row["subject"]
        )
        table.add_row(
            str(row["serial"])[:16] + "…",
            str(row["profile"]),
            str(identity),
            str(row["not_after"]),
            str(row["status"]),
            (str(row["replaces"])[:16] + "…") if row["replaces"] else "",
        )
    render.console().print(table)
    render.note(f"{len(rows)} certificate(s)")
