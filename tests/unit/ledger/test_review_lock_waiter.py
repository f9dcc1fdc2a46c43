"""Adversarial review of ``Ledger.lock_waiter`` (h-review): out of file descriptors (a
server with many open connections: EMFILE), duplicating the lock file's descriptor for
the lock thread fails. That is a storage failure (exit 8, one line), not an internal bug:
it reached the event loop's callers as a bare ``OSError``, which the committer reports as
"internal error" (exit 1). A real process limit (``RLIMIT_NOFILE``), real files."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cyphrs_cli.errors import StorageError
from cyphrs_cli.ledger.db import Ledger


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path, create=True).close()
    return path


@contextmanager
def _no_descriptor_left() -> Iterator[None]:
    """Every descriptor number below the soft limit in use, for the block's duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 8, hard)
    )
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_lock_waiter_out_of_descriptors_is_a_storage_error(ledger_path: Path) -> None:
    with Ledger(ledger_path, shared=True) as ledger:
        assert ledger.try_lock() is True  # the lock file is open: only the dup is new
        ledger.release_lock()
        with _no_descriptor_left(), pytest.raises(StorageError) as failed:
            ledger.lock_waiter()
        assert failed.value.exit_code == 8
        assert ledger.try_begin() is True  # nothing was left taken
        ledger.end(commit=False)
