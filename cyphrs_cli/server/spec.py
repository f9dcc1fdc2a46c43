"""The HTTP API of ``cyphrs serve`` as data: one route table with its JSON schemas.

This table is the single source of truth: ``server.app`` mounts a handler for each
``Operation`` (by ``operation_id``) and validates request bodies against ``request``;
``openapi_document()`` renders the same table as the OpenAPI 3.1 document that the server
serves at ``/openapi.json`` and that is committed as ``docs/openapi.json`` (a test fails when
the committed copy is stale; ``scripts/gen_docs.py`` rewrites it). No aiohttp here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cyphrs_cli import __version__

API_TITLE = "cyphrs online CA"
PROBLEM_TYPE_BASE = "https://cyphrs.dev/problems/"

_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"}
_SERIAL = {"type": "string", "pattern": "^([0-9a-f]{2})+$"}
_DURATION = {"type": "string", "minLength": 1, "maxLength": 32, "examples": ["2h", "10m"]}
_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_CSR = {
    "type": "string",
    "minLength": 1,
    "maxLength": 32768,
    "description": "PEM certificate signing request (the key stays with the agent)",
}
_REASON = {
    "type": ["string", "null"],
    "maxLength": 64,
    "description": "RFC 5280 reason: key-compromise, affiliation-changed, superseded, ...",
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; slug and exit_code are the CLI's",
        "required": ["type", "title", "status", "detail", "slug", "exit_code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "slug": {"type": "string"},
            "exit_code": {"type": "integer"},
            "hint": {"type": "string"},
            "rule": {"type": "string"},
        },
    },
    "EnrollRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["csr"],
        "properties": {
            "csr": _CSR,
            "token": {"type": "string", "minLength": 1, "maxLength": 256},
            "ttl": _DURATION,
            "instance": _NAME,
            "workflow": _NAME,
            "permissions": {"type": "array", "maxItems": 64, "items": _NAME},
        },
    },
    "RenewRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["csr"],
        "properties": {"csr": _CSR, "ttl": _DURATION},
    },
    "RevokeRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": _REASON},
    },
    "AdminRevokeRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["serial"],
        "properties": {
            "serial": {"type": "string", "minLength": 1, "maxLength": 64},
            "reason": _REASON,
        },
    },
    "TokenSpec": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "profile": _NAME,
            "workflow": _NAME,
            "permissions": {"type": "array", "maxItems": 64, "items": _NAME},
            "trust_domain": {"type": "string", "minLength": 1, "maxLength": 255},
            "max_ttl": _DURATION,
            "uses": {"type": "integer", "minimum": 1, "maximum": 1000},
            "ttl": _DURATION,
        },
    },
    "Issued": {
        "type": "object",
        "required": [
            "schema",
            "serial",
            "spiffe_id",
            "not_before",
            "not_after",
            "fingerprint",
            "certificate",
            "chain",
            "ca",
            "replaces",
        ],
        "properties": {
            "schema": {"enum": ["cyphrs.enroll/v1", "cyphrs.agent-renew/v1"]},
            "serial": _SERIAL,
            "spiffe_id": {"type": ["string", "null"]},
            "not_before": _TIME,
            "not_after": _TIME,
            "fingerprint": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
            "certificate": {"type": "string"},
            "chain": {"type": "string"},
            "ca": {"type": "string"},
            "replaces": {"anyOf": [_SERIAL, {"type": "null"}]},
        },
    },
    "Revoked": {
        "type": "object",
        "required": ["schema", "revoked"],
        "properties": {
            "schema": {"const": "cyphrs.revoke/v1"},
            "revoked": {
                "type": "object",
                "required": ["serial", "revoked_at", "reason", "is_ca"],
                "properties": {
                    "serial": _SERIAL,
                    "revoked_at": _TIME,
                    "reason": {"type": ["string", "null"]},
                    "is_ca": {"type": "boolean"},
                },
            },
        },
    },
    "Token": {
        "type": "object",
        "required": ["schema", "token", "token_id", "expires_at"],
        "properties": {
            "schema": {"const": "cyphrs.token/v1"},
            "token": {"type": "string"},
            "token_id": {"type": "string"},
            "expires_at": _TIME,
        },
    },
    "CertificateList": {
        "type": "object",
        "required": ["schema", "certificates"],
        "properties": {
            "schema": {"const": "cyphrs.list/v1"},
            "certificates": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["serial", "status", "profile", "not_after"],
                    "properties": {
                        "serial": _SERIAL,
                        "status": {"type": "string"},
                        "profile": {"type": "string"},
                        "not_after": _TIME,
                    },
                },
            },
        },
    },
    "OcspRequest": {"type": "string", "contentMediaType": "application/ocsp-request"},
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


@dataclass(frozen=True)
class Response:
    status: int
    description: str
    media_type: str = "application/json"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    """One route: ``operation_id`` names its handler in ``server.app``."""

    operation_id: str
    method: str
    path: str
    summary: str
    responses: tuple[Response, ...]
    # "none", "mtls" (any certificate of this CA), "admin" (an admin-profile certificate)
    auth: str = "none"
    request: str | None = None  # a SCHEMAS name for a JSON body
    request_media_type: str = "application/json"
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = ()


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_PEM_CHAIN = "application/pem-certificate-chain"
_BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}
_ISSUER = {
    "name": "issuer",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
}
_TEXT = {"type": "string"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "getRoots",
        "GET",
        "/v1/roots",
        "The home's root certificate(s): the trust bundle",
        (Response(200, "PEM root certificates", _PEM_CHAIN, _TEXT),),
        tags=("status",),
    ),
    Operation(
        "enroll",
        "POST",
        "/v1/enroll",
        "Enroll: a CSR plus a one-time token (or Authorization: Bearer <JWT>)",
        (Response(201, "issued and recorded", schema=_ref("Issued")),),
        request="EnrollRequest",
        tags=("agents",),
    ),
    Operation(
        "renew",
        "POST",
        "/v1/renew",
        "Renew the presented client certificate: same identity, new key from the CSR. A"
        " superseded certificate asking again with its recorded successor's own key (a"
        " renewal whose answer was lost) gets that successor again; nothing new is issued",
        (
            Response(
                201,
                "issued and recorded, the old one superseded; or the recorded successor"
                " answered again (event certificate.redelivered)",
                schema=_ref("Issued"),
            ),
        ),
        auth="mtls",
        request="RenewRequest",
        tags=("agents",),
    ),
    Operation(
        "revoke",
        "POST",
        "/v1/revoke",
        "Revoke the presented client certificate",
        (Response(200, "revoked", schema=_ref("Revoked")),),
        auth="mtls",
        request="RevokeRequest",
        tags=("agents",),
    ),
    Operation(
        "adminCreateToken",
        "POST",
        "/v1/admin/tokens",
        "Create a one-time enrollment token",
        (Response(201, "the token (shown once)", schema=_ref("Token")),),
        auth="admin",
        request="TokenSpec",
        tags=("admin",),
    ),
    Operation(
        "adminRevoke",
        "POST",
        "/v1/admin/revoke",
        "Revoke any certificate by serial",
        (Response(200, "revoked", schema=_ref("Revoked")),),
        auth="admin",
        request="AdminRevokeRequest",
        tags=("admin",),
    ),
    Operation(
        "adminListCertificates",
        "GET",
        "/v1/admin/certificates",
        "List certificates from the ledger, newest first",
        (Response(200, "cyphrs.list/v1", schema=_ref("CertificateList")),),
        auth="admin",
        parameters=(
            {
                "name": "status",
                "in": "query",
                "required": False,
                "schema": {"enum": ["valid", "expired", "revoked", "superseded"]},
            },
            {"name": "profile", "in": "query", "required": False, "schema": _NAME},
            {"name": "workflow", "in": "query", "required": False, "schema": _NAME},
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ),
        tags=("admin",),
    ),
    Operation(
        "getCrl",
        "GET",
        "/v1/crl/{issuer}.crl",
        "The issuer's current CRL (DER), published anew when past half its validity",
        (Response(200, "DER CRL", "application/pkix-crl", _BINARY),),
        parameters=(_ISSUER,),
        tags=("status",),
    ),
    Operation(
        "getCaCertificate",
        "GET",
        "/v1/ca/{issuer}.der",
        "A CA certificate of this home (DER; the caIssuers URL of issued certificates)",
        (Response(200, "DER certificate", "application/pkix-cert", _BINARY),),
        parameters=(_ISSUER,),
        tags=("status",),
    ),
    Operation(
        "ocspGet",
        "GET",
        "/ocsp/{request}",
        "RFC 6960 OCSP, GET form: the URL-encoded base64 DER request in the path",
        (
            Response(
                200,
                "an OCSP response (also for malformed requests)",
                "application/ocsp-response",
                _BINARY,
            ),
        ),
        parameters=(
            {
                "name": "request",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/=%_-]{1,1024}$"},
            },
        ),
        tags=("status",),
    ),
    Operation(
        "ocspPost",
        "POST",
        "/ocsp",
        "RFC 6960 OCSP, POST form: the DER request as the body",
        (
            Response(
                200,
                "an OCSP response (also for malformed requests)",
                "application/ocsp-response",
                _BINARY,
            ),
        ),
        request="OcspRequest",
        request_media_type="application/ocsp-request",
        tags=("status",),
    ),
    Operation(
        "healthz",
        "GET",
        "/healthz",
        "Liveness: the process answers",
        (Response(200, "alive", schema=_ref("Health")),),
        tags=("operations",),
    ),
    Operation(
        "readyz",
        "GET",
        "/readyz",
        "Readiness: the ledger answers and the issuing key signs",
        (
            Response(200, "ready", schema=_ref("Health")),
            Response(503, "not ready", schema=_ref("Health")),
        ),
        tags=("operations",),
    ),
    Operation(
        "metrics",
        "GET",
        "/metrics",
        "Prometheus metrics",
        (Response(200, "text exposition format", "text/plain", _TEXT),),
        tags=("operations",),
    ),
    Operation(
        "openapi",
        "GET",
        "/openapi.json",
        "This document",
        (Response(200, "OpenAPI 3.1", schema={"type": "object"}),),
        tags=("operations",),
    ),
)

#: Problem statuses every operation may answer, besides its own successes.
_PROBLEMS = {
    "none": (400, 404, 413, 429, 503),
    "mtls": (400, 403, 404, 409, 413, 429, 503),
    "admin": (400, 403, 404, 409, 413, 429, 503),
}
_PROBLEM_TEXT = {
    400: "bad request (usage or invalid input)",
    403: "policy denied (no or wrong client certificate, token refused)",
    404: "not found",
    409: "conflict (already revoked or renewed)",
    413: "request body too large",
    429: "rate limited (see Retry-After)",
    503: "ledger or key store unavailable, or the server shutting down (see Retry-After)",
}


def operation(operation_id: str) -> Operation:
    return next(op for op in OPERATIONS if op.operation_id == operation_id)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``OPERATIONS``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        for response in op.responses:
            content = {response.media_type: {"schema": response.schema or {}}}
            responses[str(response.status)] = {
                "description": response.description,
                "content": content,
            }
        if "operations" not in op.tags:
            for status in _PROBLEMS[op.auth]:
                responses.setdefault(
                    str(status),
                    {
                        "description": _PROBLEM_TEXT[status],
                        "content": {"application/problem+json": {"schema": _ref("Problem")}},
                    },
                )
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
            "responses": responses,
        }
        if op.parameters:
            item["parameters"] = [dict(p) for p in op.parameters]
        if op.request is not None:
            item["requestBody"] = {
                "required": True,
                "content": {op.request_media_type: {"schema": _ref(op.request)}},
            }
        if op.auth != "none":
            item["security"] = [{"mtls": []}]
            item["description"] = "Needs a client certificate of this CA" + (
                " issued under the admin profile." if op.auth == "admin" else "."
            )
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE,
            "version": __version__,
            "description": (
                "The HTTPS JSON API of `cyphrs serve`: enrollment with one-time tokens,"
                " renewal and revocation over mTLS, administration with admin-profile"
                " certificates. Errors are application/problem+json with the CLI's slug"
                " and exit code."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"mtls": {"type": "mutualTLS"}},
        },
    }


def openapi_text() -> str:
    """The committed form of the document (sorted keys, two-space indent, final newline)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
