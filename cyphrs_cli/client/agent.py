"""The agent's use cases: ``enroll`` (token or JWT), ``renew_once`` (mTLS) and the renewal
daemon ``run_daemon``.

Order of work, as for issuance on the CA host: every local check (flags, the root, the
output directory) before the network; the key made here and never sent; the CA's answer
checked (``credentials.accept_issued``) before anything is written; the files swapped
atomically (``files``); only then output and hooks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cyphrs_cli.ca.issuance import fault_point
from cyphrs_cli.client import schedule
from cyphrs_cli.client.api import DEFAULT_TIMEOUT, CaClient
from cyphrs_cli.client.credentials import KeyRequest, accept_issued, key_type_of, load_roots
from cyphrs_cli.client.files import (
    AgentDir,
    drop_pending_key,
    install,
    keep_pending_key,
    pending_key,
)
from cyphrs_cli.errors import CyphrsError, PolicyDenied, UsageError
from cyphrs_cli.numerals import is_decimal

if TYPE_CHECKING:
    from cryptography import x509

    from cyphrs_cli.client.api import Issued

#: Seconds a ``--exec`` hook may run before it is killed.
HOOK_TIMEOUT = 120
#: Seconds a running ``--exec`` hook is still given once the daemon is told to stop.
HOOK_STOP_GRACE = 5
#: The shortest back-off wait.
_MIN_WAIT = timedelta(milliseconds=50)


@dataclass(frozen=True)
class Credential:
    """How ``enroll`` proves it may have a certificate: a one-time token or a JWT."""

    token: str | None = field(default=None, repr=False)
    jwt: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.token is None) == (self.jwt is None):
            raise UsageError("give exactly one of a token and a JWT")


@dataclass(frozen=True)
class EnrollRequest:
    ca_url: str
    root_pem: bytes
    out_dir: Path
    credential: Credential
    key_type: str = "p256"
    ttl: str | None = None
    instance: str | None = None
    force: bool = False
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class AgentResult:
    """A certificate the CA issued and this agent installed."""

    issued: Issued
    files: dict[str, str]


def enroll(request: EnrollRequest) -> AgentResult:
    """Generate a key, send its CSR with the credential, install the answer.

    Raises:
        CyphrsError: 2 a bad URL, 3 a bad root, 7 existing files without ``force``, the
            server's refusal (5 token/JWT rules, ...), 8 the CA unreachable or its answer
            refused.
    """
    from cyphrs_cli.ca.delivery import check_output_dir
    from cyphrs_cli.client.api import CaEndpoint

    CaEndpoint.parse(request.ca_url)
    roots = load_roots(request.root_pem, source="--root")
    check_output_dir(request.out_dir, with_key=True, force=request.force)
    agent_dir = AgentDir(request.out_dir)
    keys = KeyRequest.generate(request.key_type)
    with agent_dir.locked(create=True):
        check_output_dir(request.out_dir, with_key=True, force=request.force)
        with CaClient(request.ca_url, request.root_pem, timeout=request.timeout) as client:
            issued = client.enroll(
                keys.csr_pem,
                token=request.credential.token,
                jwt=request.credential.jwt,
                ttl=request.ttl,
                instance=request.instance,
            )
        bundle = accept_issued(issued, keys, roots)
        files = install(request.out_dir, bundle)
        drop_pending_key(request.out_dir)  # a stale one from a directory enrolled again
    return AgentResult(issued, files)


@dataclass(frozen=True)
class RenewRequest:
    ca_url: str
    directory: AgentDir
    root_pem: bytes | None = None  # default: the directory's ca.pem
    ttl: str | None = None
    key_type: str | None = None  # default: the current key's type
    timeout: float = DEFAULT_TIMEOUT


def renew_once(request: RenewRequest) -> AgentResult:
    """Renew the directory's certificate now over mTLS with a new key, and swap it in.

    Raises:
        CyphrsError: the server's refusal (5 expired or foreign, 7 revoked or already
            renewed), 8 the CA unreachable or its answer refused, 6 no such directory.
    """
    from cyphrs_cli.client.api import CaEndpoint

    CaEndpoint.parse(request.ca_url)
    directory = request.directory
    with directory.locked():
        root_pem = request.root_pem if request.root_pem is not None else _read(directory.ca)
        roots = load_roots(root_pem, source="--root" if request.root_pem else str(directory.ca))
        current = directory.certificate()
        _refuse_expired(current.not_valid_after_utc, directory)
        keys = _renewal_keys(directory, request.key_type or key_type_of(current), current)
        with CaClient(
            request.ca_url,
            root_pem,
            cert_file=directory.fullchain,
            key_file=directory.key,
            timeout=request.timeout,
        ) as client:
            try:
                issued = client.renew(keys.csr_pem, ttl=request.ttl)
            except CyphrsError as error:
                if not schedule.is_transient(error):
                    # The CA answered and recorded nothing for this key; it would refuse
                    # it again (a key type its policy no longer allows): a fresh one next.
                    drop_pending_key(directory.path)
                raise
        fault_point("agent-answer")  # tests: the answer lost after the CA recorded it
        spiffe = _spiffe_id(current)
        bundle = accept_issued(issued, keys, roots, spiffe_id=spiffe)
        files = install(directory.path, bundle)
        drop_pending_key(directory.path)
    return AgentResult(issued, files)


def _renewal_keys(directory: AgentDir, key_type: str, current: x509.Certificate) -> KeyRequest:
    """This renewal's key: the one kept by an attempt whose answer never got installed,
    or a new one of ``key_type``, kept (0600, fsynced) before the CA is asked.

    With the kept key, the CA recognises a renewal it already recorded and answers with
    that certificate again; a new key would find the current certificate superseded and
    be refused for good (``files``, ``service.online``). A kept key that is already the
    current certificate's (installed, then interrupted before it was forgotten) is
    dropped: a renewal must not reuse the key it replaces. So is one the CA refused
    outright (``renew_once``), and one others may have read (group or world
    permissions). A kept key is used even when ``--key-type`` now asks for another type:
    it may be the only way to the certificate the CA recorded for it.
    """
    from cryptography.hazmat.primitives import serialization

    kept = pending_key(directory.path)
    if kept is not None:
        keys = KeyRequest.from_pem(kept)
        current_key = current.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if keys is not None and keys.public_key_der() != current_key:
            return keys
        drop_pending_key(directory.path)
    keys = KeyRequest.generate(key_type)
    keep_pending_key(directory.path, keys.key_pem().encode())
    return keys


def _refuse_expired(not_after: datetime, directory: AgentDir) -> None:
    if datetime.now(UTC) >= not_after:
        raise PolicyDenied(
            f"the certificate in {directory.path} expired at {not_after:%Y-%m-%dT%H:%M:%SZ};"
            " it can no longer renew itself",
            rule="renew.expired",
            hint="enroll again with a new token",
        )


def _spiffe_id(certificate: x509.Certificate) -> str | None:
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None


def _read(path: Path) -> bytes:
    from cyphrs_cli.fsutil import read_input

    return read_input(str(path))


# --- the daemon -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadHooks:
    """What tells the service to pick up new files, run after each swap.

    ``exec_command`` runs through ``/bin/sh -c`` with ``CYPHRS_CERT_DIR``, ``CYPHRS_SERIAL``
    and ``CYPHRS_NOT_AFTER`` set; ``signal_spec`` is ``PID:SIG`` or ``SIG`` with
    ``pid_file`` (read at each swap, so a restarted service is still found).
    """

    exec_command: str | None = None
    signal_spec: str | None = None
    pid_file: Path | None = None

    def check(self) -> None:
        """Refuse a malformed hook before the daemon starts (exit 2)."""
        if self.signal_spec is None:
            if self.pid_file is not None:
                raise UsageError("--pid-file needs --signal SIG")
            return
        pid, sig = self._parse()
        if pid is None and self.pid_file is None:
            raise UsageError("--signal SIG needs --pid-file, or give --signal PID:SIG")
        if pid is not None and self.pid_file is not None:
            raise UsageError("--signal PID:SIG and --pid-file exclude each other")
        del sig

    def _parse(self) -> tuple[int | None, signal.Signals]:
        assert self.signal_spec is not None
        pid_text, _, name = self.signal_spec.rpartition(":")
        name = name.upper()
        try:
            sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        except KeyError:
            try:
                sig = signal.Signals(int(name))
            except ValueError:
                raise UsageError(f"--signal {self.signal_spec!r}: unknown signal") from None
        if not pid_text:
            return None, sig
        if not is_decimal(pid_text) or int(pid_text) <= 1:
            raise UsageError(f"--signal {self.signal_spec!r}: the PID must be a number above 1")
        return int(pid_text), sig

    def run(
        self, directory: AgentDir, issued: Issued, stop: threading.Event | None = None
    ) -> list[str]:
        """Run the hooks; return what went wrong (the daemon reports it and goes on).
        ``stop`` set while the ``--exec`` hook runs ends it ``HOOK_STOP_GRACE`` s later."""
        problems = []
        if self.exec_command is not None:
            env = {
                **os.environ,
                "CYPHRS_CERT_DIR": str(directory.path),
                "CYPHRS_SERIAL": issued.serial,
                "CYPHRS_NOT_AFTER": f"{issued.not_after:%Y-%m-%dT%H:%M:%SZ}",
            }
            problem = _run_hook(self.exec_command, env, stop)
            if problem is not None:
                problems.append(problem)
        if self.signal_spec is not None:
            pid, sig = self._parse()
            try:
                if pid is None:
                    assert self.pid_file is not None
                    text = self.pid_file.read_text().strip()
                    # The file is often written by the (less privileged) service itself:
                    # -1 would signal every process, 0 this daemon's group, 1 init.
                    if not is_decimal(text) or int(text) <= 1:
                        raise ValueError(f"{self.pid_file} holds {text[:20]!r}, not a PID above 1")
                    pid = int(text)
                os.kill(pid, sig)
            except (OSError, ValueError) as exc:
                problems.append(f"cannot send {sig.name} (pid file or process): {exc}")
        return problems


def _run_hook(command: str, env: dict[str, str], stop: threading.Event | None) -> str | None:
    """Run the ``--exec`` hook; what went wrong, or None. Its output goes to stderr, never
    into the ``--json`` stream on stdout. It runs in a session of its own, so a hook that
    outlives ``HOOK_TIMEOUT`` is killed with its process group (all it started but what
    left the group with ``setsid``); so is one still
    running ``HOOK_STOP_GRACE`` seconds after the daemon was told to stop (``stop``): a
    hanging hook must not hold a SIGTERM for two minutes (systemd would SIGKILL the
    daemon first, mid-whatever)."""
    import time

    try:
        process = subprocess.Popen(  # noqa: S602 -- the operator's own shell command
            command,
            shell=True,
            env=env,
            stdout=2,  # stderr: the daemon's stdout is its --json stream
            start_new_session=True,
        )
    except OSError as exc:
        return f"--exec hook failed: {exc}"
    deadline = time.monotonic() + HOOK_TIMEOUT
    reason = f"killed after {HOOK_TIMEOUT:g} s"
    while (code := process.poll()) is None:
        now = time.monotonic()
        if stop is not None and stop.is_set():
            deadline = min(deadline, now + HOOK_STOP_GRACE)
            reason = "killed: the daemon is stopping"
        if now >= deadline:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"--exec hook {reason}, with its children"
        if stop is not None and not stop.is_set():
            stop.wait(min(0.1, deadline - now))  # wakes at once when told to stop
        else:  # a set event would return at once: wait on the hook instead
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(0.1, deadline - now))
    return f"--exec hook exited {code}" if code != 0 else None


@dataclass
class DaemonSettings:
    fraction: float = schedule.DEFAULT_FRACTION
    jitter: float = schedule.DEFAULT_JITTER
    backoff_base: timedelta = schedule.BACKOFF_BASE
    backoff_cap: timedelta = schedule.BACKOFF_CAP
    #: The longest single sleep: waits are measured on the wall clock in slices of this,
    #: so a machine suspended mid-wait (the monotonic clock stops) is noticed within it
    #: of resuming, and a certificate swapped in meanwhile is read again.
    wake_every: timedelta = timedelta(seconds=60)


def _sleep_for(stop: threading.Event, delay: timedelta, settings: DaemonSettings) -> None:
    """A back-off wait of ``delay``: over when either clock says so (the wall clock runs
    on through a suspend, the monotonic one through a step back of the wall clock), or
    when ``stop`` is set; in slices of ``wake_every``."""
    import time

    delay = max(delay, _MIN_WAIT)
    monotonic_end = time.monotonic() + delay.total_seconds()
    wall_end = datetime.now(UTC) + delay
    while not stop.is_set():
        left = min(
            monotonic_end - time.monotonic(), (wall_end - datetime.now(UTC)).total_seconds()
        )
        if left <= 0:
            return
        stop.wait(min(left, settings.wake_every.total_seconds()))


def run_daemon(
    request: RenewRequest,
    hooks: ReloadHooks,
    stop: threading.Event,
    *,
    settings: DaemonSettings | None = None,
    report: Callable[[str, AgentResult | None], None] = lambda message, result: None,
) -> None:
    """Renew ``request.directory`` whenever due until ``stop`` is set (then return).

    Each renewal: new key, mTLS renewal, checked answer, atomic swap, hooks, ``report``.
    Transient errors back off (``schedule.retry_delay``); a final one -- revoked,
    superseded elsewhere, expired (also: still failing when the certificate runs out) --
    is raised, and the CLI exits with its code.
    """
    hooks.check()
    settings = settings or DaemonSettings()
    failures = 0  # renewals failed in a row
    read_failures = 0  # reads of the directory failed in a row (a held lock, a bad file)
    planned: tuple[str, datetime] | None = None  # (serial, when): jitter drawn once each
    renewed_at: datetime | None = None
    known_not_after: datetime | None = None  # of the last certificate read
    while not stop.is_set():
        try:
            with request.directory.locked():
                current = request.directory.certificate()
        except CyphrsError as error:  # e.g. the directory's lock held past its timeout
            # At start a bad directory is the operator's mistake: say so and exit. Once
            # running, a file being replaced by hand (empty for a moment) or a lock held
            # by another renewer is waited out; the certificate's expiry still ends it.
            if known_not_after is None and not schedule.is_transient(error):
                raise
            if known_not_after is not None:
                _refuse_expired(known_not_after, request.directory)
            read_failures += 1
            delay = schedule.retry_delay(
                read_failures, base=settings.backoff_base, cap=settings.backoff_cap
            )
            report(f"cannot read {request.directory.path} ({error.message});"
                   f" retry in {delay.total_seconds():.1f} s", None)  # fmt: skip
            _sleep_for(stop, delay, settings)
            continue
        read_failures = 0
        serial = f"{current.serial_number:x}"
        not_before, not_after = current.not_valid_before_utc, current.not_valid_after_utc
        known_not_after = not_after
        now = datetime.now(UTC)
        _refuse_expired(not_after, request.directory)
        if planned is None or planned[0] != serial:
            due = schedule.renewal_at(
                not_before, not_after, fraction=settings.fraction, jitter=settings.jitter
            )
            if renewed_at is not None:
                due = max(due, schedule.not_before_next(renewed_at, not_before, not_after))
            planned = (serial, due)
            report(f"certificate {serial} renews at {due:%Y-%m-%dT%H:%M:%SZ}", None)
        if failures == 0 and now < planned[1]:
            # One slice, then the files and the clock are read again (``wake_every``).
            stop.wait(min((planned[1] - now), settings.wake_every).total_seconds())
            continue
        try:
            result = renew_once(request)
        except CyphrsError as error:
            if not schedule.is_transient(error):
                raise
            failures += 1
            delay = schedule.retry_delay(
                failures,
                retry_after=getattr(error, "retry_after", None),
                until_expiry=not_after - datetime.now(UTC),
                base=settings.backoff_base,
                cap=settings.backoff_cap,
            )
            wait = delay.total_seconds()
            report(f"renewal failed ({error.message}); retry in {wait:.1f} s", None)
            _sleep_for(stop, delay, settings)
            continue
        failures = 0
        renewed_at = datetime.now(UTC)
        # The hooks first: the service must reload the swapped files even if reporting
        # fails (a stdout that a restarted journald closed).
        problems = hooks.run(request.directory, result.issued, stop)
        report(f"renewed {serial} as {result.issued.serial}", result)
        for problem in problems:
            report(problem, None)
