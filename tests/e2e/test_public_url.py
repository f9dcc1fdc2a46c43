"""The home's public URL: recorded trust state that puts AIA and CRL distribution points
into what is signed. Attacked: config.toml edited behind the ledger's back, URLs that
are not plain http(s) bases, and a clear that must take the extensions away again."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from tests.helpers import Hierarchy, build_hierarchy, cli, openssl_verify, pkilint_findings

URL = "https://ca.acme.example:8443"


@pytest.fixture(scope="module")
def untouched_ca(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    """A hierarchy whose public URL is never set (refusals only)."""
    return build_hierarchy(tmp_path_factory.mktemp("public-url"), "p256")


def _set(h: Hierarchy, *args: str) -> dict[str, object]:
    done = cli("config", "public-url", *args, "--home", str(h.home), "--json")
    assert done.exit_code == 0, done.stderr
    result: dict[str, object] = done.json()
    return result


def _issue(h: Hierarchy, out: Path, workflow: str = "aia") -> x509.Certificate:
    done = h.issue("agent", "--workflow", workflow, "--out-dir", str(out))
    assert done.exit_code == 0, done.stderr
    return x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())


def _urls(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not aia.critical and not cdp.critical
    ocsp = [
        d.access_location.value
        for d in aia.value
        if d.access_method == AuthorityInformationAccessOID.OCSP
    ]
    issuers = [
        d.access_location.value
        for d in aia.value
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    ]
    crls = [name.value for point in cdp.value for name in point.full_name or ()]
    return ocsp, issuers, crls


def test_no_public_url_no_extensions(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    assert _set(fresh_hierarchy) == {
        "schema": "cyphrs.config-public-url/v1",
        "url": None,
        "changed": False,
    }
    cert = _issue(fresh_hierarchy, tmp_path / "a")
    for kind in (x509.AuthorityInformationAccess, x509.CRLDistributionPoints):
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(kind)


def test_public_url_puts_aia_and_cdp_in_leaves_and_intermediates(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    assert _set(h, URL + "/")["url"] == URL  # recorded without the trailing slash
    assert _set(h, URL)["changed"] is False
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        events = conn.execute("SELECT count(*) FROM events WHERE type='home.public_url_set'")
        assert events.fetchone()[0] == 1
    assert f'public_url = "{URL}"' in (h.home / "config.toml").read_text()

    cert = _issue(h, tmp_path / "a")
    assert _urls(cert) == (
        [f"{URL}/ocsp"],
        [f"{URL}/v1/ca/test-inter.der"],
        [f"{URL}/v1/crl/test-inter.crl"],
    )
    leaf = tmp_path / "a" / "cert.pem"
    assert pkilint_findings("lint_pkix_cert", str(leaf)) == []
    assert (
        pkilint_findings("lint_pkix_signer_signee_cert_chain", str(h.inter_cert), str(leaf)) == []
    )
    assert openssl_verify(h.root_cert, h.inter_cert, leaf, "sslclient").returncode == 0
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(leaf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"OCSP - URI:{URL}/ocsp" in text and f"URI:{URL}/v1/crl/test-inter.crl" in text

    done = cli(
        "create-intermediate",
        *("--name", "Second Issuing CA", "--alias", "second", "--trust-domain", "acme.internal"),
        *("--home", str(h.home), "--passphrase-file", str(h.inter_pass)),
        *("--root-passphrase-file", str(h.root_pass)),
    )
    assert done.exit_code == 0, done.stderr
    second = h.home / "certs" / "second.pem"
    inter = x509.load_pem_x509_certificate(second.read_bytes())
    assert _urls(inter) == (
        [f"{URL}/ocsp"],
        [f"{URL}/v1/ca/test-root.der"],
        [f"{URL}/v1/crl/test-root.crl"],
    )
    assert pkilint_findings("lint_pkix_cert", str(second)) == []
    assert (
        pkilint_findings("lint_pkix_signer_signee_cert_chain", str(h.root_cert), str(second)) == []
    )


def test_clear_removes_the_extensions_again(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    _set(h, "http://ca.internal")
    assert _urls(_issue(h, tmp_path / "a", "one"))[0] == ["http://ca.internal/ocsp"]
    assert _set(h, "--clear") == {
        "schema": "cyphrs.config-public-url/v1",
        "url": None,
        "changed": True,
    }
    cert = _issue(h, tmp_path / "b", "two")
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert "public_url" not in (h.home / "config.toml").read_text()


def test_config_edit_behind_the_ledger_is_refused(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = fresh_hierarchy
    _set(h, URL)
    config = h.home / "config.toml"
    config.write_text(config.read_text().replace(URL, "https://evil.example"))
    before = h.ledger_rows()
    refused = h.issue("agent", "--workflow", "x", "--out-dir", str(tmp_path / "a"), "--json")
    assert refused.exit_code == 8
    assert "public_url" in refused.error()["error"]["message"]
    assert h.ledger_rows() == before
    check = cli("config", "check", "--home", str(h.home))
    assert check.exit_code == 8
    restore = cli("config", "restore", "--home", str(h.home), "--json")
    assert restore.exit_code == 0, restore.stderr
    assert "config.toml public_url" in restore.json()["rewritten"]
    assert _urls(_issue(h, tmp_path / "b"))[0] == [f"{URL}/ocsp"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ca.example",
        "https://user@ca.example",
        "https://ca.example/?q=1",
        "https://ca.example/#frag",
        "https://ca.example/a b",
        "https://",
        "https://ca.example:99999",
        "ca.example",
        "https://ca.exämple",
        "https://ca.example/\n",
        "https://" + "a" * 300,
    ],
)
def test_bad_urls_are_refused(untouched_ca: Hierarchy, url: str) -> None:
    done = cli("config", "public-url", url, "--home", str(untouched_ca.home), "--json")
    assert done.exit_code == 3, (url, done.stderr)
    with sqlite3.connect(untouched_ca.home / "ledger.sqlite3") as conn:
        events = conn.execute("SELECT count(*) FROM events WHERE type='home.public_url_set'")
        assert events.fetchone()[0] == 0


def test_url_and_clear_together_is_usage(untouched_ca: Hierarchy) -> None:
    done = cli("config", "public-url", URL, "--clear", "--home", str(untouched_ca.home))
    assert done.exit_code == 2
