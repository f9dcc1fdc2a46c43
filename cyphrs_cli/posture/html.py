"""The one-page HTML summary of a scan (``cyphrs scan --html FILE``): the score and its
formula, counts by severity, and each certificate with findings. A Jinja2 template with
autoescaping (certificate names are data); no scripts, nothing fetched."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment

PAGE = """\
<!doctype html><html lang=en><head><meta charset=utf-8>
<title>cyphrs certificate posture</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:1.5rem auto;max-width:70rem;color:#1b1f24}
h1{font-size:1.4rem}.score{font-size:2.4rem;font-weight:700}
.good{color:#1a7f37}.fair{color:#9a6700}.poor{color:#cf222e}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.2rem .4rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}td{overflow-wrap:anywhere}
code.serial{font-size:11px;white-space:nowrap}.muted{color:#57606a}
@page{size:A4;margin:12mm}
</style></head><body>
<h1>Certificate posture</h1>
<p><span class="score {{ grade }}">{{ report.score }}/100</span>
over {{ report.counts.certificates }} certificate(s), scanned {{ report.scanned_at }}.</p>
<p class=muted>{{ report.formula }}</p>
<table><thead><tr>{% for s in severities %}<th>{{ s }}</th>{% endfor %}</tr></thead>
<tbody><tr>{% for s in severities %}<td>{{ report.counts[s] }}</td>{% endfor %}</tr></tbody>
</table>
{% if flawed %}
<table><thead><tr><th>score</th><th>subject</th><th>serial</th><th>not after</th>
<th>found in</th><th>findings</th></tr></thead><tbody>
{% for c in flawed %}
<tr><td>{{ c.score }}</td><td>{{ c.subject or "(empty subject)" }}</td>
<td><code class=serial>{{ c.serial }}</code></td><td>{{ c.not_after }}</td>
<td>{{ c.sources|join(", ") }}</td>
<td>{% for f in c.findings %}{{ f.severity }} <code>{{ f.id }}</code>: {{ f.message }}\
{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class=good>No findings.</p>{% endif %}
{% if report.skipped %}<p class=muted>Skipped: {{ report.skipped|join("; ") }}</p>{% endif %}
</body></html>
"""


def render_html(report: dict[str, Any]) -> bytes:
    """``report`` is the ``cyphrs.scan/v1`` document."""
    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    flawed = sorted((c for c in report["certificates"] if c["findings"]), key=lambda c: c["score"])
    score = report["score"]
    grade = "good" if score >= 90 else "fair" if score >= 70 else "poor"
    return (
        environment.from_string(PAGE)
        .render(
            report=report,
            flawed=flawed,
            grade=grade,
            severities=["critical", "high", "medium", "low", "info"],
        )
        .encode()
    )
