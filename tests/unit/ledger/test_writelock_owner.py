"""The writer lock file when root writes to a ledger another account owns (an operator's
``sudo cyphrs revoke`` on the service account's home): SQLite gives its own ``-wal`` and
``-shm`` files to the ledger's owner in that case; the lock file must follow, or the
service account can never open it again (0600, root's) and every write it tries fails
(exit 8) until someone finds and deletes the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cyphrs_cli.ledger.db import Ledger
from cyphrs_cli.ledger.writelock import lock_path

SERVICE_UID = 65534  # nobody


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can write as root to another's file")
def test_a_lock_file_root_creates_belongs_to_the_ledgers_owner(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / "ledger.sqlite3"
    Ledger(path, create=True).close()
    for leftover in home.iterdir():
        if leftover != path:
            leftover.unlink()
    for owned in (home, path):
        os.chown(owned, SERVICE_UID, SERVICE_UID)
    with Ledger(path) as ledger, ledger.transaction() as conn:
        conn.execute("PRAGMA user_version").fetchone()
        wal = Path(f"{path}-wal").stat()
    assert (wal.st_uid, wal.st_gid) == (SERVICE_UID, SERVICE_UID)  # SQLite's own rule
    lock = lock_path(path).stat()
    assert (lock.st_uid, lock.st_gid) == (SERVICE_UID, SERVICE_UID)
    assert lock.st_mode & 0o777 == 0o600
