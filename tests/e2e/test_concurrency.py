"""Four processes issuing and revoking at once against one ledger file."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, cli

WORKERS, OPERATIONS = 4, 250


def _worker(home: str, passphrase: str, worker: int, operations: int) -> tuple[int, list[str]]:
    """Each operation issues an agent certificate; every other one also revokes it."""
    from cyphrs_cli.ca.hierarchy import load_issuer, open_ledger
    from cyphrs_cli.ca.issuance import issue_leaf
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.ca.revocation import revoke_certificate
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.config.settings import load_config
    from cyphrs_cli.ledger.records import find_certificate
    from cyphrs_cli.profiles.model import get_profile

    ca_home = CaHome(Path(home))
    config = load_config(ca_home)
    profile = get_profile(None, "agent")
    errors: list[str] = []
    done = 0
    with open_ledger(ca_home) as ledger:
        issuer = load_issuer(ca_home, config, ledger, None, lambda _: passphrase.encode())
        for i in range(operations):
            try:
                request, _ = prepare_request(
                    LeafOrder(profile="agent", workflow=f"w{worker}", instance=f"i{i}"),
                    profile,
                    issuer.trust_domain,
                )
                issued = issue_leaf(ledger, issuer, profile, request)
                if i % 2:
                    revoke_certificate(
                        ledger, find_certificate(ledger.conn, serial=issued.serial), None
                    )
                done += 1
            except Exception as exc:  # collect, so the test can say what went wrong
                errors.append(f"{type(exc).__name__}: {exc}")
    return done, errors


@pytest.mark.slow
def test_concurrent_issue_and_revoke(fresh_hierarchy: Hierarchy) -> None:
    h = fresh_hierarchy
    passphrase = h.inter_pass.read_text().strip()
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(
            _worker, [(str(h.home), passphrase, w, OPERATIONS) for w in range(WORKERS)]
        )
    errors = [e for _, errs in results for e in errs]
    assert errors == [], errors[:5]
    assert sum(done for done, _ in results) == WORKERS * OPERATIONS
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        leaves = conn.execute(
            "SELECT count(*), count(DISTINCT serial) FROM certificates WHERE is_ca = 0"
        ).fetchone()
        revoked = conn.execute("SELECT count(*) FROM revocations").fetchone()[0]
        spiffe = conn.execute(
            "SELECT count(DISTINCT spiffe_id) FROM certificates WHERE is_ca = 0"
        ).fetchone()[0]
    assert leaves == (WORKERS * OPERATIONS, WORKERS * OPERATIONS)
    assert spiffe == WORKERS * OPERATIONS
    assert revoked == WORKERS * OPERATIONS // 2
    verified = cli("audit", "verify", "--json", "--home", str(h.home))
    assert verified.exit_code == 0, verified.stdout
