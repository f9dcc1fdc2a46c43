"""For services that talk to agents: ``ssl.SSLContext`` factories that follow rotated
files, and ``check_peer`` for the SPIFFE ID and agent claims of the other side.

::

    from cyphrs_cli.client.tls import server_context, client_context, check_peer

    ctx = server_context("/etc/agent", workflow="payments-recon")   # reloads by itself
    ...  # ssl.wrap_socket / asyncio.start_server(ssl=ctx) / aiohttp TCPSite(ssl_context=ctx)
    peer = check_peer(tls_socket, permissions=["ledger:read"])       # a PeerIdentity

How the files are followed: the returned context is a ``ReloadingContext``. Every new
connection (``wrap_socket`` or ``wrap_bio``, which ``asyncio`` and ``http.client`` call)
first compares ``stat`` of ``key.pem``, ``fullchain.pem`` and the root (inode, mtime,
size) with what it loaded; on a change it builds a *new* inner context from the files and
uses it from then on. Connections already open keep theirs; a live context is never
mutated (OpenSSL contexts are not safe to change while other threads use them). If the
files are mid-swap (the key renamed, the certificate not yet: ``client.files``) or
unreadable, the previous context stays in use and the next connection tries again, so a
reader never serves a key that does not match its certificate. ``reload()`` does the
same check on demand and raises on failure. Settings changed on the returned object
itself (``load_cert_chain``, ``verify_mode`` ...) do not reach the inner contexts:
configure through the factory arguments.

How the peer is checked: the handshake verifies the chain against the root (and, in a
client context without a SPIFFE rule, the host name); then, inside ``do_handshake``, the
peer certificate must satisfy the context's rules (trust domain, allowed SPIFFE IDs,
workflow, permissions). A peer that fails is cut off with ``PeerRejected`` (an
``ssl.SSLError``, so asyncio treats it as a failed handshake). ``check_peer`` runs the
same rules on any verified peer certificate and returns what it says.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import ssl
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyphrs_cli.ca.extensions import AGENT_CLAIMS_OID, AgentClaims
from cyphrs_cli.errors import InvalidInputError, PolicyDenied, StorageError


class PeerRejected(ssl.SSLError):
    """The peer's verified certificate broke a rule of the context; ``denial`` says which."""

    def __init__(self, denial: PolicyDenied) -> None:
        super().__init__(f"peer rejected ({denial.rule}): {denial.message}")
        self.denial = denial


@dataclass(frozen=True)
class PeerIdentity:
    """What a verified agent certificate says about its holder."""

    spiffe_id: str
    trust_domain: str
    path: tuple[str, ...]
    claims: AgentClaims | None

    @property
    def workflow(self) -> str | None:
        return self.claims.workflow if self.claims else None

    @property
    def permissions(self) -> tuple[str, ...]:
        return self.claims.permissions if self.claims else ()


