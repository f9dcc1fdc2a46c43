"""Use cases that produce or check audit evidence: a signed checkpoint of the ledger's
head, an export bundle for a time window (signed manifest, registers, events, CRLs,
report), and the verification of a home's ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from cyphrs_cli.audit.checkpoint import TrustAnchor
    from cyphrs_cli.audit.report_sections import ReportExtras
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.verify import LedgerVerification
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import CheckpointResult, ExportRequest, ExportSummary


def checkpoint(authority: Authority) -> CheckpointResult:
    """Sign (seq, head hash, time) with the issuer's key; recorded as an event."""
    from cyphrs_cli.audit.checkpoint import create_checkpoint
    from cyphrs_cli.service.requests import CheckpointResult

    return CheckpointResult(create_checkpoint(authority.ledger, authority.issuer))


def _timeline_files(
    authority: Authority, request: ExportRequest, until: datetime
) -> dict[str, bytes]:
    """``timelines/N-KIND.json`` (``cyphrs.timeline/v1``) and ``.csv`` per requested scope,
    over the export window; built before anything is signed, so a bad scope (unknown
    issuer, ambiguous serial) refuses the export with nothing written."""
    import json

    from cyphrs_cli.audit.export import timeline_csv
    from cyphrs_cli.service.investigation import TimelineRequest, timeline_in

    files: dict[str, bytes] = {}
    for number, scope in enumerate(request.timelines, start=1):
        built = timeline_in(
            authority.ledger.conn, TimelineRequest(scope, request.since, until)
        ).document()
        stem = f"timelines/{number}-{scope.kind.replace('_', '-')}"
        files[f"{stem}.json"] = json.dumps(built, indent=2, sort_keys=True).encode() + b"\n"
        files[f"{stem}.csv"] = timeline_csv(built["events"])
    return files


def export(authority: Authority, request: ExportRequest) -> ExportSummary:
    """Write the bundle (refused on a ledger that does not verify unless
    ``allow_unverified``) and, with ``archive``, a reproducible ``OUT.tar.gz`` next to it.

    Times are kept to the second and the window's end is exclusive: the default end is
    the next second, so everything recorded so far is in.
    """
    from datetime import timedelta

    from cyphrs_cli.audit.export import export_bundle, write_archive
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.ledger.verify import HomeFacts
    from cyphrs_cli.service.requests import ExportSummary

    until = request.until or utc_now() + timedelta(seconds=1)
    facts = HomeFacts.of(authority.home, authority.config)
    extras = report_extras(authority, until)
    timelines = _timeline_files(authority, request, until)
    result = export_bundle(
        authority.ledger,
        authority.issuer,
        request.out_dir,
        request.since,
        until,
        force=request.force,
        allow_unverified=request.allow_unverified,
        anchor=request.anchor,
        home=facts,
        extras=extras,
        extra_files=timelines,
    )
    if not request.archive:
        return ExportSummary(result)
    path = request.out_dir.with_name(request.out_dir.name + ".tar.gz")
    return ExportSummary(result, path, write_archive(request.out_dir, path))


def report_extras(authority: Authority, until: datetime) -> ReportExtras:
    """Provenance and the doctor's findings (judged at the window's end) for report.html."""
    import socket

    from cyphrs_cli import __version__
    from cyphrs_cli.audit.checkpoint import fingerprint
    from cyphrs_cli.audit.report_sections import ReportExtras
    from cyphrs_cli.ledger.events import default_actor
    from cyphrs_cli.service.doctor import DoctorRequest, run_doctor

    issuer = authority.issuer
    assert issuer.certificate is not None
    findings = run_doctor(DoctorRequest(home=authority.home, now=until, judge_clock=False)).findings
    return ReportExtras(
        exporter=default_actor(),
        host=socket.gethostname(),
        version=__version__,
        signer=issuer.name,
        signer_fingerprint=fingerprint(issuer.certificate),
        findings=tuple(f.to_json() for f in findings),
    )


def verify(
    home: CaHome,
    checkpoints: Sequence[tuple[str, Any]] = (),
    *,
    anchor: TrustAnchor | None = None,
) -> LedgerVerification:
    """``audit verify``: the ledger of an initialised home against its hash chain, the
    tables the chain covers, the home's own files and the given checkpoints (source name,
    parsed document). Needs no key. What it finds is in the result's ``problems``; it
    raises only when the home or ledger cannot be opened."""
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.ledger.verify import HomeFacts, verify_ledger

    home.require_initialised()
    facts = HomeFacts.of(home, load_config(home))
    with open_ledger(home) as ledger:
        return verify_ledger(ledger.conn, checkpoints, anchor=anchor, home=facts)
