"""A PIN written into a PKCS#11 URI never reaches config.toml, the ledger, exports or output.

Real SoftHSM2 tokens, real ``cyphrs`` processes. Every RFC 7512 spelling of ``pin-value`` is
refused (exit 3, one line, the PIN not repeated) and leaves no file holding the PIN; a URI
spelt with upper-case names and percent-encoding works and is stored canonical.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.e2e.test_hsm import Tokens, tokens  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.hsm

SMUGGLED = "918273645"


def _variants(module: str) -> list[str]:
    base = "pkcs11:token=root-token;object=smuggle"
    return [
        f"{base}?module-path={module}&PIN-VALUE={SMUGGLED}",
        f"{base}?module-path={module}&Pin-Value={SMUGGLED}",
        f"{base}?module-path={module}&pin%2Dvalue={SMUGGLED}",
        f"{base};pin-value={SMUGGLED}?module-path={module}",
        f"pkcs11:token=root-token;PIN-VALUE={SMUGGLED};object=smuggle?module-path={module}",
        f"{base}?module-path={module}&pin-value={SMUGGLED}&pin-value={SMUGGLED}",
        f"{base}?module-path={module}&x-pin-value={SMUGGLED}",
        f"PKCS11:token=root-token;object=smuggle?module-path={module}&pin-value={SMUGGLED}",
        f"{base}?module-path={module}&pin-value={SMUGGLED}#x",
    ]


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("index", range(9))
def test_pin_value_variants_are_refused_and_stored_nowhere(
    tokens: Tokens,  # noqa: F811
    tmp_path: Path,
    index: int,
) -> None:
    uri = _variants(tokens.module)[index]
    home = tmp_path / "home"
    proc = tokens.cyphrs(
        "init-root",
        "--home",
        str(home),
        "--name",
        "Smuggle Root",
        "--key-uri",
        uri,
        "--pin-file",
        str(tokens.pin_file),
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode in (2, 3), stderr
    assert SMUGGLED not in stderr and SMUGGLED.encode() not in proc.stdout
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert _files_holding(home, SMUGGLED.encode()) == []


def test_rfc7512_spelling_is_accepted_and_stored_canonical(
    tokens: Tokens,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    label = f"canon-{tmp_path.name}"
    spelled = (
        f"PKCS11:TOKEN=root%2Dtoken;Object={label.replace('-', '%2D')};type=private"
        f"?Module-Path={tokens.module}"
    )
    tokens.cyphrs(
        "init-root",
        "--home",
        str(home),
        "--name",
        "Canonical Root",
        "--key-uri",
        spelled,
        "--pin-file",
        str(tokens.pin_file),
    )
    canonical = f"pkcs11:token=root-token;object={label}?module-path={tokens.module}"
    assert f'key = "{canonical}"' in (home / "config.toml").read_text()
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (stored,) = conn.execute("SELECT key_uri FROM authorities").fetchone()
        details = " ".join(r[0] for r in conn.execute("SELECT details FROM events"))
    assert stored == canonical
    assert spelled not in details
    # The stored URI is usable: the root signs its first CRL through it.
    root_alias = conn_alias(home)
    tokens.cyphrs(
        "crl", "--issuer", root_alias, "--home", str(home), "--pin-file", str(tokens.pin_file)
    )


def conn_alias(home: Path) -> str:
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        (name,) = conn.execute("SELECT name FROM authorities WHERE role = 'root'").fetchone()
    return str(name)
