"""The examiner's sections of ``report.html``: executive summary (doctor findings),
provenance, full CA details, CRL status, and a timeline of CA, key, CRL and policy events.

Each section is a Jinja2 template with autoescaping on: every value from the ledger
(names, actors, reasons, DNs) is data, never markup. Like the rest of the report the
output depends only on the ledger, the window and what ``ReportExtras`` carries (no
clock): the same inputs give the same bytes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, Template

from cyphrs_cli.ledger.events import rfc3339

#: Event types an examiner follows over time (issuance itself is in the register).
TIMELINE_PREFIXES = (
    "authority.",
    "crl.",
    "profile.",
    "key.",
    "home.",
    "config.",
    "audit.",
    "policy.",
)
TIMELINE_LIMIT = 500


@dataclass(frozen=True)
class ReportExtras:
    """What the report shows beyond the ledger window: who exported it, where, with what,
    signed by which CA, and the doctor's findings at the window's end."""

    exporter: str = ""
    host: str = ""
    version: str = ""
    signer: str = ""
    signer_fingerprint: str = ""
    findings: tuple[dict[str, Any], ...] = field(default_factory=tuple)


@cache
def _environment() -> Environment:
    return Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _template(text: str) -> Template:
    return _environment().from_string(text)


SUMMARY = """\
<h2 id=summary>Executive summary</h2>
<p>Ledger integrity: {% if verified %}<span class=ok>verified</span>{% else %}\
<span class=bad>PROBLEMS FOUND</span>{% endif %}.
{{ cas }} CA certificate(s) and {{ leaves }} leaf certificate(s) in the window;
{{ revoked }} revoked. Findings of <code>cyphrs doctor</code> at the window's end:
{% if findings %}{{ findings|length }} ({% for s, n in counts %}{{ n }} {{ s }}\
{% if not loop.last %}, {% endif %}{% endfor %}).{% else %}none.{% endif %}</p>
{% if findings %}
<table><thead><tr><th>severity</th><th>finding</th><th>why it matters</th><th>fix</th>
</tr></thead><tbody>
{% for f in findings %}
<tr><td class="sev-{{ f.severity }}">{{ f.severity }}</td><td><code>{{ f.id }}</code><br>\
{{ f.title }}</td><td>{{ f.why }}</td><td><code>{{ f.fix }}</code></td></tr>
{% endfor %}
</tbody></table>
{% endif %}
"""

PROVENANCE = """\
<h2 id=provenance>Provenance</h2>
<table><tbody>
<tr><th>organisation</th><td>{{ organisation or "—" }}</td></tr>
<tr><th>CA host(s) in the ledger</th><td>{{ hosts|join(", ") or "—" }}</td></tr>
<tr><th>exported by</th><td>{{ extras.exporter or "—" }} on {{ extras.host or "—" }}</td></tr>
<tr><th>cyphrs version</th><td>{{ extras.version or "—" }}</td></tr>
<tr><th>signed by</th><td>{{ extras.signer or "—" }} \
<code>{{ extras.signer_fingerprint }}</code></td></tr>
<tr><th>manifest</th><td>manifest.json lists the SHA-256 of every file; its own SHA-256 is
in signature.json, signed by the CA above.</td></tr>
</tbody></table>
"""

CONTROLS = """\
<h3>Status per control</h3>
<table><thead><tr><th>control</th><th>status</th><th>because</th><th>evidence</th>
</tr></thead><tbody>
{% for c in controls %}
<tr><td>{{ c.control }}</td><td class="{{ 'ok' if c.status == 'met' else 'bad' \
if c.status == 'gap' else 'muted' }}">{{ c.status }}</td><td>{{ c.because }}</td>\
<td>{% for f in c.evidence %}<code>{{ f }}</code>{% if not loop.last %}, {% endif %}\
{% endfor %}</td></tr>
{% endfor %}
</tbody></table>
"""

#: Each control, the doctor findings (id prefixes) that make it a gap, and its evidence.
CONTROL_RULES = (
    (
        "NIS2 Art. 21(2)(h); CIR (EU) 2024/2690 Annex 9 (cryptography, key management)",
        ("keys.", "permissions.key", "permissions.secret", "policy.", "expiry.ca_"),
        ("keys.csv", "certificates.csv", "ca/"),
    ),
    (
        "DORA RTS (EU) 2024/1774 Art. 7 (certificate register, renewal before expiry)",
        ("expiry.", "crl.past_next_update", "crl.revocations_unpublished", "crl.deployed"),
        ("certificates.csv", "certificates.jsonl", "keys.csv", "crls/"),
    ),
    (
        "PCI DSS 4.0 Req. 4.2.1.1 (inventory of trusted keys and certificates)",
        ("keys.issuing_key_missing",),
        ("keys.csv", "certificates.csv"),
    ),
    (
        "PCI DSS 4.0 Req. 10.2 (audit logs with identity, time, outcome)",
        ("ledger.", "clock.", "permissions.ledger"),
        ("events.jsonl", "checkpoint.json", "signature.json", "manifest.json"),
    ),
)

BARS = """\
<figure><figcaption>{{ title }}</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 640 {{ height }}"
 width="640" height="{{ height }}" style="max-width:100%;height:auto">
