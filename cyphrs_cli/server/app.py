"""The aiohttp application of ``cyphrs serve``: handlers, and the middleware every request
passes (errors as problem+json, access log, latency metric).

Handlers are thin: parse the request (body size and read time bounded, JSON validated
against ``server.spec``), authorize the presented client certificate where the route needs
one, call ONE ``Authority`` method on a worker thread (signing and SQLite block), render.
Nothing is decided here. The verified client certificate comes from the TLS layer:
``request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)`` (Python
3.11 has no ``get_verified_chain``; the ledger lookup by fingerprint is the authority).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError

from cyphrs_cli.errors import CyphrsError, ExitCode, InvalidInputError, NotFoundError, PolicyDenied
from cyphrs_cli.numerals import is_decimal
from cyphrs_cli.server import spec
from cyphrs_cli.server.limits import Rate, RateLimiter
from cyphrs_cli.server.metrics import ServerMetrics
from cyphrs_cli.server.problems import HttpProblem, from_error, from_http, problem
from cyphrs_cli.server.validation import BodySchema

if TYPE_CHECKING:
    from cyphrs_cli.ca.revocation import Revocation
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import IssueResult
    from cyphrs_cli.service.status import OcspAnswer

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBLEM_JSON = "application/problem+json"


@dataclass
class RequestGate:
    """The requests in flight, for a graceful stop (``server.run``): once the sites stop
    accepting, ``drained`` waits for every request already in the application, and every
    request that starts after ``close`` gets 503 at once. Why not leave it to aiohttp's own
    shutdown: from its start aiohttp drops every byte a connection receives, so a request
    whose headers arrived before SIGTERM and its body after waited for its body until the
    body timeout (408) and held the shutdown that long."""

    in_flight: int = 0
    closing: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> bool:
        """Count a request in; False (not counted) once closing."""
        if self.closing:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        if self.closing and self.in_flight == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Close the gate and wait (at most ``timeout`` seconds) for the requests in
        flight to finish: whether they all did."""
        self.closing = True
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class ServerState:
    """Everything one server's handlers share; one per application, no module state."""

    authority: Authority
    executor: ThreadPoolExecutor
    token_limiter: RateLimiter
    identity_limiter: RateLimiter
    max_body: int = 64 * 1024
    body_timeout: float = 10.0
    admin_profile: str = "admin"
    # Refused enrollments per client address: made-up tokens vary the credential, and each
    # refusal costs a ledger event (one fsync); past this rate the address gets 429 first.
    failure_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(Rate(20, 60.0)))
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    validators: dict[str, BodySchema] = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    gate: RequestGate = field(default_factory=RequestGate)

    async def call(self, function: Callable[[], T]) -> T:
        """Run a blocking use case on a worker thread, in a copy of the caller's context
        (as ``asyncio.to_thread``): the events it records name the server's actor, a
        context variable (``cyphrs --actor``)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, context.run, function)


STATE: web.AppKey[ServerState] = web.AppKey("cyphrs_state", ServerState)


def _state(request: web.Request) -> ServerState:
    return request.app[STATE]


# -- request parsing --------------------------------------------------------------------


def presented_certificate(request: web.Request) -> bytes:
    """The client's leaf certificate (DER) as the TLS layer verified it, or b''."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return b""
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else b""


