"""Expiry horizons: CA certificates about to end, CRLs past (or near) their nextUpdate,
revocations not yet on any CRL.

A CRL past its nextUpdate makes nginx and Python ``ssl`` (with CRL checking) refuse
*every* client, not only the revoked ones; a CA that expires takes every leaf with it.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

from cyphrs_cli.checks.model import CheckContext, Finding, Severity
from cyphrs_cli.durations import format_duration
from cyphrs_cli.ledger.events import rfc3339
from cyphrs_cli.times import parse_time


def _when(text: object) -> datetime:
    return parse_time(str(text))


def check(context: CheckContext) -> list[Finding]:
    findings: list[Finding] = []
    now, horizon = context.now, context.thresholds
    for authority in context.authorities():
        if authority["not_after"] is None or authority["status"] == "revoked":
            continue
        name, role = str(authority["name"]), str(authority["role"])
        left = _when(authority["not_after"]) - now
        renew = (
            "cyphrs init-root --name ... in a new home, then cross-sign or redeploy trust"
            if role == "root"
            else f"cyphrs create-intermediate --name ... (then move issuance off {name!r})"
        )
        if left.total_seconds() <= 0:
            findings.append(
                Finding(
                    id="expiry.ca_expired",
                    severity=Severity.CRITICAL,
                    title=f"{role} CA {name!r} expired at {authority['not_after']}",
                    why="every certificate below it is invalid",
                    fix=renew,
                    subject=name,
                )
            )
        elif left <= horizon.ca_expiry:
            findings.append(
                Finding(
                    id="expiry.ca_expiring",
                    severity=Severity.HIGH,
                    title=f"{role} CA {name!r} expires in {format_duration(left)}"
                    f" ({authority['not_after']})",
                    why="leaves are clamped to their issuer's end, so lifetimes shrink, and"
                    " at the end every certificate below it stops working at once",
                    fix=renew,
                    subject=name,
                )
            )
        findings.extend(_crl_findings(context, authority["id"], name, role))
    for path in context.crl_files:
        findings.extend(_deployed_crl_findings(context, path))
    return findings


def _crl_findings(context: CheckContext, authority_id: int, name: str, role: str) -> list[Finding]:
    assert context.conn is not None
    newest = context.conn.execute(
        "SELECT number, this_update, next_update, pem FROM crls WHERE authority_id = ?"
        " ORDER BY number DESC LIMIT 1",
        (authority_id,),
    ).fetchone()
    revoked = {
        str(serial)
        for (serial,) in context.conn.execute(
            "SELECT c.serial FROM revocations r JOIN certificates c ON c.id = r.certificate_id"
            " WHERE c.authority_id = ? AND c.not_after >= ?",  # expired ones leave CRLs
            (authority_id, rfc3339(context.now)),
        )
    }
    unpublished = len(revoked - _listed_serials(newest))
    publish = f"cyphrs crl --issuer {name} --passphrase-file FILE --out {name}.crl.pem"
    findings: list[Finding] = []
    if newest is None:
        if unpublished:
            findings.append(
                Finding(
                    id="crl.revocations_unpublished",
                    severity=Severity.HIGH,
                    title=f"{unpublished} revocation(s) by {name!r} are on no CRL:"
                    " no CRL was ever published",
                    why="a relying party cannot learn of a revocation that is on no CRL",
                    fix=publish,
                    subject=name,
                )
            )
        elif role == "intermediate":
            findings.append(
                Finding(
                    id="crl.none",
                    severity=Severity.LOW,
                    title=f"issuing CA {name!r} has never published a CRL",
                    why="services that check CRLs need one from every CA in the chain",
                    fix=publish + "  (and schedule it: see cyphrs crl --help)",
                    subject=name,
                )
            )
        return findings
    left = _when(newest["next_update"]) - context.now
    if left.total_seconds() <= 0:
        findings.append(
            Finding(
                id="crl.past_next_update",
                severity=Severity.HIGH,
                title=f"the CRL of {name!r} (number {newest['number']}) passed its nextUpdate"
                f" {newest['next_update']}",
                why="nginx and Python ssl with CRL checking refuse every client once a CRL in"
                " the chain is past its nextUpdate",
                fix=publish + "  (and run it from a timer well before nextUpdate)",
                subject=name,
            )
        )
    elif left <= context.thresholds.crl_expiry:
        findings.append(
            Finding(
                id="crl.expiring",
                severity=Severity.MEDIUM,
                title=f"the CRL of {name!r} reaches its nextUpdate in {format_duration(left)}",
                why="after nextUpdate, services checking CRLs refuse every client",
                fix=publish,
                subject=name,
            )
        )
    if unpublished:
        findings.append(
            Finding(
                id="crl.revocations_unpublished",
                severity=Severity.MEDIUM,
                title=f"{unpublished} revocation(s) by {name!r} came after its newest CRL",
                why="until the next CRL is published and deployed, the revoked certificates"
                " still work",
                fix=publish,
                subject=name,
            )
        )
    return findings


def _listed_serials(crl_row: Any) -> set[str]:
    """The serials (ledger hex form) on a stored CRL; none when there is no CRL."""
    if crl_row is None or crl_row["pem"] is None:
        return set()
    from cryptography import x509

    from cyphrs_cli.ca.serials import serial_hex

    crl = x509.load_pem_x509_crl(str(crl_row["pem"]).encode())
    return {serial_hex(entry.serial_number) for entry in crl}


_PEM_CRL_END = "-----END X509 CRL-----"


def _deployed_crl_findings(context: CheckContext, path: Path) -> list[Finding]:
    """A CRL file a service loads (``crl --all``'s output): unreadable, a CRL in it past
    its nextUpdate, or a CA of this home whose CRL is missing from it."""
    from cryptography import x509

    fix = f"cyphrs crl --all --out {shlex.quote(str(path))} --force, then reload the service"
    try:
        text = path.read_text(encoding="ascii")
        crls = [
            x509.load_pem_x509_crl((block + _PEM_CRL_END).encode())
            for block in text.split(_PEM_CRL_END)
            if "-----BEGIN X509 CRL-----" in block
        ]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [
            Finding(
                id="crl.deployed_unreadable",
                severity=Severity.HIGH,
                title=f"the deployed CRL file {path} cannot be read ({exc})",
                why="a service that cannot load its CRL file refuses to start or every client",
                fix=fix,
                subject=str(path),
            )
        ]
    findings: list[Finding] = []
    for crl in crls:
        next_update = crl.next_update_utc
        if next_update is not None and next_update <= context.now:
            findings.append(
                Finding(
                    id="crl.deployed_past_next_update",
                    severity=Severity.CRITICAL,
                    title=f"{path} holds the CRL of {crl.issuer.rfc4514_string()}, past its"
                    f" nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ}",
                    why="nginx and Python ssl refuse every client while a CRL in the chain is"
                    " past its nextUpdate",
                    fix=fix,
                    subject=str(path),
                )
            )
    issuers = {crl.issuer for crl in crls}
    for authority in context.authorities():
        if authority["pem"] is None or authority["status"] == "revoked":
            continue
        subject = x509.load_pem_x509_certificate(str(authority["pem"]).encode()).subject
        if subject not in issuers:
            findings.append(
                Finding(
                    id="crl.deployed_missing_ca",
                    severity=Severity.HIGH,
                    title=f"{path} has no CRL of CA {authority['name']!r}",
                    why="with chain CRL checking (nginx ssl_crl, Python VERIFY_CRL_CHECK_CHAIN)"
                    " a missing CRL of any CA in the chain refuses every client",
                    fix=fix,
                    subject=str(path),
                )
            )
    return findings
