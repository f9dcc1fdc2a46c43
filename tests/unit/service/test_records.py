"""The read-only record use cases, called without the CLI on a real ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.errors import ExitCode, NotFoundError
from cyphrs_cli.ledger.event_log import EventFilter
from cyphrs_cli.service.records import (
    home_authorities,
    ledger_records,
    read_events,
    recorded_pem,
)
from tests.helpers import Hierarchy, cli


def _stranger() -> x509.Certificate:
    """A self-signed certificate this home never recorded."""
    from datetime import UTC, datetime, timedelta

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stranger")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )


def test_records_of_a_home(fresh_hierarchy: Hierarchy) -> None:
    home = CaHome(fresh_hierarchy.home)
    serial = fresh_hierarchy.issue_serial("agent", "--workflow", "records")
    pem = recorded_pem(home, serial)
    (cert,) = x509.load_pem_x509_certificates(pem)
    assert f"{cert.serial_number:x}".zfill(len(serial)) == serial
    assert recorded_pem(home, serial[:12]) == pem  # an unambiguous prefix names it
    with pytest.raises(NotFoundError) as missing:
        recorded_pem(home, "7" * 40)
    assert missing.value.exit_code == ExitCode.NOT_FOUND

    authorities, oid = home_authorities(home)
    assert len(authorities) == 2 and oid  # root and intermediate, as recorded
    mine, stranger = ledger_records(home, [cert, _stranger()])
    assert mine is not None and mine["recorded"] and mine["status"] == "valid"
    assert stranger == {"recorded": False}
    done = cli("revoke", "--serial", serial, "--reason", "key-compromise", "--home", str(home.root))
    assert done.exit_code == 0, done.stderr
    (revoked,) = ledger_records(home, [cert])
    assert revoked is not None and revoked["status"] == "revoked"
    assert revoked["reason"] == "key-compromise"

    events = read_events(home, EventFilter(types=("certificate.issued",)))
    assert f"certificate:{serial}" in {e["target"] for e in events}
    assert read_events(home, EventFilter(actor="nobody-ran-this")) == []


def test_no_home_means_no_records(tmp_path: Path) -> None:
    home = CaHome(tmp_path / "not-a-home")
    assert home_authorities(home) == ([], None)
    assert ledger_records(home, [_stranger()]) == [None]
    with pytest.raises(NotFoundError):
        read_events(home, EventFilter())
