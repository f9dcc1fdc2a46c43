"""Handing an issued certificate over: PEM bundles and an output directory.

Called only after the ledger has committed the certificate (the issuance path's step 6).
Batch outputs are also confined here: ``relative_output_path`` checks an item's
``out_dir`` text, ``confine_output`` resolves it below ``--out-dir`` before anything is
signed, and ``write_confined`` writes through directory file descriptors (``O_NOFOLLOW``)
so a symbolic link planted after the check cannot redirect the files either.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from cyphrs_cli.errors import ConflictError, InvalidInputError, StorageError
from cyphrs_cli.fsutil import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    PUBLIC_FILE,
    atomic_write,
    ensure_private_dir,
    refuse_existing,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.models import IssuedCertificate

OUTPUT_NAMES = ("cert.pem", "chain.pem", "fullchain.pem", "ca.pem", "key.pem")
NAME_MAX = 255  # bytes in one path component (Linux, macOS, ext4, xfs, tmpfs)
PATH_MAX = 4096  # bytes in a whole path, terminating NUL included
# The longest name a write makes inside an item directory: ".fullchain.pem.<12 hex>.tmp".
_LONGEST_OUTPUT = len(".fullchain.pem.") + 12 + len(".tmp")


@dataclass(frozen=True)
class PemBundle:
    certificate: str
    chain: str  # intermediates, nearest first, without the root
    root: str
    # An unencrypted PEM private key: never in repr() (tracebacks, logs, assertion output).
    private_key: str | None = field(repr=False)

    @property
    def fullchain(self) -> str:
        return self.certificate + self.chain

    def files(self) -> list[tuple[str, str, str, int]]:
        """(role, file name, PEM text, mode) of an output directory, the key first: a
        certificate on disk without its key would be useless and confusing."""
        files = [("private_key", "key.pem", self.private_key, PRIVATE_FILE)]
        files += [
            ("certificate", "cert.pem", self.certificate, PUBLIC_FILE),
            ("chain", "chain.pem", self.chain, PUBLIC_FILE),
            ("fullchain", "fullchain.pem", self.fullchain, PUBLIC_FILE),
            ("ca", "ca.pem", self.root, PUBLIC_FILE),
        ]
        return [(role, name, text, mode) for role, name, text, mode in files if text is not None]


def _pem(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


@functools.lru_cache(maxsize=16)
def chain_pems(chain: tuple[x509.Certificate, ...]) -> tuple[str, str]:
    """(intermediates, roots) of an issuer's chain as PEM text. Every certificate an
    issuer signs carries the same chain, so a server encodes it once per issuer, not
    once per certificate (certificates are immutable and hash by their DER)."""
    intermediates = "".join(_pem(c) for c in chain if c.subject != c.issuer)
    roots = "".join(_pem(c) for c in chain if c.subject == c.issuer)
    return intermediates, roots


def pem_bundle(
    issued: IssuedCertificate, private_key: CertificateIssuerPrivateKeyTypes | None
) -> PemBundle:
    from cryptography.hazmat.primitives import serialization

    chain, root = chain_pems(tuple(issued.chain))
    key_pem = None
    if private_key is not None:
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return PemBundle(
        certificate=_pem(issued.certificate),
        chain=chain,
        root=root,
        private_key=key_pem,
    )


def planned_paths(out_dir: Path, *, with_key: bool) -> list[Path]:
    names = OUTPUT_NAMES if with_key else OUTPUT_NAMES[:-1]
    return [out_dir / name for name in names]


def check_output_dir(out_dir: Path, *, with_key: bool, force: bool) -> None:
    """Run before any signing: an existing output without --force is a conflict."""
    refuse_existing(planned_paths(out_dir, with_key=with_key), force=force)


def write_output_dir(out_dir: Path, bundle: PemBundle) -> dict[str, str]:
    """Write the bundle (key 0600) and return {role: path}."""
    ensure_private_dir(out_dir)
    written = {}
    for role, name, text, mode in bundle.files():
        atomic_write(out_dir / name, text.encode(), mode=mode)
        written[role] = str(out_dir / name)
    return written


def check_path_text(text: str, what: str) -> None:
    """Text that will become a file name: UTF-8, no NUL, no control characters.

    Control characters (newlines, escapes) in file names break every shell script and
    terminal that later lists the directory; NUL cannot be passed to the kernel at all.
    """
    if "\x00" in text:
        raise InvalidInputError(f"{what} contains a NUL byte")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid UTF-8 (lone surrogate)") from exc
    # Cc: C0/C1 controls; Cf: format characters (bidi overrides that make a listing lie
    # about a name, zero-width characters); Zl/Zp: Unicode line and paragraph separators.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise InvalidInputError(f"{what} {text!r} contains a control or format character")


def check_path_component(text: str, what: str) -> None:
    """One file-name component: see ``check_path_text``, plus no ``/``, ``.``, ``..``."""
    check_path_text(text, what)
    if not text or "/" in text or text in (".", ".."):
        raise InvalidInputError(f"{what} {text!r} must be one non-empty name without '/'")
    if len(text.encode("utf-8")) > NAME_MAX:
        raise InvalidInputError(f"{what} is longer than {NAME_MAX} bytes")


def relative_output_path(text: str, what: str = "out_dir") -> PurePosixPath:
    """An item's output directory as a path relative to ``--out-dir`` that cannot leave it.

    Refused: empty, absolute, any ``..`` component (even one that would cancel out: the
    rule must not depend on what exists on disk), NUL and control characters, components
    over ``NAME_MAX`` bytes. ``.`` components and repeated slashes are normalised away.
    """
    check_path_text(text, what)
    path = PurePosixPath(text)
    if path.is_absolute():
        raise InvalidInputError(f"{what} {text!r} is absolute; give a path below --out-dir")
    if ".." in path.parts:
        raise InvalidInputError(f"{what} {text!r} climbs out with '..'")
    if not path.parts:
        raise InvalidInputError(f"{what} {text!r} names --out-dir itself; give a subdirectory")
    for part in path.parts:
        check_path_component(part, what)
        if part.casefold() in OUTPUT_NAMES or part.startswith("."):
            # A directory named like an output file could collide with another item's file
            # (item A writes x/cert.pem, item B asks for x/cert.pem/); a dot name could
            # collide with a temporary file or hide from a listing.
            raise InvalidInputError(f"{what} {text!r}: a directory may not be named {part!r}")
    return path


def output_key(relative: PurePosixPath) -> str:
    """What two items must not share: the path, compared as case-insensitive filesystems
    (macOS, Windows shares) and Unicode-normalising ones (HFS+) would compare it."""
    return unicodedata.normalize("NFC", str(relative)).casefold()


def confine_output(out_dir: Path, relative: PurePosixPath) -> Path:
    """The item's directory below ``out_dir``, or a refusal; runs before anything is signed.

    ``out_dir`` itself is the operator's choice and may be (or sit behind) a symbolic link;
    below it every existing component must be a real directory, never a symbolic link
    (one pointing inside today may point elsewhere tomorrow), and the resolved result must
    stay below the resolved ``out_dir``.
    """
    root = out_dir.resolve()
    if root.exists() and not root.is_dir():
        raise ConflictError(f"--out-dir {out_dir} exists and is not a directory")
    length = len(os.fsencode(root / relative)) + 1 + _LONGEST_OUTPUT
    if length >= PATH_MAX:
        raise InvalidInputError(
            f"output directory is too long a path ({length} bytes with --out-dir and the"
            f" file names; the limit is {PATH_MAX - 1})"
        )
    current = root
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot inspect {current}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise InvalidInputError(
                f"output directory {current} is a symbolic link; batch output is not written"
                " through links"
            )
        if not stat.S_ISDIR(mode):
            raise ConflictError(f"{current} exists and is not a directory")
    if os.path.commonpath([root, current]) != str(root) or current == root:
        raise InvalidInputError(f"output directory {current} is not below {root}")
    return current


def check_confined_outputs(target: Path, *, with_key: bool, force: bool) -> None:
    """Existing outputs: refused without ``--force``; with it only regular files (or links,
    which a rename replaces, never follows) may be replaced, not directories or devices."""
    for path in planned_paths(target, with_key=with_key):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot inspect {path}: {exc.strerror}") from exc
        if not force:
            raise ConflictError(f"{path} already exists", hint="use --force to overwrite")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise ConflictError(f"{path} exists and is not a regular file")


def write_confined(
    out_dir: Path,
    relative: PurePosixPath,
    bundle: PemBundle,
    *,
    force: bool,
    sync: bool = True,
) -> dict[str, str]:
    """Write the bundle into ``out_dir/relative`` without following any link below
    ``out_dir``; without ``force`` an existing file is never replaced (``linkat`` fails on
    one that appeared after the check). Returns {role: path}; raises ``StorageError``.

    ``sync=False`` (group delivery) skips the per-file and per-directory fsyncs: the
    caller makes the whole group durable at once with ``sync_outputs`` before it reports
    any item of the group delivered."""
    ensure_private_dir(out_dir)
    target = out_dir
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _storage_error(out_dir, exc) from exc
    try:
        for part in relative.parts:
            target = target / part
            child = _enter(dir_fd, part, target)
            os.close(dir_fd)
            dir_fd = child
        written = {}
        for role, name, text, mode in bundle.files():
            _write_at(dir_fd, target / name, text.encode(), mode, force=force, sync=sync)
            written[role] = str(target / name)
        if sync:
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                raise _storage_error(target, exc) from exc
        return written
    finally:
        os.close(dir_fd)


def _storage_error(path: Path, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ELOOP:
        reason = "it is a symbolic link (refused; nothing is written through links)"
    elif exc.errno == errno.ENOTDIR:
        reason = "a component is not a directory"
    elif exc.errno == errno.EEXIST:
        reason = "it appeared after the check (not replaced without --force)"
    return StorageError(f"cannot write {path}: {reason}")


def _enter(dir_fd: int, part: str, path: Path) -> int:
    """Create (0700) and open one directory below ``dir_fd``, refusing a link there."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, PRIVATE_DIR, dir_fd=dir_fd)
        return os.open(part, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # O_NOFOLLOW|O_DIRECTORY on a link
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(part, dir_fd=dir_fd).st_mode):
                    exc = OSError(errno.ELOOP, "symbolic link")
        raise _storage_error(path, exc) from exc


