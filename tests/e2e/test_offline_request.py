"""Issue 14, traps 1 and 4: the offline-root request carries what decides the intermediate.

Two CA homes (the root's host and the issuing host, whose key is on a real SoftHSM2
token), every step a real ``cyphrs`` process: the constraints asked for on the issuing host
reach the signed certificate (openssl shows them) without being repeated on the root's
host; flags that the request makes meaningless are refused; a root host that drops the
constraints is caught at import; the token key's attributes reach keys.csv.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_json_contract import assert_valid
from tests.e2e.test_hsm import Tokens, make_tokens
from tests.helpers import INTER_PASS, ROOT_PASS

pytestmark = pytest.mark.hsm


def _run(t: Tokens, *args: str, expect: int = 0) -> subprocess.CompletedProcess[bytes]:
    proc = t.cyphrs(*args, check=False)
    assert proc.returncode == expect, proc.stderr.decode()
    return proc


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_tokens(tmp_path_factory.mktemp("softhsm"), "issuing-token")


@pytest.fixture
def two_homes(tokens: Tokens, tmp_path: Path) -> dict[str, Path]:
    root_pass = tmp_path / "root.pass"
    root_pass.write_text(ROOT_PASS)
    root_home, online = tmp_path / "root-host", tmp_path / "online"
    _run(tokens, "init-root", "--name", "Vault Root", "--home", str(root_home),
         "--passphrase-file", str(root_pass))  # fmt: skip
    return {"root": root_home, "online": online, "root_pass": root_pass, "base": tmp_path}


def test_constraints_travel_in_the_csr_and_key_attributes_are_recorded(
    tokens: Tokens, two_homes: dict[str, Path]
) -> None:
    h = two_homes
    csr, signed = h["base"] / "agents.csr", h["base"] / "agents.pem"
    key_uri = tokens.uri("issuing-token", f"offline-{h['base'].name}")
    made = _run(
        tokens, "create-intermediate", "--name", "Agents CA", "--trust-domain", "acme.internal",
        "--name-constraints", "--permit-dns", "acme.internal", "--path-length", "0",
        "--validity", "2y", "--key-uri", key_uri, "--pin-file", str(tokens.pin_file),
        "--csr-out", str(csr), "--home", str(h["online"]), "--json",
    )  # fmt: skip
    document = json.loads(made.stdout)
    assert_valid(document)
    assert document["request"]["permit_dns"] == ["acme.internal"]

    root = ("--home", str(h["root"]), "--passphrase-file", str(h["root_pass"]))
    # Any flag the carried request replaces is refused, before the root key is unlocked.
    for flag in (["--trust-domain", "evil.example"], ["--validity", "20y"], ["--path-length", "2"],
                 ["--name-constraints"], ["--permit-dns", "evil.example"]):  # fmt: skip
        refused = _run(tokens, "sign-intermediate", str(csr), "--out", str(signed), *flag, *root,
                       expect=2)  # fmt: skip
        assert flag[0] in refused.stderr.decode() and "ignored" in refused.stderr.decode()
        assert not signed.exists()
    # The operator sees what will be signed (dry run: nothing unlocked, nothing recorded).
    shown = _run(tokens, "sign-intermediate", str(csr), "--dry-run", "--json", *root)
    preview = json.loads(shown.stdout)
    assert_valid(preview)
    assert preview["dry_run"] is True and preview["request"]["carried_in_csr"] is True
    assert preview["request"]["trust_domain"] == "acme.internal"
    human = _run(tokens, "sign-intermediate", str(csr), "--dry-run", *root).stdout.decode()
    assert "URI:acme.internal, DNS:acme.internal" in human and "2y" in human
    # Signed without repeating any flag; openssl shows the constraints and the path length.
    done = _run(tokens, "sign-intermediate", str(csr), "--out", str(signed), "--json", *root)
    assert_valid(json.loads(done.stdout))
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(signed)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "X509v3 Name Constraints: critical" in text
    assert "URI:acme.internal" in text and "DNS:acme.internal" in text
    assert "CA:TRUE, pathlen:0" in text
    dates = subprocess.run(
        ["openssl", "x509", "-noout", "-startdate", "-enddate", "-in", str(signed)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    years = [int(line.split()[-2]) for line in dates.splitlines()]
    assert years[1] - years[0] == 2

    _run(tokens, "import-intermediate", str(signed), "--root",
         str(h["root"] / "certs" / "vault-root.pem"), "--home", str(h["online"]))  # fmt: skip
    # The issuing CA refuses names outside its constraints, and its token key's attributes
    # were recorded from the request (keys.csv, not "{}").
    _run(tokens, "issue", "server", "--dns", "api.evil.example", "--home", str(h["online"]),
         "--pin-file", str(tokens.pin_file), "--out-dir", str(h["base"] / "x"), expect=5)  # fmt: skip
    bundle = h["base"] / "bundle"
    _run(tokens, "audit-export", "--since", "2000-01-01", "--out", str(bundle), "--home",
         str(h["online"]), "--pin-file", str(tokens.pin_file))  # fmt: skip
    with (bundle / "keys.csv").open(newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    attributes = json.loads(rows["agents-ca"]["key_attributes"])
    assert attributes["NEVER_EXTRACTABLE"] and attributes["ALWAYS_SENSITIVE"]
    assert attributes["LOCAL"] and attributes["SENSITIVE"] and not attributes["EXTRACTABLE"]
    report = (bundle / "report.html").read_text()
    assert "NEVER_EXTRACTABLE" in report
    # No secret's location anywhere in the bundle.
    for path in bundle.rglob("*"):
        if path.is_file():
            assert str(tokens.pin_file) not in path.read_text(errors="replace"), path


def test_import_refuses_an_intermediate_without_the_requested_constraints(
    tokens: Tokens, two_homes: dict[str, Path]
) -> None:
    """A root host that signs the same key without the constraints (a foreign tool, an
    edited CSR) is caught on import: nothing is recorded."""
    h = two_homes
    inter_pass = h["base"] / "inter.pass"
    inter_pass.write_text(INTER_PASS)
    csr = h["base"] / "a.csr"
    _run(tokens, "create-intermediate", "--name", "Agents CA", "--trust-domain",
         "acme.internal", "--name-constraints", "--csr-out", str(csr), "--home",
         str(h["online"]), "--passphrase-file", str(inter_pass))  # fmt: skip
    # The same public key in a CSR without the request: a foreign CSR, signed as flags say.
    key = h["online"] / "keys" / "agents-ca.key.pem"
    bare = h["base"] / "bare.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-passin", f"file:{inter_pass}",
         "-subj", "/CN=Agents CA", "-out", str(bare)],
        check=True, capture_output=True,
    )  # fmt: skip
    wide = h["base"] / "wide.pem"
    _run(tokens, "sign-intermediate", str(bare), "--out", str(wide), "--home", str(h["root"]),
         "--passphrase-file", str(h["root_pass"]))  # fmt: skip
    refused = _run(tokens, "import-intermediate", str(wide), "--root",
                   str(h["root"] / "certs" / "vault-root.pem"), "--home", str(h["online"]),
                   expect=3)  # fmt: skip
    assert "name constraints differ from the request" in refused.stderr.decode()
    listed = json.loads(_run(tokens, "list", "--home", str(h["online"]), "--json").stdout)
    assert listed["count"] == 0


def test_create_intermediate_refuses_root_options_with_csr_out(
    tokens: Tokens, two_homes: dict[str, Path]
) -> None:
    h = two_homes
    csr = h["base"] / "a.csr"
    refused = _run(tokens, "create-intermediate", "--name", "X", "--csr-out", str(csr),
                   "--root-passphrase-file", str(h["root_pass"]), "--home", str(h["online"]),
                   "--passphrase-file", str(h["root_pass"]), expect=2)  # fmt: skip
    assert "--root-passphrase-file" in refused.stderr.decode()
    assert not csr.exists() and not (h["online"] / "keys").exists()


def test_a_pin_source_location_is_never_recorded(
    tokens: Tokens, two_homes: dict[str, Path]
) -> None:
    """A key URI's ``pin-source=file:PATH`` unlocks the token when the key is made, but the
    path is neither in config.toml nor in the ledger (so in no export); later commands name
    the PIN themselves."""
    h = two_homes
    csr = h["base"] / "p.csr"
    key_uri = tokens.uri("issuing-token", f"pinsrc-{h['base'].name}")
    _run(tokens, "create-intermediate", "--name", "Pin CA", "--csr-out", str(csr),
         "--key-uri", f"{key_uri}&pin-source=file:{tokens.pin_file}", "--home",
         str(h["online"]))  # fmt: skip
    assert str(tokens.pin_file) not in (h["online"] / "config.toml").read_text()
    events = _run(tokens, "audit", "events", "--json", "--home", str(h["online"])).stdout
    assert b"authority.requested" in events and b"pinsrc-" in events
    assert str(tokens.pin_file).encode() not in events and b"pin-source" not in events
    for path in h["online"].glob("ledger.sqlite3*"):  # the database and its WAL
        assert str(tokens.pin_file).encode() not in path.read_bytes()


def test_options_a_step_would_ignore_are_refused(
    tokens: Tokens, two_homes: dict[str, Path]
) -> None:
    h = two_homes
    csr = h["base"] / "n.csr"
    refused = _run(tokens, "create-intermediate", "--name", "N", "--force", "--home",
                   str(h["root"]), "--passphrase-file", str(h["root_pass"]),
                   "--root-passphrase-file", str(h["root_pass"]), expect=2)  # fmt: skip
    assert "--force" in refused.stderr.decode()
    inter_pass = h["base"] / "inter.pass"
    inter_pass.write_text(INTER_PASS)
    _run(tokens, "create-intermediate", "--name", "N", "--csr-out", str(csr), "--home",
         str(h["online"]), "--passphrase-file", str(inter_pass))  # fmt: skip
    for extra in (["--out", str(h["base"] / "n.pem")], ["--yes"]):
        refused = _run(tokens, "sign-intermediate", str(csr), "--dry-run", *extra, "--home",
                       str(h["root"]), expect=2)  # fmt: skip
        assert "--dry-run" in refused.stderr.decode()
    assert not (h["base"] / "n.pem").exists()


def _read_until(fd: int, marker: bytes, seconds: float = 30) -> bytes:
    import os
    import select
    import time

    seen, deadline = b"", time.monotonic() + seconds
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} within {seconds}s; got {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize(("answer", "code"), [(b"n\n", 2), (b"y\n", 0)])
def test_on_a_terminal_the_request_is_shown_and_must_be_confirmed(
    tokens: Tokens, two_homes: dict[str, Path], answer: bytes, code: int
) -> None:
    import os
    import pty

    from tests.helpers import tool

    h = two_homes
    inter_pass = h["base"] / "inter.pass"
    inter_pass.write_text(INTER_PASS)
    csr, signed = h["base"] / "t.csr", h["base"] / "t.pem"
    _run(tokens, "create-intermediate", "--name", "Tty CA", "--trust-domain", "acme.internal",
         "--name-constraints", "--csr-out", str(csr), "--home", str(h["online"]),
         "--passphrase-file", str(inter_pass))  # fmt: skip
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CYPHRS_NO_INPUT")}
    proc = subprocess.Popen(
        [tool("cyphrs"), "sign-intermediate", str(csr), "--out", str(signed), "--home",
         str(h["root"]), "--passphrase-file", str(h["root_pass"])],
        stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, env=env,
    )  # fmt: skip
    try:
        os.close(terminal)
        shown = _read_until(controller, b"Sign this intermediate?")
        assert b"URI:acme.internal" in shown and b"carried in the CSR" in shown
        os.write(controller, answer)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert signed.exists() == (code == 0)
