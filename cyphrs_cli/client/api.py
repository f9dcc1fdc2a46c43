"""The HTTPS JSON client of the ``cyphrs serve`` API (``/v1``), standard library only.

Trust: only the root certificate(s) the caller names (``--root ca.pem``) -- never the
system store; TLS 1.2 or newer; the server's name checked against the URL's host. With a
certificate directory the client authenticates by mTLS (renewal, self-revocation).

Errors: a ``application/problem+json`` answer becomes the ``CyphrsError`` class of its
``slug`` (falling back to its ``exit_code``) with the server's one-line ``detail``, so the
agent exits with the code the CLI on the CA host would have used. Anything that says
"try again later" -- no connection, a TLS failure, a time-out, 429, a 5xx, a malformed
answer -- is ``CaUnavailable`` (exit 8); ``schedule.is_transient`` tells the daemon which
errors to retry.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cyphrs_cli import __version__
from cyphrs_cli.errors import (
    CheckNotMet,
    ConflictError,
    CyphrsError,
    InvalidInputError,
    KeyStoreError,
    NotFoundError,
    PolicyDenied,
    SecretError,
    StorageError,
    UsageError,
)
from cyphrs_cli.numerals import is_decimal

if TYPE_CHECKING:
    import http.client

#: Default seconds for connecting and for each read; an enrollment takes milliseconds.
DEFAULT_TIMEOUT = 15.0
#: The largest answer read; an issued certificate with its chain is a few kB.
MAX_RESPONSE_BYTES = 1 << 20
#: A whole exchange may take this many ``timeout``s (see ``CaClient``).
EXCHANGE_TIMEOUTS = 3

_CLASSES: dict[str, type[CyphrsError]] = {
    cls.slug: cls
    for cls in (
        UsageError,
        InvalidInputError,
        SecretError,
        PolicyDenied,
        NotFoundError,
        ConflictError,
        StorageError,
        KeyStoreError,
        CheckNotMet,
    )
}
_BY_CODE: dict[int, type[CyphrsError]] = {int(cls.exit_code): cls for cls in _CLASSES.values()}
_BY_STATUS: dict[int, type[CyphrsError]] = {
    400: InvalidInputError,
    401: SecretError,
    403: PolicyDenied,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidInputError,
}


class CaUnavailable(StorageError):
    """The CA could not be reached or answered "later" (no connection, TLS failure,
    time-out, 429, 5xx, a malformed answer); ``retry_after`` is the server's hint."""

    slug = "ca-unavailable"

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class CaUntrusted(CaUnavailable):
    """The server's certificate does not verify against the given root (or names
    another host): nothing was sent."""

    slug = "ca-untrusted"


@dataclass(frozen=True)
class Issued:
    """A ``201`` answer of ``/v1/enroll`` or ``/v1/renew`` (schemas ``cyphrs.enroll/v1``
    and ``cyphrs.agent-renew/v1``: one shape)."""

    schema: str
    serial: str
    spiffe_id: str | None
    not_before: datetime
    not_after: datetime
    fingerprint: str
    certificate: str  # the leaf, PEM
    chain: str  # intermediates, PEM, nearest first, without the root
    ca: str  # the root, PEM
    replaces: str | None

    @classmethod
    def from_json(cls, document: Any) -> Issued:
        """Validate the answer's shape; anything else is a malformed answer (exit 8)."""

        def text(name: str, *, optional: bool = False) -> Any:
            value = document.get(name) if isinstance(document, dict) else None
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise CaUnavailable(f"malformed answer from the CA: no string {name!r}")
            return value

        def moment(name: str) -> datetime:
            try:
                found = datetime.fromisoformat(text(name).replace("Z", "+00:00"))
                if found.tzinfo is None:
                    raise CaUnavailable(f"malformed answer from the CA: {name!r} has no zone")
                return found.astimezone(UTC)
            except (ValueError, OverflowError) as exc:  # 0001-01-01T00:00:00+01:00 overflows
                raise CaUnavailable(f"malformed answer from the CA: bad time {name!r}") from exc

        return cls(
            schema=text("schema"),
            serial=text("serial"),
            spiffe_id=text("spiffe_id", optional=True),
            not_before=moment("not_before"),
            not_after=moment("not_after"),
            fingerprint=text("fingerprint"),
            certificate=text("certificate"),
            chain=text("chain", optional=True) or "",
            ca=text("ca"),
            replaces=text("replaces", optional=True),
        )


