"""What a check reports (``Finding``, ``Severity``) and what it reads (``CheckContext``)."""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.config.settings import HomeConfig


class Severity(enum.IntEnum):
    """Ordered: ``--fail-on high`` fails on high and critical."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        from cyphrs_cli.errors import UsageError

        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise UsageError(f"unknown severity {text!r}; choose one of {names}") from None


@dataclass(frozen=True)
class Finding:
    """One problem: a stable id (``permissions.key_file``), how bad, what, why it
    matters, and the exact command (or step) that fixes it."""

    id: str
    severity: Severity
    title: str
    why: str
    fix: str
    subject: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.label,
            "title": self.title,
            "why": self.why,
            "fix": self.fix,
            "subject": self.subject,
        }


@dataclass(frozen=True)
class Thresholds:
    """Horizons the checks judge against (the doctor's options)."""

    ca_expiry: timedelta = timedelta(days=90)
    crl_expiry: timedelta = timedelta(hours=6)
    checkpoint_age: timedelta = timedelta(days=7)
    max_leaf_ttl: timedelta = timedelta(days=30)
    clock_skew: timedelta = timedelta(minutes=5)


@dataclass
class CheckContext:
    """A CA home opened read-only for the checks; ``conn`` is None when the ledger cannot
    be opened (the ledger family reports why)."""

    home: CaHome
    config: HomeConfig
    conn: sqlite3.Connection | None
    now: datetime
    thresholds: Thresholds
    secret_files: tuple[Path, ...] = ()
    crl_files: tuple[Path, ...] = ()  # CRL files deployed to services (PEM, any number)
    # False when ``now`` is a past moment (an export's window end): the ledger then holds
    # later events, which says nothing about this host's clock.
    judge_clock: bool = True
    notes: list[str] = field(default_factory=list)

    def authorities(self) -> list[sqlite3.Row]:
        """The ledger's CAs with their certificate rows (empty without a ledger)."""
        if self.conn is None:
            return []
        return list(
            self.conn.execute(
                "SELECT a.id, a.name, a.role, a.key_uri, a.key_algorithm, a.trust_domain,"
                " c.pem, c.not_after, c.status, c.serial"
                " FROM authorities a LEFT JOIN certificates c ON c.id = a.certificate_id"
                " ORDER BY a.id"
            )
        )
