"""``cyphrs scan``: certificates made by openssl (weak, SHA-1, long-lived, self-signed,
from a "public" root, sharing a key), read as PEM, DER and key-less PKCS#12, a loopback
TLS server (``openssl s_server``, started here and stopped by PID) with and without its
chain, and this home's ledger; the score follows its documented formula."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.posture.score import WEIGHTS, certificate_score, posture_score
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, cli
from tests.processes import free_port, wait_for_port


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ext(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "public" root and leaves signed by it with openssl, one flaw each."""
    d = tmp_path_factory.mktemp("scan-certs")
    _openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout", str(d / "ca.key"),
             "-out", str(d / "ca.pem"), "-subj", "/CN=Test Public Root", "-days", "3650")  # fmt: skip
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(d / "leaf.key"), "-subj", "/CN=a.test", "-out", str(d / "leaf.csr"))  # fmt: skip
    server = _ext(d / "server.ext", "basicConstraints=CA:FALSE", "subjectAltName=DNS:a.test",
                  "extendedKeyUsage=serverAuth")  # fmt: skip
    client = _ext(d / "client.ext", "basicConstraints=CA:FALSE", "subjectAltName=DNS:c.test",
                  "extendedKeyUsage=clientAuth")  # fmt: skip

    def sign(name: str, ext: Path, *extra: str) -> None:
        _openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-extfile", str(ext), "-out", str(d / name),
                 *extra)  # fmt: skip

    sign("good.pem", server, "-sha256", "-days", "90")
    sign("long.pem", server, "-sha256", "-days", "825")
    sign("sha1.pem", server, "-sha1", "-days", "90")
    sign("client.pem", client, "-sha256", "-days", "90")
    _openssl("req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", str(d / "w.key"),
             "-out", str(d / "selfsigned-weak.pem"), "-subj", "/CN=self", "-days", "90",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "subjectAltName=DNS:self.test",
             "-addext", "extendedKeyUsage=serverAuth")  # fmt: skip
    _openssl("x509", "-in", str(d / "good.pem"), "-outform", "DER", "-out", str(d / "good.der"))
    _openssl("pkcs12", "-export", "-nokeys", "-in", str(d / "long.pem"), "-out",
             str(d / "long.p12"), "-passout", "pass:")  # fmt: skip
    return d


def scan(*args: str, expect: int = 0) -> dict[str, Any]:
    result = cli("scan", *args, "--json")
    assert result.exit_code == expect, result.stderr
    document: dict[str, Any] = result.json()
    assert_valid(document)
    return document


def _ids(document: dict[str, Any]) -> dict[str, set[str]]:
    return {
        c["subject"] + "|" + c["sources"][0].rsplit("/", 1)[-1]: {f["id"] for f in c["findings"]}
        for c in document["certificates"]
    }


def test_each_flaw_is_found_in_certificates_made_by_openssl(made: Path) -> None:
    files = ["good.pem", "long.pem", "sha1.pem", "selfsigned-weak.pem"]
    document = scan(*(str(made / f) for f in files), "--no-public-roots")
    found = _ids(document)
    assert found["CN=a.test|good.pem"] == {"key.duplicate"}  # the three a.test share a key
    assert found["CN=a.test|long.pem"] == {"cert.long_lifetime", "key.duplicate"}
    assert found["CN=a.test|sha1.pem"] == {"sig.sha1", "key.duplicate"}
    assert found["CN=self|selfsigned-weak.pem"] == {"key.weak", "leaf.self_signed"}


def test_score_follows_the_documented_formula(made: Path) -> None:
    good = scan(str(made / "good.pem"), "--no-public-roots")
    assert good["score"] == 100 and good["certificates"][0]["findings"] == []
    # good (100) + long-lived (medium: 100 - 10 = 90); both share a key (medium each).
    pair = scan(str(made / "good.pem"), str(made / "long.pem"), "--no-public-roots")
    assert [c["score"] for c in pair["certificates"]] == [90, 80]
    assert pair["score"] == (90 + 80) // 2 == 85
    # Adding a SHA-1 certificate (high 25 + duplicate key 10) lowers it as the formula says.
    three = scan(*(str(made / f) for f in ("good.pem", "long.pem", "sha1.pem")),
                 "--no-public-roots")  # fmt: skip
    assert [c["score"] for c in three["certificates"]] == [90, 80, 65]
    assert three["score"] == (90 + 80 + 65) // 3 == 78
    for document in (good, pair, three):
        weights = [
            [WEIGHTS[_severity(f["severity"])] for f in c["findings"]]
            for c in document["certificates"]
        ]
        expected = sum(max(0, 100 - sum(w)) for w in weights) // len(weights)
        assert document["score"] == expected
    assert "critical 50" in cli("scan", "--help").stdout


def _severity(label: str) -> Any:
    from cyphrs_cli.checks.model import Severity

    return Severity[label.upper()]


def test_score_unit_edges() -> None:
    from cyphrs_cli.checks.model import Severity

    assert posture_score([]) == 100
    assert certificate_score([Severity.CRITICAL] * 3) == 0  # never negative
    assert posture_score([[], [Severity.CRITICAL, Severity.CRITICAL]]) == 50


