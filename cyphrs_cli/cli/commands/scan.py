"""``scan``: the posture of existing certificates (files, TLS endpoints, this ledger)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.service.scan import ScanReport

SCAN_EPILOG = f"""\
Sources: files and directories (PEM, DER, PKCS#12 without a password; keys are never
read out), TLS endpoints (--endpoint host:port: the chain the server presents), and this
home's certificates in force (--ledger).

Findings: cert.expired, cert.expiring (not for leaves of 7 days or less), cert.long_lifetime,
key.weak, key.rsa_below_3072, key.duplicate, sig.sha1, sig.md5, leaf.no_eku, leaf.no_san,
leaf.self_signed, chain.gap (a server or chain file without the leaf's issuer),
leaf.public_ca_client (clientAuth from a CA in --public-roots, default: the system bundle).

Score (0-100): for each distinct certificate, 100 minus the weights of its findings
(critical 50, high 25, medium 10, low 3), at least 0; the score is the mean, rounded
down; 100 when nothing was scanned. --fail-under N exits 10 below N.

Examples:

  cyphrs scan /etc/nginx/certs /etc/ssl/private/legacy.p12

  cyphrs scan --endpoint api.acme.internal:443 --endpoint 10.0.0.5:8443 --json

  cyphrs scan --ledger --csv > posture.csv

  cyphrs scan /etc/ssl/certs/services --html posture.html --fail-under 80

{EXIT_CODE_HELP}"""

CSV_COLUMNS = (
    "fingerprint",
    "serial",
    "subject",
    "issuer",
    "not_after",
    "is_ca",
    "sources",
    "score",
    "findings",
)


def register(app: typer.Typer) -> None:
    app.command("scan", epilog=SCAN_EPILOG)(scan)


def scan(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or directories to read certificates from.")
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="A TLS server host:port (repeatable)."),
    ] = None,
    ledger: Annotated[
        bool, typer.Option("--ledger", help="Also scan this home's certificates in force.")
    ] = False,
    max_lifetime: Annotated[
        str, typer.Option("--max-lifetime", help="Longest acceptable leaf lifetime.")
    ] = "398d",
    expiring_within: Annotated[
        str, typer.Option("--expiring-within", help="Report certificates expiring this soon.")
    ] = "30d",
    public_roots: Annotated[
        Path | None,
        typer.Option(
            "--public-roots", dir_okay=False, help="PEM bundle of public roots [default: system]."
        ),
    ] = None,
    no_public_roots: Annotated[
        bool, typer.Option("--no-public-roots", help="Skip the public-CA client check.")
    ] = False,
    fail_under: Annotated[
        int | None, typer.Option("--fail-under", min=0, max=100, help="Exit 10 below this score.")
    ] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="One CSV row per certificate.")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", dir_okay=False, help="Also write a one-page HTML summary here."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --html file.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, max=60.0, help="Seconds to connect to and read each endpoint."
        ),
    ] = 10.0,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Scan existing certificates and score their posture (0-100)."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import CheckNotMet, UsageError
    from cyphrs_cli.service.scan import ScanRequest, run_scan

    if csv_output and json_output:
        raise UsageError("choose --csv or --json")
    if html is not None:
        from cyphrs_cli.fsutil import refuse_existing

        refuse_existing([html], force=force)
    report = run_scan(
        ScanRequest(
            paths=tuple(paths or ()),
            endpoints=tuple(endpoint or ()),
            home=resolve_home(home) if ledger else None,
            max_lifetime=parse_duration(max_lifetime),
            expiring_within=parse_duration(expiring_within),
            public_roots=public_roots,
            use_public_roots=not no_public_roots,
            timeout=timeout,
        )
    )
    if html is not None:
        from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write
        from cyphrs_cli.posture.html import render_html

        atomic_write(html, render_html(report.to_json()), mode=PUBLIC_FILE)
    if render.json_mode():
        render.emit_json(report.to_json())
    elif csv_output:
        _print_csv(report)
    else:
        _print_human(report)
    if fail_under is not None and report.score < fail_under:
        raise CheckNotMet(f"posture score {report.score} is below {fail_under}")


def _print_csv(report: ScanReport) -> None:
    from cyphrs_cli.audit.export import records_csv

    rows = [
        {
            **{c: cert[c] for c in CSV_COLUMNS if c in cert},
            "findings": [f"{f['severity']}:{f['id']}" for f in cert["findings"]],
        }
        for cert in report.certificates
    ]
    render.emit_text(records_csv(rows, CSV_COLUMNS).decode())


def _print_human(report: ScanReport) -> None:
    console = render.console()
    console.print(
        f"Posture score {report.score}/100 over {len(report.certificates)} certificate(s)",
        style="bold",
    )
    for cert in report.certificates:
        if not cert["findings"]:
            continue
        console.print()
        console.print(f"{cert['score']:>3}  {cert['subject'] or '(empty subject)'}")
        console.print(f"     serial {cert['serial']}  in {', '.join(cert['sources'])}")
        for finding in cert["findings"]:
            console.print(f"     {finding['severity']:<8} {finding['id']}: {finding['message']}")
    for skipped in report.skipped:
        render.note(f"skipped {skipped}")
    render.note(
        "score: mean over certificates of max(0, 100 - weights), critical 50, high 25,"
        " medium 10, low 3"
    )