<title>{{ title }}</title>
{% for bar in bars %}
<text x="0" y="{{ bar.y + 13 }}" font-size="12">{{ bar.label }}</text>
<rect x="150" y="{{ bar.y + 2 }}" width="{{ bar.width }}" height="14" fill="#57606a"/>
<text x="{{ 156 + bar.width }}" y="{{ bar.y + 13 }}" font-size="12">{{ bar.count }}</text>
{% endfor %}
</svg></figure>
"""

CA_DETAILS = """\
<h2 id=ca-details>CA certificates</h2>
{% for ca in cas %}
<table class=kv><tbody>
<tr><th>CA</th><td><b>{{ ca.name }}</b> ({{ ca.role }}{% if ca.status != "valid" %},
<span class=bad>{{ ca.status }}</span>{% endif %})</td></tr>
<tr><th>subject</th><td>{{ ca.subject }}</td></tr>
<tr><th>issuer</th><td>{{ ca.issuer }}</td></tr>
<tr><th>serial</th><td><code class=serial>{{ ca.serial }}</code></td></tr>
<tr><th>SHA-256 fingerprint</th><td><code class=serial>{{ ca.fingerprint }}</code></td></tr>
<tr><th>validity</th><td>{{ ca.not_before }} to {{ ca.not_after }}</td></tr>
<tr><th>key / signature</th><td>{{ ca.key }} / {{ ca.signature }}</td></tr>
<tr><th>path length</th><td>{{ ca.path_length }}</td></tr>
<tr><th>trust domain</th><td>{{ ca.trust_domain or "—" }}</td></tr>
<tr><th>name constraints</th><td>{{ ca.constraints }}</td></tr>
</tbody></table>
{% endfor %}
"""

CRLS = """\
<h2 id=crls>CRLs</h2>
{% if crls %}
<table><thead><tr><th>CA</th><th>CRL number</th><th>this update</th><th>next update</th>
<th>state at the window's end</th></tr></thead><tbody>
{% for c in crls %}
<tr><td>{{ c.name }}</td><td>{{ c.number }}</td><td>{{ c.this_update }}</td>\
<td>{{ c.next_update }}</td><td class="{{ 'ok' if c.current else 'bad' }}">\
{{ 'current' if c.current else 'past nextUpdate' }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class=muted>No CRL published before the window's end.</p>{% endif %}
"""

TIMELINE = """\
<h2 id=timeline>Timeline of CA, key, CRL and policy events</h2>
{% if events %}
<table><thead><tr><th>time</th><th>event</th><th>actor</th><th>host</th><th>outcome</th>
<th>target</th></tr></thead><tbody>
{% for ev in events %}
<tr><td class=nowrap>{{ ev.at }}</td><td>{{ ev.type }}</td><td>{{ ev.actor }}</td>\
<td>{{ ev.host }}</td><td class="{{ 'bad' if ev.outcome == 'failure' else '' }}">\
{{ ev.outcome }}</td><td>{{ ev.target or "" }}</td></tr>
{% endfor %}
</tbody></table>
{% if more %}<p class=muted>{{ more }} more in events.jsonl.</p>{% endif %}
{% else %}<p class=muted>None in the window.</p>{% endif %}
"""


def _ca_rows(conn: sqlite3.Connection, until: datetime) -> list[dict[str, Any]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from cyphrs_cli.ca.parsing import key_description, oid_name

    rows = conn.execute(
        "SELECT a.name, a.role, a.trust_domain, c.pem, c.serial, r.revoked_at"
        " FROM authorities a JOIN certificates c ON c.id = a.certificate_id"
        " LEFT JOIN revocations r ON r.certificate_id = c.id ORDER BY a.id"
    ).fetchall()
    out = []
    for row in rows:
        cert = x509.load_pem_x509_certificate(str(row["pem"]).encode())
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            path_length = "unlimited" if basic.path_length is None else str(basic.path_length)
        except x509.ExtensionNotFound:
            path_length = "—"
        try:
            nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
            permitted = ", ".join(_name(n) for n in nc.permitted_subtrees or [])
            excluded = ", ".join(_name(n) for n in nc.excluded_subtrees or [])
            constraints = f"permitted: {permitted or 'none'}; excluded: {excluded or 'none'}"
        except x509.ExtensionNotFound:
            constraints = "none"
        key = key_description(cert.public_key())
        end = cert.not_valid_after_utc
        revoked = row["revoked_at"] is not None and str(row["revoked_at"]) < rfc3339(until)
        out.append(
            {
                "name": row["name"],
                "role": row["role"],
                "trust_domain": row["trust_domain"],
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "serial": row["serial"],
                "fingerprint": "sha256:" + cert.fingerprint(hashes.SHA256()).hex(),
                "not_before": rfc3339(cert.not_valid_before_utc),
                "not_after": rfc3339(end),
                "key": " ".join(
                    str(key.get(k)) for k in ("type", "curve", "bits") if key.get(k) is not None
                ),
                "signature": oid_name(cert.signature_algorithm_oid),
                "path_length": path_length,
                "constraints": constraints,
                "status": "revoked" if revoked else ("expired" if end < until else "valid"),
                "organisation": ", ".join(
                    str(a.value)
                    for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
                ),
            }
        )
    return out


def _name(general: Any) -> str:
    from cryptography import x509

    if isinstance(general, x509.DNSName):
        return f"DNS:{general.value}"
    if isinstance(general, x509.UniformResourceIdentifier):
        return f"URI:{general.value}"
    if isinstance(general, x509.IPAddress):
        return f"IP:{general.value}"
    return str(getattr(general, "value", general))


def _crl_rows(conn: sqlite3.Connection, until: datetime) -> list[dict[str, Any]]:
    end = rfc3339(until)
    rows = conn.execute(
        "SELECT a.name, c.number, c.this_update, c.next_update FROM crls c"
        " JOIN authorities a ON a.id = c.authority_id WHERE c.this_update < ? AND c.number = ("
        "   SELECT max(number) FROM crls x WHERE x.authority_id = c.authority_id"
        "   AND x.this_update < ?) ORDER BY a.name",
        (end, end),
    ).fetchall()
    return [
        {
            "name": r["name"],
            "number": r["number"],
            "this_update": r["this_update"],
            "next_update": r["next_update"],
            "current": str(r["next_update"]) > end,
        }
        for r in rows
    ]


def revoking_actors(events: list[dict[str, Any]]) -> dict[str, str]:
    """serial -> who revoked it (actor@host), from the window's ``certificate.revoked``."""
    found: dict[str, str] = {}
    for event in events:
        if event["type"] == "certificate.revoked":
            serial = str(event["details"].get("serial", ""))
            found[serial] = f"{event['actor']}@{event['host']}"
    return found


def render_summary(
    *, verified: bool, certificates: list[dict[str, Any]], extras: ReportExtras
) -> str:
    from cyphrs_cli.checks.model import Severity

    order = [s.label for s in sorted(Severity, reverse=True)]
    findings = sorted(extras.findings, key=lambda f: order.index(str(f["severity"])))
    counts = [(s, sum(f["severity"] == s for f in findings)) for s in order]
    return _template(SUMMARY).render(
        verified=verified,
        cas=sum(1 for c in certificates if c["is_ca"]),
        leaves=sum(1 for c in certificates if not c["is_ca"]),
        revoked=sum(1 for c in certificates if c["status"] == "revoked"),
        findings=findings,
        counts=[(s, n) for s, n in counts if n],
    )


def render_controls(*, verified: bool, extras: ReportExtras, has_findings: bool) -> str:
    """met / gap / not assessed per control: a gap names the doctor findings (at medium or
    worse) behind it; without a doctor run (no findings list) the status is "not assessed"
    rather than a claim."""
    controls = []
    serious = [f for f in extras.findings if f["severity"] in ("medium", "high", "critical")]
    for control, prefixes, evidence in CONTROL_RULES:
        gaps = sorted({str(f["id"]) for f in serious if str(f["id"]).startswith(prefixes)})
        if control.startswith("PCI DSS 4.0 Req. 10.2") and not verified:
            gaps.insert(0, "the ledger does not verify")
        if gaps:
            status, because = "gap", "; ".join(gaps)
        elif not has_findings:
            status, because = "not assessed", "no doctor run recorded with this export"
        else:
            status, because = "met", "no finding of cyphrs doctor bears on it"
        controls.append(
            {"control": control, "status": status, "because": because, "evidence": evidence}
        )
    return _template(CONTROLS).render(controls=controls)


def render_provenance(conn: sqlite3.Connection, until: datetime, extras: ReportExtras) -> str:
    organisations = sorted(
        {ca["organisation"] for ca in _ca_rows(conn, until) if ca["organisation"]}
    )
    hosts = sorted(
        {
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT host FROM events WHERE type LIKE 'authority.%' AND at < ?",
                (rfc3339(until),),
            )
        }
    )
    return _template(PROVENANCE).render(
        organisation=", ".join(organisations), hosts=hosts, extras=extras
    )