def test_der_and_keyless_pkcs12_are_read(made: Path) -> None:
    document = scan(str(made / "good.der"), str(made / "long.p12"), "--no-public-roots")
    assert sorted(c["sources"][0].rsplit("/", 1)[-1] for c in document["certificates"]) == [
        "good.der",
        "long.p12",
    ]


def test_a_directory_is_walked_and_junk_skipped(made: Path) -> None:
    result = cli("scan", str(made), "--no-public-roots", "--json")
    document = result.json()
    assert result.exit_code == 0
    # good.pem and good.der are one certificate; keys, CSRs and ext files are skipped.
    assert sum("good" in " ".join(c["sources"]) for c in document["certificates"]) == 1
    assert any(s.endswith("leaf.csr: no certificate") for s in document["skipped"])
    assert not any("PRIVATE KEY" in str(c) for c in document["certificates"])


def test_client_certificate_from_a_public_ca(made: Path) -> None:
    document = scan(str(made / "client.pem"), "--public-roots", str(made / "ca.pem"))
    assert {f["id"] for f in document["certificates"][0]["findings"]} == {"leaf.public_ca_client"}
    # The same certificate with no public roots configured is not judged public.
    assert scan(str(made / "client.pem"), "--no-public-roots")["score"] == 100


def test_fail_under_and_csv(made: Path) -> None:
    args = (str(made / "sha1.pem"), "--no-public-roots")
    assert cli("scan", *args, "--fail-under", "80").exit_code == 10
    assert cli("scan", *args, "--fail-under", "70").exit_code == 0
    result = cli("scan", *args, "--csv")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fingerprint,serial,subject")
    assert "high:sig.sha1" in lines[1]


def test_nothing_to_scan_is_a_usage_error() -> None:
    assert cli("scan").exit_code == 2
    assert cli("scan", "/nonexistent/certs").exit_code == 6


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Hierarchy, Path, Any]]:
    """A cyphrs-issued server certificate, and a starter for ``openssl s_server``."""
    hierarchy = build_hierarchy(tmp_path / "ca")
    out = tmp_path / "srv"
    assert hierarchy.issue("server", "--dns", "localhost", "--out-dir", str(out)).exit_code == 0
    processes: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
             str(out / "cert.pem"), "-key", str(out / "key.pem"), "-www", "-quiet", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        wait_for_port(port, process)
        return f"127.0.0.1:{port}"

    try:
        yield hierarchy, out, start
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def test_loopback_server_without_its_chain_has_a_gap(served: Any) -> None:
    _, out, start = served
    bare = start()
    document = scan("--endpoint", bare, "--no-public-roots")
    (leaf,) = document["certificates"]
    assert {f["id"] for f in leaf["findings"]} == {"chain.gap"}
    assert leaf["sources"] == [f"tls:{bare}"]
    chained = start("-cert_chain", str(out / "chain.pem"))
    document = scan("--endpoint", chained, "--no-public-roots")
    assert len(document["certificates"]) == 2  # leaf + intermediate, as presented
    assert all(c["findings"] == [] for c in document["certificates"])
    assert document["score"] == 100


def test_unreachable_endpoint_is_not_found() -> None:
    port = free_port()
    assert cli("scan", "--endpoint", f"127.0.0.1:{port}", "--timeout", "2").exit_code == 6
    assert cli("scan", "--endpoint", "no-port").exit_code == 3


def test_this_homes_ledger(tmp_path: Path) -> None:
    hierarchy = build_hierarchy(tmp_path)
    assert (
        hierarchy.issue("agent", "--workflow", "w", "--out-dir", str(tmp_path / "a")).exit_code == 0
    )
    document = scan("--ledger", "--home", str(hierarchy.home), "--no-public-roots")
    assert len(document["certificates"]) == 3  # root, intermediate, agent
    assert document["score"] == 100
    assert all(c["sources"] == ["ledger"] for c in document["certificates"])


def test_html_summary_is_one_escaped_page(made: Path, tmp_path: Path) -> None:
    page = tmp_path / "posture.html"
    done = cli("scan", str(made / "sha1.pem"), str(made / "good.pem"), "--no-public-roots",
               "--html", str(page))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    html = page.read_text()
    assert "77/100" in html  # (90 + 65) // 2: both share a key, one is SHA-1
    document = scan(str(made / "sha1.pem"), str(made / "good.pem"), "--no-public-roots")
    assert f"{document['score']}/100" in html and "sig.sha1" in html
    assert "critical 50" in html and "<script" not in html
    assert cli("scan", str(made / "good.pem"), "--html", str(page)).exit_code == 7  # exists
    # A hostile subject is escaped.
    evil = tmp_path / "evil"
    evil.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(evil / "k"), "-out", str(evil / "c.pem"), "-days", "30",
             "-subj", "/CN=<img src=x onerror=alert(1)>")  # fmt: skip
    assert cli("scan", str(evil / "c.pem"), "--html", str(tmp_path / "e.html")).exit_code == 0
    text = (tmp_path / "e.html").read_text()
    assert "<img" not in text and "&lt;img src=x" in text
