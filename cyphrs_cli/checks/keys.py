"""Key checks: where the CA keys are, and whether they are strong enough.

A root key that sits next to an issuing key is the classic mistake: one compromised
host then yields the whole hierarchy, and no revocation can help. An issuing key that is
missing means the next ``issue`` fails. CA keys below RSA 3072 (or an RSA leaf still
valid below it) fall short of the 128-bit level the rest of the hierarchy has.
"""

from __future__ import annotations

import shlex

from cyphrs_cli.checks.model import CheckContext, Finding, Severity
from cyphrs_cli.numerals import is_decimal

#: Below this an RSA key is under the ~128-bit security level (NIST SP 800-57).
MIN_RSA_BITS = 3072


def _file_key_path(context: CheckContext, key_uri: str) -> str | None:
    if not key_uri.startswith("file:"):
        return None
    return str(context.home.resolve(key_uri.removeprefix("file:")))


def _rsa_bits(algorithm: str) -> int | None:
    if algorithm.startswith("rsa") and is_decimal(algorithm[3:]):
        return int(algorithm[3:])
    return None


def check(context: CheckContext) -> list[Finding]:
    from pathlib import Path

    findings: list[Finding] = []
    authorities = context.authorities()
    issuing_here = any(
        a["role"] == "intermediate"
        and (path := _file_key_path(context, str(a["key_uri"]))) is not None
        and Path(path).is_file()
        for a in authorities
    ) or any(
        a["role"] == "intermediate" and str(a["key_uri"]).startswith("pkcs11:") for a in authorities
    )
    for authority in authorities:
        name, role, uri = str(authority["name"]), str(authority["role"]), str(authority["key_uri"])
        path = _file_key_path(context, uri)
        present = path is not None and Path(path).is_file()
        if role == "root" and issuing_here and present:
            assert path is not None
            findings.append(
                Finding(
                    id="keys.root_online",
                    severity=Severity.HIGH,
                    title=f"the root key of {name!r} is on this issuing host",
                    why="whoever takes this host can mint new intermediates; keep the root"
                    " offline and bring it out only to sign intermediates and root CRLs",
                    fix=f"copy {shlex.quote(path)} to offline media, verify the copy, then"
                    f" shred -u {shlex.quote(path)} (later intermediates: cyphrs"
                    " sign-intermediate on the offline host)",
                    subject=path,
                )
            )
        if role == "intermediate" and path is not None and not present:
            findings.append(
                Finding(
                    id="keys.issuing_key_missing",
                    severity=Severity.CRITICAL,
                    title=f"the key of issuing CA {name!r} is missing ({path})",
                    why="nothing can be issued, renewed or put on a CRL by this CA",
                    fix=f"restore {shlex.quote(path)} from backup (mode 0600), or create a new"
                    " intermediate: cyphrs create-intermediate ...",
                    subject=path,
                )
            )
        bits = _rsa_bits(str(authority["key_algorithm"]))
        if bits is not None and bits < MIN_RSA_BITS and authority["status"] != "revoked":
            findings.append(
                Finding(
                    id="keys.weak_ca_rsa",
                    severity=Severity.HIGH,
                    title=f"CA {name!r} has an RSA-{bits} key",
                    why="a CA key outlives its leaves by years; below RSA-3072 it is under"
                    " the 128-bit level (NIST SP 800-57) the rest of the hierarchy has",
                    fix=f"cyphrs create-intermediate --key-type p256 ... (then retire {name!r})"
                    if role == "intermediate"
                    else "build a new root with cyphrs init-root --key-type p384",
                    subject=name,
                )
            )
    if context.conn is not None:
        (weak,) = context.conn.execute(
            "SELECT count(*) FROM certificates c LEFT JOIN revocations r"
            " ON r.certificate_id = c.id WHERE c.is_ca = 0 AND r.certificate_id IS NULL"
            " AND c.key_algorithm IN ('rsa1024', 'rsa2048') AND c.not_after > ?",
            (_rfc3339(context),),
        ).fetchone()
        if weak:
            findings.append(
                Finding(
                    id="keys.weak_leaf_rsa",
                    severity=Severity.LOW,
                    title=f"{weak} valid certificate(s) carry RSA keys below {MIN_RSA_BITS} bits",
                    why="short-lived leaves limit the exposure, but new keys should be"
                    " P-256 or RSA-3072 and up",
                    fix="renew them with a new key: cyphrs renew CERT --out-dir DIR"
                    " (or reissue with --key-type p256)",
                )
            )
    return findings


def _rfc3339(context: CheckContext) -> str:
    from cyphrs_cli.ledger.events import rfc3339

    return rfc3339(context.now)
