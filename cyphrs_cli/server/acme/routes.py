"""The ``/acme/...`` routes of ``cyphrs serve`` (RFC 8555 §7): parse and verify the JWS,
call one ``service.acme`` use case on a worker thread, render the ACME object with its
URLs, a fresh ``Replay-Nonce`` and ``Link: <directory>;rel="index"``. Refusals are ACME
problem documents (``urn:ietf:params:acme:error:*``, RFC 8555 §6.7).

ACME is specified by RFC 8555, not by the server's OpenAPI document; these routes are
mounted beside the ``spec.OPERATIONS`` routes and excluded from ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.server.acme.jws import (
    NonceStore,
    Verified,
    check_protected,
    parse,
    verify_signature,
)
from cyphrs_cli.server.app import STATE, ServerState, read_body
from cyphrs_cli.server.limits import Rate, RateLimiter
from cyphrs_cli.server.problems import HttpProblem
from cyphrs_cli.service.acme import AcmeProblem, AcmeSettings

JOSE = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
#: Requests per ACME account (or account key, or client address for the requests without
#: a JWS: directory, newNonce, renewalInfo) — a certbot or lego run takes about ten.
DEFAULT_RATE = Rate(300, 60.0)


@dataclass
class AcmeState:
    settings: AcmeSettings
    base_url: str | None = None  # else from the request's Host
    nonces: NonceStore = field(default_factory=NonceStore)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(DEFAULT_RATE))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


ACME: web.AppKey[AcmeState] = web.AppKey("cyphrs_acme", AcmeState)
Handler = Callable[[web.Request, ServerState, AcmeState], Awaitable[web.Response]]


def _base(request: web.Request, acme: AcmeState) -> str:
    return (acme.base_url or f"https://{request.host}").rstrip("/") + "/acme"


def _finish(request: web.Request, acme: AcmeState, response: web.Response) -> web.Response:
    response.headers["Replay-Nonce"] = acme.nonces.issue()
    response.headers["Cache-Control"] = "no-store"
    response.headers.add("Link", f'<{_base(request, acme)}/directory>;rel="index"')
    return response


def _problem(problem: AcmeProblem) -> web.Response:
    response = web.Response(text=json.dumps(problem.document()), status=problem.status,
                            content_type="application/problem+json")
    if problem.retry_after:
        response.headers["Retry-After"] = str(problem.retry_after)
    return response


def _limit(acme: AcmeState, key: str) -> None:
    """Per account (or per account key before there is an account): ``rateLimited``."""
    wait = acme.limiter.retry_after(key)
    if wait:
        raise AcmeProblem("rateLimited", "too many ACME requests; retry later", 429,
                          retry_after=wait)


def client_network(remote: str | None) -> str:
    """The rate-limit key of a client address: the address itself, or its /64 for IPv6
    (one host can hold a whole /64, so counting single addresses would not limit it)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return str(remote)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def endpoint(handler: Handler, *, public: bool = False
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Every failure as an ACME problem document; every answer with a fresh nonce.
    ``public`` (directory, newNonce, renewalInfo: no JWS) are limited per client address,
    in the same bounded limiter as accounts, so a flood costs bounded memory."""

    async def wrapped(request: web.Request) -> web.Response:
        state, acme = request.app[STATE], request.app[ACME]
        try:
            if public:
                _limit(acme, "ip:" + client_network(request.remote))
            response = await handler(request, state, acme)
        except AcmeProblem as problem:
            response = _problem(problem)
        except HttpProblem as error:
            response = _problem(AcmeProblem("malformed", error.detail, error.status))
        except CyphrsError as error:
            from cyphrs_cli.server.problems import STATUS_BY_EXIT

            status = STATUS_BY_EXIT.get(error.exit_code, 500)
            kind = "serverInternal" if status >= 500 else (
                "unauthorized" if status in (401, 403) else "malformed")
            response = _problem(AcmeProblem(kind, error.message, status))
        return _finish(request, acme, response)

    return wrapped


async def _verified(request: web.Request, state: ServerState, acme: AcmeState, *,
                    jwk_allowed: bool = False, kid_allowed: bool = True) -> Verified:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != JOSE:
        raise AcmeProblem("malformed", f"Content-Type must be {JOSE}", 415)
    body = await read_body(request)
    document, protected = parse(body)
    url = f"{_base(request, acme)}{request.path.removeprefix('/acme')}"
    alg = check_protected(protected, url, acme.nonces)
    if "jwk" in protected:
        if not jwk_allowed:
            raise AcmeProblem("malformed", "this request must be signed by an account (kid)")
        key = protected["jwk"]
        if not isinstance(key, dict):
            raise AcmeProblem("malformed", "jwk must be an object")
        _limit(acme, "jwk:" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()
                                              ).hexdigest())
        payload = verify_signature(document, alg, key)
        return Verified(protected, payload, key, None)
    if not kid_allowed:
        raise AcmeProblem("malformed", "this request must carry the key (jwk), not a kid")
    kid = protected["kid"]
    prefix = f"{_base(request, acme)}/acct/"
    if not isinstance(kid, str) or not kid.startswith(prefix):
        raise AcmeProblem("accountDoesNotExist", "kid is not an account URL of this CA")
    account_id = kid.removeprefix(prefix)
    _limit(acme, "acct:" + account_id[:64])
    from cyphrs_cli.service.acme import account_by_id

    account = await state.call(lambda: account_by_id(state.authority, account_id))
    payload = verify_signature(document, alg, account.jwk)
    if account.status != "valid":
        raise AcmeProblem("unauthorized", f"account is {account.status}", 401)
    return Verified(protected, payload, None, account_id)


def _json(body: Any, status: int = 200, location: str | None = None) -> web.Response:
    response = web.json_response(body, status=status)
    if location:
        response.headers["Location"] = location
    return response


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise AcmeProblem("malformed", "expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise AcmeProblem("malformed", "not base64url") from exc


# -- rendering -----------------------------------------------------------------------


def _account_body(base: str, account: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": account.status,
        "contact": list(account.contact),
        "orders": f"{base}/acct/{account.account_id}/orders",
    }
    if account.eab_kid:
        body["externalAccountBinding"] = {"kid": account.eab_kid}
    return body


def _order_body(base: str, order: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": order.status,
        "expires": order.expires_at,
        "identifiers": list(order.identifiers),
        "authorizations": [f"{base}/authz/{a}" for a in order.authz_ids],
        "finalize": f"{base}/order/{order.order_id}/finalize",
    }
    if order.error:
        body["error"] = order.error
    if order.certificate_serial:
        body["certificate"] = f"{base}/cert/{order.order_id}"
    if order.replaces:
        body["replaces"] = order.replaces
    return body


def _challenge_body(base: str, challenge: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": challenge.type,
        "url": f"{base}/chall/{challenge.challenge_id}",
        "status": challenge.status,
        "token": challenge.token,
    }
    if challenge.validated_at:
        body["validated"] = challenge.validated_at
    if challenge.error:
        body["error"] = challenge.error
    return body


def _authz_body(base: str, authz: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": authz.status,
        "expires": authz.expires_at,
        "identifier": {"type": authz.identifier_type, "value": authz.identifier},
        "challenges": [_challenge_body(base, c) for c in authz.challenges],
    }
    if authz.wildcard:
        body["wildcard"] = True
    return body


# -- handlers ------------------------------------------------------------------------


async def directory(request: web.Request, state: ServerState, acme: AcmeState) -> web.Response:
    base = _base(request, acme)
    return _json({
        "newNonce": f"{base}/new-nonce",
        "newAccount": f"{base}/new-account",
        "newOrder": f"{base}/new-order",
        "revokeCert": f"{base}/revoke-cert",
        "keyChange": f"{base}/key-change",
        "renewalInfo": f"{base}/renewal-info",
        "meta": {"externalAccountRequired": not acme.settings.allow_no_eab},
    })


async def new_nonce(request: web.Request, state: ServerState, acme: AcmeState) -> web.Response:
    return web.Response(status=200 if request.method == "HEAD" else 204)


async def new_account(request: web.Request, state: ServerState, acme: AcmeState
                      ) -> web.Response:
    from cyphrs_cli.service.acme import new_account as create

    verified = await _verified(request, state, acme, jwk_allowed=True, kid_allowed=False)
    payload = verified.json()
    url = f"{_base(request, acme)}/new-account"
    assert verified.jwk is not None
    key = verified.jwk
    account = await state.call(lambda: create(state.authority, acme.settings, account_jwk=key,
                                              payload=payload, url=url))
    base = _base(request, acme)
    return _json(_account_body(base, account), 201 if account.created else 200,
                 f"{base}/acct/{account.account_id}")


async def account(request: web.Request, state: ServerState, acme: AcmeState) -> web.Response:
    from cyphrs_cli.service.acme import account_by_id, update_account

    verified = await _verified(request, state, acme)
    account_id = request.match_info["id"]
    if verified.account_id != account_id:
        raise AcmeProblem("unauthorized", "an account can only manage itself", 403)
    payload = verified.json()
    if payload:
        found = await state.call(lambda: update_account(state.authority, account_id, payload))
    else:
        found = await state.call(lambda: account_by_id(state.authority, account_id))
    base = _base(request, acme)
    return _json(_account_body(base, found), location=f"{base}/acct/{account_id}")


async def account_orders(request: web.Request, state: ServerState, acme: AcmeState
                         ) -> web.Response:
    verified = await _verified(request, state, acme)
    account_id = request.match_info["id"]
    if verified.account_id != account_id:
        raise AcmeProblem("unauthorized", "an account can only list its own orders", 403)

    from cyphrs_cli.service.acme import list_orders

    ids = await state.call(lambda: list_orders(state.authority, account_id))
    base = _base(request, acme)
    return _json({"orders": [f"{base}/order/{i}" for i in ids]})


async def key_change(request: web.Request, state: ServerState, acme: AcmeState
                     ) -> web.Response:
    from cyphrs_cli.service.acme import change_key

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    inner, inner_protected = parse(verified.payload)
    url = f"{_base(request, acme)}/key-change"
    alg = check_protected(inner_protected, url, None)
    new_key = inner_protected.get("jwk")
    if not isinstance(new_key, dict):
        raise AcmeProblem("malformed", "the inner JWS must carry the new key (jwk)")
    inner_payload = Verified(inner_protected, verify_signature(inner, alg, new_key), new_key,
                             None).json()
    base = _base(request, acme)
    if inner_payload.get("account") != f"{base}/acct/{verified.account_id}":
        raise AcmeProblem("malformed", "the inner payload names another account")
    account_id = verified.account_id
    found = await state.call(lambda: change_key(state.authority, account_id, new_key,
                                                inner_payload.get("oldKey")))
    return _json(_account_body(base, found), location=f"{base}/acct/{account_id}")


async def new_order(request: web.Request, state: ServerState, acme: AcmeState
                    ) -> web.Response:
    from cyphrs_cli.service.acme import new_order as create

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, payload = verified.account_id, verified.json()
    order = await state.call(lambda: create(state.authority, acme.settings, account_id,
                                            payload))
    base = _base(request, acme)
    return _json(_order_body(base, order), 201, f"{base}/order/{order.order_id}")


async def order(request: web.Request, state: ServerState, acme: AcmeState) -> web.Response:
    from cyphrs_cli.service.acme import get_order

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, order_id = verified.account_id, request.match_info["id"]
    found = await state.call(lambda: get_order(state.authority, order_id, account_id))
    base = _base(request, acme)
    response = _json(_order_body(base, found), location=f"{base}/order/{order_id}")
    if found.status in ("pending", "processing"):
        response.headers["Retry-After"] = "1"
    return response


async def finalize(request: web.Request, state: ServerState, acme: AcmeState
                   ) -> web.Response:
    from cyphrs_cli.service.acme import finalize as issue

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, order_id = verified.account_id, request.match_info["id"]
    csr = _unb64(verified.json().get("csr"))
    found = await state.call(lambda: issue(state.authority, order_id, account_id, csr))
    base = _base(request, acme)
    return _json(_order_body(base, found), location=f"{base}/order/{order_id}")


async def authorization(request: web.Request, state: ServerState, acme: AcmeState
                        ) -> web.Response:
    from cyphrs_cli.service.acme import deactivate_authorization, get_authorization

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, authz_id = verified.account_id, request.match_info["id"]
    payload = verified.json()
    if payload.get("status") == "deactivated":
        found = await state.call(lambda: deactivate_authorization(state.authority, authz_id,
                                                                  account_id))
    elif payload:
        raise AcmeProblem("malformed", "an authorization can only be deactivated")
    else:
        found = await state.call(lambda: get_authorization(state.authority, authz_id,
                                                           account_id))
    response = _json(_authz_body(_base(request, acme), found))
    if found.status == "pending":
        response.headers["Retry-After"] = "1"
    return response


async def challenge(request: web.Request, state: ServerState, acme: AcmeState
                    ) -> web.Response:
    from cyphrs_cli.service.acme import challenge_owner, start_challenge
    from cyphrs_cli.service.acme_validation import validate_challenge

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, challenge_id = verified.account_id, request.match_info["id"]
    if verified.payload and verified.json() == {}:
        started = await state.call(lambda: start_challenge(state.authority, challenge_id,
                                                           account_id))
        if started:
            async def run() -> None:
                try:
                    await state.call(lambda: validate_challenge(
                        state.authority, acme.settings, challenge_id, account_id))
                except Exception as error:  # logged; the challenge stays processing
                    state.log(json.dumps({"event": "acme.validation-error",
                                          "type": type(error).__name__}))

            task = asyncio.create_task(run())
            acme.tasks.add(task)
            task.add_done_callback(acme.tasks.discard)
    found, authz = await state.call(lambda: challenge_owner(state.authority, challenge_id,
                                                            account_id))
    base = _base(request, acme)
    response = _json(_challenge_body(base, found))
    response.headers.add("Link", f'<{base}/authz/{authz.authz_id}>;rel="up"')
    if found.status == "processing":
        response.headers["Retry-After"] = "1"
    return response


async def certificate(request: web.Request, state: ServerState, acme: AcmeState
                      ) -> web.Response:
    from cyphrs_cli.service.acme import certificate_chain

    verified = await _verified(request, state, acme)
    assert verified.account_id is not None
    account_id, order_id = verified.account_id, request.match_info["id"]
    pem = await state.call(lambda: certificate_chain(state.authority, order_id, account_id))
    return web.Response(body=pem, content_type=PEM_CHAIN)


async def revoke_cert(request: web.Request, state: ServerState, acme: AcmeState
                      ) -> web.Response:
    from cyphrs_cli.service.acme import revoke_certificate

    verified = await _verified(request, state, acme, jwk_allowed=True)
    payload = verified.json()
    der = _unb64(payload.get("certificate"))
    reason = payload.get("reason")
    await state.call(lambda: revoke_certificate(
        state.authority, der, reason, account_id=verified.account_id, jwk_json=verified.jwk))
    return web.Response(status=200)


async def renewal_info(request: web.Request, state: ServerState, acme: AcmeState
                       ) -> web.Response:
    """ARI (RFC 9773): unauthenticated GET of a certificate's suggested renewal window."""
    from cyphrs_cli.ledger.events import rfc3339
    from cyphrs_cli.service.acme import renewal_info as window_of

    cert_id = request.match_info["id"]
    window = await state.call(lambda: window_of(state.authority, cert_id))
    response = _json({"suggestedWindow": {"start": rfc3339(window.start),
                                          "end": rfc3339(window.end)}})
    response.headers["Retry-After"] = str(window.retry_after)
    return response


def mount(app: web.Application, acme: AcmeState) -> None:
    """Add the ACME routes to ``app`` (beside the OpenAPI-described ones)."""
    app[ACME] = acme
    public = {"acmeDirectory", "acmeNewNonceHead", "acmeNewNonce", "acmeRenewalInfo"}
    routes: list[tuple[str, str, Handler, str]] = [
        ("GET", "/acme/directory", directory, "acmeDirectory"),
        ("HEAD", "/acme/new-nonce", new_nonce, "acmeNewNonceHead"),
        ("GET", "/acme/new-nonce", new_nonce, "acmeNewNonce"),
        ("POST", "/acme/new-account", new_account, "acmeNewAccount"),
        ("POST", "/acme/acct/{id}", account, "acmeAccount"),
        ("POST", "/acme/acct/{id}/orders", account_orders, "acmeAccountOrders"),
        ("POST", "/acme/key-change", key_change, "acmeKeyChange"),
        ("POST", "/acme/new-order", new_order, "acmeNewOrder"),
        ("POST", "/acme/order/{id}", order, "acmeOrder"),
        ("POST", "/acme/order/{id}/finalize", finalize, "acmeFinalize"),
        ("POST", "/acme/authz/{id}", authorization, "acmeAuthorization"),
        ("POST", "/acme/chall/{id}", challenge, "acmeChallenge"),
        ("POST", "/acme/cert/{id}", certificate, "acmeCertificate"),
        ("POST", "/acme/revoke-cert", revoke_cert, "acmeRevokeCert"),
        ("GET", "/acme/renewal-info/{id}", renewal_info, "acmeRenewalInfo"),
    ]
    for method, path, handler, name in routes:
        app.router.add_route(method, path, endpoint(handler, public=name in public),
                             name=name)
