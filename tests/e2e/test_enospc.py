"""A full disk at COMMIT is exit 8 naming the condition, never exit 1 (a real, small tmpfs).

The CA home is copied onto a tmpfs of a few MiB, the rest of the file system is filled up
to a given number of free KiB, and a real ``cyphrs issue`` runs. Depending on how much room
is left, SQLite fails while opening the WAL or when COMMIT appends its frames; before the
fix the ROLLBACK after a failed COMMIT raised "no transaction is active" and hid the
cause (exit 1, "internal error").
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, run_cyphrs


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs this test as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this system")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (container without CAP_SYS_ADMIN?): {done.stderr}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(mountpoint: Path, leave_kib: int) -> None:
    """Fill the tmpfs so that about ``leave_kib`` KiB stay free."""
    stat = os.statvfs(mountpoint)
    free = stat.f_bavail * stat.f_frsize
    size = max(free - leave_kib * 1024, 0)
    with (mountpoint / "filler").open("wb") as out:
        block = b"\0" * 65536
        while size > 0:
            size -= out.write(block[: min(len(block), size)])


def test_disk_full_at_commit_is_a_storage_error(
    fresh_hierarchy: Hierarchy, small_tmpfs: Path
) -> None:
    seen_commit_failure = False
    for leave_kib in (0, 8, 16, 24, 32, 40, 48, 64, 80, 96, 112):
        for leftover in small_tmpfs.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        home = small_tmpfs / "home"
        shutil.copytree(fresh_hierarchy.home, home)
        # closing(): sqlite3's own context manager commits but does not close, and an open
        # connection keeps the deleted ledger's pages allocated on the tmpfs.
        with closing(sqlite3.connect(home / "ledger.sqlite3")) as conn:
            (before,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
        _fill(small_tmpfs, leave_kib)
        proc = run_cyphrs(
            "issue",
            "agent",
            "--workflow",
            "disk-full",
            "--json",
            "--home",
            str(home),
            "--passphrase-file",
            str(fresh_hierarchy.inter_pass),
        )
        stderr = proc.stderr.decode()
        assert proc.returncode != 1, f"{leave_kib} KiB free: {stderr}"
        assert "Traceback" not in stderr
        if proc.returncode == 0:
            continue
        assert proc.returncode == 8, f"{leave_kib} KiB free: {stderr}"
        error = json.loads(stderr)["error"]
        assert "\n" not in error["message"]
        if "ledger write failed" in error["message"]:
            seen_commit_failure = True
            assert "disk" in error["message"] and "full" in error["message"]
            (small_tmpfs / "filler").unlink()  # room to read the ledger again
            with closing(sqlite3.connect(home / "ledger.sqlite3")) as conn:
                (after,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
            assert after == before, "a failed COMMIT must leave nothing recorded"
    assert seen_commit_failure, "no run reached COMMIT with the disk full; adjust the sizes"
