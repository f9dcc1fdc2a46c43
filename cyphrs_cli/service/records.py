"""Read-only use cases over a home's ledger for the commands that show records:
``inspect --serial`` (the recorded PEM), ``inspect`` (the home's CAs and claims OID, and
each certificate's ledger record, so a revoked one reads revoked) and ``audit events`` (the
event log, filtered). They open the
ledger, read, close; nothing is signed, recorded or unlocked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.ledger.event_log import EventFilter


def recorded_pem(home: CaHome, serial: str) -> bytes:
    """The PEM of the certificate(s) with ``serial`` (or an unambiguous prefix of it).

    Raises:
        CyphrsError: 6 not a CA home or no such serial, 7 an ambiguous prefix, 3 a bad serial.
    """
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.ca.serials import parse_serial, serial_prefix
    from cyphrs_cli.errors import NotFoundError
    from cyphrs_cli.ledger.records import certificates_by_serial, find_certificate

    home.require_initialised()
    with open_ledger(home) as ledger:
        rows = certificates_by_serial(ledger.conn, parse_serial(serial))
        prefix = serial_prefix(serial)
        if not rows and prefix is not None:  # an unambiguous prefix names one certificate
            rows = [find_certificate(ledger.conn, serial=parse_serial(serial), prefix=prefix)]
    if not rows:
        raise NotFoundError(f"no certificate with serial {serial} in the ledger")
    return "".join(r["pem"] for r in rows).encode()


def home_authorities(home: CaHome) -> tuple[list[x509.Certificate], str | None]:
    """This home's CA certificates and claims OID, as the ledger records them (not the
    files in certs/, which are only caches); nothing when there is no home."""
    from cryptography import x509

    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.config.trust import recorded_claims_oid

    if not home.is_initialised():
        return [], None
    with open_ledger(home) as ledger:
        rows = ledger.conn.execute(
            "SELECT c.pem FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
        ).fetchall()
        oid = recorded_claims_oid(ledger.conn)
    return [x509.load_pem_x509_certificate(str(r["pem"]).encode()) for r in rows], oid


def ledger_records(home: CaHome, certs: list[x509.Certificate]) -> list[dict[str, Any] | None]:
    """The ledger's record of each certificate (``{"recorded": False}`` when unknown); all
    None when ``home`` is not a CA home, so ``inspect`` works on any machine."""
    if not home.is_initialised():
        return [None for _ in certs]
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.ca.issuance import fingerprint
    from cyphrs_cli.ledger.queries import ledger_record

    with open_ledger(home) as ledger:
        return [ledger_record(ledger.conn, fingerprint(cert)) for cert in certs]


def read_events(home: CaHome, where: EventFilter) -> list[dict[str, Any]]:
    """``audit events``: the events ``where`` selects, oldest first.

    Raises:
        CyphrsError: 6 not a CA home, 8 an unusable ledger.
    """
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.ledger.event_log import iter_events

    home.require_initialised()
    with open_ledger(home) as ledger:
        return list(iter_events(ledger.conn, where))
