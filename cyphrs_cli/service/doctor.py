"""The ``doctor`` use case: run every family of ``cyphrs_cli.checks`` over a CA home.

The home is only read: no key is unlocked, nothing is recorded, no file changes. A home
that others can write is examined (and reported) rather than refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyphrs_cli.checks.model import Finding, Severity, Thresholds

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome

DOCTOR_SCHEMA = "cyphrs.doctor/v1"


@dataclass(frozen=True)
class DoctorRequest:
    home: CaHome
    fail_on: Severity = Severity.HIGH
    thresholds: Thresholds = field(default_factory=Thresholds)
    secret_files: tuple[Path, ...] = ()
    crl_files: tuple[Path, ...] = ()
    now: datetime | None = None  # the checks' "now" (tests pin it); default: the clock
    judge_clock: bool = True  # False for a past ``now`` (see CheckContext)


@dataclass(frozen=True)
class DoctorReport:
    home: str
    findings: tuple[Finding, ...]
    fail_on: Severity
    checked_at: str

    @property
    def failing(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity >= self.fail_on)

    def counts(self) -> dict[str, int]:
        return {s.label: sum(f.severity == s for f in self.findings) for s in Severity}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": DOCTOR_SCHEMA,
            "home": self.home,
            "checked_at": self.checked_at,
            "fail_on": self.fail_on.label,
            "ok": not self.failing,
            "counts": self.counts(),
            "findings": [f.to_json() for f in self.findings],
        }


#: Every family of checks, in report order.
FAMILIES = ("keys", "permissions", "expiry", "policy", "ledger")


def run_doctor(request: DoctorRequest) -> DoctorReport:
    """Examine ``request.home``; findings sorted worst first (stable within a severity).

    Raises:
        CyphrsError: 6 when there is no CA home; 3 when its config.toml is unreadable.
    """
    import importlib
    import sqlite3

    from cyphrs_cli.checks.model import CheckContext
    from cyphrs_cli.config.home import ALLOW_INSECURE_HOME
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.errors import CyphrsError, NotFoundError
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    home = request.home
    if not home.is_initialised():
        raise NotFoundError(
            f"no CA home at {home.root}",
            hint="run 'cyphrs init-root' first, or point --home / CYPHRS_HOME at one",
        )
    now = request.now or utc_now()
    # The doctor reports loose permissions as findings instead of refusing the home.
    token = ALLOW_INSECURE_HOME.set(True)
    try:
        config = load_config(home)
        conn: sqlite3.Connection | None = None
        ledger = None
        try:
            from cyphrs_cli.ca.hierarchy import open_ledger

            ledger = open_ledger(home)
            conn = ledger.conn
        except CyphrsError:
            conn = None
        try:
            context = CheckContext(
                home,
                config,
                conn,
                now,
                request.thresholds,
                request.secret_files,
                request.crl_files,
                judge_clock=request.judge_clock,
            )
            findings: list[Finding] = []
            for family in FAMILIES:
                module = importlib.import_module(f"cyphrs_cli.checks.{family}")
                findings.extend(module.check(context))
        finally:
            if ledger is not None:
                ledger.close()
    finally:
        ALLOW_INSECURE_HOME.reset(token)
    findings.sort(key=lambda f: -f.severity)
    return DoctorReport(str(home.root), tuple(findings), request.fail_on, rfc3339(now))