async def read_body(request: web.Request) -> bytes:
    """The request body, bounded in size (413) and in the time it may take (408)."""
    state = _state(request)
    if request.content_length is not None and request.content_length > state.max_body:
        raise HttpProblem(
            413, "too-large", f"request body over {state.max_body} bytes", ExitCode.INVALID_INPUT
        )
    try:
        # ``asyncio.timeout``, not ``wait_for``: no task of its own per request.
        async with asyncio.timeout(state.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise HttpProblem(
            413, "too-large", f"request body over {state.max_body} bytes", ExitCode.INVALID_INPUT
        ) from exc
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # A body the client declared compressed (Content-Encoding) that does not inflate,
        # or a broken chunked encoding: bad input, named without quoting any of it.
        raise InvalidInputError("request body could not be decoded as sent") from exc
    except TimeoutError as exc:
        raise HttpProblem(
            408, "timeout", "request body not received in time", ExitCode.INVALID_INPUT
        ) from exc


def _json_number(text: str) -> int | float:
    """A JSON number written with a fraction or an exponent. JSON Schema counts ``1.0`` as
    an integer, so the validators accept it where the schema says ``integer``; it is made
    the int it equals here, before anything records it (a float would reach the ledger's
    events as ``1.0`` while its INTEGER column holds ``1``). Anything else stays a float,
    which no integer field accepts."""
    value = float(text)
    return int(value) if value.is_integer() else value


#: Request bodies' decoder, built once (``json.loads`` with an option builds one per call):
#: immutable, shared by every request.
_REQUEST_JSON = json.JSONDecoder(parse_float=_json_number)


async def read_json(request: web.Request, operation_id: str) -> dict[str, Any]:
    """The request's JSON object, validated against its schema in ``server.spec``.

    Raises:
        HttpProblem: 413 over the size limit, 408 not sent within the body timeout.
        InvalidInputError: not JSON, or not what the schema allows (400).
    """
    state = _state(request)
    body = await read_body(request)
    try:
        # As ``json.loads`` reads bytes (UTF-8/16/32, lone surrogates kept for the
        # validators' not-text refusal), with ``_REQUEST_JSON``.
        document = _REQUEST_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError("request body is not JSON") from exc
    schema_name = spec.operation(operation_id).request
    assert schema_name is not None
    refusal = state.validators[schema_name].refusal(document)
    if refusal is not None:
        raise InvalidInputError(refusal)
    assert isinstance(document, dict)
    return document


def _duration(text: str | None) -> Any:
    from cyphrs_cli.durations import parse_duration

    return parse_duration(text) if text is not None else None


def _limit(limiter: RateLimiter, state: ServerState, kind: str, key: str) -> None:
    wait = limiter.retry_after(key)
    if wait:
        state.metrics.rate_limited.labels(kind).inc()
        raise HttpProblem(
            429,
            "rate-limited",
            f"too many requests for this {kind}; retry later",
            ExitCode.POLICY_DENIED,
            retry_after=wait,
        )


def _identity_key(der: bytes) -> str:
    return "cert:" + hashlib.sha256(der).hexdigest()


# -- rendering --------------------------------------------------------------------------


def issued_body(result: IssueResult, schema: str) -> dict[str, Any]:
    from cyphrs_cli.ledger.events import rfc3339

    issued, bundle = result.issued, result.bundle
    return {
        "schema": schema,
        "serial": issued.serial,
        "spiffe_id": issued.spiffe_id,
        "not_before": rfc3339(issued.not_before),
        "not_after": rfc3339(issued.not_after),
        "fingerprint": issued.fingerprint,
        "certificate": bundle.certificate,
        "chain": bundle.chain,
        "ca": bundle.root,
        "replaces": result.replaces,
    }


def revoked_body(revocation: Revocation) -> dict[str, Any]:
    from cyphrs_cli.ledger.events import rfc3339

    return {
        "schema": "cyphrs.revoke/v1",
        "revoked": {
            "serial": revocation.serial,
            "revoked_at": rfc3339(revocation.revoked_at),
            "reason": revocation.reason,
            "is_ca": revocation.was_ca,
        },
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


# -- handlers ---------------------------------------------------------------------------


async def get_roots(request: web.Request) -> web.Response:
    state = _state(request)
    bundle = await state.call(lambda: trust_bundle(state.authority))
    return web.Response(body=bundle, content_type="application/pem-certificate-chain")


def trust_bundle(authority: Authority) -> bytes:
    """The home's root certificate(s) as PEM."""
    return authority.trust_bundle()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise InvalidInputError("Authorization must be 'Bearer <JWT>'")
    return credential.strip()


def _failure_key(request: web.Request) -> str:
    return "addr:" + (request.remote or "unknown")


async def enroll(request: web.Request) -> web.Response:
    state = _state(request)
    address = _failure_key(request)
    wait = state.failure_limiter.admit(address)
    if wait:  # this address's refusals (spent or in flight) are used up: no ledger event
        state.metrics.rate_limited.labels("address").inc()
        raise HttpProblem(
            429,
            "rate-limited",
            "too many refused enrollments from this address; retry later",
            ExitCode.POLICY_DENIED,
            retry_after=wait,
        )
    # Charged when refused, and when the client leaves mid-request (cancelled): its
    # shielded enrollment may still record a refusal. Not for success, bad input, a
    # conflict or an outage, where nothing refused is recorded.
    charge = True
    try:
        response = await _enroll(request, state)
        charge = False
        return response
    except Exception as error:
        charge = isinstance(error, PolicyDenied)
        raise
    finally:
        state.failure_limiter.settle(address, charge=charge)


async def _enroll(request: web.Request, state: ServerState) -> web.Response:
    jwt = _bearer(request)
    body = await read_json(request, "enroll")
    from cyphrs_cli.service.enrollment import EnrollRequest

    token = body.get("token")
    if token is not None and jwt is not None:
        from cyphrs_cli.errors import UsageError

        raise UsageError("enroll with a token or a JWT, exactly one")
    credential = token if token is not None else jwt
    if credential is not None:  # rate-limited per credential, by its hash only
        key = ("tok:" if token is not None else "jwt:") + hashlib.sha256(
            credential.encode()
        ).hexdigest()
        _limit(state.token_limiter, state, "token", key)
    permissions = body.get("permissions")
    enroll_request = EnrollRequest(
        csr_pem=str(body["csr"]).encode(),
        token=token,
        jwt=jwt if token is None else None,
        ttl=body.get("ttl"),
        instance=body.get("instance"),
        workflow=body.get("workflow"),
        permissions=tuple(permissions) if permissions is not None else None,
    )
    try:
        result = await state.authority.enroll_online(enroll_request, offload=state.call)
    except CyphrsError as error:
        state.metrics.issuance.labels("enroll", "unknown", _outcome(error)).inc()
        raise
    state.metrics.issuance.labels("enroll", result.issued.profile, "issued").inc()
    return _json(issued_body(result, "cyphrs.enroll/v1"), 201)


async def renew(request: web.Request) -> web.Response:
    state = _state(request)
    der = presented_certificate(request)
    body = await read_json(request, "renew")
    if der:
        _limit(state.identity_limiter, state, "identity", _identity_key(der))
    ttl = _duration(body.get("ttl"))
    csr = str(body["csr"]).encode()
    try:
        result = await state.call(lambda: state.authority.renew_presented(der, csr, ttl=ttl))
    except CyphrsError as error:
        state.metrics.issuance.labels("renew", "unknown", _outcome(error)).inc()
        raise
    state.metrics.issuance.labels("renew", result.issued.profile, "issued").inc()
    return _json(issued_body(result, "cyphrs.agent-renew/v1"), 201)


async def revoke(request: web.Request) -> web.Response:
    state = _state(request)
    der = presented_certificate(request)
    body = await read_json(request, "revoke")
    if der:
        _limit(state.identity_limiter, state, "identity", _identity_key(der))
    from cyphrs_cli.ca.revocation import normalise_reason

    reason = normalise_reason(body.get("reason"))
    revocation = await state.call(lambda: state.authority.revoke_presented(der, reason))
    return _json(revoked_body(revocation))


async def _admin(request: web.Request) -> str:
    """The administrator's identity, or PolicyDenied (403) for any other certificate."""
    state = _state(request)
    der = presented_certificate(request)
    if der:
        _limit(state.identity_limiter, state, "identity", _identity_key(der))
    return await state.call(
        lambda: state.authority.admin_identity(der, profile=state.admin_profile)
    )


async def admin_revoke(request: web.Request) -> web.Response:
    state = _state(request)
    await _admin(request)
    body = await read_json(request, "adminRevoke")
    from cyphrs_cli.service.requests import CertificateTarget, RevokeRequest

    revoke_request = RevokeRequest(CertificateTarget(serial=body["serial"]), body.get("reason"))
    revocation = await state.call(lambda: state.authority.revoke(revoke_request))
    return _json(revoked_body(revocation))


async def admin_create_token(request: web.Request) -> web.Response:
    state = _state(request)
    identity = await _admin(request)
    body = await read_json(request, "adminCreateToken")
    from datetime import timedelta

    from cyphrs_cli.ledger.events import rfc3339, utc_now
    from cyphrs_cli.service.tokens import TokenSpec

    spec_fields: dict[str, Any] = {
        key: body[key] for key in ("profile", "workflow", "trust_domain", "uses") if key in body
    }
    if "permissions" in body:
        spec_fields["permissions"] = tuple(body["permissions"])
    if "max_ttl" in body:
        spec_fields["max_ttl"] = _duration(body["max_ttl"])
    spec_fields["ttl"] = _duration(body["ttl"]) if "ttl" in body else timedelta(minutes=10)
    # The ledger names the administrator who asked, whatever the body claims.
    spec_fields["requester"] = identity.split(" (serial")[0][:128]
    token_spec = TokenSpec(**spec_fields)
    created = await state.call(lambda: state.authority.create_token(token_spec))
    document = {
        "schema": "cyphrs.token/v1",
        "token": created.token,
        **created.info.to_json(utc_now()),
        "expires_at": rfc3339(created.expires_at),
    }
    return _json(document, 201)


async def admin_list_certificates(request: web.Request) -> web.Response:
    state = _state(request)
    await _admin(request)
    from cyphrs_cli.ledger.queries import CertificateFilter

    query = request.query
    status = query.get("status")
    if status is not None and status not in ("valid", "expired", "revoked", "superseded"):
        raise InvalidInputError(f"unknown status {status!r}")
    limit_text = query.get("limit", "100")
    if not is_decimal(limit_text) or not 1 <= int(limit_text) <= 1000:
        raise InvalidInputError("limit must be a whole number from 1 to 1000")
    criteria = CertificateFilter(
        status=status,
        profile=query.get("profile"),
        workflow=query.get("workflow"),
        limit=int(limit_text),
    )
    rows = await state.call(lambda: state.authority.list_certificates(criteria))
    return _json({"schema": "cyphrs.list/v1", "certificates": rows})


def _issuer_name(request: web.Request) -> str:
    name = request.match_info["issuer"]
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        raise NotFoundError(f"no CA named {name[:64]!r}")
    return name


async def get_crl(request: web.Request) -> web.Response:
    state = _state(request)
    name = _issuer_name(request)
    der = await state.call(lambda: state.authority.current_crl(name))
    return web.Response(body=der, content_type="application/pkix-crl")


async def get_ca_certificate(request: web.Request) -> web.Response:
    state = _state(request)
    name = _issuer_name(request)
    der = await state.call(lambda: state.authority.ca_certificate(name))
    return web.Response(body=der, content_type="application/pkix-cert")


def _ocsp_response(answer: OcspAnswer) -> web.Response:
    """The DER answer; a signed one without a nonce may be cached until its nextUpdate."""
    response = web.Response(body=answer.der, content_type="application/ocsp-response")
    if answer.next_update is not None and answer.this_update is not None and not answer.nonce:
        max_age = int((answer.next_update - answer.this_update).total_seconds())
        response.headers["Cache-Control"] = f"max-age={max(0, max_age)}, public, no-transform"
    return response


async def ocsp_get(request: web.Request) -> web.Response:
    state = _state(request)
    encoded = request.match_info["request"]
    answer = await state.call(lambda: state.authority.ocsp_get_response(encoded))
    return _ocsp_response(answer)


async def ocsp_post(request: web.Request) -> web.Response:
    state = _state(request)
    body = await read_body(request)
    answer = await state.call(lambda: state.authority.ocsp_response(body))
    return _ocsp_response(answer)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = _state(request)
    checks = await state.call(state.authority.readiness)
    ready = all(value == "ok" for value in checks.values())
    return _json(
        {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = _state(request).metrics.exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=spec.openapi_text(), content_type="application/json")


def _outcome(error: CyphrsError) -> str:
    return {
        ExitCode.POLICY_DENIED: "denied",
        ExitCode.CONFLICT: "conflict",
        ExitCode.USAGE: "invalid",
        ExitCode.INVALID_INPUT: "invalid",
        ExitCode.NOT_FOUND: "invalid",
    }.get(error.exit_code, "error")


HANDLERS: dict[str, Handler] = {
    "getRoots": get_roots,
    "enroll": enroll,
    "renew": renew,
    "adminCreateToken": admin_create_token,
    "revoke": revoke,
    "adminRevoke": admin_revoke,
    "adminListCertificates": admin_list_certificates,
    "getCrl": get_crl,
    "getCaCertificate": get_ca_certificate,
    "ocspGet": ocsp_get,
    "ocspPost": ocsp_post,
    "healthz": healthz,
    "readyz": readyz,
    "metrics": metrics,
    "openapi": openapi,
}


# -- middleware -------------------------------------------------------------------------


def _problem_response(status: int, body: dict[str, Any], retry_after: int = 0) -> web.Response:
    response = web.Response(text=json.dumps(body), status=status, content_type=PROBLEM_JSON)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


#: Set on a request whose ``Expect`` header asks for anything but ``100-continue``.
_UNMET_EXPECTATION = "cyphrs.unmet_expectation"


async def expect_continue(request: web.Request) -> None:
    """Every route's ``Expect`` handler. aiohttp's own answers an unknown expectation with
    a text/plain 417 that quotes the header's value, outside the middlewares (no problem
    document, no access-log line). Here ``100-continue`` is answered as aiohttp does, and
    anything else is only marked, for ``problems_and_log`` to refuse like any request."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        request[_UNMET_EXPECTATION] = True
    elif request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response's size


@web.middleware
async def problems_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as problem+json; one JSON access-log line per request on stderr
    (method, path, status, time, client certificate fingerprint; never a body or header
    value, so no token, CSR or key can reach the log)."""
    state = _state(request)
    started = time.perf_counter()
    operation = getattr(request.match_info.route, "name", None) or "unmatched"
    response: web.StreamResponse
    entered = state.gate.enter()
    try:
        if not entered:
            raise HttpProblem(
                503,
                "shutting-down",
                "the server is shutting down; retry",
                ExitCode.STORAGE,
                retry_after=1,
            )
        if request.get(_UNMET_EXPECTATION):
            raise HttpProblem(
                417,
                "expectation-failed",
                "only 'Expect: 100-continue' is supported",
                ExitCode.INVALID_INPUT,
            )
        response = await handler(request)
    except HttpProblem as error:
        status, body = from_http(error)
        response = _problem_response(status, body, error.retry_after)
    except CyphrsError as error:
        status, body = from_error(error)
        if isinstance(error, PolicyDenied) and error.rule.startswith(("token.", "jwt.")):
            state.metrics.token_refusals.labels(error.rule).inc()
        response = _problem_response(status, body)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        slug = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            error.status, "bad-request"
        )
        exit_code = ExitCode.NOT_FOUND if error.status == 404 else ExitCode.USAGE
        response = _problem_response(
            error.status, problem(error.status, slug, error.reason, exit_code)
        )
    except asyncio.CancelledError:
        raise
    except Exception as error:  # a bug: say so without internals, log the type
        state.log(json.dumps({"event": "internal-error", "type": type(error).__name__}))
        response = _problem_response(
            500, problem(500, "internal", "internal error", ExitCode.INTERNAL)
        )
    finally:
        if entered:
            state.gate.leave()
    if not entered:
        response.force_close()  # the connection goes with the server
    elapsed = time.perf_counter() - started
    state.metrics.request_latency.labels(operation).observe(elapsed)
    der = presented_certificate(request)
    state.log(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "remote": request.remote,
                "method": request.method,
                "path": request.path[:256],
                "operation": operation,
                "status": response.status,
                "ms": round(elapsed * 1000, 3),
                "client": ("sha256:" + hashlib.sha256(der).hexdigest()) if der else None,
                "pid": os.getpid(),  # which worker of ``--processes N`` answered
            }
        )
    )
    return response


def build_app(state: ServerState) -> web.Application:
    """The application: one route per ``spec.OPERATIONS`` entry, its handler by id."""
    app = web.Application(middlewares=[problems_and_log], client_max_size=state.max_body)
    app[STATE] = state
    for name, schema in spec.SCHEMAS.items():
        state.validators[name] = BodySchema.compile(schema)
    for op in spec.OPERATIONS:
        handler = HANDLERS.get(op.operation_id)
        if handler is None:
            continue  # a route whose use case this build lacks (documented, answers 404)
        app.router.add_route(
            op.method, op.path, handler, name=op.operation_id, expect_handler=expect_continue
        )
    return app


__all__ = ["HANDLERS", "STATE", "ServerState", "build_app"]
