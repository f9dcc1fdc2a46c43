"""Every file cyphrs writes goes through here: atomic replace, explicit modes, private dirs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from cyphrs_cli.errors import ConflictError, NotFoundError, StorageError

PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644
PRIVATE_DIR = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 when missing."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create directory {path}: {exc.strerror}") from exc


def refuse_existing(paths: list[Path], *, force: bool) -> None:
    """Fail before any side effect when an output exists and ``force`` is not set."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise ConflictError(f"{path} already exists", hint="use --force to overwrite")


def atomic_write(path: Path, data: bytes, *, mode: int = PUBLIC_FILE) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half.

    The temporary file is created with ``mode`` from the start (never world-readable
    first), fsynced, renamed over the target, and the directory is fsynced.
    """
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def read_input(source: str) -> bytes:
    """Read a file path, or standard input for ``-``."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"{source}: no such file") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {source}: {exc.strerror}") from exc
