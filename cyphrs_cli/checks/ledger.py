"""Ledger checks: the hash chain and tables verify, a checkpoint has been handed out
recently, and this host's clock agrees with what the ledger already recorded.

The integrity check is ``audit verify`` without an anchor (no checkpoint signatures are
judged here; that needs a root pinned from outside). A checkpoint kept off the host is the
only thing that catches a consistently rewritten ledger, so its age matters. A clock
behind the ledger's newest event (or a certificate's notBefore) means certificates are
being dated wrongly and expiry decisions are off.
"""

from __future__ import annotations

from cyphrs_cli.checks.model import CheckContext, Finding, Severity
from cyphrs_cli.durations import format_duration
from cyphrs_cli.times import parse_time

CHECKPOINT_EVENTS = ("audit.checkpoint", "audit.exported")


def check(context: CheckContext) -> list[Finding]:
    if context.conn is None:
        return [
            Finding(
                id="ledger.unreadable",
                severity=Severity.CRITICAL,
                title="the ledger cannot be opened",
                why="every issuance is recorded there first; without it nothing can be signed",
                fix=f"restore {context.home.ledger_path} from backup, then cyphrs audit verify",
                subject=str(context.home.ledger_path),
            )
        ]
    return [*_integrity(context), *_checkpoint_age(context), *_clock(context)]


def _integrity(context: CheckContext) -> list[Finding]:
    from cyphrs_cli.ledger.verify import HomeFacts, verify_ledger

    assert context.conn is not None
    report = verify_ledger(context.conn, home=HomeFacts.of(context.home, context.config))
    if report.ok:
        return []
    more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
    return [
        Finding(
            id="ledger.integrity",
            severity=Severity.CRITICAL,
            title=f"the ledger does not verify: {report.problems[0]}{more}",
            why="the ledger is the evidence of every issuance; a broken chain or an edited"
            " row means it was tampered with or damaged",
            fix="cyphrs audit verify --root-fingerprint sha256:... (see every problem), then"
            " restore the ledger from a backup that verifies",
            subject=str(context.home.ledger_path),
        )
    ]


def _checkpoint_age(context: CheckContext) -> list[Finding]:
    assert context.conn is not None
    marks = ",".join("?" for _ in CHECKPOINT_EVENTS)
    (last,) = context.conn.execute(
        f"SELECT max(at) FROM events WHERE type IN ({marks})",  # noqa: S608
        CHECKPOINT_EVENTS,
    ).fetchone()
    (first,) = context.conn.execute("SELECT min(at) FROM events").fetchone()
    since = last or first
    if since is None:
        return []
    age = context.now - parse_time(str(since))
    limit = context.thresholds.checkpoint_age
    if age <= limit:
        return []
    what = (
        f"the last checkpoint was {format_duration(age)} ago"
        if last
        else (f"no checkpoint was ever handed out (the ledger is {format_duration(age)} old)")
    )
    return [
        Finding(
            id="ledger.checkpoint_stale",
            severity=Severity.MEDIUM,
            title=f"{what}; the limit is {format_duration(limit)}",
            why="only a signed checkpoint kept off this host reveals a ledger rewritten"
            " consistently by someone who controls it",
            fix="cyphrs audit checkpoint --passphrase-file FILE --out /offhost/cp-$(date +%F).json",
        )
    ]


def _clock(context: CheckContext) -> list[Finding]:
    assert context.conn is not None
    if not context.judge_clock:
        return []
    (newest_event,) = context.conn.execute("SELECT max(at) FROM events").fetchone()
    (newest_start,) = context.conn.execute("SELECT max(not_before) FROM certificates").fetchone()
    skew = context.thresholds.clock_skew
    for label, value in (("event", newest_event), ("certificate notBefore", newest_start)):
        if value is None:
            continue
        ahead = parse_time(str(value)) - context.now
        if ahead > skew:
            return [
                Finding(
                    id="clock.behind_ledger",
                    severity=Severity.HIGH,
                    title=f"this host's clock is {format_duration(ahead)} behind the ledger's"
                    f" newest {label} ({value})",
                    why="certificates are dated from this clock: a wrong clock issues"
                    " certificates that are not yet valid or already expired, and misjudges"
                    " expiry and CRL horizons",
                    fix="timedatectl set-ntp true  (then check: timedatectl status)",
                )
            ]
    return []