@dataclass(frozen=True)
class PeerPolicy:
    """Rules for the peer's certificate; every one given must hold.

    ``allowed_spiffe``: exact SPIFFE IDs or ``fnmatch`` patterns whose ``*`` stays within
    one path segment (``spiffe://acme.internal/agent/payments-recon/*``).
    """

    trust_domain: str | None = None
    allowed_spiffe: tuple[str, ...] | None = None
    workflow: str | None = None
    permissions: tuple[str, ...] = ()
    claims_oid: str = AGENT_CLAIMS_OID

    @classmethod
    def of(
        cls,
        *,
        trust_domain: str | None = None,
        allowed_spiffe: Iterable[str] | str | None = None,
        workflow: str | None = None,
        permissions: Collection[str] = (),
        claims_oid: str = AGENT_CLAIMS_OID,
    ) -> PeerPolicy:
        allowed = (allowed_spiffe,) if isinstance(allowed_spiffe, str) else allowed_spiffe
        return cls(
            trust_domain,
            tuple(allowed) if allowed is not None else None,
            workflow,
            tuple(permissions),
            claims_oid,
        )

    @property
    def names_peer(self) -> bool:
        """Whether the rules pin the peer's identity (else a client checks the host name)."""
        return bool(self.trust_domain or self.allowed_spiffe or self.workflow)

    def check(self, der: bytes | None) -> PeerIdentity:
        """The peer's identity, or ``PolicyDenied`` naming the broken rule (``peer.*``)."""
        from cryptography import x509

        from cyphrs_cli.ca.extensions import decode_agent_claims, parse_spiffe_id

        if not der:
            raise PolicyDenied("the peer presented no certificate", rule="peer.missing")
        try:
            cert = x509.load_der_x509_certificate(der)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        except ValueError as exc:
            raise PolicyDenied(f"unreadable peer certificate: {exc}", rule="peer.spiffe") from exc
        if is_ca:
            raise PolicyDenied("the peer certificate is a CA certificate", rule="peer.spiffe")
        uris = _uri_sans(cert)
        if len(uris) != 1:
            raise PolicyDenied(
                f"the peer certificate has {len(uris)} URI SANs, an X509-SVID exactly one",
                rule="peer.spiffe",
            )
        spiffe_id = uris[0]
        try:
            domain, path = parse_spiffe_id(spiffe_id)
        except InvalidInputError as exc:
            raise PolicyDenied(exc.message, rule="peer.spiffe") from exc
        if self.trust_domain is not None and domain != self.trust_domain:
            raise PolicyDenied(
                f"peer {spiffe_id} is not in trust domain {self.trust_domain}",
                rule="peer.trust_domain",
            )
        if self.allowed_spiffe is not None and not any(
            _spiffe_matches(pattern, spiffe_id) for pattern in self.allowed_spiffe
        ):
            raise PolicyDenied(f"peer {spiffe_id} is not allowed", rule="peer.spiffe_id")
        claims = _claims(cert, self.claims_oid, decode_agent_claims)
        if (
            claims is not None
            and len(path) >= 2
            and path[0] == "agent"
            and (path[1] != claims.workflow)
        ):
            raise PolicyDenied(
                f"peer {spiffe_id}: the claims name workflow {claims.workflow!r}",
                rule="peer.claims",
            )
        if self.workflow is not None and (claims is None or claims.workflow != self.workflow):
            found = claims.workflow if claims else "none"
            raise PolicyDenied(
                f"peer {spiffe_id} is workflow {found}, not {self.workflow}",
                rule="peer.workflow",
            )
        missing = [p for p in self.permissions if claims is None or p not in claims.permissions]
        if missing:
            raise PolicyDenied(
                f"peer {spiffe_id} lacks permission {', '.join(missing)}",
                rule="peer.permissions",
            )
        return PeerIdentity(spiffe_id, domain, path, claims)


def check_peer(
    peer: bytes | ssl.SSLSocket | ssl.SSLObject,
    *,
    trust_domain: str | None = None,
    allowed_spiffe: Iterable[str] | str | None = None,
    workflow: str | None = None,
    permissions: Collection[str] = (),
    claims_oid: str = AGENT_CLAIMS_OID,
) -> PeerIdentity:
    """Check the SPIFFE ID and agent claims of a peer whose chain TLS has verified.

    ``peer`` is the leaf's DER or a connected TLS socket/object. The chain is NOT
    verified here: pass only a certificate the TLS layer accepted against your root.

    Raises:
        PolicyDenied: rule ``peer.missing``, ``peer.spiffe`` (not a valid X509-SVID),
            ``peer.trust_domain``, ``peer.spiffe_id``, ``peer.claims``, ``peer.workflow``
            or ``peer.permissions``.
    """
    try:
        der = peer if isinstance(peer, bytes) else peer.getpeercert(binary_form=True)
    except ValueError as exc:  # "handshake not done yet", or a connection already failed
        raise PolicyDenied(f"no verified peer: {exc}", rule="peer.missing") from exc
    policy = PeerPolicy.of(
        trust_domain=trust_domain,
        allowed_spiffe=allowed_spiffe,
        workflow=workflow,
        permissions=permissions,
        claims_oid=claims_oid,
    )
    return policy.check(der)


def _spiffe_matches(pattern: str, spiffe_id: str) -> bool:
    if "*" not in pattern and "?" not in pattern and "[" not in pattern:
        return pattern == spiffe_id
    # fnmatch's * crosses "/": compare segment by segment so it cannot.
    want, got = pattern.split("/"), spiffe_id.split("/")
    return len(want) == len(got) and all(
        fnmatch.fnmatchcase(g, w) for w, g in zip(want, got, strict=True)
    )


