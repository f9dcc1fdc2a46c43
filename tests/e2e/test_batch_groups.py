"""Group commit attacked: a crash inside a group, a race inside the group's transaction,
and memory that must not grow with the number of items.

Every test drives the real ``cyphrs`` executable in a subprocess. The promises: a group is
committed in one transaction before any of its files or lines exist, so a crash anywhere
leaves no file and no line for an unrecorded certificate and every earlier group intact;
a conflict found inside the transaction drops only that item; a batch streams.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from cyphrs_cli.ca.serials import serial_hex
from cyphrs_cli.errors import ExitCode
from cyphrs_cli.service.batch import DEFAULT_GROUP_SIZE
from tests.cli.test_json_contract import assert_valid
from tests.e2e.test_batch_hardening import _batch_args, _stopped, _write_batch
from tests.helpers import Hierarchy, run_cyphrs, tool

GROUP = DEFAULT_GROUP_SIZE
FILES = {"cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem"}


def _serials(h: Hierarchy, after_id: int) -> set[str]:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        rows = conn.execute("SELECT serial FROM certificates WHERE id > ?", (after_id,))
        return {serial for (serial,) in rows}


def _last_id(h: Hierarchy) -> int:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        return int(conn.execute("SELECT max(id) FROM certificates").fetchone()[0])


def _crash(h: Hierarchy, tmp_path: Path, fault: str) -> tuple[set[str], set[str], Path]:
    """Run a 2.5-group batch that dies at ``fault``; returns (serials printed, serials
    recorded by this batch, out dir) after checking that the first group is whole."""
    out = tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "wf"} for _ in range(GROUP * 2 + 44)])
    first_id = _last_id(h)
    proc = run_cyphrs(*_batch_args(h, batch, out), env={"CYPHRS_TEST_FAULT": fault})
    assert proc.returncode == 86, proc.stderr.decode()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    for line in lines:
        assert_valid(line)
    assert all(line["ok"] for line in lines)
    # Every earlier group is intact: all of group 1 printed, with its five files each.
    assert [line["index"] for line in lines] == list(range(1, GROUP + 1))
    printed = {line["certificate"]["serial"] for line in lines}
    recorded = _serials(h, first_id)
    assert printed <= recorded
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == [f"{i:05d}" for i in range(1, GROUP + 1)]
    for name in dirs:
        assert {p.name for p in (out / name).iterdir()} == FILES
    written = {
        serial_hex(
            x509.load_pem_x509_certificate((out / name / "cert.pem").read_bytes()).serial_number
        )
        for name in dirs
    }
    assert written == printed
    verify = run_cyphrs("audit", "verify", "--home", str(h.home))
    assert verify.returncode == 0, verify.stderr.decode()
    return printed, recorded, out


def test_crash_after_signing_part_of_a_group_records_and_outputs_nothing_of_it(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Killed after signing 72 items of group 2 (before its commit): the ledger holds group
    1 only, and exactly group 1 has files and lines."""
    printed, recorded, out = _crash(fresh_hierarchy, tmp_path, f"after-sign@{GROUP + 72}")
    assert recorded == printed
    for path in out.rglob("*"):  # no temporary or partial file anywhere
        assert path.is_dir() or path.name in FILES


def test_crash_after_a_group_commit_leaves_it_recorded_but_never_printed_or_written(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Killed after group 2's commit, before its files: group 2 is recorded (the ledger
    explains it, as for a single issue that crashes after recording), but no file and no
    line exists for it, and group 1 is whole."""
    printed, recorded, _ = _crash(fresh_hierarchy, tmp_path, f"after-record@{GROUP + 72}")
    assert len(recorded) == 2 * GROUP
    assert printed < recorded


def test_conflict_inside_the_group_transaction_drops_only_that_item(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """Another process issues for item 2's agent instance after the group was signed and
    before its commit: item 2 is refused (exit 7) and recorded nowhere, items 1 and 3 of
    the same group are committed and delivered, and the ledger still verifies."""
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(
        tmp_path / "b.jsonl",
        [{"workflow": "wf", "instance": f"i{i}"} for i in (1, 2, 3)],
    )
    first_id = _last_id(h)
    proc = subprocess.Popen(
        [tool("cyphrs"), *_batch_args(h, batch, out)],
        env={**os.environ, "CYPHRS_TEST_FAULT": "group-signed"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _stopped(proc.pid)
        rival = run_cyphrs(
            "issue", "agent", "--workflow", "wf", "--instance", "i2", "--json",
            "--home", str(h.home), "--passphrase-file", str(h.inter_pass),
        )  # fmt: skip
        assert rival.returncode == 0, rival.stderr.decode()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.CONFLICT, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    for line in lines:
        assert_valid(line)
    assert [line.get("ok") for line in lines[:-1]] == [True, False, True]
    assert lines[1]["error"]["code"] == ExitCode.CONFLICT
    assert lines[-1]["issued"] == 2 and lines[-1]["failed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["00001", "00003"]
    rival_serial = json.loads(rival.stdout)["certificate"]["serial"]
    recorded = _serials(h, first_id)
    assert recorded == {lines[0]["certificate"]["serial"], lines[2]["certificate"]["serial"]} | {
        rival_serial
    }
    verify = run_cyphrs("audit", "verify", "--home", str(h.home))
    assert verify.returncode == 0, verify.stderr.decode()


_PEAK = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sys.stderr.write(done.stderr.decode())
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_kib(h: Hierarchy, tmp_path: Path, items: int) -> int:
    """Peak RSS (KiB) of one ``--json`` batch of ``items`` agents, output discarded."""
    batch = tmp_path / f"b{items}.jsonl"
    batch.write_text('{"workflow": "wf"}\n' * items)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, tool("cyphrs"), *_batch_args(h, batch, None)],
        capture_output=True,
        check=False,
    )
    code, peak = done.stdout.decode().split()
    assert code == "0", done.stderr.decode()
    return int(peak)


def test_memory_of_a_20k_item_batch_stays_flat(fresh_hierarchy: Hierarchy, tmp_path: Path) -> None:
    """A 20,000-item batch peaks within 1.2x the peak of a 1,000-item batch plus 4 MiB:
    nothing per item may be kept to the end (about 14 KB per item used to be)."""
    small = _peak_kib(fresh_hierarchy, tmp_path, 1_000)
    large = _peak_kib(fresh_hierarchy, tmp_path, 20_000)
    assert large <= 1.2 * small + 4096, (small, large)
