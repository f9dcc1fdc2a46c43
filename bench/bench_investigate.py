"""Incident reconstruction at fleet scale: ``list --valid-at``, ``find`` and ``timeline`` on
a ledger of N certificates and about 5*N events (default N = 1,000,000).

How the ledger is built (so that it is a real cyphrs ledger, every query sees real data):
* a CA home is made through the CLI (init-root, create-intermediate) and one agent
  certificate is issued through the issuance path; its row is the template;
* N certificate rows are then bulk-inserted: 10,000 agent identities (1,000 workflows x
  10 instances) renewed every ``span / per_identity`` over 90 days, each renewal linked
  (``replaces_id``) and the old one superseded, 1% revoked an hour after issuance, each
  with its SHA-1 row; fresh serials and fingerprints (the PEM is the template's);
* the events go with them, in time order: per certificate its issuance
  (``certificate.issued``/``renewed``, the details cyphrs writes) and four ``token.used``
  events naming the SPIFFE ID, every revocation, and an hourly ``crl.published`` -- with a
  correctly computed hash chain (``prev_hash``, ``params_hash``, ``hash`` exactly as
  ``append_event`` computes them), so ``timeline`` verifies real links;
* the build drops the secondary indexes, inserts, and recreates them (the migration's own
  SQL), with ``synchronous = OFF`` for the build only.

Each query is timed in-process through the use case the CLI calls (opening the ledger
included, process start-up not), median of RUNS after a warm-up, against a bare SQL
query on the same ledger that fetches the same candidate rows; two of them are also timed
as whole ``cyphrs`` processes.

Run: .venv/bin/python bench/bench_investigate.py [N] [RUNS]
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import CYPHRS, demo_hierarchy, time_command

from cyphrs_cli.ledger.events import GENESIS_HASH, canonical_json, rfc3339, sha256_hex
from cyphrs_cli.ledger.verify import _body_hash

WORKFLOWS, INSTANCES = 1000, 10
START = datetime(2026, 8, 1, tzinfo=UTC)
SPAN = timedelta(days=90)
TTL = timedelta(hours=8)
TOKENS_PER_CERT = 4


def _ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the answer, to report its size)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3), result


class Builder:
    """Bulk rows and a hash chain in time order (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, total: int) -> None:
        self.conn = conn
        self.total = total
        head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.seq, self.prev = head if head else (0, GENESIS_HASH)
        self.template = conn.execute(
            "SELECT * FROM certificates WHERE is_ca = 0 LIMIT 1"
        ).fetchone()
        described = conn.execute("SELECT * FROM certificates LIMIT 0").description
        self.columns = [d[0] for d in described]
        (self.next_id,) = conn.execute("SELECT max(id) + 1 FROM certificates").fetchone()
        (self.authority_id,) = conn.execute(
            "SELECT id FROM authorities WHERE role = 'intermediate'"
        ).fetchone()
        self.issuer, self.trust_domain = conn.execute(
            "SELECT name, trust_domain FROM authorities WHERE id = ?", (self.authority_id,)
        ).fetchone()
        self.events: list[tuple[Any, ...]] = []
        self.certs: list[tuple[Any, ...]] = []
        self.sha1: list[tuple[Any, ...]] = []
        self.revocations: list[tuple[Any, ...]] = []
        self.picked: dict[str, Any] = {}
        self.pick_round = 0

    def event(self, at: datetime, type_: str, target: str, details: dict[str, Any]) -> None:
        self.seq += 1
        details_json = canonical_json(details)
        row = (self.seq, rfc3339(at), type_, "bench-bot", "ca-1", "success", target,
               sha256_hex(details_json))  # fmt: skip
        digest = _body_hash(self.prev, row, details_json)
        self.events.append((*row, details_json.decode(), self.prev, digest))
        self.prev = digest

    def flush(self) -> None:
        names = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        self.conn.executemany(f"INSERT INTO certificates ({names}) VALUES ({marks})", self.certs)  # noqa: S608
        self.conn.executemany("INSERT INTO certificate_sha1 VALUES (?, ?)", self.sha1)
        self.conn.executemany("INSERT INTO revocations VALUES (?, ?, ?)", self.revocations)
        self.conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", self.events)
        self.certs, self.sha1, self.revocations, self.events = [], [], [], []

    def build(self) -> None:
        identities = WORKFLOWS * INSTANCES
        per_identity = max(1, self.total // identities)
        self.pick_round = per_identity // 2
        period = SPAN / per_identity
        slot = period / identities
        template = dict(zip(self.columns, self.template, strict=True))
        last_of: dict[int, int] = {}
        next_crl = START + timedelta(hours=1)
        pending_revocations: list[tuple[datetime, int, str]] = []
        made = 0
        for round_ in range(per_identity):
            for ident in range(identities):
                if made >= self.total:
                    break
                at = START + round_ * period + ident * slot
                while next_crl <= at:
                    self.event(next_crl, "crl.published", f"authority:{self.issuer}",
                               {"authority": self.issuer, "number": 0, "entries": 0})  # fmt: skip
                    next_crl += timedelta(hours=1)
                while pending_revocations and pending_revocations[0][0] <= at:
                    when, cert_id, serial = pending_revocations.pop(0)
                    self.revocations.append((cert_id, rfc3339(when), "key-compromise"))
                    details = {"certificate_id": cert_id, "serial": serial,
                               "reason": "key-compromise", "revoked_at": rfc3339(when)}
                    self.event(when, "certificate.revoked", f"certificate:{serial}", details)
                self._certificate(template, round_, ident, at, last_of, pending_revocations)
                made += 1
            if len(self.events) > 200_000:
                self.flush()
        self.flush()

    def _certificate(
        self,
        template: dict[str, Any],
        round_: int,
        ident: int,
        at: datetime,
        last_of: dict[int, int],
        pending_revocations: list[tuple[datetime, int, str]],
    ) -> None:
        cert_id = self.next_id
        self.next_id += 1
        workflow, instance = f"wf{ident // INSTANCES}", f"i{ident % INSTANCES}"
        spiffe_id = f"spiffe://{self.trust_domain}/agent/{workflow}/{instance}"
        serial = "4" + secrets.token_hex(20)[1:]  # 40 hex digits, like a 159-bit serial
        replaces = last_of.get(ident)
        revoked = cert_id % 100 == 0
        row = {
            **template,
            "id": cert_id,
            "serial": serial,
            "authority_id": self.authority_id,
            "fingerprint": "sha256:" + secrets.token_hex(32),
            "sans": json.dumps([f"URI:{spiffe_id}"]),
            "spiffe_id": spiffe_id,
            "workflow": workflow,
            "not_before": rfc3339(at - timedelta(seconds=60)),
            "not_after": rfc3339(at + TTL - timedelta(seconds=1)),
            "issued_at": rfc3339(at),
            "replaces_id": replaces,
            "status": "revoked" if revoked else "valid",
        }
        self.certs.append(tuple(row[c] for c in self.columns))
        self.sha1.append((cert_id, secrets.token_hex(20)))
        last_of[ident] = cert_id
        kind = "certificate.renewed" if replaces is not None else "certificate.issued"
        self.event(at, kind, f"certificate:{serial}",
                   {"certificate_id": cert_id, "serial": serial, "fingerprint": row["fingerprint"],
                    "profile": "agent", "issuer": self.issuer, "subject": "",
                    "spiffe_id": spiffe_id, "not_after": row["not_after"],
                    "replaces_id": replaces})  # fmt: skip
        for n in range(TOKENS_PER_CERT):
            self.event(at + timedelta(seconds=n + 1), "token.used", f"token:{cert_id}-{n}",
                       {"spiffe_id": spiffe_id, "token_id": f"t{cert_id}-{n}"})  # fmt: skip
        if revoked:
            pending_revocations.append((at + timedelta(hours=1), cert_id, serial))
        if ident == 7 * INSTANCES + 3 and round_ == self.pick_round:
            self.picked = {"id": cert_id, "serial": serial, "fingerprint": row["fingerprint"],
                           "spiffe_id": spiffe_id, "workflow": workflow, "at": at,
                           "issuer": self.issuer}  # fmt: skip


def build_ledger(path: Path, total: int) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('certificates', 'events', 'certificate_sha1')"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("BEGIN")
    builder = Builder(conn, total)
    builder.build()
    # Every certificate renewed since is superseded (as the issuance transaction does).
    conn.execute(
        "UPDATE certificates SET status = 'superseded' WHERE status = 'valid' AND id IN"
        " (SELECT replaces_id FROM certificates WHERE replaces_id IS NOT NULL)"
    )
    from cyphrs_cli.ledger.records import pem_sha1

    picked = builder.picked
    real_sha1 = pem_sha1(dict(zip(builder.columns, builder.template, strict=True))["pem"])
    conn.execute(  # the picked certificate's SHA-1 row is the real digest of its PEM
        "UPDATE certificate_sha1 SET sha1 = ? WHERE certificate_id = ?", (real_sha1, picked["id"])
    )
    picked["sha1"] = real_sha1
    conn.execute("COMMIT")
    for _, sql in indexes:
        conn.execute(sql)
    # No ANALYZE: cyphrs never runs it, so the planner works without statistics here too.
    counts = {
        "certificates": conn.execute("SELECT count(*) FROM certificates").fetchone()[0],
        "events": conn.execute("SELECT count(*) FROM events").fetchone()[0],
    }
    conn.close()
    return {**picked, **counts}


def measurements(home: Path, picked: dict[str, Any], runs: int) -> Iterator[dict[str, Any]]:
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.queries import CertificateFilter, iter_certificates
    from cyphrs_cli.service import investigation as inv

    ca = CaHome(home)
    ledger = sqlite3.connect(home / "ledger.sqlite3")
    at = picked["at"] + timedelta(hours=2)
    at_text = rfc3339(at)
    since, until = picked["at"] - timedelta(hours=1), picked["at"] + timedelta(hours=1)
    window = (rfc3339(since), rfc3339(until))

    def valid_at(**filters: Any) -> Callable[[], int]:
        def run() -> int:
            from cyphrs_cli.ca.hierarchy import open_ledger

            with open_ledger(ca) as opened:
                criteria = CertificateFilter(valid_at=at, **filters)
                return sum(1 for _ in iter_certificates(opened.conn, criteria, at))

        return run

    def bare(sql: str, *args: Any) -> Callable[[], int]:
        return lambda: len(ledger.execute(sql, args).fetchall())

    def found(request: inv.FindRequest) -> Callable[[], int]:
        return lambda: len(inv.find(ca, request).certificates)

    def timeline(kind: str, value: str) -> Callable[[], int]:
        scope = inv.TimelineScope(kind, value)
        return lambda: len(inv.timeline(ca, inv.TimelineRequest(scope, since, until)).events)

    serial = picked["serial"]
    cases = [
        ("list --valid-at T --workflow wf7", valid_at(workflow=picked["workflow"]),
         bare("SELECT id FROM certificates WHERE workflow = ? AND not_after >= ?"
              " AND issued_at <= ?", picked["workflow"], at_text, at_text)),
        ("list --valid-at T (whole fleet)", valid_at(),
         bare("SELECT id FROM certificates WHERE not_after >= ? AND issued_at <= ?",
              at_text, at_text)),
        ("find --fingerprint sha256:...", found(inv.FindRequest(fingerprint=picked["fingerprint"])),
         bare("SELECT * FROM certificates WHERE fingerprint = ?", picked["fingerprint"])),
        ("find --fingerprint <sha1>", found(inv.FindRequest(fingerprint=picked["sha1"])),
         bare("SELECT certificate_id FROM certificate_sha1 WHERE sha1 = ?", picked["sha1"])),
        ("find --serial <hex>", found(inv.FindRequest(serial=serial)),
         bare("SELECT * FROM certificates WHERE serial = ?", serial)),
        ("find --serial <decimal>", found(inv.FindRequest(serial=str(int(serial, 16)))),
         bare("SELECT * FROM certificates WHERE serial = ?", serial)),
        ("find --serial <12-digit prefix>", found(inv.FindRequest(serial=serial[:12])),
         bare("SELECT id FROM certificates WHERE serial >= ? AND serial < ? LIMIT 11",
              serial[:12], serial[:12] + "~")),
        ("find --spiffe-id (its ~100 certificates)",
         found(inv.FindRequest(spiffe_id=picked["spiffe_id"])),
         bare("SELECT * FROM certificates WHERE spiffe_id = ?", picked["spiffe_id"])),
        ("timeline --spiffe-id, 2 h window", timeline("spiffe_id", picked["spiffe_id"]),
         bare("SELECT * FROM events WHERE at >= ? AND at < ?", *window)),
        ("timeline --workflow, 2 h window", timeline("workflow", picked["workflow"]),
         bare("SELECT * FROM events WHERE at >= ? AND at < ?", *window)),
        ("timeline --issuer, 2 h window", timeline("issuer", picked["issuer"]),
         bare("SELECT * FROM events WHERE at >= ? AND at < ?", *window)),
        ("timeline --serial, 2 h window", timeline("serial", serial),
         bare("SELECT * FROM events WHERE at >= ? AND at < ?", *window)),
    ]  # fmt: skip
    for name, fn, floor in cases:
        ms, answer = _ms(fn, runs)
        floor_ms, floor_rows = _ms(floor, runs)
        yield {
            "query": name,
            "ms": ms,
            "answer_rows": answer,
            "bare_sql_ms": floor_ms,
            "bare_sql_rows": floor_rows,
            "ratio": round(ms / floor_ms, 1) if floor_ms else None,
        }


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    # BENCH_KEEP=DIR builds into DIR and keeps it; a second run with the same DIR measures
    # the ledger already there (the build takes minutes at 1M/5M).
    keep = os.environ.get("BENCH_KEEP")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(keep) if keep else Path(tmp)
        home = base / "home"
        env = {**os.environ, "CYPHRS_HOME": str(home), "CI": "true"}
        saved = base / "picked.json"
        if saved.exists():
            picked = json.loads(saved.read_text())
            picked["at"] = datetime.fromisoformat(picked["at"])
            built_s = None
        else:
            ca = demo_hierarchy(base)
            subprocess.run(
                [CYPHRS, "issue", "agent", "--workflow", "seed", "--json", "--passphrase-file",
                 ca["inter_pass"]],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            start = time.perf_counter()
            picked = build_ledger(home / "ledger.sqlite3", total)
            built_s = round(time.perf_counter() - start, 1)
            saved.write_text(json.dumps({**picked, "at": picked["at"].isoformat()}))
        size_mib = round((home / "ledger.sqlite3").stat().st_size / 2**20)
        print(json.dumps({"certificates": picked["certificates"], "events": picked["events"],
                          "build_s": built_s, "ledger_mib": size_mib}), flush=True)  # fmt: skip
        for row in measurements(home, picked, runs):
            print(json.dumps(row), flush=True)
        since = rfc3339(picked["at"] - timedelta(hours=1))
        until = rfc3339(picked["at"] + timedelta(hours=1))
        for name, argv in (
            ("cyphrs find --fingerprint (whole process)",
             [CYPHRS, "find", "--fingerprint", picked["fingerprint"], "--json"]),
            ("cyphrs timeline --spiffe-id, 2 h (whole process)",
             [CYPHRS, "timeline", "--spiffe-id", picked["spiffe_id"], "--since", since,
              "--until", until, "--json"]),
            ("cyphrs --version (process start-up floor)", [CYPHRS, "--version"]),
        ):  # fmt: skip
            print(json.dumps({"command": name, **time_command(argv, runs, env)}), flush=True)


if __name__ == "__main__":
    main()
