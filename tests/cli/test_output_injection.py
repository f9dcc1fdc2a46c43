"""Hostile text reaches no terminal raw, and no spreadsheet as a formula.

Values that someone else chose -- requester, permissions, CN, workflow, ledger rows -- are
issued (or written into a copy of the ledger, for values name validation would stop) and then
shown by real ``cyphrs`` processes: human output must carry no ESC, CR, LF inside a line,
C1 or bidi control; CSV cells (``list --csv`` and the audit bundle) must not start a formula.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, run_cyphrs

ESC_PAYLOAD = "\x1b[2J\x1b]0;owned\x07\x1b[31mred"
CR_PAYLOAD = "ok\rFAKE-OK"
LF_PAYLOAD = "ok\nserial 00 valid"
BIDI_PAYLOAD = "user\u202etxt.exe"
C1_PAYLOAD = "x\x9b31my"
FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)"]
# Formula prefixes that are control characters: issuance refuses them, so they are planted
# into a ledger copy for ``list --csv``.
CONTROL_FORMULAS = ["\t=1", "\r=1"]
RAW_CONTROLS = ["\x1b", "\r", "\x07", "\x9b", "\u202e", "\u2066"]


def _assert_clean(text: str, *, what: str) -> None:
    for bad in RAW_CONTROLS:
        assert bad not in text, f"{what} contains raw {bad!r}"


def _issue(h: Hierarchy, *args: str) -> dict[str, object]:
    proc = run_cyphrs(
        "issue",
        *args,
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    certificate: dict[str, object] = json.loads(proc.stdout)["certificate"]
    return certificate


def _foreign_agent_cert(path: Path, requester: str) -> Path:
    """A certificate made outside cyphrs whose agent-claims extension carries ``requester``:
    issuance refuses such text, but ``inspect`` reads any file and must show it safely."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, AgentClaims, encode_agent_claims

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    claims = AgentClaims("inject", ("read",), requester, now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(AGENT_CLAIMS_OID), encode_agent_claims(claims)
            ),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("payload", [ESC_PAYLOAD, CR_PAYLOAD, LF_PAYLOAD, BIDI_PAYLOAD, C1_PAYLOAD])
