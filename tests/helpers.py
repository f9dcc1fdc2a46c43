"""Small helpers shared by the test suites: run the CLI, build hierarchies, call oracles."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typer.testing import CliRunner

from cyphrs_cli.cli.app import app

if TYPE_CHECKING:
    from cyphrs_cli.service.authority import Authority

ROOT_PASS = "root-passphrase-for-tests"
INTER_PASS = "intermediate-passphrase-for-tests"
VENV_BIN = Path(sys.executable).parent


def open_descriptors(matches: Callable[[str], bool]) -> dict[int, str]:
    """This process's open descriptors whose target (``/proc/self/fd``) ``matches``, in
    ascending order: number -> target. One closed during the scan is skipped."""
    found = {}
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if matches(target):
            found[int(name)] = target
    return found


def tool(name: str) -> str:
    """A console script from this interpreter's environment (pkilint, cyphrs)."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        return json.loads(self.stderr)


def cli(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """Run cyphrs in-process (CliRunner); stdout and stderr kept apart."""
    runner = CliRunner()
    result = runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def run_cyphrs(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run cyphrs as a real process (fault injection, start-up, stdin handling)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [tool("cyphrs"), *args],
        env=full_env,
        input=input,
        capture_output=True,
        check=check,
        timeout=120,
    )


@dataclass
class Hierarchy:
    home: Path
    root_pass: Path
    inter_pass: Path
    key_type: str

    @property
    def root_cert(self) -> Path:
        return self.home / "certs" / "test-root.pem"

    @property
    def inter_cert(self) -> Path:
        return self.home / "certs" / "test-inter.pem"

    def issue(self, *args: str) -> Result:
        return cli(
            "issue", *args, "--home", str(self.home), "--passphrase-file", str(self.inter_pass)
        )

    def issue_serial(self, *args: str) -> str:
        """``issue ARGS --json``, which must succeed; the new certificate's serial."""
        result = self.issue(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return str(result.json()["certificate"]["serial"])

    def authority(self) -> Authority:
        """This home's ``Authority`` (a context manager), its intermediate unlocked with
        the test passphrase."""
        from cyphrs_cli.config.home import CaHome
        from cyphrs_cli.service.authority import Authority

        return Authority.open(CaHome(self.home), secrets=lambda _: INTER_PASS.encode())

    def ledger_rows(self, table: str = "certificates") -> int:
        with sqlite3.connect(self.home / "ledger.sqlite3") as conn:
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(count)


def build_hierarchy(
    base: Path,
    key_type: str = "p256",
    *,
    trust_domain: str = "acme.internal",
    extra: tuple[str, ...] = (),
    root_extra: tuple[str, ...] = (),
    root_name: str = "Test Root CA",
    inter_name: str = "Test Issuing CA",
) -> Hierarchy:
    """A root (alias test-root) and an intermediate (test-inter) in ``base/home``, their
    passphrases in ``base/root.pass`` and ``base/inter.pass``; ``root_extra`` and ``extra``
    are more options of init-root and create-intermediate."""
    base.mkdir(parents=True, exist_ok=True)
    root_pass, inter_pass = base / "root.pass", base / "inter.pass"
    root_pass.write_text(ROOT_PASS + "\n")
    inter_pass.write_text(INTER_PASS + "\n")
    home = base / "home"
    done = cli(
        "init-root",
        "--name",
        root_name,
        "--alias",
        "test-root",
        "--key-type",
        key_type,
        "--home",
        str(home),
        "--passphrase-file",
        str(root_pass),
        *root_extra,
    )
    assert done.exit_code == 0, done.stderr
    done = cli(
        "create-intermediate",
        "--name",
        inter_name,
        "--alias",
        "test-inter",
        "--key-type",
        key_type,
        "--trust-domain",
        trust_domain,
        "--home",
        str(home),
        "--passphrase-file",
        str(inter_pass),
        "--root-passphrase-file",
        str(root_pass),
        *extra,
    )
    assert done.exit_code == 0, done.stderr
    return Hierarchy(home, root_pass, inter_pass, key_type)


def openssl_verify(
    root: Path, chain: Path, leaf: Path, purpose: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            str(root),
            "-untrusted",
            str(chain),
            *extra,
            str(leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


_URI_FINDING = "pkix.invalid_uri_syntax"
_URI_MESSAGE = re.compile(r'Invalid URI syntax: "(?P<uri>.*)"', re.DOTALL)


def _is_spiffe_id(uri: str) -> bool:
    """True when our own strict SPIFFE parser accepts ``uri`` (cyphrs_cli.ca.extensions)."""
    from cyphrs_cli.ca.extensions import parse_spiffe_id
    from cyphrs_cli.errors import InvalidInputError

    try:
        parse_spiffe_id(uri)
    except InvalidInputError:
        return False
    return True


def _known_false_positive(finding: dict[str, Any]) -> bool:
    """pkilint's URI validator rejects every ``spiffe://`` URI (RFC 3986 scheme registry);
    that finding is dropped only when the URI it names is a SPIFFE ID our parser accepts, so
    a genuinely malformed URI (or a finding whose URI we cannot read) still fails."""
    if finding.get("code") != _URI_FINDING:
        return False
    match = _URI_MESSAGE.fullmatch(str(finding.get("message", "")))
    return match is not None and _is_spiffe_id(match.group("uri"))


def pkilint_findings(*args: str) -> list[str]:
    """Run a pkilint linter with -s WARNING -f JSON; return finding codes (minus known FPs)."""
    linter, *files = args
    proc = subprocess.run(
        [tool(linter), "lint", "-s", "WARNING", "-f", "JSON", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{linter} failed ({proc.returncode}): {proc.stderr}") from exc
    codes = []
    for result in report["results"]:
        for finding in result.get("finding_descriptions", []):
            if not _known_false_positive(finding):
                codes.append(finding["code"])
    return codes


def openssl_csr(directory: Path, subject: str = "/CN=api", *extra: str) -> tuple[Path, Path]:
    """A P-256 key and CSR made by openssl itself (an outside client); returns (key, csr)."""
    key, csr = directory / "openssl.key", directory / "openssl.csr"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            subject,
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return key, csr