def _write_at(
    dir_fd: int, path: Path, data: bytes, mode: int, *, force: bool, sync: bool = True
) -> None:
    """fsynced write of one file relative to ``dir_fd``: temporary name, then rename
    (``force``) or hard link (never replaces), so readers never see half a file."""
    tmp = f".{path.name}.{os.urandom(6).hex()}.tmp"
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, create, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _storage_error(path, exc) from exc
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.unlink(tmp, dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise _storage_error(path, exc) from exc


def sync_outputs(out_dir: Path, written: list[dict[str, str]]) -> None:
    """Make a group's files durable with one call: ``syncfs(2)`` on the file system that
    holds ``out_dir`` (Linux; since 5.8 it reports write-back errors), which flushes every
    file and directory entry the group wrote in one journal commit instead of six fsyncs
    per certificate. Elsewhere, or if ``syncfs`` is missing, each file and each directory
    is fsynced once. Raises ``StorageError`` (nothing of the group may then be reported
    delivered)."""
    try:
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _storage_error(out_dir, exc) from exc
    try:
        if _syncfs(fd):
            return
    finally:
        os.close(fd)
    directories: set[str] = set()
    for files in written:
        for path in files.values():
            directories.add(os.path.dirname(path))
            _fsync_path(Path(path), os.O_RDONLY | os.O_NOFOLLOW)
    for directory in sorted(directories, key=len, reverse=True):
        _fsync_path(Path(directory), os.O_RDONLY | os.O_DIRECTORY)


def _syncfs(fd: int) -> bool:
    """``syncfs(fd)`` through libc; False where the call does not exist."""
    import ctypes

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs  # the C library already loaded
    except (OSError, AttributeError, TypeError):
        return False
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise StorageError(f"cannot make the output files durable: {os.strerror(code)}")
    return True


def _fsync_path(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _storage_error(path, exc) from exc