def test_requester_escapes_are_refused_and_never_shown_raw(
    fresh_hierarchy: Hierarchy, tmp_path: Path, payload: str
) -> None:
    h = fresh_hierarchy
    # Issuance refuses the text (exit 3), and its one error line shows it escaped.
    proc = run_cyphrs(
        "issue", "agent", "--workflow", "inject", "--requester", payload,
        "--out-dir", str(tmp_path / "o"), "--home", str(h.home),
        "--passphrase-file", str(h.inter_pass),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr.decode()
    _assert_clean(proc.stderr.decode(), what="issue error")
    assert proc.stderr.decode().count("\n") == 1 and not (tmp_path / "o").exists()

    cert = _foreign_agent_cert(tmp_path / "foreign.pem", payload)
    shown = run_cyphrs("inspect", str(cert), "--home", str(h.home))
    assert shown.returncode == 0, shown.stderr.decode()
    out = shown.stdout.decode()
    _assert_clean(out, what="inspect")
    # The payload is on the requester row, made visible (\\x.. or \\u....), on one line.
    (row,) = [line for line in out.splitlines() if line.startswith("  requester")]
    assert "\\x" in row or "\\u" in row

    # JSON stays exact: the real value, escaped only by the JSON encoder.
    as_json = run_cyphrs("inspect", str(cert), "--home", str(h.home), "--json")
    claims = json.loads(as_json.stdout)["objects"][0]["agent_claims"]
    assert claims["requester"] == payload


def test_hostile_ledger_rows_stay_out_of_list(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """Values name validation would refuse today, planted straight into a ledger copy."""
    home = tmp_path / "copy"
    shutil.copytree(fresh_hierarchy.home, home)
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        conn.execute(
            "UPDATE certificates SET subject = ?, profile = ? WHERE id = (SELECT max(id) FROM"
            " certificates)",
            ("CN=" + ESC_PAYLOAD + CR_PAYLOAD + BIDI_PAYLOAD, "prof\x1b[8m"),
        )
    shown = run_cyphrs("list", "--home", str(home))
    assert shown.returncode == 0, shown.stderr.decode()
    _assert_clean(shown.stdout.decode() + shown.stderr.decode(), what="list")
    assert "\\x1b[2J" in shown.stdout.decode()


def test_hostile_cn_stays_out_of_inspect(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """A CN carrying escapes (from a CSR or a foreign certificate) is shown escaped."""
    from tests.helpers import openssl_csr

    _key, csr = openssl_csr(tmp_path, "/CN=api")
    # A certificate made outside cyphrs, with a hostile CN: inspect reads any file.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ESC_PAYLOAD + BIDI_PAYLOAD)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "foreign.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shown = run_cyphrs("inspect", str(path), "--home", str(fresh_hierarchy.home))
    assert shown.returncode == 0, shown.stderr.decode()
    _assert_clean(shown.stdout.decode(), what="inspect of a foreign certificate")
    assert "\\x1b" in shown.stdout.decode()
    assert csr.exists()


def test_error_messages_do_not_echo_raw_escapes(tmp_path: Path) -> None:
    home = tmp_path / ("h" + ESC_PAYLOAD + LF_PAYLOAD)
    for args in (
        ("list", "--home", str(home)),
        ("inspect", str(tmp_path / ("missing" + ESC_PAYLOAD))),
        ("issue", "agent", "--ttl", ESC_PAYLOAD, "--json", "--home", str(home)),
        ("list", "--status", ESC_PAYLOAD + LF_PAYLOAD, "--home", str(home)),
        ("list", "--bogus" + ESC_PAYLOAD),
        ("--bogus" + ESC_PAYLOAD,),
        ("no-such-command" + ESC_PAYLOAD,),
        ("list", "--limit", ESC_PAYLOAD),
    ):
        proc = run_cyphrs(*args)
        assert proc.returncode in (2, 3, 6), (args, proc.stderr)
        err = proc.stderr.decode()
        _assert_clean(err, what=f"stderr of {args[0]}")
        if "--json" not in args:
            # One line of error text per failure: an embedded newline is escaped, not obeyed.
            assert "serial 00 valid" not in err.splitlines()


def _csv_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def test_csv_outputs_neutralise_formulas(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = fresh_hierarchy
    for formula in FORMULAS:
        _issue(h, "agent", "--workflow", "csv", "--requester", formula, "--permission", "read")
    permission = _issue(h, "agent", "--workflow", "csv", "--permission", "@SUM(1)")
    assert permission
    listed = run_cyphrs("list", "--csv", "--home", str(h.home))
    assert listed.returncode == 0, listed.stderr.decode()
    exported = run_cyphrs(
        "audit-export",
        "--out",
        str(tmp_path / "bundle"),
        "--since",
        "2000-01-01",
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    )
    assert exported.returncode == 0, exported.stderr.decode()
    for name, text in (
        ("list --csv", listed.stdout.decode()),
        ("certificates.csv", (tmp_path / "bundle" / "certificates.csv").read_bytes().decode()),
    ):
        rows = list(csv.reader(io.StringIO(text, newline="")))
        # A CR or LF inside a value is quoted: no row is split or forged.
        assert {len(r) for r in rows} == {len(rows[0])}, name
        cells = _csv_cells(text)
        for formula in FORMULAS:
            assert formula not in cells, f"{name}: {formula!r} is a bare cell"
            assert "'" + formula in cells, f"{name}: {formula!r} not neutralised"
        assert "'@SUM(1)" in cells
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], name

    home = tmp_path / "copy"
    shutil.copytree(h.home, home)
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        for formula, (cert_id,) in zip(
            CONTROL_FORMULAS,
            conn.execute("SELECT id FROM certificates LIMIT 2").fetchall(),
            strict=True,
        ):
            conn.execute("UPDATE certificates SET requester = ? WHERE id = ?", (formula, cert_id))
    planted = run_cyphrs("list", "--csv", "--home", str(home))
    assert planted.returncode == 0, planted.stderr.decode()
    rows = list(csv.reader(io.StringIO(planted.stdout.decode(), newline="")))
    assert {len(r) for r in rows} == {len(rows[0])}
    cells = _csv_cells(planted.stdout.decode())
    for formula in CONTROL_FORMULAS:
        assert formula not in cells and "'" + formula in cells, formula


def test_help_for_missing_arguments_is_still_the_help_page() -> None:
    """The escaped usage-error printer must not swallow click's no-args help page."""
    for args in ((), ("keys",), ("audit",)):
        proc = run_cyphrs(*args)
        text = (proc.stdout + proc.stderr).decode()
        assert "Usage:" in text and "Error:" not in text, args


def test_home_profile_text_is_escaped(fresh_hierarchy: Hierarchy) -> None:
    """Profile descriptions and file names come from files anyone with home access writes."""
    folder = fresh_hierarchy.home / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "evil.toml").write_text(
        'description = "\\u001b]0;owned\\u0007\\u001b[2J\\u202eevil\\r\\nFAKE"\n'
        'extended_key_usage = ["clientAuth"]\n'
        'default_ttl = "1h"\nmin_ttl = "1m"\nmax_ttl = "2h"\n'
    )
    for args in (("profiles", "list"), ("profiles", "show", "evil")):
        proc = run_cyphrs(*args, "--home", str(fresh_hierarchy.home))
        assert proc.returncode == 0, proc.stderr.decode()
        _assert_clean(proc.stdout.decode() + proc.stderr.decode(), what=" ".join(args))
    (folder / "evil.toml").unlink()
    (folder / "ev\x1b[31mil.toml").write_text('extended_key_usage = ["clientAuth"]\n')
    proc = run_cyphrs("profiles", "list", "--home", str(fresh_hierarchy.home))
    assert proc.returncode == 3, proc.stderr.decode()
    _assert_clean(proc.stderr.decode(), what="profile file name in an error")
