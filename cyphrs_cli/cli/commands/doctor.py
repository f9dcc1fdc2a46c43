"""``doctor``: check a CA home for the classic mistakes and say how to fix each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.service.doctor import DoctorReport

DOCTOR_EPILOG = f"""\
Checks: root key on the issuing host, missing issuing key, CA keys below RSA-3072,
permissions of the home, keys, ledger and passphrase/PIN files, CA expiry, CRLs past or
near nextUpdate, revocations on no CRL, profiles with long max TTLs, issuing CAs without
name constraints that may sign server certificates, deployed CRL files (--crl-file) that
are past nextUpdate or lack a CA's CRL, ledger integrity (as audit verify,
without an anchor), checkpoint age, and this host's clock against the ledger.

Every finding has an id, a severity (info, low, medium, high, critical), why it matters
and the command that fixes it. Exit 10 when a finding at or above --fail-on exists.

Examples:

  cyphrs doctor

  cyphrs doctor --passphrase-file /etc/cyphrs/inter.pass --fail-on medium

  cyphrs doctor --json | jq -r '.findings[] | "\\(.severity) \\(.id)"'

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("doctor", epilog=DOCTOR_EPILOG)(doctor)


def doctor(
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="Exit 10 at this severity or worse.")
    ] = "high",
    secret_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--passphrase-file",
            "--pin-file",
            help="A passphrase/PIN file to check (repeatable; never read, only its mode).",
            dir_okay=False,
        ),
    ] = None,
    crl_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--crl-file",
            help="A CRL file deployed to a service (e.g. from crl --all) to check (repeatable).",
            dir_okay=False,
        ),
    ] = None,
    ca_horizon: Annotated[
        str, typer.Option("--ca-horizon", help="Warn when a CA expires within this.")
    ] = "90d",
    crl_horizon: Annotated[
        str, typer.Option("--crl-horizon", help="Warn when a CRL's nextUpdate is this close.")
    ] = "6h",
    checkpoint_age: Annotated[
        str, typer.Option("--checkpoint-age", help="Longest time without a checkpoint.")
    ] = "7d",
    max_ttl: Annotated[
        str, typer.Option("--max-ttl", help="Longest leaf max_ttl a profile may allow.")
    ] = "30d",
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Check a CA home: keys, permissions, expiry, CRLs, policy, ledger, clock."""
    from cyphrs_cli.checks.model import Severity, Thresholds
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import CheckNotMet
    from cyphrs_cli.service.doctor import DoctorRequest, run_doctor

    threshold = Severity.parse(fail_on)
    request = DoctorRequest(
        home=resolve_home(home),
        fail_on=threshold,
        thresholds=Thresholds(
            ca_expiry=parse_duration(ca_horizon),
            crl_expiry=parse_duration(crl_horizon),
            checkpoint_age=parse_duration(checkpoint_age),
            max_leaf_ttl=parse_duration(max_ttl),
        ),
        secret_files=tuple(secret_file or ()),
        crl_files=tuple(crl_file or ()),
    )
    report = run_doctor(request)
    if render.json_mode():
        render.emit_json(report.to_json())
    else:
        _print_human(report)
    if report.failing:
        raise CheckNotMet(
            f"{len(report.failing)} finding(s) at or above {threshold.label}",
            hint="fix them, or choose another --fail-on",
        )


_STYLES = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": None}


def _print_human(report: DoctorReport) -> None:
    console = render.console()
    if not report.findings:
        console.print(f"No findings for {report.home}", style="green")
        return
    console.print(f"{len(report.findings)} finding(s) for {report.home}", style="bold")
    for finding in report.findings:
        label = finding.severity.label
        console.print()
        console.print(f"{label.upper():<9}", style=_STYLES[label], end="")
        console.print(f"{finding.id}: {finding.title}")
        console.print(f"         why: {finding.why}")
        console.print(f"         fix: {finding.fix}")
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    render.note(f"{counts}")
