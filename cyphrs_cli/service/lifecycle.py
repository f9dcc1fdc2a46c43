"""Use cases after issuance: is renewal due, renew, revoke, publish the CRL.

The decisions the CLI used to make live here: when a renewal is due (a share of the
lifetime passed, or revoked), which key a renewal gets, how long a CRL is valid by
default (30 days for a root, 24 hours otherwise), and that allocating, signing,
recording and storing a CRL is one step under the home lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

    from cyphrs_cli.ca.revocation import Revocation
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import (
        CertificateTarget,
        CrlRequest,
        CrlResult,
        IssueResult,
        RenewalCheck,
        RenewalCheckRequest,
        RenewRequest,
        RevokeRequest,
    )

ROOT_CRL_VALIDITY_DAYS = 30
CRL_VALIDITY_HOURS = 24


def find_target(conn: sqlite3.Connection, target: CertificateTarget) -> sqlite3.Row:
    """The ledger row named by serial or by certificate bytes, exactly one (else exit 2)."""
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ca.parsing import load_certificates
    from cyphrs_cli.ca.serials import parse_serial
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.ledger.records import find_certificate

    if (target.serial is None) == (target.certificate is None):
        raise UsageError("name the certificate by file (or -) or by --serial, exactly one")
    if target.serial is not None:
        return find_certificate(conn, serial=parse_serial(target.serial))
    assert target.certificate is not None
    cert = load_certificates(target.certificate, source=target.source)[0]
    return find_certificate(conn, fingerprint=fingerprint(cert))


def check_renewal(authority: Authority, request: RenewalCheckRequest) -> RenewalCheck:
    """Due once ``due_fraction`` of the lifetime has passed, or at once when revoked."""
    from cyphrs_cli.ca.renewal import renewal_due_at
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.requests import RenewalCheck

    if not 0.01 <= request.due_fraction <= 1.0:  # also refuses NaN
        raise UsageError("--due-fraction must be a number from 0.01 to 1")
    row = find_target(authority.ledger.conn, request.target)
    due_at = renewal_due_at(row, request.due_fraction)
    now = request.at or utc_now()
    due = now >= due_at or row["status"] == "revoked"
    return RenewalCheck(str(row["serial"]), due, due_at, str(row["status"]))


def renew(authority: Authority, request: RenewRequest) -> IssueResult:
    """Issue the successor of the target through the one issuance path, signed by the CA
    that signed the target; the old certificate becomes ``superseded`` in the same
    transaction.

    Raises:
        CyphrsError: 2 a CA certificate or a contradictory request, 7 already renewed or
            revoked, or an existing output without ``force``; and as ``issue``.
    """
    from cyphrs_cli.ca.delivery import check_output_dir
    from cyphrs_cli.ca.issuance import issue_leaf
    from cyphrs_cli.ca.renewal import check_renewable, renewal_request
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.service.issuing import deliver

    if request.reuse_key and request.csr_pem is not None:
        raise UsageError("--reuse-key and --csr exclude each other")
    conn = authority.ledger.conn
    row = find_target(conn, request.target)
    mode = request.public_key_mode
    if request.out_dir is not None:
        check_output_dir(request.out_dir, with_key=mode == "new", force=request.force)
    check_renewable(row, conn)
    leaf, private_key = renewal_request(
        row,
        public_key_mode=mode,
        csr_pem=request.csr_pem,
        ttl=request.ttl,
        requester=request.requester,
    )
    signed_by = conn.execute(
        "SELECT name FROM authorities WHERE id = ?", (row["authority_id"],)
    ).fetchone()
    issuer = authority.signing_issuer(str(signed_by["name"]))
    profile = authority.profile(str(row["profile"]))
    issued = issue_leaf(authority.ledger, issuer, profile, leaf)
    return deliver(issued, private_key, request.out_dir, replaces=str(row["serial"]))


def revoke(authority: Authority, request: RevokeRequest) -> Revocation:
    """Record the revocation at once (listed on the issuer's next CRL)."""
    from cyphrs_cli.ca.revocation import revoke_certificate

    row = find_target(authority.ledger.conn, request.target)
    return revoke_certificate(authority.ledger, row, request.reason)


def publish(authority: Authority, request: CrlRequest) -> CrlResult:
    """Sign, record and store the issuer's next CRL, as one step under the home lock:
    a slower publisher can never replace a newer CRL with an older one (exit 7)."""
    from cyphrs_cli.fsutil import home_lock

    name = request.issuer or authority.issuer_name
    authority.signing_issuer(name)  # unlocked before the lock is taken
    with home_lock(authority.home.root):
        return publish_locked(authority, request)


def publish_locked(authority: Authority, request: CrlRequest) -> CrlResult:
    """``publish`` for a caller that already holds the home lock (``service.status``
    re-checks freshness under it before publishing)."""
    from datetime import timedelta

    from cyphrs_cli.ca.revocation import publish_crl, store_crl
    from cyphrs_cli.service.requests import CrlResult

    name = request.issuer or authority.issuer_name
    entry = authority.config.issuer(name)
    validity = request.validity or (
        timedelta(days=ROOT_CRL_VALIDITY_DAYS)
        if entry.role == "root"
        else timedelta(hours=CRL_VALIDITY_HOURS)
    )
    issuer = authority.signing_issuer(name)
    assert issuer.certificate is not None
    published = publish_crl(authority.ledger, issuer, validity)
    stored = store_crl(authority.home, published, issuer.certificate)
    return CrlResult(published, stored)
