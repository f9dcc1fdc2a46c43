"""``fsutil.home_lock`` between real processes: exclusion, and the abandoned-home retry."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyphrs_cli.fsutil import LOCK_NAME, home_lock

WAITER = """
import sys, time
from pathlib import Path
from cyphrs_cli.fsutil import home_lock
root = Path(sys.argv[1])
with home_lock(root, create=True) as lock:
    print(f"{time.monotonic():.6f} {lock.created_home} {root.is_dir()}", flush=True)
"""


def _waiter(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WAITER, str(root)], stdout=subprocess.PIPE, text=True
    )


def _wait_until_blocked(proc: subprocess.Popen[str], seconds: float = 1.5) -> None:
    """Give the waiter time to start and block on the lock (it prints only once it holds it)."""
    time.sleep(seconds)
    assert proc.poll() is None, "the waiter got the lock while it was held"


def test_a_second_process_waits_for_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "home"
    with home_lock(root, create=True) as lock:
        assert lock.created_home and lock.created_lock_file
        waiter = _waiter(root)
        try:
            _wait_until_blocked(waiter)
        except AssertionError:
            waiter.kill()
            waiter.wait()
            raise
        released = time.monotonic()
    out, _ = waiter.communicate(timeout=60)
    acquired, created_home, exists = out.split()
    assert float(acquired) >= released
    assert (created_home, exists) == ("False", "True")
    assert (root / LOCK_NAME).stat().st_mode & 0o777 == 0o600


def test_a_waiter_on_an_abandoned_home_starts_over(tmp_path: Path) -> None:
    """The holder fails and removes the home it made (lock file included) while another
    process waits on the old lock file: the waiter notices, re-creates the home and owns
    it, instead of working in a directory that no longer exists."""
    root = tmp_path / "home"
    with home_lock(root, create=True) as lock:
        waiter = _waiter(root)
        try:
            _wait_until_blocked(waiter)
        except AssertionError:
            waiter.kill()
            waiter.wait()
            raise
        lock.abandon_fresh_home()
        assert not root.exists()
    out, _ = waiter.communicate(timeout=60)
    _, created_home, exists = out.split()
    assert (created_home, exists) == ("True", "True")
    assert (root / LOCK_NAME).is_file()



def test_a_refused_creation_removes_the_parents_it_made(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    with home_lock(tmp_path / "there" / "p" / "q" / "home", create=True) as lock:
        assert lock.created_parents == (tmp_path / "there" / "p", tmp_path / "there" / "p" / "q")
        lock.abandon_fresh_home()
    assert list((tmp_path / "there").iterdir()) == []


def test_a_parent_removed_by_another_refused_creation_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's refused creation removes the parents it made right after this
    one found them there (reproduced between two real processes, about once in 6,000
    rounds): the home's ``mkdir`` then finds no parent. It makes them again instead of
    failing with exit 8. The other process's removal is done here, at that exact point."""
    import cyphrs_cli.fsutil as fsutil

    base = tmp_path / "x"
    (base / "y").mkdir(parents=True)  # made by "the other process"
    real = fsutil._make_parents
    calls: list[Path] = []

    def then_removed(path: Path) -> list[Path]:
        made = real(path)
        calls.append(path)
        if len(calls) == 1:  # the other process abandons its home and its parents
            (base / "y").rmdir()
            base.rmdir()
        return made

    monkeypatch.setattr(fsutil, "_make_parents", then_removed)
    with home_lock(base / "y" / "home", create=True) as lock:
        assert lock.created_home and (base / "y" / "home").is_dir()
        assert lock.created_parents == (base, base / "y")
    assert len(calls) == 2