def render_ca_details(conn: sqlite3.Connection, until: datetime) -> str:
    return _template(CA_DETAILS).render(cas=_ca_rows(conn, until))


def render_crls(conn: sqlite3.Connection, until: datetime) -> str:
    return _template(CRLS).render(crls=_crl_rows(conn, until))


def render_timeline(events: list[dict[str, Any]]) -> str:
    chosen = [e for e in events if str(e["type"]).startswith(TIMELINE_PREFIXES)]
    return _template(TIMELINE).render(
        events=chosen[:TIMELINE_LIMIT], more=max(0, len(chosen) - TIMELINE_LIMIT)
    )


def render_bar_chart(title: str, rows: list[tuple[str, int]]) -> str:
    """A horizontal bar chart as inline SVG (no script, nothing fetched)."""
    top = max((count for _, count in rows), default=0) or 1
    bars = [
        {"label": label, "count": count, "y": 20 * i, "width": round(420 * count / top)}
        for i, (label, count) in enumerate(rows)
    ]
    return _template(BARS).render(title=title, bars=bars, height=max(20, 20 * len(rows)))


def render_issuance_chart(certificates: list[dict[str, Any]], since: datetime) -> str:
    """Leaf issuances per day in the window (the last 31 days that have any)."""
    per_day: dict[str, int] = {}
    start = rfc3339(since)
    for cert in certificates:
        issued = str(cert.get("issued_at") or "")
        if not cert["is_ca"] and issued >= start:
            per_day[issued[:10]] = per_day.get(issued[:10], 0) + 1
    days = sorted(per_day.items())[-31:]
    if not days:
        return '<p class="muted">No leaf issued in the window.</p>'
    return render_bar_chart("Leaf certificates issued per day", days)
