"""``find`` and ``timeline``: incident reconstruction from the ledger (what certificate an
agent held, who obtained it, what happened to it and around it, in order)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

FIND_EPILOG = f"""\
Examples:

  cyphrs find --fingerprint sha256:ab12...       # or SHA-1 (40 hex digits), colons allowed

  cyphrs find --serial 4b:1a:9c                  # hex, decimal, or an unambiguous hex prefix

  cyphrs find --spiffe-id spiffe://acme.internal/agent/payments-recon/aa8a --json

  openssl s_client ... | cyphrs find --cert -     # the certificate a peer presented

Prints each certificate the handle names, its renewal chain (replaces / replaced by), its
status history (issued, superseded, revoked, issuer revoked, expired, with actor and host)
and who obtained it (requester, actor, host, the issuance event's details). An ambiguous
serial prefix exits 2 and lists the candidates.

{EXIT_CODE_HELP}"""

TIMELINE_EPILOG = f"""\
Examples:

  cyphrs timeline --spiffe-id spiffe://acme.internal/agent/recon/aa8a --since 2026-11-29T13:00Z

  cyphrs timeline --serial 4b1a9c --since 2026-11-29T13:00Z --until 2026-11-29T15:00Z

  cyphrs timeline --workflow payments-recon --since 2026-11-29 --csv > recon.csv

  cyphrs timeline --issuer agents-ca --since 2026-11-29T14:00Z --json

The events come from the hash-chained log, oldest first, with actor and host. The chain is
checked over every event of the window (without a window: from the first event shown to
the last; past 200,000 events, around each event shown); an edited, re-chained or deleted
event is named by its seq and the command exits 10 after printing the timeline.

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("find", epilog=FIND_EPILOG)(find)
    app.command("timeline", epilog=TIMELINE_EPILOG)(timeline)


def find(
    fingerprint: Annotated[
        str | None,
        typer.Option(
            "--fingerprint", help="SHA-256 or SHA-1 fingerprint (sha256: prefix optional)."
        ),
    ] = None,
    serial: Annotated[
        str | None, typer.Option("--serial", help="Serial: hex, decimal or a hex prefix.")
    ] = None,
    spiffe_id: Annotated[
        str | None, typer.Option("--spiffe-id", help="Every certificate of this SPIFFE ID.")
    ] = None,
    cert: Annotated[
        str | None, typer.Option("--cert", help="A PEM or DER certificate file, or - for stdin.")
    ] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV register rows.")] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Find a certificate by fingerprint, serial, SPIFFE ID or the certificate itself."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.investigation import FindRequest
    from cyphrs_cli.service.investigation import find as find_certificates

    if csv_output and json_output:
        raise UsageError("choose --csv or --json")
    request = FindRequest(
        fingerprint=fingerprint,
        serial=serial,
        spiffe_id=spiffe_id,
        certificate=read_input(cert) if cert is not None else None,
        source=cert or "certificate",
    )
    result = find_certificates(resolve_home(home), request)
    if render.json_mode():
        render.emit_json(result.document())
    elif csv_output:
        from cyphrs_cli.audit.export import register_csv

        render.emit_text(register_csv([c["certificate"] for c in result.certificates]).decode())
    else:
        _print_lines(_find_lines(result.certificates))


def timeline(
    spiffe_id: Annotated[
        str | None, typer.Option("--spiffe-id", help="One agent instance.")
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Every instance of a workflow.")
    ] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", help="One CA (alias).")] = None,
    serial: Annotated[str | None, typer.Option("--serial", help="One certificate.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Window start (RFC 3339 or date).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Window end (exclusive).")] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV, one event per row.")] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Events of an agent, a workflow, an issuer or a certificate in a window, chain-checked."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import CheckNotMet, UsageError
    from cyphrs_cli.service.investigation import TimelineRequest, TimelineScope
    from cyphrs_cli.service.investigation import timeline as build_timeline
    from cyphrs_cli.times import parse_time

    scopes = [
        TimelineScope(kind, value)
        for kind, value in (
            ("spiffe_id", spiffe_id),
            ("workflow", workflow),
            ("issuer", issuer),
            ("serial", serial),
        )
        if value is not None
    ]
    if len(scopes) != 1:
        raise UsageError("name exactly one of --spiffe-id, --workflow, --issuer or --serial")
    if csv_output and json_output:
        raise UsageError("choose --csv or --json")
    request = TimelineRequest(
        scopes[0],
        parse_time(since) if since else None,
        parse_time(until) if until else None,
    )
    result = build_timeline(resolve_home(home), request)
    document = result.document()
    if render.json_mode():
        render.emit_json(document)
    elif csv_output:
        from cyphrs_cli.audit.export import timeline_csv

        render.emit_text(timeline_csv(document["events"]).decode())
    else:
        _print_lines(_timeline_lines(document))
    if not result.chain.verified:
        first = result.chain.problems[0]
        raise CheckNotMet(
            f"the event chain does not verify at seq {first['seq']}: {first['problem']}"
            f" ({len(result.chain.problems)} problem(s) in seq"
            f" {result.chain.first_seq}..{result.chain.last_seq})",
            hint="run 'cyphrs audit verify'; the events shown may have been altered",
        )


def _print_lines(lines: list[str]) -> None:
    """Human output: every line escaped (ledger text is somebody else's input)."""
    from cyphrs_cli.safe_text import terminal_safe

    if render.quiet():
        return
    sys.stdout.write("".join(terminal_safe(line) + "\n" for line in lines))
    sys.stdout.flush()


def _find_lines(stories: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for story in stories:
        cert, by = story["certificate"], story["obtained_by"]
        if lines:
            lines.append("")
        lines.append(f"certificate {cert['serial']}")
        lines.append(f"  identity     {cert['spiffe_id'] or cert['subject'] or cert['sans']}")
        lines.append(f"  profile      {cert['profile']}, issuer {cert['issuer']}")
        lines.append(f"  fingerprint  {cert['fingerprint']}")
        lines.append(f"  valid        {cert['not_before']} .. {cert['not_after']}")
        status = cert["status"]
        if cert["revoked_at"]:
            status += f" at {cert['revoked_at']} ({cert['revocation_reason'] or 'no reason'})"
        lines.append(f"  status now   {status}")
        if cert["issuer_revoked_at"]:
            lines.append(f"  ISSUER REVOKED at {cert['issuer_revoked_at']}: invalid from then on")
        lines.append(
            f"  obtained by  requester {by['requester'] or '-'}; actor {by['actor'] or '-'}"
            f" on {by['host'] or '-'} (event #{by['event_seq'] or '-'} {by['event_type'] or ''})"
        )
        shown = len(story["renewal_chain"])
        total = story["renewal_chain_length"]
        more = f", {shown} of {total} around this one" if shown < total else ""
        lines.append(f"  renewal chain (oldest first{more}):")
        for link in story["renewal_chain"]:
            mark = ">" if link["this"] else " "
            lines.append(
                f"   {mark} {link['serial']}  issued {link['issued_at']}  {link['status']}"
            )
        lines.append("  history:")
        for entry in story["history"]:
            who = f" by {entry['actor']} on {entry['host']}" if entry["actor"] else ""
            seq = f" (#{entry['event_seq']})" if entry["event_seq"] else ""
            lines.append(f"    {entry['at']}  {entry['status']:<14} {entry['detail']}{who}{seq}")
    return lines


def _timeline_lines(document: dict[str, Any]) -> list[str]:
    scope = document["scope"]
    window = f"{document['since'] or 'the beginning'} .. {document['until'] or 'now'}"
    lines = [f"timeline of {scope['kind'].replace('_', '-')} {scope['value']}, {window}"]
    for event in document["events"]:
        flag = "" if event["chain_ok"] else "  !! CHAIN BROKEN HERE"
        lines.append(
            f"  #{event['seq']:<6} {event['at']}  {event['type']:<22} {event['actor']}@"
            f"{event['host']}  {event['summary']}{flag}"
        )
    chain = document["chain"]
    lines.append(f"{document['count']} event(s)")
    if chain["verified"] and chain["scope"] == "events":
        lines.append(
            f"hash chain verified around the {chain['checked']} event(s) shown (seq"
            f" {chain['first_seq']}..{chain['last_seq']} is too long to walk here; run"
            " 'cyphrs audit verify' for every link)"
        )
    elif chain["verified"]:
        span = (
            f"seq {chain['first_seq']}..{chain['last_seq']}, {chain['checked']} event(s)"
            if chain["checked"]
            else "no events in range"
        )
        lines.append(f"hash chain verified ({span})")
    else:
        lines.append("HASH CHAIN DOES NOT VERIFY:")
        lines += [f"  seq {p['seq']}: {p['problem']}" for p in chain["problems"]]
    return lines