def _uri_sans(cert: Any) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.value.get_values_for_type(x509.UniformResourceIdentifier)]


def _claims(cert: Any, oid: str, decode: Callable[[bytes], AgentClaims]) -> AgentClaims | None:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    try:
        return decode(ext.value.value)
    except InvalidInputError as exc:
        raise PolicyDenied(exc.message, rule="peer.claims") from exc


# --- contexts that follow rotated files -------------------------------------------------


def _enforce(connection: ssl.SSLSocket | ssl.SSLObject) -> None:
    policy = getattr(connection.context, "peer_policy", None)
    if policy is None:
        return
    try:
        policy.check(connection.getpeercert(binary_form=True))
    except PolicyDenied as denial:
        raise PeerRejected(denial) from None


class _CheckedSocket(ssl.SSLSocket):
    """Checks the peer once the handshake is done, however it happens: an explicit
    ``do_handshake``, or implicitly in the first read or write of a socket wrapped with
    ``do_handshake_on_connect=False`` (the handshake is then run here first, so nothing
    is read from or sent to a peer before it is checked). A listening socket wrapped with
    a ``ReloadingContext`` wraps what it accepts with that context, not the inner one it
    was made with, so accepted connections follow rotated files too."""

    _peer_checked = False
    _reloading: ReloadingContext | None = None

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _enforce(self)
        self._peer_checked = True

    def _handshake_first(self) -> None:
        if not self._peer_checked and getattr(self, "_sslobj", None) is not None:
            self.do_handshake()

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._handshake_first()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        self._handshake_first()
        return super().write(data)

    def send(self, data: Any, flags: int = 0) -> int:
        self._handshake_first()
        return super().send(data, flags)

    def accept(self) -> tuple[Any, Any]:
        if self._reloading is None:
            return super().accept()
        connection, address = socket.socket.accept(self)
        wrapped = self._reloading.wrap_socket(
            connection,
            do_handshake_on_connect=getattr(self, "do_handshake_on_connect", True),
            suppress_ragged_eofs=getattr(self, "suppress_ragged_eofs", True),
            server_side=True,
        )
        return wrapped, address


class _CheckedObject(ssl.SSLObject):
    """As ``_CheckedSocket``, for memory-BIO connections (asyncio): a read or write before
    the handshake runs the handshake, and its check, first."""

    _peer_checked = False

    def do_handshake(self) -> None:
        super().do_handshake()
        _enforce(self)
        self._peer_checked = True

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if not self._peer_checked:
            self.do_handshake()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        if not self._peer_checked:
            self.do_handshake()
        return super().write(data)


class _PolicyContext(ssl.SSLContext):
    """An inner context: immutable once built; checks the peer after each handshake."""

    peer_policy: PeerPolicy | None = None


_PolicyContext.sslsocket_class = _CheckedSocket
_PolicyContext.sslobject_class = _CheckedObject


