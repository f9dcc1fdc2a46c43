"""``list`` at scale and in pipes: full serials when piped, a bounded memory for --json, a
terminal table that stops at a cap, and the in-process settings of one invocation never
leaking into the next.

Rows beyond the few issued for real are copies of a real certificate row with fresh
serials (``_grow``), as bench/bench_list.py does: the listing reads rows, it does not
re-verify signatures, and signing 30k certificates is not what these tests are about.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
from pathlib import Path

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, cli, run_cyphrs, tool
from tests.processes import on_terminal


def _grow(h: Hierarchy, total: int) -> None:
    conn = sqlite3.connect(h.home / "ledger.sqlite3")
    template = conn.execute("SELECT * FROM certificates WHERE is_ca = 0 LIMIT 1").fetchone()
    names = [d[0] for d in conn.execute("SELECT * FROM certificates LIMIT 0").description]
    rows = []
    for i in range(total):
        row = dict(zip(names, template, strict=True))
        del row["id"]
        row["serial"] = secrets.token_hex(20)
        row["fingerprint"] = "sha256:" + secrets.token_hex(32)
        row["workflow"] = f"grown{i % 7}"
        rows.append(row)
    columns = list(rows[0])
    conn.executemany(
        f"INSERT INTO certificates ({', '.join(columns)})"  # noqa: S608 - fixed names
        f" VALUES ({', '.join('?' for _ in columns)})",
        [tuple(r[c] for c in columns) for r in rows],
    )
    conn.commit()
    conn.close()


def test_piped_table_has_full_serials_that_revoke_accepts(fresh_hierarchy: Hierarchy) -> None:
    """The human table, piped, names each certificate by its whole serial: the first cell
    of a row must be usable as ``revoke --serial`` (a cut "abcd…" prefix is not)."""
    h = fresh_hierarchy
    serial = h.issue_serial("agent", "--workflow", "piped", "--instance", "p1")
    env = {"CYPHRS_HOME": str(h.home)}
    listed = run_cyphrs("list", "--workflow", "piped", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == [
        "serial",
        "profile",
        "identity",
        "not",
        "after",
        "status",
        "replaces",
    ]
    first_cell = lines[1].split()[0]
    assert first_cell == serial
    revoked = run_cyphrs("revoke", "--serial", first_cell, env=env)
    assert revoked.returncode == 0, revoked.stderr
    again = run_cyphrs("list", "--status", "revoked", env=env).stdout.decode()
    assert serial in again.split()


def test_piped_table_escapes_cells(fresh_hierarchy: Hierarchy) -> None:
    """The plain (Rich-free) table escapes hostile text like the terminal table did."""
    h = fresh_hierarchy
    h.issue_serial("agent", "--workflow", "esc", "--instance", "e1")
    conn = sqlite3.connect(h.home / "ledger.sqlite3")
    conn.execute(
        "UPDATE certificates SET spiffe_id = ? WHERE workflow = 'esc'", ("x\x1b]0;owned\x07y",)
    )
    conn.commit()
    conn.close()
    out = run_cyphrs("list", "--workflow", "esc", env={"CYPHRS_HOME": str(h.home)}).stdout
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"x\\x1b]0;owned\\x07y" in out


# Runs one command and reports its peak RSS; a small launcher, because a child forked from
# pytest itself would count pytest's own pages in its ru_maxrss.
_LAUNCHER = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=open(sys.argv[0] + ".out", "wb"))
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _rss_of(args: list[str], env: dict[str, str], scratch: Path) -> tuple[int, bytes, int]:
    """Peak RSS (KiB) of one real cyphrs process, its stdout and its exit status."""
    import sys

    launcher = scratch / "launch.py"
    launcher.write_text(_LAUNCHER)
    proc = subprocess.run(
        [sys.executable, str(launcher), tool("cyphrs"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    code, rss = (int(x) for x in proc.stdout.split())
    return rss, (scratch / "launch.py.out").read_bytes(), code


def test_list_json_streams_in_bounded_memory(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """30k rows: a valid cyphrs.list/v1 document with every row, from a process whose peak
    memory does not grow with the rows (the old list held every row, PEM included, and
    its pretty-printed document at once: ~200 MB here)."""
    h = fresh_hierarchy
    h.issue_serial("agent", "--workflow", "big", "--instance", "b1")
    _grow(h, 30_000)
    rss, out, code = _rss_of(["list", "--json"], {"CYPHRS_HOME": str(h.home)}, tmp_path)
    assert code == 0
    document = json.loads(out)
    assert document["count"] == len(document["certificates"]) == 30_000 + 3
    assert_valid(document)
    assert rss < 60 * 1024, f"peak RSS {rss // 1024} MiB"
    # The piped table holds short strings per row, not Rich renderables.
    rss_table, table, code = _rss_of(["list"], {"CYPHRS_HOME": str(h.home)}, tmp_path)
    assert code == 0 and table.count(b"\n") == 30_000 + 3 + 1
    assert rss_table < 80 * 1024, f"peak RSS {rss_table // 1024} MiB"


def test_csv_streams_every_row_under_one_header(fresh_hierarchy: Hierarchy) -> None:
    """CSV is written in chunks; the result is one header and every row, in order."""
    h = fresh_hierarchy
    _grow_after_one = h.issue_serial("agent", "--workflow", "csv", "--instance", "c1")
    assert _grow_after_one
    _grow(h, 2_500)
    result = cli("list", "--csv", "--home", str(h.home))
    assert result.exit_code == 0, result.stderr
    records = result.stdout.split("\n")  # CliRunner turns the CSV's CRLF into LF
    assert records[0].startswith("issuer,serial,")
    assert sum(1 for r in records if r.startswith("issuer,serial,")) == 1
    assert len([r for r in records if r]) == 1 + 2_500 + 3
    as_json = cli("list", "--json", "--home", str(h.home)).json()
    serials = [r.split(",")[1] for r in records[1:] if r]
    assert serials == [c["serial"] for c in as_json["certificates"]]


def test_terminal_table_stops_at_the_cap(fresh_hierarchy: Hierarchy) -> None:
    """On a terminal the Rich table shows the newest TERMINAL_ROWS rows and says so."""
    from cyphrs_cli.cli.commands.listing import TERMINAL_ROWS

    h = fresh_hierarchy
    h.issue_serial("agent", "--workflow", "tty", "--instance", "t1")
    _grow(h, TERMINAL_ROWS + 50)
    code, shown, err = on_terminal(
        [tool("cyphrs"), "list"], {**os.environ, "CYPHRS_HOME": str(h.home), "COLUMNS": "200"}
    )
    assert code == 0
    assert f"{TERMINAL_ROWS + 50 + 3} certificate(s); showing the newest {TERMINAL_ROWS}" in err
    assert shown.count("…") >= TERMINAL_ROWS  # serials cut for people on a terminal
    assert len([line for line in shown.splitlines() if "agent" in line]) == TERMINAL_ROWS


def test_json_flag_does_not_leak_into_the_next_invocation(fresh_hierarchy: Hierarchy) -> None:
    """Two in-process invocations: --json (and its JSON errors) belong to the first only."""
    h = fresh_hierarchy
    assert cli("list", "--json", "--home", str(h.home)).exit_code == 0
    plain = cli("list", "--home", str(h.home))
    assert plain.exit_code == 0 and not plain.stdout.lstrip().startswith("{")
    err = cli("list", "--status", "bogus", "--home", str(h.home))
    assert err.exit_code == ExitCode.INVALID_INPUT
    assert err.stderr.startswith("cyphrs: error:")


def test_root_flags_do_not_leak_into_the_next_invocation(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """``cyphrs --home X`` and ``--actor`` hold for one invocation: they used to be written
    into os.environ and applied to every later in-process invocation."""
    h = fresh_hierarchy
    before = dict(os.environ)
    assert cli("--home", str(h.home), "--actor", "alice", "list").exit_code == 0
    assert dict(os.environ) == before
    # A later invocation without --home does not find the earlier home.
    missing = cli("list", env={"CYPHRS_HOME": str(tmp_path / "nowhere")})
    assert missing.exit_code == ExitCode.NOT_FOUND
    # The root --home beats CYPHRS_HOME; a command-level --home beats the root one.
    assert (
        cli("--home", str(h.home), "list", env={"CYPHRS_HOME": str(tmp_path / "x")}).exit_code == 0
    )
    assert cli("--home", str(tmp_path / "x"), "list", "--home", str(h.home)).exit_code == 0
    # --actor is recorded for its invocation only.
    serial = h.issue_serial("agent", "--workflow", "actor", "--instance", "a1")
    cli(
        "--actor",
        "bob",
        "revoke",
        "--serial",
        serial,
        "--home",
        str(h.home),
    )
    conn = sqlite3.connect(h.home / "ledger.sqlite3")
    actors = [r[0] for r in conn.execute("SELECT actor FROM events ORDER BY seq")]
    conn.close()
    assert actors[-1] == "bob"
    assert "bob" not in actors[:-1] and "alice" not in actors
