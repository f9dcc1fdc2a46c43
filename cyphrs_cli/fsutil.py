"""Every file cyphrs writes goes through here: atomic replace, exclusive creation, explicit
modes, private dirs, and the CA home's lock."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cyphrs_cli.errors import ConflictError, NotFoundError, StorageError

PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644
PRIVATE_DIR = 0o700


def writable_by_others(path: Path) -> str | None:
    """Why someone other than this user (or root) can change what ``path`` holds, or None:
    it is group/world-writable, or owned by another user. A symbolic link is judged by
    what it leads to. Used for the CA home and for an agent's certificate directory."""
    import stat

    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            info = path.stat()  # judge what the link leads to
    except FileNotFoundError:
        return None if not path.is_symlink() else f"{path} is a dangling symbolic link"
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is group/world-writable (mode {mode:04o})"
    uid = os.getuid()
    if info.st_uid not in (uid, 0):
        return f"{path} is owned by uid {info.st_uid}, not by this user (uid {uid})"
    return None


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
    tmp_name, _ = _durable_temp(path, data, mode, suffix=".tmp")
    try:
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def _durable_temp(path: Path, data: bytes, mode: int, *, suffix: str) -> tuple[str, os.stat_result]:
    """A unique temporary file beside ``path`` holding ``data``, with ``mode`` from the
    start (never readable by others first) and fsynced; returns its name and its stat."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            return tmp_name, os.fstat(handle.fileno())
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


def write_new_file(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> tuple[int, int]:
    """Create ``path`` with ``data``; never replace a file that exists, never show half.

    The data goes to a unique temporary file first (``mode`` from the start, fsynced), which
    is then hard-linked to ``path``: ``link`` fails when the name exists, so two writers
    cannot both "win" and nobody's file is overwritten. Returns ``(st_dev, st_ino)`` so the
    caller can later remove exactly the file it made and nothing someone else put there.
    """
    tmp_name, made = _durable_temp(path, data, mode, suffix=".new")
    try:
        try:
            os.link(tmp_name, path)
        except FileExistsError as exc:
            raise ConflictError(f"{path} already exists; refusing to overwrite it") from exc
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
    return made.st_dev, made.st_ino


def remove_own_file(path: Path, identity: tuple[int, int] | None) -> None:
    """Unlink ``path`` only if it is still the very file this process created."""
    if identity is None:
        return
    with contextlib.suppress(OSError):
        found = os.stat(path, follow_symlinks=False)
        if (found.st_dev, found.st_ino) == identity:
            os.unlink(path)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


#: The lock file in every CA home; see ``home_lock``.
LOCK_NAME = ".cyphrs.lock"
LOCK_POLL_SECONDS = 0.05


@dataclass
class HomeLock:
    """The held lock of one CA home, and what taking it created (for clean-up)."""

    root: Path
    created_home: bool
    created_lock_file: bool
    # Missing parents of ``root`` this process made for it, nearest last.
    created_parents: tuple[Path, ...] = ()

    def abandon_fresh_home(self) -> None:
        """Remove the lock file, the home directory and the parents made for it again, if
        this process made them.

        Called (while the lock is still held) by a creation that failed before the home
        got a ``config.toml``. ``rmdir`` removes only an empty directory, so a home that
        holds anything else is left alone. A process waiting on the unlinked lock file
        notices that the name no longer refers to its inode and starts over.
        """
        if self.created_lock_file:
            with contextlib.suppress(OSError):
                os.unlink(self.root / LOCK_NAME)
        if self.created_home:
            with contextlib.suppress(OSError):
                os.rmdir(self.root)
                for parent in reversed(self.created_parents):
                    os.rmdir(parent)  # stops at the first one not empty (OSError)


@contextlib.contextmanager
def home_lock(root: Path, *, create: bool = False) -> Iterator[HomeLock]:
    """Hold the exclusive lock of the CA home at ``root`` for a read-check-write sequence.

    Creation of CAs, every ``config.toml`` read-modify-write and CRL publication run under
    this lock, so re-checks made inside it stay true until the writes are done. It is an
    ``flock`` on ``root/.cyphrs.lock``: released by the kernel when the process dies, so a
    crash never leaves the home locked. The SQLite write lock cannot take this role:
    ``issue`` commits its own transaction, and files (keys, certificates, config, CRLs) are
    written outside SQLite. A PostgreSQL ledger would replace the body of this function by
    ``pg_advisory_lock`` on the home's id; callers see only this context manager.

    With ``create``, a missing home directory is made (mode 0700) and ``created_home``
    says whether this process made it. Waits up to ``CYPHRS_BUSY_TIMEOUT_MS`` (as the
    ledger does), then fails with exit 8. Not re-entrant: take it once per command.
    """
    import fcntl

    from cyphrs_cli.ledger.db import BUSY_TIMEOUT_ENV, DEFAULT_BUSY_TIMEOUT_MS

    timeout = int(os.environ.get(BUSY_TIMEOUT_ENV, DEFAULT_BUSY_TIMEOUT_MS)) / 1000
    deadline = time.monotonic() + timeout
    lock_path = root / LOCK_NAME
    created_home = False
    created_parents: list[Path] = []
    while True:
        if create:
            created_parents += _make_parents(root.parent)
            try:
                os.mkdir(root, PRIVATE_DIR)
                created_home = True
            except FileExistsError:
                pass
            except FileNotFoundError:
                # A parent went meanwhile: another process's refused creation removed the
                # parents it had made, which this one found there. Make them again.
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"cannot create directory {root}: its parent keeps vanishing"
                    ) from None
                continue
            except OSError as exc:
                raise StorageError(f"cannot create directory {root}: {exc.strerror}") from exc
        fd, created_lock_file = _open_lock_file(lock_path)
        if fd is None:
            if not create:
                raise NotFoundError(f"no CA home at {root}")
            if time.monotonic() >= deadline:
                raise StorageError(f"cannot create the lock file {lock_path}")
            time.sleep(LOCK_POLL_SECONDS)  # the home was just removed by a failed creation
            continue
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StorageError(
                            f"another cyphrs process holds {lock_path}",
                            hint=f"waited {timeout:g} s; retry, or raise {BUSY_TIMEOUT_ENV}",
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            if _same_file(fd, lock_path):
                yield HomeLock(root, created_home, created_lock_file, tuple(created_parents))
                return
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def _make_parents(path: Path) -> list[Path]:
    """``ensure_private_dir(path)``, returning the directories it made, outermost first
    (a refused creation removes them again: ``HomeLock.abandon_fresh_home``)."""
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    made = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
            made.append(directory)
        except FileExistsError:
            pass  # made by another process meanwhile: not ours to remove
        except FileNotFoundError:
            # An outer one was removed meanwhile by another process's refused creation:
            # what is missing now is made on the caller's next round (``home_lock``).
            return made
        except OSError as exc:
            raise StorageError(f"cannot create directory {directory}: {exc.strerror}") from exc
    return made


def _open_lock_file(lock_path: Path) -> tuple[int | None, bool]:
    """(descriptor, created by us); (None, False) when the home vanished meanwhile."""
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None, False
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc
    try:
        return os.open(lock_path, flags), False
    except FileNotFoundError:
        return None, False
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc


def _same_file(fd: int, path: Path) -> bool:
    """Whether the locked descriptor is still the file at ``path`` (not an unlinked one)."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
