"""The status service against real oracles: ``openssl ocsp`` makes the requests and verifies
the responses (delegated signature up to the root, good / revoked / unknown), pkilint lints
every response and the responder certificate, ``openssl verify -crl_check`` reads the CRL.

Attacks: garbage, truncated and oversized requests, over-long and empty nonces, several
CertIDs, a foreign CA, the root's own CertID, a revoked responder certificate, time moved
past the renewal point, and many threads asking while the responder is renewed.
"""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.requests import CertificateTarget, CrlRequest, RevokeRequest
from cyphrs_cli.service.status import StatusService
from tests.helpers import INTER_PASS, Hierarchy, build_hierarchy, pkilint_findings


@pytest.fixture(scope="module")
def status_ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    """A hierarchy of its own: these tests revoke certificates."""
    return build_hierarchy(tmp_path_factory.mktemp("ocsp"), "p256")


@pytest.fixture(scope="module")
def authority(status_ca: Hierarchy) -> Iterator[Authority]:
    with status_ca.authority() as opened:
        yield opened


def _agent(h: Hierarchy, out: Path, workflow: str = "status") -> Path:
    done = h.issue("agent", "--workflow", workflow, "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return out / "cert.pem"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _request(h: Hierarchy, cert: Path, out: Path, *extra: str) -> bytes:
    req = out / "req.der"
    # A digest option applies to the -cert options after it.
    _openssl("ocsp", *extra, "-issuer", str(h.inter_cert), "-cert", str(cert), "-reqout", str(req))
    return req.read_bytes()


def _verify(
    h: Hierarchy, response: bytes, out: Path, cert: Path | None, *extra: str, digest: str = "-sha1"
) -> subprocess.CompletedProcess[str]:
    """openssl checks the response: signature by a delegated responder that chains to
    the root, nonce against the request (when -reqin), the status of ``cert``."""
    resp = out / "resp.der"
    resp.write_bytes(response)
    args = ["openssl", "ocsp", "-respin", str(resp), "-issuer", str(h.inter_cert)]
    args += ["-CAfile", str(h.root_cert), "-resp_text"]
    if cert is not None:
        # With -cert openssl builds its own request (with a nonce of its own unless
        # -no_nonce): the nonce check is the -reqin form's job (``_verify_nonce``).
        args += [digest, "-cert", str(cert), "-no_nonce"]
    return subprocess.run(args + list(extra), capture_output=True, text=True, check=False)


def _verify_nonce(h: Hierarchy, response: bytes, out: Path) -> subprocess.CompletedProcess[str]:
    """openssl checks the response against the request it made (``out/req.der``): the
    signature, and that the nonce it sent is the one echoed."""
    return _verify(h, response, out, None, "-reqin", str(out / "req.der"))


def _lint(response: bytes, out: Path) -> list[str]:
    path = out / "lint.der"
    path.write_bytes(response)
    return pkilint_findings("lint_ocsp_response", str(path))


@pytest.mark.parametrize("digest", ["-sha1", "-sha256"])
@pytest.mark.parametrize("nonce", ["-nonce", "-no_nonce"])
def test_good_answer_verifies_with_openssl(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path, digest: str, nonce: str
) -> None:
    cert = _agent(status_ca, tmp_path / "a")
    request = _request(status_ca, cert, tmp_path, digest, nonce)
    answer = authority.ocsp_response(request)
    assert answer.status == "good" and answer.issuer == "test-inter"
    assert answer.nonce == (nonce == "-nonce") and answer.cacheable == (nonce == "-no_nonce")
    with_nonce = _verify_nonce(status_ca, answer.der, tmp_path)
    assert with_nonce.returncode == 0, with_nonce.stderr
    assert "Response verify OK" in with_nonce.stderr
    checked = _verify(status_ca, answer.der, tmp_path, cert, digest=digest)
    assert checked.returncode == 0, checked.stderr
    assert "Response verify OK" in checked.stderr
    assert f"{cert}: good" in checked.stdout
    assert f"Hash Algorithm: {digest[1:]}" in checked.stdout
    assert "OCSP No Check" in checked.stdout  # the responder certificate travels in certs
    assert ("OCSP Nonce" in checked.stdout) == (nonce == "-nonce")
    assert _lint(answer.der, tmp_path) == []
    parsed = ocsp.load_der_ocsp_response(answer.der)
    assert parsed.next_update_utc - parsed.this_update_utc == timedelta(hours=1)
    assert parsed.responder_key_hash is not None and parsed.responder_name is None


def test_revoked_answer_carries_ledger_time_and_reason(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "revoked-one")
    revocation = authority.revoke(
        RevokeRequest(CertificateTarget(certificate=cert.read_bytes()), "key-compromise")
    )
    answer = authority.ocsp_response(_request(status_ca, cert, tmp_path))
    assert answer.status == "revoked"
    assert _verify_nonce(status_ca, answer.der, tmp_path).returncode == 0
    checked = _verify(status_ca, answer.der, tmp_path, cert)
    assert checked.returncode == 0, checked.stderr
    assert "Response verify OK" in checked.stderr
    assert f"{cert}: revoked" in checked.stdout
    assert "Reason: keyCompromise" in checked.stdout
    parsed = ocsp.load_der_ocsp_response(answer.der)
    assert parsed.revocation_time_utc == revocation.revoked_at.replace(microsecond=0)
    assert parsed.revocation_reason == x509.ReasonFlags.key_compromise
    assert _lint(answer.der, tmp_path) == []


def test_revoked_without_reason_omits_it(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "revoked-two")
    authority.revoke(RevokeRequest(CertificateTarget(certificate=cert.read_bytes()), None))
    answer = authority.ocsp_response(_request(status_ca, cert, tmp_path, "-no_nonce"))
    assert answer.status == "revoked"
    assert ocsp.load_der_ocsp_response(answer.der).revocation_reason is None
    assert _lint(answer.der, tmp_path) == []


def test_serial_never_issued_is_unknown(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    req = tmp_path / "req.der"
    _openssl(
        "ocsp", "-issuer", str(status_ca.inter_cert), "-serial", "0x1234abcd", "-reqout", str(req)
    )
    answer = authority.ocsp_response(req.read_bytes())
    assert answer.status == "unknown"
    checked = _verify(status_ca, answer.der, tmp_path, None, "-reqin", str(req))
    assert checked.returncode == 0, checked.stderr
    assert "Response verify OK" in checked.stderr
    assert "Cert Status: unknown" in checked.stdout
    assert _lint(answer.der, tmp_path) == []


def test_serial_of_another_issuer_is_unknown_under_this_one(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    """The intermediate's own serial exists in the ledger, but the intermediate did not
    issue it: asked under the intermediate's CertID, it is unknown (RFC 6960 2.2)."""
    inter = x509.load_pem_x509_certificate(status_ca.inter_cert.read_bytes())
    req = tmp_path / "req.der"
    _openssl(
        "ocsp",
        "-issuer",
        str(status_ca.inter_cert),
        "-serial",
        hex(inter.serial_number),
        "-reqout",
        str(req),
    )
    assert authority.ocsp_response(req.read_bytes()).status == "unknown"


def test_foreign_ca_is_unauthorized(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    other = build_hierarchy(tmp_path / "other", "p256")
    cert = _agent(other, tmp_path / "a")
    req = tmp_path / "req.der"
    _openssl("ocsp", "-issuer", str(other.inter_cert), "-cert", str(cert), "-reqout", str(req))
    answer = authority.ocsp_response(req.read_bytes())
    assert answer.status == "unauthorized"
    checked = _verify(status_ca, answer.der, tmp_path, None)
    assert "unauthorized (6)" in checked.stdout + checked.stderr
    assert _lint(answer.der, tmp_path) == []


def test_root_certid_without_root_key_is_unauthorized(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    """This authority holds only the intermediate's passphrase: the (offline) root cannot
    get a responder, so questions about what the root issued are not ours to answer."""
    req = tmp_path / "req.der"
    _openssl(
        "ocsp",
        "-issuer",
        str(status_ca.root_cert),
        "-cert",
        str(status_ca.inter_cert),
        "-reqout",
        str(req),
    )
    assert authority.ocsp_response(req.read_bytes()).status == "unauthorized"
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        failed = conn.execute("SELECT count(*) FROM events WHERE type='key.unlock_failed'")
        before = failed.fetchone()[0]
    # Asked again at once: the refusal is remembered, no new unlock attempt is recorded.
    assert authority.ocsp_response(req.read_bytes()).status == "unauthorized"
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        failed = conn.execute("SELECT count(*) FROM events WHERE type='key.unlock_failed'")
        assert failed.fetchone()[0] == before


def _nonce_request(openssl_request: bytes, nonce: bytes) -> bytes:
    """openssl's request (its CertID) again, with a nonce openssl would not make."""
    parsed = ocsp.load_der_ocsp_request(openssl_request)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        parsed.issuer_name_hash, parsed.issuer_key_hash, parsed.serial_number, parsed.hash_algorithm
    )
    builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda h, req: b"", id="empty"),
        pytest.param(lambda h, req: b"\x30\x03\x02\x01\x01garbage", id="garbage"),
        pytest.param(lambda h, req: req[:-7], id="truncated"),
        pytest.param(lambda h, req: req + b"\x00", id="trailing-byte"),
        pytest.param(lambda h, req: b"\x30" + b"\x82\xff\xff" + b"A" * 70000, id="huge"),
        pytest.param(lambda h, req: _nonce_request(req, b"n" * 33), id="nonce-33-octets"),
        pytest.param(lambda h, req: _nonce_request(req, b""), id="nonce-empty"),
    ],
)
def test_malformed_requests_get_malformed_request(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path, make: object
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "malformed")
    request = make(status_ca, _request(status_ca, cert, tmp_path))  # type: ignore[operator]
    answer = authority.ocsp_response(request)
    assert answer.status == "malformed"
    checked = _verify(status_ca, answer.der, tmp_path, None)
    assert "malformedrequest (1)" in (checked.stdout + checked.stderr).lower()
    assert _lint(answer.der, tmp_path) == []


def test_nonce_of_32_octets_is_echoed(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "nonce-32")
    request = _nonce_request(_request(status_ca, cert, tmp_path, "-no_nonce"), b"\x07" * 32)
    answer = authority.ocsp_response(request)
    assert answer.status == "good" and answer.nonce and not answer.cacheable
    nonce = ocsp.load_der_ocsp_response(answer.der).extensions.get_extension_for_class(
        x509.OCSPNonce
    )
    assert nonce.value.nonce == b"\x07" * 32


def ocsp_request_ids(der: bytes) -> list[object]:
    """The CertIDs in a request, counted by asn1crypto (cryptography refuses several)."""
    from asn1crypto import ocsp as asn1_ocsp

    return list(asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"])


def test_several_certids_are_malformed(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    one = _agent(status_ca, tmp_path / "a", "multi-a")
    two = _agent(status_ca, tmp_path / "b", "multi-b")
    req = tmp_path / "req.der"
    _openssl(
        "ocsp",
        "-issuer",
        str(status_ca.inter_cert),
        "-cert",
        str(one),
        "-cert",
        str(two),
        "-reqout",
        str(req),
    )
    assert len(ocsp_request_ids(req.read_bytes())) == 2
    assert authority.ocsp_response(req.read_bytes()).status == "malformed"


def test_get_form_decodes_like_post(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "get-form")
    request = _request(status_ca, cert, tmp_path, "-no_nonce")
    encoded = base64.b64encode(request).decode()
    for form in (quote(encoded, safe=""), encoded, base64.urlsafe_b64encode(request).decode()):
        answer = authority.ocsp_get_response(form)
        assert answer.status == "good", form
    assert authority.ocsp_get_response("%%%not-base64!!").status == "malformed"
    assert authority.ocsp_get_response("A" * 20000).status == "malformed"


def test_responder_certificate_profile_and_lint(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    _agent(status_ca, tmp_path / "a", "responder-lint")
    authority.ocsp_response(_request(status_ca, tmp_path / "a" / "cert.pem", tmp_path))
    responder = authority.status.responder_certificate("test-inter")
    assert responder is not None
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    usage = responder.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        responder.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    lifetime = responder.not_valid_after_utc - responder.not_valid_before_utc
    assert lifetime <= timedelta(hours=24)
    path = tmp_path / "responder.pem"
    path.write_bytes(responder.public_bytes(serialization.Encoding.PEM))
    assert pkilint_findings("lint_pkix_cert", str(path)) == []
    assert (
        pkilint_findings("lint_pkix_signer_signee_cert_chain", str(status_ca.inter_cert), str(path))
        == []
    )
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        row = conn.execute(
            "SELECT profile, key_storage, spiffe_id FROM certificates WHERE fingerprint = ?",
            ("sha256:" + responder.fingerprint(hashes.SHA256()).hex(),),
        ).fetchone()
    assert tuple(row) == ("ocsp-responder", "memory", None)


def test_responder_key_never_touches_disk(status_ca: Hierarchy, tmp_path: Path) -> None:
    before = sorted(p.name for p in status_ca.home.rglob("*") if p.is_file())
    with status_ca.authority() as ca:
        cert = _agent(status_ca, tmp_path / "a", "no-key-file")
        assert ca.ocsp_response(_request(status_ca, cert, tmp_path)).status == "good"
        assert ca.status.responder_certificate("test-inter") is not None
    after = sorted(p.name for p in status_ca.home.rglob("*") if p.is_file())
    assert [name for name in after if name not in before and "ledger" not in name] == []


def test_revoked_responder_is_replaced(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "responder-revoked")
    request = _request(status_ca, cert, tmp_path, "-no_nonce")
    authority.ocsp_response(request)
    old = authority.status.responder_certificate("test-inter")
    assert old is not None
    authority.revoke(
        RevokeRequest(
            CertificateTarget(certificate=old.public_bytes(serialization.Encoding.PEM)),
            "key-compromise",
        )
    )
    answer = authority.ocsp_response(request)
    new = authority.status.responder_certificate("test-inter")
    assert new is not None and new.serial_number != old.serial_number
    assert ocsp.load_der_ocsp_response(answer.der).certificates[0] == new


class _Clock:
    """Controlled time for the status service: real time plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_responder_renewed_when_a_third_of_its_life_is_left(
    status_ca: Hierarchy, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "renewal")
    request = _request(status_ca, cert, tmp_path, "-no_nonce")
    clock = _Clock()
    with status_ca.authority() as ca:
        service = StatusService(ca, clock=clock)
        assert service.ocsp_response(request).status == "good"
        first = service.responder_certificate("test-inter")
        assert first is not None
        clock.offset = timedelta(hours=15)  # 9 h of 24 left: more than a third, keep it
        service.ocsp_response(request)
        assert service.responder_certificate("test-inter") == first
        clock.offset = timedelta(hours=16, minutes=5)  # less than a third left: renew
        answer = service.ocsp_response(request)
        second = service.responder_certificate("test-inter")
        assert second is not None and second.serial_number != first.serial_number
        assert ocsp.load_der_ocsp_response(answer.der).certificates[0] == second
        clock.offset = timedelta(0)
        checked = _verify(status_ca, service.ocsp_response(request).der, tmp_path, cert)
        assert checked.returncode == 0 and "Response verify OK" in checked.stderr
        assert f"{cert}: good" in checked.stdout
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        for responder in (first, second):
            (profile,) = conn.execute(
                "SELECT profile FROM certificates WHERE fingerprint = ?",
                ("sha256:" + responder.fingerprint(hashes.SHA256()).hex(),),
            ).fetchone()
            assert profile == "ocsp-responder"


def test_threads_keep_answering_while_the_responder_is_renewed(
    status_ca: Hierarchy, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "threads")
    request = _request(status_ca, cert, tmp_path, "-no_nonce")
    clock = _Clock()
    answers: list[bytes] = []
    errors: list[BaseException] = []
    with status_ca.authority() as ca:
        service = StatusService(ca, clock=clock)
        service.ocsp_response(request)
        first = service.responder_certificate("test-inter")
        assert first is not None
        start = threading.Barrier(8)

        def ask() -> None:
            try:
                start.wait(timeout=30)
                for _ in range(15):
                    answers.append(service.ocsp_response(request).der)
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        clock.offset = timedelta(hours=17)  # every thread sees a renewal due
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and len(answers) == 8 * 15
        signers = set()
        responders: list[x509.Certificate] = []
        for der in answers:
            parsed = ocsp.load_der_ocsp_response(der)
            assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
            responder = parsed.certificates[0]
            responder.public_key().verify(  # type: ignore[union-attr,call-arg]
                parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(hashes.SHA256())
            )
            signers.add(responder.serial_number)
            responders.append(responder)
        # Every signer is a responder certificate the intermediate issued; a renewal
        # happened while the threads were answering.
        inter = x509.load_pem_x509_certificate(status_ca.inter_cert.read_bytes())
        for responder in responders:
            responder.verify_directly_issued_by(inter)
        assert signers - {first.serial_number}, "no answer was signed by a renewed responder"
        assert service.responder_certificate("test-inter") != first


def test_current_crl_marks_revoked_for_openssl_verify(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "crl-revoked")
    authority.revoke(
        RevokeRequest(CertificateTarget(certificate=cert.read_bytes()), "key-compromise")
    )
    clock = _Clock()
    clock.offset = timedelta(hours=13)  # any CRL published before is past half its life
    service = StatusService(authority, clock=clock)
    der = service.current_crl("test-inter")
    crl = x509.load_der_x509_crl(der)
    assert crl.get_revoked_certificate_by_serial_number(
        x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    )
    pem = tmp_path / "crl.pem"
    pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    checked = subprocess.run(
        [
            *("openssl", "verify", "-crl_check", "-CAfile", str(status_ca.root_cert)),
            *("-untrusted", str(status_ca.inter_cert), "-CRLfile", str(pem), str(cert)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode != 0
    assert "error 23" in checked.stdout + checked.stderr
    assert pkilint_findings("lint_crl", "-t", "CRL", "-p", "PKIX", str(pem)) == []


def test_current_crl_is_reused_while_fresh_and_numbers_go_up(
    status_ca: Hierarchy, authority: Authority
) -> None:
    clock = _Clock()
    service = StatusService(authority, clock=clock)
    first = x509.load_der_x509_crl(service.current_crl("test-inter"))
    again = x509.load_der_x509_crl(service.current_crl("test-inter"))
    assert again == first  # fresh: served from the ledger, nothing published
    clock.offset = timedelta(hours=12, minutes=1)  # past half of 24 h
    later = x509.load_der_x509_crl(service.current_crl("test-inter"))
    number = later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    first_number = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first_number


def test_concurrent_crl_requests_publish_once(status_ca: Hierarchy, authority: Authority) -> None:
    clock = _Clock()
    service = StatusService(authority, clock=clock)
    # The stored CRL lives one minute; 31 s later it is past half its validity, while
    # the one published then (24 h) is fresh for every thread that comes after.
    authority.crl(CrlRequest(validity=timedelta(minutes=1), issuer="test-inter"))
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        (before,) = conn.execute("SELECT count(*) FROM crls").fetchone()
    clock.offset = timedelta(seconds=31)
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(service.current_crl("test-inter")))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        (after,) = conn.execute("SELECT count(*) FROM crls").fetchone()
    # Single flight: the threads that waited find the new CRL fresh and serve it.
    assert after == before + 1
    assert len(set(results)) == 1


def test_ca_certificates_and_trust_bundle(status_ca: Hierarchy, authority: Authority) -> None:
    from cyphrs_cli.errors import NotFoundError

    inter = x509.load_pem_x509_certificate(status_ca.inter_cert.read_bytes())
    assert x509.load_der_x509_certificate(authority.ca_certificate("test-inter")) == inter
    roots = x509.load_pem_x509_certificates(authority.trust_bundle())
    assert roots == [x509.load_pem_x509_certificate(status_ca.root_cert.read_bytes())]
    with pytest.raises(NotFoundError):
        authority.ca_certificate("../../etc/passwd")
    with pytest.raises(NotFoundError):
        authority.current_crl("nope")


def test_offline_root_crl_is_served_until_next_update(
    status_ca: Hierarchy, authority: Authority
) -> None:
    """The root's key is not unlockable here: its CRL, published where the key is (the
    CLI with the root's passphrase), is served even past half its life, until nextUpdate;
    after that there is no current CRL (exit 6), never a failed unlock per request."""
    from cyphrs_cli.errors import NotFoundError
    from tests.helpers import cli

    clock = _Clock()
    service = StatusService(authority, clock=clock)
    done = cli(
        *("crl", "--issuer", "test-root", "--home", str(status_ca.home)),
        *("--passphrase-file", str(status_ca.root_pass), "--json"),
    )
    assert done.exit_code == 0, done.stderr
    published = x509.load_pem_x509_crl(Path(done.json()["crl"]["path"]).read_bytes())
    clock.offset = timedelta(days=16)  # past half of 30 days: it would be republished
    assert x509.load_der_x509_crl(service.current_crl("test-root")) == published
    with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
        unlocks = conn.execute("SELECT count(*) FROM events WHERE type='key.unlock_failed'")
        before = unlocks.fetchone()[0]
    assert x509.load_der_x509_crl(service.current_crl("test-root")) == published

    def failed_unlocks() -> int:
        with sqlite3.connect(status_ca.home / "ledger.sqlite3") as conn:
            rows = conn.execute("SELECT count(*) FROM events WHERE type='key.unlock_failed'")
            return int(rows.fetchone()[0])

    assert failed_unlocks() == before  # never tried
    clock.offset = timedelta(days=31)  # expired; the retry interval has passed too
    for _ in range(3):
        with pytest.raises(NotFoundError):
            service.current_crl("test-root")
    assert failed_unlocks() == before  # a root's key is never tried online


def test_the_online_ca_never_unlocks_a_root_even_when_it_could(
    status_ca: Hierarchy, tmp_path: Path
) -> None:
    """An authority given the root's passphrase too (a reused passphrase, or a provider
    that answers for every key): anonymous requests for the root's CRL, or OCSP questions
    about what the root issued, must not bring the root key online (found by the eighth
    stop's review). Answered from the ledger or refused; the key is never loaded."""
    from cyphrs_cli.config.home import CaHome
    from cyphrs_cli.errors import NotFoundError
    from cyphrs_cli.service.status import StatusService

    root_secret = status_ca.root_pass.read_bytes().strip()
    inter_secret = status_ca.inter_pass.read_bytes().strip()
    asked: list[str] = []

    def secrets(purpose: str) -> bytes:
        asked.append(purpose)
        return root_secret if "root" in purpose else inter_secret

    req = tmp_path / "req.der"
    _openssl("ocsp", "-issuer", str(status_ca.root_cert), "-cert", str(status_ca.inter_cert),
             "-reqout", str(req))  # fmt: skip
    with Authority.open(CaHome(status_ca.home), secrets=secrets) as opened:
        service = StatusService(opened, clock=_Clock())
        service._clock = lambda: datetime.now(UTC) + timedelta(days=400)  # every CRL stale
        assert opened.ocsp_response(req.read_bytes()).status == "unauthorized"
        with pytest.raises(NotFoundError, match="no current CRL"):
            service.current_crl("test-root")
        assert "test-root" not in opened._issuers
    assert not [purpose for purpose in asked if "root" in purpose], asked


def test_every_issuer_key_type_gets_a_verifiable_responder(
    any_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """P-256, P-384, RSA-3072 and Ed25519 intermediates each sign a responder certificate
    that openssl accepts (the responder's own key is P-256 whatever the issuer's)."""
    h = any_hierarchy
    cert = _agent(h, tmp_path / "a", f"keytype-{tmp_path.name[-8:]}")
    secret = INTER_PASS.encode()
    with Authority.open(CaHome(h.home), secrets=lambda _: secret) as ca:
        answer = ca.ocsp_response(_request(h, cert, tmp_path))
    assert answer.status == "good"
    assert _verify_nonce(h, answer.der, tmp_path).returncode == 0
    checked = _verify(h, answer.der, tmp_path, cert)
    assert checked.returncode == 0 and "Response verify OK" in checked.stderr, checked.stderr
    assert f"{cert}: good" in checked.stdout
    assert _lint(answer.der, tmp_path) == []


def test_negative_serial_is_malformed(
    status_ca: Hierarchy, authority: Authority, tmp_path: Path
) -> None:
    cert = _agent(status_ca, tmp_path / "a", "negative")
    from asn1crypto import ocsp as asn1_ocsp

    # cryptography refuses to build a negative serial; asn1crypto edits openssl's request.
    edited = asn1_ocsp.OCSPRequest.load(_request(status_ca, cert, tmp_path, "-no_nonce"))
    edited["tbs_request"]["request_list"][0]["req_cert"]["serial_number"] = -5
    request = edited.dump(force=True)
    assert ocsp.load_der_ocsp_request(request).serial_number == -5
    answer = authority.ocsp_response(request)
    assert answer.status == "malformed" and answer.serial is None


def test_revoked_issuer_answers_with_its_own_key(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A revoked intermediate may not sign a new responder certificate; the statuses of
    what it issued stay available, signed by the CA itself (RFC 6960 4.2.2.2)."""
    h = fresh_hierarchy
    cert = _agent(h, tmp_path / "a", "under-revoked-ca")
    request = _request(h, cert, tmp_path, "-no_nonce")
    inter = x509.load_pem_x509_certificate(h.inter_cert.read_bytes())
    with h.authority() as ca:
        ca.revoke(RevokeRequest(CertificateTarget(serial=format(inter.serial_number, "x"))))
        answer = ca.ocsp_response(request)
        assert ca.status.responder_certificate("test-inter") == inter
    assert answer.status == "good"
    parsed = ocsp.load_der_ocsp_response(answer.der)
    assert parsed.certificates == [] and parsed.responder_key_hash == (
        x509.SubjectKeyIdentifier.from_public_key(inter.public_key()).digest
    )
    checked = _verify(h, answer.der, tmp_path, cert)
    assert checked.returncode == 0 and "Response verify OK" in checked.stderr, checked.stderr
    assert _lint(answer.der, tmp_path) == []  # certs absent, not an empty sequence
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        responders = conn.execute(
            "SELECT count(*) FROM certificates WHERE profile = ?", ("ocsp-responder",)
        )
        assert responders.fetchone()[0] == 0
