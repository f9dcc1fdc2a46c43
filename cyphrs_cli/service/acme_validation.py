"""ACME challenge validation from the server process: http-01, dns-01 (RFC 8555 §8.3,
§8.4) and tls-alpn-01 (RFC 8737), each with a timeout.

Where requests go: names are resolved with dnspython against the configured resolver
(``AcmeSettings.dns_resolver``, a HOST:PORT the operator chose; else the system's), and
challenge ports are configurable (defaults 80 and 443), as Boulder and Pebble do. Every
address a validation would dial is checked against the operator's allow-list of networks
first; an address outside it (loopback unless configured, link-local metadata services,
public addresses) is refused with no connection made. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from typing import TYPE_CHECKING

from cyphrs_cli.service.acme import AcmeProblem, AcmeSettings, dns01_digest, key_authorization

if TYPE_CHECKING:
    from cyphrs_cli.service.acme import Authorization, Challenge

ACME_IDENTIFIER_OID = "1.3.6.1.5.5.7.1.31"
MAX_HTTP_BODY = 4096


def _resolver(settings: AcmeSettings) -> object:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=settings.dns_resolver is None)
    if settings.dns_resolver is not None:
        host, port = settings.dns_resolver
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = settings.timeout
    resolver.timeout = settings.timeout
    return resolver


def resolve_addresses(settings: AcmeSettings, authz: Authorization) -> list[str]:
    """The addresses of the identifier (A and AAAA, or the IP itself)."""
    if authz.identifier_type == "ip":
        return [authz.identifier]
    import dns.exception
    import dns.resolver

    resolver = _resolver(settings)
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(authz.identifier, rdtype)  # type: ignore[attr-defined]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            raise AcmeProblem("dns", f"resolving {authz.identifier}: {type(exc).__name__}") \
                from exc
        found.extend(str(r) for r in answer)
    if not found:
        raise AcmeProblem("dns", f"{authz.identifier} has no A or AAAA record")
    return found


def allowed_address(settings: AcmeSettings, addresses: list[str]) -> str:
    """The first address inside the allow-list, or ``rejectedIdentifier`` (nothing dialled)."""
    networks = [ipaddress.ip_network(n) for n in settings.allowed_networks]
    for text in addresses:
        address = ipaddress.ip_address(text)
        if any(address in net for net in networks):
            return text
    raise AcmeProblem(
        "rejectedIdentifier",
        f"no address of the identifier is in the validation allow-list ({', '.join(addresses)})",
        403,
    )


def _http01(settings: AcmeSettings, authz: Authorization, address: str, expected: str,
            token: str) -> None:
    import http.client

    host = authz.identifier
    connection = http.client.HTTPConnection(address, settings.http_port,
                                            timeout=settings.timeout)
    try:
        connection.request("GET", f"/.well-known/acme-challenge/{token}",
                           headers={"Host": host if authz.identifier_type == "dns"
                                    else address, "User-Agent": "cyphrs-acme-validator"})
        response = connection.getresponse()
        body = response.read(MAX_HTTP_BODY + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise AcmeProblem("connection", f"http-01 to {address}:{settings.http_port}: "
                          f"{type(exc).__name__}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise AcmeProblem("unauthorized", f"http-01 answered HTTP {response.status}", 403)
    if body.strip() != expected.encode():
        raise AcmeProblem("incorrectResponse", "http-01 key authorization does not match", 403)


def _dns01(settings: AcmeSettings, authz: Authorization, expected: str) -> None:
    import dns.exception

    resolver = _resolver(settings)
    name = f"_acme-challenge.{authz.identifier}"
    try:
        answer = resolver.resolve(name, "TXT")  # type: ignore[attr-defined]
    except dns.exception.DNSException as exc:
        raise AcmeProblem("dns", f"dns-01 TXT {name}: {type(exc).__name__}", 403) from exc
    values = {b"".join(r.strings).decode(errors="replace") for r in answer}
    if dns01_digest(expected) not in values:
        raise AcmeProblem("incorrectResponse", f"dns-01: no matching TXT record at {name}", 403)


def _tls_alpn01(settings: AcmeSettings, authz: Authorization, address: str,
                expected: str) -> None:
    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the challenge certificate is self-signed by design
    context.set_alpn_protocols(["acme-tls/1"])
    server_name = (authz.identifier if authz.identifier_type == "dns"
                   else ipaddress.ip_address(authz.identifier).reverse_pointer)
    try:
        with socket.create_connection((address, settings.tls_port),
                                      timeout=settings.timeout) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as tls:
            protocol = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise AcmeProblem("tls", f"tls-alpn-01 to {address}:{settings.tls_port}: "
                          f"{type(exc).__name__}", 403) from exc
    if protocol != "acme-tls/1" or not der:
        raise AcmeProblem("tls", "tls-alpn-01: the server did not negotiate acme-tls/1", 403)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        extension = cert.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(ACME_IDENTIFIER_OID))
    except x509.ExtensionNotFound as exc:
        raise AcmeProblem("unauthorized", "tls-alpn-01 certificate lacks SAN or acmeIdentifier",
                          403) from exc
    names = [str(n.value) for n in san]
    if names != [authz.identifier]:
        raise AcmeProblem("unauthorized", "tls-alpn-01 certificate names other identifiers", 403)
    digest = hashlib.sha256(expected.encode()).digest()
    value = extension.value
    raw_value = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if not extension.critical or raw_value != b"\x04\x20" + digest:
        raise AcmeProblem("incorrectResponse", "tls-alpn-01 acmeIdentifier does not match", 403)


def validate(settings: AcmeSettings, authz: Authorization, challenge: Challenge,
             thumbprint: str) -> AcmeProblem | None:
    """Validate one challenge; None on success, else the problem to record."""
    expected = key_authorization(challenge.token, thumbprint)
    try:
        if challenge.type == "dns-01":
            _dns01(settings, authz, expected)
            return None
        address = allowed_address(settings, resolve_addresses(settings, authz))
        if challenge.type == "http-01":
            _http01(settings, authz, address, expected, challenge.token)
        else:
            _tls_alpn01(settings, authz, address, expected)
    except AcmeProblem as problem:
        return problem
    return None


def validate_challenge(authority: object, settings: AcmeSettings, challenge_id: str,
                       account_id: str) -> None:
    """Validate a challenge marked ``processing`` and record the outcome (the server runs
    this on a worker thread after answering the client)."""
    from cyphrs_cli.service.acme import account_by_id, challenge_owner, complete_challenge
    from cyphrs_cli.service.acme import thumbprint as jwk_thumbprint
    from cyphrs_cli.service.authority import Authority

    assert isinstance(authority, Authority)
    challenge, authz = challenge_owner(authority, challenge_id, account_id)
    account = account_by_id(authority, account_id)
    try:
        problem = validate(settings, authz, challenge, jwk_thumbprint(account.jwk))
    except Exception as exc:  # a validator bug must still finish the challenge
        problem = AcmeProblem("serverInternal", f"validation failed: {type(exc).__name__}", 500)
    complete_challenge(authority, challenge_id, problem)