@dataclass(frozen=True)
class ContextSpec:
    """Everything an inner context is built from."""

    server_side: bool
    cert_file: Path
    key_file: Path
    root_file: Path
    policy: PeerPolicy | None
    check_hostname: bool = False
    watched: tuple[Path, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "watched", (self.key_file, self.cert_file, self.root_file))

    def configure(self, context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.server_side:
            context.check_hostname = self.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED

    def build(self) -> _PolicyContext:
        protocol = ssl.PROTOCOL_TLS_SERVER if self.server_side else ssl.PROTOCOL_TLS_CLIENT
        context = _PolicyContext(protocol)
        self.configure(context)
        context.load_verify_locations(cafile=str(self.root_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        context.peer_policy = self.policy
        return context


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:
            result.append(None)
            continue
        result.append((found.st_ino, found.st_mtime_ns, found.st_size))
    return tuple(result)


class ReloadingContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` whose connections use the newest certificate files (see the
    module docstring). ``reloads`` counts the inner contexts built after the first."""

    def __new__(cls, spec: ContextSpec) -> ReloadingContext:
        protocol = ssl.PROTOCOL_TLS_SERVER if spec.server_side else ssl.PROTOCOL_TLS_CLIENT
        return super().__new__(cls, protocol)

    def __init__(self, spec: ContextSpec) -> None:
        self.spec = spec
        spec.configure(self)
        self._lock = threading.Lock()
        self.reloads = 0
        self.last_error: Exception | None = None
        self._signature = _signature(spec.watched)
        try:
            self._inner = spec.build()
        except ssl.SSLError as exc:
            raise InvalidInputError(
                f"cannot use {spec.cert_file} with {spec.key_file} and {spec.root_file}:"
                f" {exc.reason or exc}"
            ) from exc
        except OSError as exc:
            raise StorageError(f"cannot read the certificate files: {exc}") from exc

    def current(self) -> ssl.SSLContext:
        """The inner context for a new connection (rebuilt if the files changed)."""
        with self._lock:
            found = _signature(self.spec.watched)
            if found != self._signature:
                try:
                    self._replace(found)
                except (ssl.SSLError, OSError) as exc:
                    self.last_error = exc  # mid-swap or unreadable: keep the old one
            return self._inner

    def reload(self) -> bool:
        """Rebuild now if the files changed; True if they did. Raises ``ssl.SSLError`` or
        ``OSError`` when the files cannot be used (the old context stays)."""
        with self._lock:
            found = _signature(self.spec.watched)
            if found == self._signature:
                return False
            self._replace(found)
            return True

    def _replace(self, found: tuple[tuple[int, int, int] | None, ...]) -> None:
        inner = self.spec.build()
        self._inner, self._signature = inner, found
        self.reloads += 1
        self.last_error = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = self.current().wrap_socket(*args, **kwargs)
        if isinstance(wrapped, _CheckedSocket):
            wrapped._reloading = self  # what it accepts is wrapped by this context
        return wrapped

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current().wrap_bio(*args, **kwargs)


def server_context(
    cert_dir: str | Path,
    root: str | Path | None = None,
    *,
    trust_domain: str | None = None,
    allowed_spiffe: Iterable[str] | str | None = None,
    workflow: str | None = None,
    permissions: Collection[str] = (),
    claims_oid: str = AGENT_CLAIMS_OID,
) -> ReloadingContext:
    """A server context: our ``fullchain.pem``/``key.pem`` from ``cert_dir``, client
    certificates required and verified against ``root`` (default ``cert_dir/ca.pem``);
    the client must be an X509-SVID (one SPIFFE ID, not a CA) and meet the rules given
    (see ``PeerPolicy``), else the handshake fails with ``PeerRejected``."""
    directory = Path(cert_dir)
    policy = PeerPolicy.of(
        trust_domain=trust_domain,
        allowed_spiffe=allowed_spiffe,
        workflow=workflow,
        permissions=permissions,
        claims_oid=claims_oid,
    )
    return ReloadingContext(
        ContextSpec(
            server_side=True,
            cert_file=directory / "fullchain.pem",
            key_file=directory / "key.pem",
            root_file=Path(root) if root is not None else directory / "ca.pem",
            policy=policy,
        )
    )


def client_context(
    cert_dir: str | Path,
    root: str | Path | None = None,
    *,
    trust_domain: str | None = None,
    allowed_spiffe: Iterable[str] | str | None = None,
    workflow: str | None = None,
    permissions: Collection[str] = (),
    claims_oid: str = AGENT_CLAIMS_OID,
    check_hostname: bool | None = None,
) -> ReloadingContext:
    """A client context presenting our certificate from ``cert_dir``. The server is
    verified against ``root`` (default ``cert_dir/ca.pem``); with a trust domain, allowed
    SPIFFE IDs or a workflow it is identified by those (agents have no DNS names), else
    by the host name (``check_hostname`` overrides)."""
    directory = Path(cert_dir)
    policy = PeerPolicy.of(
        trust_domain=trust_domain,
        allowed_spiffe=allowed_spiffe,
        workflow=workflow,
        permissions=permissions,
        claims_oid=claims_oid,
    )
    hostname = not policy.names_peer if check_hostname is None else check_hostname
    return ReloadingContext(
        ContextSpec(
            server_side=False,
            cert_file=directory / "fullchain.pem",
            key_file=directory / "key.pem",
            root_file=Path(root) if root is not None else directory / "ca.pem",
            policy=policy if policy.names_peer or policy.permissions else None,
            check_hostname=hostname,
        )
    )
