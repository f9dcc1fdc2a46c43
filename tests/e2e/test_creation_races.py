"""Concurrent creation in one CA home, driven through real ``cyphrs`` processes.

Each race starts several processes at once (``subprocess.Popen``) and waits for every one.
``CYPHRS_TEST_DELAY=after-sign=SECONDS`` holds each creator between signing its CA
certificate and recording it, which is where the unserialised code let several processes
pass the "alias free / no root yet" checks together; with the home lock the delay only
makes the winner slower. Afterwards the home must hold exactly what one winner made, its
key must still open (a CA is created and a certificate issued with it), and ``audit
verify`` must pass.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tomllib
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.helpers import INTER_PASS, ROOT_PASS, cli, tool

WORKERS = 4
ROUNDS = 3
SLOW = {"CYPHRS_TEST_DELAY": "after-sign=0.8"}


def run_together(
    commands: list[list[str]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[bytes]]:
    """Start every command before waiting for any; wait for all of them, always."""
    full_env = {**os.environ, **(env or {})}
    procs = [
        subprocess.Popen(
            [tool("cyphrs"), *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for args in commands
    ]
    results = []
    try:
        for proc, args in zip(procs, commands, strict=True):
            out, err = proc.communicate(timeout=180)
            results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _secrets(base: Path) -> tuple[Path, Path]:
    base.mkdir(parents=True, exist_ok=True)
    root_pass, inter_pass = base / "root.pass", base / "inter.pass"
    root_pass.write_text(ROOT_PASS)
    inter_pass.write_text(INTER_PASS)
    return root_pass, inter_pass


def _init_root(home: Path, root_pass: Path, name: str = "Race Root", *extra: str) -> list[str]:
    return [
        "init-root",
        "--name",
        name,
        "--key-type",
        "p256",
        "--home",
        str(home),
        "--passphrase-file",
        str(root_pass),
        *extra,
    ]


def _intermediate(home: Path, root_pass: Path, inter_pass: Path, name: str) -> list[str]:
    return [
        "create-intermediate",
        "--name",
        name,
        "--trust-domain",
        "acme.internal",
        "--home",
        str(home),
        "--passphrase-file",
        str(inter_pass),
        "--root-passphrase-file",
        str(root_pass),
    ]


def _outcome(results: list[subprocess.CompletedProcess[bytes]]) -> list[int]:
    return sorted(r.returncode for r in results)


def _diagnose(results: list[subprocess.CompletedProcess[bytes]]) -> str:
    return "\n".join(f"{r.returncode}: {r.stderr.decode(errors='replace')}" for r in results)


def _home_files(home: Path) -> set[str]:
    """Every file in the home, minus SQLite's WAL companions."""
    return {
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _authorities(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT name, role FROM authorities ORDER BY id").fetchall()
    return [(str(n), str(r)) for n, r in rows]


def _config(home: Path) -> dict[str, dict[str, str]]:
    authorities: dict[str, dict[str, str]] = tomllib.loads((home / "config.toml").read_text())[
        "authorities"
    ]
    return authorities


def _assert_usable_root(home: Path, root_pass: Path, inter_pass: Path, tmp: Path) -> None:
    """The root's key file still opens and matches its certificate: it signs an
    intermediate, which issues a certificate; the ledger verifies."""
    made = cli(*_intermediate(home, root_pass, inter_pass, "Check CA"))
    assert made.exit_code == 0, made.stderr
    _assert_issues(home, inter_pass, "check-ca", tmp / "check-ca")
    assert cli("audit", "verify", "--home", str(home)).exit_code == 0


def _assert_issues(home: Path, inter_pass: Path, issuer: str, out: Path) -> None:
    issued = cli(
        "issue",
        "agent",
        "--workflow",
        "race",
        "--instance",
        issuer,
        "--issuer",
        issuer,
        "--out-dir",
        str(out),
        "--home",
        str(home),
        "--passphrase-file",
        str(inter_pass),
    )
    assert issued.exit_code == 0, issued.stderr


@pytest.mark.slow
def test_concurrent_init_root_same_alias_one_winner(tmp_path: Path) -> None:
    root_pass, inter_pass = _secrets(tmp_path)
    for round_ in range(ROUNDS):
        home = tmp_path / f"home{round_}"
        results = run_together([_init_root(home, root_pass)] * WORKERS, SLOW)
        assert (home / "keys" / "race-root.key.pem").is_file(), _diagnose(results)
        assert _outcome(results) == [0] + [ExitCode.CONFLICT] * (WORKERS - 1), _diagnose(results)
        assert _home_files(home) == {
            ".cyphrs.lock",
            "config.toml",
            "ledger.sqlite3",
            "ledger.sqlite3-lock",  # the ledger's writer lock (ledger/writelock.py)
            "keys/race-root.key.pem",
            "certs/race-root.pem",
        }
        assert _authorities(home) == [("race-root", "root")]
        _assert_usable_root(home, root_pass, inter_pass, tmp_path / f"out{round_}")


@pytest.mark.slow
def test_concurrent_init_root_different_names_one_root(tmp_path: Path) -> None:
    root_pass, inter_pass = _secrets(tmp_path)
    for round_ in range(2):
        home = tmp_path / f"home{round_}"
        commands = [_init_root(home, root_pass, f"Race Root {i}") for i in range(WORKERS)]
        results = run_together(commands, SLOW)
        assert _outcome(results) == [0] + [ExitCode.CONFLICT] * (WORKERS - 1), _diagnose(results)
        (winner,) = [r for r in results if r.returncode == 0]
        alias = str(winner.args[2]).lower().replace(" ", "-")
        assert _authorities(home) == [(alias, "root")]
        assert list(_config(home)) == [alias]
        assert sorted(p.name for p in (home / "keys").iterdir()) == [f"{alias}.key.pem"]
        _assert_usable_root(home, root_pass, inter_pass, tmp_path / f"out{round_}")


@pytest.mark.slow
def test_failing_creators_never_remove_the_winners_home(tmp_path: Path) -> None:
    """Three runs with a too-short passphrase fail (exit 3, or 7 once the root exists)
    while one good run is creating the same home: the failing ones may remove only a home they made themselves
    and that is still empty, never the one the good run is filling."""
    root_pass, inter_pass = _secrets(tmp_path)
    short = tmp_path / "short.pass"
    short.write_text("abc")
    for round_ in range(ROUNDS):
        home = tmp_path / f"home{round_}"
        commands = [_init_root(home, short)] * (WORKERS - 1)
        commands.insert(round_ % WORKERS, _init_root(home, root_pass))
        results = run_together(commands, SLOW)
        codes = _outcome(results)
        # A failing run that got the lock after the good one finds a root already (7).
        assert codes[0] == 0, _diagnose(results)
        assert set(codes[1:]) <= {ExitCode.INVALID_INPUT, ExitCode.CONFLICT}, _diagnose(results)
        assert _authorities(home) == [("race-root", "root")]
        _assert_usable_root(home, root_pass, inter_pass, tmp_path / f"out{round_}")
    # And when every run fails, the home each of them might have made is gone again.
    home = tmp_path / "all-fail"
    results = run_together([_init_root(home, short)] * WORKERS)
    assert _outcome(results) == [ExitCode.INVALID_INPUT] * WORKERS, _diagnose(results)
    assert not home.exists()


@pytest.mark.slow
def test_concurrent_create_intermediate_same_alias_one_winner(tmp_path: Path) -> None:
    root_pass, inter_pass = _secrets(tmp_path)
    home = tmp_path / "home"
    assert cli(*_init_root(home, root_pass)).exit_code == 0
    for round_ in range(ROUNDS):
        name = f"Agents {round_}"
        results = run_together([_intermediate(home, root_pass, inter_pass, name)] * WORKERS, SLOW)
        alias = f"agents-{round_}"
        assert (home / "keys" / f"{alias}.key.pem").is_file(), _diagnose(results)
        assert _outcome(results) == [0] + [ExitCode.CONFLICT] * (WORKERS - 1), _diagnose(results)
        assert alias in _config(home)
        _assert_issues(home, inter_pass, alias, tmp_path / f"out{round_}")
    assert _authorities(home) == [("race-root", "root")] + [
        (f"agents-{r}", "intermediate") for r in range(ROUNDS)
    ]
    assert not [p for p in home.rglob("*.new")], "a temporary key file was left behind"
    assert cli("audit", "verify", "--home", str(home)).exit_code == 0


@pytest.mark.slow
def test_concurrent_create_intermediate_different_aliases_all_kept(tmp_path: Path) -> None:
    root_pass, inter_pass = _secrets(tmp_path)
    home = tmp_path / "home"
    assert cli(*_init_root(home, root_pass)).exit_code == 0
    aliases = [f"agents-{i}" for i in range(WORKERS)]
    results = run_together(
        [_intermediate(home, root_pass, inter_pass, f"Agents {i}") for i in range(WORKERS)],
        SLOW,
    )
    assert _outcome(results) == [0] * WORKERS, _diagnose(results)
    config = _config(home)
    assert sorted(config) == sorted(["race-root", *aliases]), "a config.toml update was lost"
    assert sorted(n for n, _ in _authorities(home)) == sorted(["race-root", *aliases])
    for alias in aliases:
        assert config[alias]["key"] == f"file:keys/{alias}.key.pem"
        _assert_issues(home, inter_pass, alias, tmp_path / alias)
    assert cli("audit", "verify", "--home", str(home)).exit_code == 0


@pytest.mark.slow
def test_concurrent_intermediate_requests_same_alias_one_winner(tmp_path: Path) -> None:
    """The offline-root request (key + CSR + pending entry) races the same way."""
    _, inter_pass = _secrets(tmp_path)
    home = tmp_path / "online"
    commands = [
        [
            "create-intermediate",
            "--name",
            "Agents CA",
            "--home",
            str(home),
            "--passphrase-file",
            str(inter_pass),
            "--csr-out",
            str(tmp_path / f"{i}.csr"),
        ]
        for i in range(WORKERS)
    ]
    results = run_together(commands)
    assert _outcome(results) == [0] + [ExitCode.CONFLICT] * (WORKERS - 1), _diagnose(results)
    pending = tomllib.loads((home / "config.toml").read_text())["pending_intermediates"]
    assert list(pending) == ["agents-ca"]
    (winner,) = [i for i, r in enumerate(results) if r.returncode == 0]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.keystore.file import decrypt_private_key

    key = decrypt_private_key(
        (home / "keys" / "agents-ca.key.pem").read_bytes(), INTER_PASS.encode(), source="key"
    )
    csr = x509.load_pem_x509_csr((tmp_path / f"{winner}.csr").read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.PEM, spki) == (
        csr.public_key().public_bytes(serialization.Encoding.PEM, spki)
    )
    assert pending["agents-ca"]["public_key"].encode() == csr.public_key().public_bytes(
        serialization.Encoding.PEM, spki
    )


def test_a_held_home_lock_times_out_with_exit_8(tmp_path: Path) -> None:
    """A creator that waits longer than CYPHRS_BUSY_TIMEOUT_MS gives up with exit 8 and
    one line, and takes nothing from the holder."""
    import time

    root_pass, _ = _secrets(tmp_path)
    home = tmp_path / "home"
    env = {**os.environ, "CYPHRS_TEST_DELAY": "after-sign=4"}
    holder = subprocess.Popen(
        [tool("cyphrs"), *_init_root(home, root_pass)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (home / "ledger.sqlite3").exists():  # made under the lock
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        waiter = run_together(
            [_init_root(home, root_pass, "Other Root")], {"CYPHRS_BUSY_TIMEOUT_MS": "300"}
        )[0]
    finally:
        _, holder_err = holder.communicate(timeout=120)
    assert waiter.returncode == ExitCode.STORAGE, waiter.stderr
    assert b"another cyphrs process holds" in waiter.stderr
    assert waiter.stderr.count(b"\n") == 1
    assert holder.returncode == 0, holder_err
    assert _authorities(home) == [("race-root", "root")]
