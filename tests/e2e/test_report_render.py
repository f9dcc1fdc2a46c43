"""``report.html`` rendered by a real browser (headless Chromium, no network, fresh
profile): printed to PDF it is A4 with "page N of M" footers, the expected number of pages,
the examiner's headings and serials on one line (pypdf extracts the text); captured at
1280x2400 nothing spills past the right edge, and the executive summary, per-control status
and regulatory mapping all fit on that first screen.

Both screenshot checks are proved able to fail on variants of the same report: one with an
over-wide line injected, one with the mapping pushed below the fold (test-only CSS; the
report itself carries no script)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.helpers import build_hierarchy, cli

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (scripts/test does it)"
)

WIDTH, HEIGHT = 1280, 2400
# Test-only paint: the mapping's table in magenta, the heading after it in cyan.
MARK_MAPPING = (
    "<style>#mapping+table th,#mapping+table td{background:#ff00ff}"
    "#provenance{background:#00ffff}</style>"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An exported bundle's report.html (agents, a revocation, CRLs, doctor findings) and
    the serial of the revoked agent."""
    base = tmp_path_factory.mktemp("render")
    h = build_hierarchy(
        base,
        root_name="Render Root",
        inter_name="Render Issuing",
        root_extra=("--organization", "Acme Examined Ltd"),
    )
    serials = []
    for n in range(12):
        done = h.issue("agent", "--workflow", f"wf-{n}", "--json")
        assert done.exit_code == 0, done.stderr
        serials.append(done.json()["certificate"]["serial"])
    revoked = cli("--actor", "alice", "revoke", "--serial", serials[0], "--reason",
                  "key-compromise", "--home", str(h.home))  # fmt: skip
    assert revoked.exit_code == 0, revoked.stderr
    assert cli("crl", "--passphrase-file", str(h.inter_pass), "--home", str(h.home)).exit_code == 0
    out = base / "bundle"
    done = cli("--actor", "auditor-bob", "audit-export", "--out", str(out), "--since",
               "2000-01-01", "--passphrase-file", str(h.inter_pass), "--home", str(h.home))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower()
    return out / "report.html", serials[0]


def _chromium(page: Path, tmp: Path, *outputs: str) -> None:
    """Run headless Chromium once on ``page``: no network, no first-run work, a new
    profile; bounded in time, and its process group killed by PID in any case."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    profile.mkdir()
    command = [
        shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", *outputs, page.as_uri(),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=90)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _screenshot(page: Path, tmp: Path) -> object:
    from PIL import Image

    png = tmp / f"{page.stem}.png"
    _chromium(page, tmp, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}")
    image = Image.open(png).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    return image


def _ink_at_right_edge(image: object, columns: int = 40) -> int:
    """How many pixels of the rightmost ``columns`` are not page background (white)."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    strip = image.crop((WIDTH - columns, 0, WIDTH, HEIGHT))
    return sum(1 for pixel in strip.get_flattened_data() if min(pixel) < 240)


def _rows_with(image: object, colour: tuple[int, int, int]) -> list[int]:
    from PIL import Image

    assert isinstance(image, Image.Image)
    width = image.size[0]
    data = list(image.get_flattened_data())
    return [y for y in range(HEIGHT) if colour in data[y * width : (y + 1) * width]]


def _variant(report: Path, tmp: Path, name: str, head: str = "", body: str = "") -> Path:
    html = report.read_text().replace("</head>", head + "</head>", 1)
    html = html.replace("<body>", "<body>" + body, 1)
    target = tmp / f"{name}.html"
    target.write_text(html)
    return target


def test_pdf_is_a4_numbered_and_keeps_serials_whole(
    report: tuple[Path, str], tmp_path: Path
) -> None:
    from pypdf import PdfReader

    page, revoked_serial = report
    pdf = tmp_path / "report.pdf"
    _chromium(page, tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    reader = PdfReader(pdf)
    count = len(reader.pages)
    assert 2 <= count <= 8, count
    # NFKC: Chromium's fonts set "fi" as a ligature, which pypdf extracts as U+FB01.
    texts = [unicodedata.normalize("NFKC", p.extract_text()) for p in reader.pages]
    for number, (pdf_page, text) in enumerate(zip(reader.pages, texts, strict=True), start=1):
        width, height = float(pdf_page.mediabox.width), float(pdf_page.mediabox.height)
        assert abs(width - 595.3) < 2 and abs(height - 841.9) < 2  # A4 in points
        assert f"page {number} of {count}" in text
    whole = "\n".join(texts)
    for heading in ("Executive summary", "Status per control", "Regulatory mapping",
                    "Provenance", "CA certificates", "Revocations", "CRLs", "Timeline"):  # fmt: skip
        assert heading in whole, heading
    assert "Acme Examined Ltd" in whole and "auditor-bob" in whole and "alice" in whole
    # A serial wrapped over lines would come out of the PDF cut by a newline.
    assert revoked_serial in whole


def test_first_screen_has_no_overflow_and_holds_the_mapping(
    report: tuple[Path, str], tmp_path: Path
) -> None:
    page, _ = report
    assert _ink_at_right_edge(_screenshot(page, tmp_path)) == 0
    marked = _screenshot(_variant(page, tmp_path, "marked", head=MARK_MAPPING), tmp_path)
    assert _ink_at_right_edge(marked) == 0
    mapping, after = _rows_with(marked, (255, 0, 255)), _rows_with(marked, (0, 255, 255))
    # The whole mapping table is on the screen: the heading after it is too.
    assert mapping and after and max(mapping) < min(after) < HEIGHT, (mapping[-1:], after[:1])


def test_the_screen_checks_can_fail(report: tuple[Path, str], tmp_path: Path) -> None:
    page, _ = report
    wide = _variant(page, tmp_path, "wide",
                    body='<p style="white-space:nowrap">' + "0123456789abcdef " * 120 + "</p>")  # fmt: skip
    assert _ink_at_right_edge(_screenshot(wide, tmp_path)) > 0
    filler = '<div style="height:2600px"></div>'
    pushed = _screenshot(
        _variant(page, tmp_path, "pushed", head=MARK_MAPPING, body=filler), tmp_path
    )
    assert not _rows_with(pushed, (255, 0, 255))
