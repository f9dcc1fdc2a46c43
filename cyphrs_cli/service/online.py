"""Use cases authenticated by a presented client certificate (mTLS): renew yourself, revoke
yourself, and prove you are an administrator.

The TLS layer has already verified the presented chain against the home's roots; here the
ledger decides. The presented leaf is looked up by its SHA-256 fingerprint: a certificate
the ledger does not know (another CA, or a forgery that somehow chained) is refused, and so
is one that is expired, revoked or already renewed -- whatever the TLS layer accepted.
Renewal keeps the identity (names, SPIFFE ID, agent claims, profile, issuing CA), takes the
new public key from a CSR (the agent's key never leaves it), goes through
``Authority.commit_leaf`` (group commit when serving) and marks the predecessor
``superseded`` in the same transaction (ledger ``replaces``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cyphrs_cli.errors import PolicyDenied

if TYPE_CHECKING:
    import sqlite3
    from datetime import timedelta

    from cyphrs_cli.ca.revocation import Revocation
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import IssueResult


def presented_row(authority: Authority, presented_der: bytes) -> sqlite3.Row:
    """The ledger row of the presented certificate, which must be a leaf valid right now.

    Raises:
        PolicyDenied: no certificate presented (``mtls.required``), not one of this
            ledger's (``mtls.unknown-certificate``), a CA certificate (``mtls.ca``),
            expired (``mtls.expired``), or issued by a CA whose own certificate (or an
            ancestor's) is revoked (``mtls.issuer-revoked``).
    """
    from cryptography import x509

    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    if not presented_der:
        raise PolicyDenied(
            "this operation needs a client certificate (mTLS)",
            rule="mtls.required",
            hint="connect with the current certificate and key (curl --cert cert.pem --key key)",
        )
    try:
        cert = x509.load_der_x509_certificate(presented_der)
    except ValueError as exc:
        raise PolicyDenied(
            "the presented client certificate cannot be parsed", rule="mtls.unparsable"
        ) from exc
    row = authority.ledger.conn.execute(
        "SELECT * FROM certificates WHERE fingerprint = ?", (fingerprint(cert),)
    ).fetchone()
    if row is None:
        raise PolicyDenied(
            "the presented client certificate is not in this CA's ledger",
            rule="mtls.unknown-certificate",
        )
    if row["is_ca"]:
        raise PolicyDenied("a CA certificate cannot authenticate a client", rule="mtls.ca")
    if str(row["not_after"]) < rfc3339(utc_now()):
        raise PolicyDenied(
            f"the presented certificate {row['serial']} expired at {row['not_after']}",
            rule="mtls.expired",
            hint="enroll again with a new token",
        )
    revoked_ca = _revoked_issuer(authority.ledger.conn, row["authority_id"])
    if revoked_ca is not None:
        # The TLS layer checks no CRL: a leaf under a revoked CA still chains to the root.
        raise PolicyDenied(
            f"the presented certificate {row['serial']} was issued by {revoked_ca!r},"
            " whose certificate is revoked",
            rule="mtls.issuer-revoked",
            hint="enroll again under a current issuer",
        )
    found: sqlite3.Row = row
    return found


def _revoked_issuer(conn: sqlite3.Connection, authority_id: int | None) -> str | None:
    """The name of the first CA up the chain from ``authority_id`` whose own certificate
    is revoked, or None. Bounded by the depth of the hierarchy (a cycle stops it too)."""
    seen: set[int] = set()
    while authority_id is not None and authority_id not in seen:
        seen.add(authority_id)
        found = conn.execute(
            "SELECT a.name, a.parent_id, c.status FROM authorities a"
            " LEFT JOIN certificates c ON c.id = a.certificate_id WHERE a.id = ?",
            (authority_id,),
        ).fetchone()
        if found is None:
            return None
        if found["status"] == "revoked":
            return str(found["name"])
        authority_id = found["parent_id"]
    return None


def renew_presented(
    authority: Authority, presented_der: bytes, csr_pem: bytes, *, ttl: timedelta | None = None
) -> IssueResult:
    """Issue the successor of the presented certificate for the CSR's public key.

    Raises:
        CyphrsError: 5 as ``presented_row`` or a policy refusal of the renewal (recorded),
            7 the certificate is revoked or was already renewed (also when a concurrent
            renewal won the race), 3 a bad CSR, 8 a ledger failure.
    """
    from cyphrs_cli.ca.renewal import check_renewable, lifetime, renewal_request
    from cyphrs_cli.durations import format_duration
    from cyphrs_cli.service.issuing import deliver

    row = presented_row(authority, presented_der)
    conn = authority.ledger.conn
    granted = lifetime(row)
    if ttl is not None and ttl > granted:
        # Self-service renewal must not outgrow what was granted (a token's max TTL is
        # not in the row; the predecessor's lifetime carries it).
        raise PolicyDenied(
            f"a renewal lives at most as long as the certificate it replaces"
            f" ({format_duration(granted)}); asked for {format_duration(ttl)}",
            rule="renew.ttl",
            hint="omit ttl to keep the current lifetime; enroll again for a longer one",
        )
    if row["status"] == "superseded":
        answered = _answer_again(authority, row, csr_pem)
        if answered is not None:
            return answered
    check_renewable(row, conn)
    leaf, _ = renewal_request(
        row,
        public_key_mode="csr",
        csr_pem=csr_pem,
        ttl=ttl,
        # The claims keep who asked for the identity originally.
        requester=row["requester"],
    )
    signed_by = conn.execute(
        "SELECT name FROM authorities WHERE id = ?", (row["authority_id"],)
    ).fetchone()
    profile = authority.profile(str(row["profile"]))
    issued = authority.commit_leaf(profile, leaf, issuer=str(signed_by["name"]))
    return deliver(issued, None, None, replaces=str(row["serial"]))


def _answer_again(authority: Authority, row: sqlite3.Row, csr_pem: bytes) -> IssueResult | None:
    """The recorded successor of ``row`` when the CSR is for the successor's own key: the
    answer to a renewal that the agent never got (the connection dropped after the
    commit, the agent crashed or its disk was full before it installed the files).

    Without this, such an agent holds a superseded certificate that can never renew
    again. Handing the successor back gives nothing new: the caller proved it holds the
    old key (mTLS) and, by the CSR's self-signature, the successor's key, and the
    certificate itself is public. Nothing is issued; a ``certificate.redelivered`` event
    records that it was handed out again. None (the caller refuses as before) when there
    is no successor, its key differs, the CSR's signature does not verify, or the
    successor is no longer valid (revoked, expired, or renewed in turn).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.ca.issuance import fault_point
    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.ca.parsing import checked_csr, parse_csr
    from cyphrs_cli.config.trust import anchored_authority
    from cyphrs_cli.errors import InvalidInputError
    from cyphrs_cli.ledger.events import LedgerEvent, append_event
    from cyphrs_cli.service.issuing import deliver

    conn = authority.ledger.conn
    successor = conn.execute(
        "SELECT c.*, a.name AS issuer_name FROM certificates c"
        " JOIN authorities a ON a.id = c.authority_id WHERE c.replaces_id = ?",
        (row["id"],),
    ).fetchone()
    if successor is None or not _still_valid(conn, successor["id"]):
        return None
    certificate = x509.load_pem_x509_certificate(str(successor["pem"]).encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        csr = parse_csr(csr_pem, source="CSR")
        if csr.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
            der, spki
        ):
            return None
        checked_csr(csr, source="CSR")  # proof that the caller holds the successor's key
    except InvalidInputError:
        return None
    anchored = anchored_authority(
        authority.home, authority.config, conn, str(successor["issuer_name"])
    )
    fault_point("answer-again")  # tests: a revocation slipped in here must win
    with authority.ledger.transaction() as tx:
        # Decided again under the writer lock: a revocation or a renewal of the
        # successor committed since the first look must win.
        if not _still_valid(tx, successor["id"]):
            return None
        append_event(
            tx,
            LedgerEvent(
                type="certificate.redelivered",
                target=f"certificate:{successor['serial']}",
                details={
                    "certificate_id": successor["id"],
                    "serial": successor["serial"],
                    "fingerprint": successor["fingerprint"],
                    "presented_serial": row["serial"],
                },
            ),
        )
    issued = IssuedCertificate(
        certificate=certificate,
        record_id=int(successor["id"]),
        serial=str(successor["serial"]),
        fingerprint=str(successor["fingerprint"]),
        profile=str(successor["profile"]),
        issuer_name=str(successor["issuer_name"]),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        clamped=False,
        spiffe_id=successor["spiffe_id"],
        chain=(anchored.certificate, *anchored.parents),
        authority_id=int(successor["authority_id"]),
    )
    return deliver(issued, None, None, replaces=str(row["serial"]))


def _still_valid(conn: sqlite3.Connection, certificate_id: int) -> bool:
    """Whether the certificate is neither revoked, renewed in turn, nor expired."""
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    found = conn.execute(
        "SELECT status, not_after FROM certificates WHERE id = ?", (certificate_id,)
    ).fetchone()
    return (
        found is not None
        and found["status"] == "valid"
        and str(found["not_after"]) >= rfc3339(utc_now())
    )


def revoke_presented(authority: Authority, presented_der: bytes, reason: str | None) -> Revocation:
    """Revoke the presented certificate (self-revocation; 7 when already revoked)."""
    from cyphrs_cli.ca.revocation import revoke_certificate

    row = presented_row(authority, presented_der)
    return revoke_certificate(authority.ledger, row, reason)


def admin_identity(authority: Authority, presented_der: bytes, *, profile: str = "admin") -> str:
    """Who the administrator is (their certificate's subject, or SPIFFE ID, and serial).

    Raises:
        PolicyDenied: as ``presented_row``; a certificate of another profile
            (``admin.profile``: agents are never administrators) or not valid any more
            (``admin.status``: revoked or superseded).
    """
    row = presented_row(authority, presented_der)
    if row["profile"] != profile:
        raise PolicyDenied(
            f"certificate {row['serial']} (profile {row['profile']!r}) is not an"
            f" administrator certificate (profile {profile!r})",
            rule="admin.profile",
        )
    if row["status"] != "valid":
        raise PolicyDenied(
            f"administrator certificate {row['serial']} is {row['status']}", rule="admin.status"
        )
    name = row["spiffe_id"] or row["subject"]
    return f"{name} (serial {row['serial']})"


def server_certificate(
    authority: Authority,
    *,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    ttl: str,
) -> IssueResult:
    """The serving process's own TLS certificate (profile ``server``), its key generated
    here and returned in memory only, issued and recorded like any other leaf."""
    from cyphrs_cli.ca.orders import LeafOrder, prepare_request
    from cyphrs_cli.service.issuing import deliver

    profile = authority.profile("server")
    order = LeafOrder(
        "server",
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        ttl=ttl,
        requester="cyphrs serve",
    )
    leaf, private_key = prepare_request(order, profile, authority.facts.trust_domain)
    issued = authority.commit_leaf(profile, leaf)
    return deliver(issued, private_key, None)


def readiness(authority: Authority) -> dict[str, str]:
    """Can this authority issue right now: the ledger answers a read (and no sync of the
    serving loop's commits has failed: ``Ledger.sync_committed``), and the issuing key
    signs a probe that verifies against the issuer's certificate. Each check says ``ok``
    or why not; nothing is recorded."""
    import secrets

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    from cyphrs_cli.errors import CyphrsError

    checks: dict[str, str] = {}
    try:
        authority.ledger.conn.execute("SELECT 1 FROM events LIMIT 1").fetchone()
        committer = authority.group_committer
        failure = committer.sync_failure() if committer is not None else None
        checks["ledger"] = "ok" if failure is None else f"unavailable: {failure}"
    except Exception as exc:  # any failure means "not ready", with its reason
        checks["ledger"] = f"unavailable: {exc}"
    try:
        issuer = authority.issuer
        if issuer.revoked:
            raise CyphrsError(f"issuer {issuer.name} is revoked")
        assert issuer.certificate is not None
        probe = secrets.token_bytes(32)
        key, public = issuer.signer, issuer.certificate.public_key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert isinstance(public, ec.EllipticCurvePublicKey)
            ecdsa = ec.ECDSA(hashes.SHA256())
            public.verify(key.sign(probe, ecdsa), probe, ecdsa)
        elif isinstance(key, rsa.RSAPrivateKey):
            assert isinstance(public, rsa.RSAPublicKey)
            signature = key.sign(probe, padding.PKCS1v15(), hashes.SHA256())
            public.verify(signature, probe, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            assert isinstance(public, ed25519.Ed25519PublicKey)
            public.verify(key.sign(probe), probe)
        checks["key"] = "ok"
    except Exception as exc:
        checks["key"] = f"unusable: {type(exc).__name__}: {exc}"
    return checks