@dataclass(frozen=True)
class CaEndpoint:
    """Where the CA is: ``https://host[:port][/prefix]``; checked once, before any I/O."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> CaEndpoint:
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError as exc:
            raise UsageError(f"invalid --ca-url {url!r}: {exc}") from exc
        if parts.scheme != "https":
            raise UsageError(
                f"--ca-url {url!r} must start with https://",
                hint="the CA's API is served over TLS only",
            )
        if not parts.hostname or parts.username or parts.password or parts.query:
            raise UsageError(f"--ca-url {url!r} must be https://host[:port][/path]")
        return cls(parts.hostname, port, parts.path.rstrip("/"))


def tls_context(
    root_pem: bytes, *, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """TLS 1.2+, only ``root_pem`` trusted, host name checked; our certificate for mTLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=root_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidInputError("--root holds no usable PEM certificate") from exc
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise InvalidInputError(
                f"cannot use {cert_file} with {key_file} for mTLS: {exc.reason or exc}"
            ) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {cert_file}: {exc.strerror}") from exc
    return context


class CaClient:
    """One keep-alive HTTPS connection to the CA (reopened when it drops).

    Args:
        ca_url: ``https://host[:port][/prefix]``.
        root_pem: the root certificate(s) to trust, PEM; nothing else is trusted.
        cert_file / key_file: our certificate (full chain) and key, for mTLS calls.
        timeout: seconds for the connection and each read; one whole exchange (connect,
            send, answer read to its last byte) gets ``EXCHANGE_TIMEOUTS`` times that, so a
            CA that trickles its answer a byte at a time cannot hold a caller (and the
            agent directory's lock) for ever.
    """

    def __init__(
        self,
        ca_url: str,
        root_pem: bytes,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.endpoint = CaEndpoint.parse(ca_url)
        self.url = ca_url
        self.timeout = timeout
        self._context = tls_context(root_pem, cert_file=cert_file, key_file=key_file)
        self._connection: http.client.HTTPSConnection | None = None

    def __enter__(self) -> CaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # The calls of the API (API10.md).
    def enroll(
        self,
        csr_pem: bytes,
        *,
        token: str | None = None,
        jwt: str | None = None,
        ttl: str | None = None,
        instance: str | None = None,
    ) -> Issued:
        """``POST /v1/enroll`` with a one-time token in the body or a JWT as bearer."""
        body: dict[str, Any] = {"csr": csr_pem.decode("ascii")}
        if token is not None:
            body["token"] = token
        if ttl is not None:
            body["ttl"] = ttl
        if instance is not None:
            body["instance"] = instance
        headers = {"Authorization": f"Bearer {jwt}"} if jwt is not None else {}
        return Issued.from_json(self.call("POST", "/v1/enroll", body, headers=headers))

    def renew(self, csr_pem: bytes, *, ttl: str | None = None) -> Issued:
        """``POST /v1/renew`` over mTLS with the current certificate."""
        body: dict[str, Any] = {"csr": csr_pem.decode("ascii")}
        if ttl is not None:
            body["ttl"] = ttl
        return Issued.from_json(self.call("POST", "/v1/renew", body))

    def revoke_self(self, reason: str | None = None) -> Any:
        """``POST /v1/revoke`` over mTLS: revoke the certificate we present."""
        return self.call("POST", "/v1/revoke", {"reason": reason} if reason else {})

    def roots(self) -> bytes:
        """``GET /v1/roots``: the trust bundle (PEM)."""
        return self.raw("GET", "/v1/roots")[1]

    def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> Any:
        """One JSON call; a 2xx answer's JSON document, or the mapped error."""
        data = self.raw(method, path, body, headers=headers)[1]
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the stack
            raise CaUnavailable(f"malformed answer from the CA to {path}: not JSON") from exc

    def raw(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request; (status, body) of a 2xx answer, else the mapped error."""
        import http.client

        payload = None if body is None else json.dumps(body).encode()
        sent = {"Accept": "application/json", "User-Agent": f"cyphrs/{__version__}"}
        if payload is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        target = self.endpoint.prefix + path
        # A kept-alive connection the server closed meanwhile fails on first use: one retry
        # on a fresh connection (the request never reached a handler, so it is not replayed).
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._connect()
            deadline = _Deadline(connection, self.timeout * EXCHANGE_TIMEOUTS)
            try:
                connection.request(method, target, body=payload, headers=sent)
                response = connection.getresponse()
                data = response.read(MAX_RESPONSE_BYTES + 1)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 1 and reused and not deadline.passed:
                    continue
                raise deadline.error(self) or self._unavailable(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise deadline.error(self) or self._unavailable(exc) from exc
            finally:
                deadline.cancel()
            cut_off = deadline.error(self)  # a read cut by the deadline returns short data
            if cut_off is not None:
                self.close()
                raise cut_off
            if len(data) > MAX_RESPONSE_BYTES:
                self.close()
                raise CaUnavailable(f"the CA's answer to {path} is larger than 1 MiB")
            if response.length:  # read(n) returns what came before a close, short of it
                self.close()
                raise CaUnavailable(f"the CA's answer to {path} was cut short")
            if response.will_close:
                self.close()
            if 200 <= response.status < 300:
                return response.status, data
            raise problem_error(
                response.status,
                response.getheader("Content-Type"),
                data,
                response.getheader("Retry-After"),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPSConnection:
        import http.client

        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self.endpoint.host, self.endpoint.port, timeout=self.timeout, context=self._context
            )
        return self._connection

    def _unavailable(self, exc: BaseException) -> CaUnavailable:
        where = f"{self.endpoint.host}:{self.endpoint.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return CaUntrusted(
                f"the CA at {where} is not trusted: {exc.verify_message or exc.reason}",
                hint="check --ca-url and that --root is the CA's root certificate",
            )
        if isinstance(exc, ssl.SSLError):
            return CaUnavailable(f"TLS with the CA at {where} failed: {exc.reason or exc}")
        if isinstance(exc, TimeoutError):
            return CaUnavailable(f"the CA at {where} did not answer within {self.timeout:g} s")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return CaUnavailable(f"cannot reach the CA at {where}: {reason}")


class _Deadline:
    """Cuts ``connection``'s socket (``shutdown``: the blocked read returns at once) when
    an exchange has taken ``seconds``; per-read time-outs alone let a trickle go on."""

    def __init__(self, connection: http.client.HTTPSConnection, seconds: float) -> None:
        import threading

        self.seconds = seconds
        self.passed = False
        self._connection = connection
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        import contextlib
        import socket

        self.passed = True
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's: no unwrap

    def cancel(self) -> None:
        self._timer.cancel()

    def error(self, client: CaClient) -> CaUnavailable | None:
        if not self.passed:
            return None
        where = f"{client.endpoint.host}:{client.endpoint.port}"
        return CaUnavailable(f"the CA at {where} did not answer within {self.seconds:g} s")


def problem_error(
    status: int, content_type: str | None, data: bytes, retry_after: str | None = None
) -> CyphrsError:
    """The ``CyphrsError`` a non-2xx answer stands for (see the module docstring)."""
    wait = _seconds(retry_after)
    document: Any = None
    if content_type and content_type.split(";")[0].strip() in (
        "application/problem+json",
        "application/json",
    ):
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            document = None
    if not isinstance(document, dict):
        document = {}
    detail = document.get("detail")
    message = detail if isinstance(detail, str) and detail else f"the CA answered HTTP {status}"
    hint = document.get("hint") if isinstance(document.get("hint"), str) else None
    if status == 429 or status >= 500:
        return CaUnavailable(message, hint=hint, retry_after=wait)
    slug, code = document.get("slug"), document.get("exit_code")
    cls = _CLASSES.get(slug) if isinstance(slug, str) else None
    if cls is None and isinstance(code, int):
        cls = _BY_CODE.get(code)
    if cls is None:
        cls = _BY_STATUS.get(status, CyphrsError)
    if cls is PolicyDenied:
        rule = document.get("rule")
        return PolicyDenied(message, rule=rule if isinstance(rule, str) else "server", hint=hint)
    if cls is CyphrsError:
        # A status nothing here maps (a redirect, 405, 418, 422 ...): the CA, or a proxy in
        # front of it, answered something unusable. Not a bug of this program (exit 1):
        # the CA is unavailable to us (exit 8), and a daemon tries again later.
        return CaUnavailable(message, hint=hint, retry_after=wait)
    return cls(message, hint=hint)


#: The longest ``Retry-After`` honoured: a longer one waits this long (the backoff's own
#: cap is far shorter, and the certificate's expiry bounds any wait anyway).
MAX_RETRY_AFTER = 3600.0


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP-date (RFC 9110 10.2.3),
    capped at ``MAX_RETRY_AFTER``; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if is_decimal(text):  # delay-seconds is digits only: no sign, fraction, nan or inf
        return min(float(text), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER)
