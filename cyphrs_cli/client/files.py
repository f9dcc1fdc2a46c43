"""The agent's certificate directory and its crash-safe swap.

Layout (the names and modes of ``issue --out-dir``): ``key.pem`` (0600, made on this
machine), ``cert.pem``, ``chain.pem``, ``fullchain.pem``, ``ca.pem``.

The swap on renewal is a small journal, so neither a reader nor a crash ever keeps a key
that does not match the certificate:

1. every new file is written, fsynced, into the staging directory ``.cyphrs-next/``;
2. the marker ``.cyphrs-next/COMPLETE`` is written (fsynced) last: from here on the swap
   is decided;
3. the files are renamed into the directory in ``SWAP_ORDER`` -- ``ca.pem``, ``chain.pem``,
   ``key.pem``, ``fullchain.pem``, ``cert.pem`` (the certificate last) -- and the directory
   is fsynced; then the marker and the staging directory go.

A crash before 2 leaves the old files untouched and a staging directory that ``recover``
deletes; a crash after 2 is rolled forward by ``recover`` (every process that touches the
directory calls it first), whatever rename it stopped at. A reader between two renames can
see the new key with the old certificate for the time of one or two renames: each file is
whole (rename is atomic), and readers that load key and certificate separately must treat
"key does not match" as "try again" (``client.tls`` does, keeping the previous context).
Hooks (``--exec``, ``--signal``) run only after the whole swap.

Before a renewal asks the CA, its new key is kept in ``.cyphrs-renewal-key.pem`` (0600,
fsynced; ``keep_pending_key``) until the answer is installed. If the answer is lost after
the CA recorded it (a dropped connection, a crash, a full disk), the next attempt sends a
CSR for the same key and the CA hands back the certificate it recorded (see
``service.online``); with a fresh key it could only refuse the superseded certificate, for
good.

All of it happens under ``.cyphrs.lock`` (``fsutil.home_lock``), so two renewers of one
directory never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.ca.issuance import fault_point
from cyphrs_cli.errors import InvalidInputError, NotFoundError, StorageError
from cyphrs_cli.fsutil import (
    PRIVATE_FILE,
    atomic_write,
    ensure_private_dir,
    home_lock,
    writable_by_others,
)

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.ca.delivery import PemBundle

STAGE = ".cyphrs-next"
#: The key of a renewal sent to the CA and not installed yet (see the module docstring).
PENDING_KEY = ".cyphrs-renewal-key.pem"
COMPLETE = "COMPLETE"
#: Rename order of a swap: the certificate last (see the module docstring).
SWAP_ORDER = ("ca.pem", "chain.pem", "key.pem", "fullchain.pem", "cert.pem")


@dataclass(frozen=True)
class AgentDir:
    """An agent's certificate directory."""

    path: Path

    @classmethod
    def of(cls, source: Path) -> AgentDir:
        """The directory itself, or the directory of a ``cert.pem`` named instead."""
        return cls(source.parent if source.is_file() or source.suffix == ".pem" else source)

    @property
    def key(self) -> Path:
        return self.path / "key.pem"

    @property
    def cert(self) -> Path:
        return self.path / "cert.pem"

    @property
    def fullchain(self) -> Path:
        return self.path / "fullchain.pem"

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @contextlib.contextmanager
    def locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the directory's lock, with any interrupted swap finished first. With
        ``create`` a missing directory is made, and removed again if the block fails
        before writing anything (a refused enrollment leaves nothing behind)."""
        if not create and not self.path.is_dir():
            raise NotFoundError(f"no agent directory at {self.path}")
        with home_lock(self.path, create=create) as lock:
            # Whoever else can write the directory can swap the staging directory for a
            # link mid-renewal and have this process write and move keys elsewhere: with
            # a root renewer, anywhere on the host. Checked under the lock, before
            # anything is read or written (a fresh directory is ours and 0700).
            unsafe = writable_by_others(self.path)
            if unsafe is not None:
                raise StorageError(
                    f"refusing the agent directory: {unsafe}",
                    hint="renew as the directory's owner, or chown it to this user and"
                    " chmod go-w it",
                )
            recover(self.path)
            try:
                yield
            except BaseException:
                if not any(self.path.joinpath(name).exists() for name in SWAP_ORDER):
                    lock.abandon_fresh_home()
                raise

    def certificate(self) -> x509.Certificate:
        """The current leaf certificate (``cert.pem``)."""
        from cyphrs_cli.ca.parsing import load_certificates

        try:
            data = self.cert.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self.cert}: no such file", hint="enroll first") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.cert}: {exc.strerror}") from exc
        return load_certificates(data, source=str(self.cert))[0]


def install(directory: Path, bundle: PemBundle) -> dict[str, str]:
    """Swap ``bundle`` into ``directory`` (see the module docstring); call it under
    ``AgentDir.locked``. Returns {role: path}."""
    ensure_private_dir(directory)
    stage = directory / STAGE
    _discard_stage(stage)
    try:
        stage.mkdir(mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create {stage}: {exc.strerror}") from exc
    written = {}
    for role, name, text, mode in bundle.files():
        atomic_write(stage / name, text.encode(), mode=mode)
        written[role] = str(directory / name)
    fault_point("agent-stage")
    atomic_write(stage / COMPLETE, b"", mode=0o600)  # the decision point
    _roll_forward(directory)
    return written


#: A kept key is a PEM private key: an RSA-8192 one is about 6.3 KiB.
PENDING_KEY_MAX = 64 * 1024


def pending_key(directory: Path) -> bytes | None:
    """The kept key of a renewal not installed yet (PEM), or None when there is none or
    it may have been read by others (group/world permissions: a fresh key is safer).

    Raises:
        InvalidInputError: something else than a regular file of at most
            ``PENDING_KEY_MAX`` bytes is at its name (a link, a directory, a FIFO): only
            the directory's owner can have put it there, who must look (exit 3).
    """
    path = directory / PENDING_KEY

    def unusable(what: str) -> InvalidInputError:
        return InvalidInputError(
            f"{path} is {what}, not the key this agent keeps there; remove it by hand"
        )

    try:
        # O_NONBLOCK: a FIFO must not hang the renewer (and its lock); O_NOFOLLOW: a link
        # is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unusable("a symbolic link") from exc
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise unusable("not a regular file")
        if status.st_size > PENDING_KEY_MAX:
            raise unusable(f"{status.st_size} bytes long")
        if status.st_mode & 0o077:
            return None
        return os.read(fd, PENDING_KEY_MAX)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def keep_pending_key(directory: Path, key_pem: bytes) -> None:
    """Keep a renewal's new key durably (0600) before the CA is asked."""
    atomic_write(directory / PENDING_KEY, key_pem, mode=PRIVATE_FILE)


