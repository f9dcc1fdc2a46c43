"""``report.html`` as an examiner reads it: executive summary with the doctor's findings,
provenance, full CA details, CRL numbers and nextUpdate, a timeline, the revoking actor,
CA and leaf counts apart, short-lived leaves kept out of "expiring", print CSS -- and
ledger text (an organisation name with markup) escaped by the templates."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cyphrs_cli import __version__
from cyphrs_cli.ledger.events import rfc3339, utc_now
from tests.helpers import Hierarchy, build_hierarchy, cli

HOSTILE_ORG = "Acme <b>Corp</b> & Sons"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def _section(html: str, heading_id: str) -> str:
    start = html.index(f"<h2 id={heading_id}>")
    end = html.find("<h2", start + 4)
    return html[start : end if end != -1 else len(html)]


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Hierarchy, dict[str, str]]:
    base = tmp_path_factory.mktemp("report")
    h = build_hierarchy(
        base,
        root_name="Report Root",
        inter_name="Report Issuing",
        root_extra=("--organization", HOSTILE_ORG),
        extra=("--name-constraints",),
    )
    agent = h.issue("agent", "--workflow", "recon", "--json")
    server = h.issue("server", "--dns", "api.acme.internal", "--ttl", "8d", "--json")
    assert agent.exit_code == 0 and server.exit_code == 0, agent.stderr + server.stderr
    serials = {
        "agent": agent.json()["certificate"]["serial"],
        "server": server.json()["certificate"]["serial"],
    }
    revoked = cli("--actor", "alice", "revoke", "--serial", serials["agent"], "--reason",
                  "key-compromise", "--home", str(h.home))  # fmt: skip
    assert revoked.exit_code == 0, revoked.stderr
    assert cli("crl", "--passphrase-file", str(h.inter_pass), "--home", str(h.home)).exit_code == 0
    return h, serials


def _report(h: Hierarchy, out: Path, *window: str) -> str:
    done = cli("--actor", "auditor-bob", "audit-export", "--out", str(out), "--since", "2000-01-01", *window,
               "--passphrase-file", str(h.inter_pass), "--home", str(h.home))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return (out / "report.html").read_text()


def test_examiner_sections(estate: tuple[Hierarchy, dict[str, str]], tmp_path: Path) -> None:
    h, _ = estate
    html = _report(h, tmp_path / "b")
    summary = _section(html, "summary")
    assert "keys.root_online" in summary  # the doctor's finding, with its fix
    assert "shred -u" in summary
    assert "2 CA certificate(s) and 2 leaf certificate(s)" in summary
    # Per-control status: the root key online is a NIS2 key-management gap; the audit log
    # control (ledger verifies, no ledger finding) is met.
    rows = summary.split("Status per control")[1].split("</tr>")
    nis2 = next(r for r in rows if "NIS2" in r)
    pci_log = next(r for r in rows if "10.2" in r)
    assert ">gap<" in nis2 and "keys.root_online" in nis2 and "keys.csv" in nis2
    assert ">met<" in pci_log and "events.jsonl" in pci_log
    provenance = _section(html, "provenance")
    assert "auditor-bob" in provenance and __version__ in provenance
    assert re.search(r"sha256:[0-9a-f]{64}", provenance)
    cas = _section(html, "ca-details")
    for needle in ("Report Root", "Report Issuing", "path length", "acme.internal",
                   "permitted: URI:acme.internal", "unlimited", ">0<"):  # fmt: skip
        assert needle in cas, needle
    assert cas.count("<code class=serial>") == 4  # serial + fingerprint per CA
    crls = _section(html, "crls")
    assert "test-inter" in crls and "<td>1</td>" in crls and "current" in crls
    timeline = _section(html, "timeline")
    assert "authority.created" in timeline and "crl.published" in timeline
    assert "alice@" in html  # the revoking actor in the revocations table
    lifetimes = html.split("Lifetime distribution (leaf certificates)")[1].split("<h2")[0]
    assert "<td>&gt; 90 days</td><td>0</td>" in lifetimes  # the CAs are not counted here
    # Inline SVG charts: lifetimes and issuance per day (2 leaves today).
    assert lifetimes.count("<svg") == 2 and "<image" not in lifetimes and "href" not in lifetimes
    today = rfc3339(utc_now())[:10]
    issuance = lifetimes.split("Leaf certificates issued per day")[2]
    assert f">{today}</text>" in issuance and ">2</text>" in issuance


def test_ledger_text_is_escaped(estate: tuple[Hierarchy, dict[str, str]], tmp_path: Path) -> None:
    h, _ = estate
    html = _report(h, tmp_path / "b")
    assert "Acme &lt;b&gt;Corp&lt;/b&gt; &amp; Sons" in html
    assert "<b>Corp</b>" not in html
    parser = _Text()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags


def test_expiring_leaves_out_short_lived_leaves(
    estate: tuple[Hierarchy, dict[str, str]], tmp_path: Path
) -> None:
    h, serials = estate
    # The window ends now: the 4-hour agent expires within 7 days but is short-lived.
    now_html = _report(h, tmp_path / "now")
    expiring = now_html.split("Expiring within 7 days")[1].split("<h2")[0]
    assert serials["agent"] not in expiring
    # A window ending in 2 days: the 8-day server certificate expires within 7 days of it.
    until = rfc3339(utc_now() + timedelta(days=2))
    later = _report(h, tmp_path / "later", "--until", until)
    expiring = later.split("Expiring within 7 days")[1].split("<h2")[0]
    assert serials["server"] in expiring
    assert f'<code class="serial">{serials["server"]}</code>' in expiring


def test_print_css(estate: tuple[Hierarchy, dict[str, str]], tmp_path: Path) -> None:
    h, _ = estate
    html = _report(h, tmp_path / "b")
    style = html.split("<style>")[1].split("</style>")[0]
    assert "@page{size:A4" in style and "counter(page)" in style and "counter(pages)" in style
    assert "code.serial{font-size:11px;word-break:normal;white-space:nowrap}" in style


def test_a_tampered_ledger_is_a_logging_gap(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    import sqlite3

    h = fresh_hierarchy
    assert h.issue("agent", "--workflow", "w", "--json").exit_code == 0
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE certificates SET subject = 'CN=forged' WHERE is_ca = 0")
    conn.close()
    done = cli("audit-export", "--out", str(tmp_path / "b"), "--since", "2000-01-01",
               "--allow-unverified", "--passphrase-file", str(h.inter_pass),
               "--home", str(h.home))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    summary = _section((tmp_path / "b" / "report.html").read_text(), "summary")
    pci_log = next(r for r in summary.split("</tr>") if "10.2" in r)
    assert ">gap<" in pci_log and "the ledger does not verify" in pci_log
    assert "ledger.integrity" in pci_log
    assert "PROBLEMS FOUND" in summary