def drop_pending_key(directory: Path) -> None:
    """Forget the kept key: its certificate is installed (or it is stale)."""
    try:
        os.unlink(directory / PENDING_KEY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot remove {directory / PENDING_KEY}: {exc.strerror}") from exc
    with contextlib.suppress(OSError):
        _fsync_dir(directory)


def recover(directory: Path) -> bool:
    """Finish (marker present) or discard (no marker) an interrupted swap; True if a swap
    was rolled forward."""
    stage = directory / STAGE
    try:
        mode = os.lstat(stage).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot inspect {stage}: {exc.strerror}") from exc
    if not stat.S_ISDIR(mode):
        raise InvalidInputError(f"{stage} is not a directory; remove it by hand")
    if (stage / COMPLETE).exists():
        _roll_forward(directory)
        return True
    _discard_stage(stage)
    return False


def _roll_forward(directory: Path) -> None:
    stage = directory / STAGE
    try:
        for index, name in enumerate(SWAP_ORDER):
            with contextlib.suppress(FileNotFoundError):  # moved before an interruption
                os.replace(stage / name, directory / name)
            fault_point("agent-swap", seq=index)
        _fsync_dir(directory)
        os.unlink(stage / COMPLETE)
        _fsync_dir(stage)
        _discard_stage(stage)
        _fsync_dir(directory)
    except OSError as exc:
        raise StorageError(f"cannot swap the files of {directory}: {exc.strerror}") from exc


def _discard_stage(stage: Path) -> None:
    try:
        shutil.rmtree(stage)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot remove {stage}: {exc.strerror}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
