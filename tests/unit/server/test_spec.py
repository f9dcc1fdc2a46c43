"""The route table is the one source of truth: the committed OpenAPI document is generated
from it, every route has a handler and every handler a route, every exit code an HTTP status."""

from __future__ import annotations

import json
from pathlib import Path

from cyphrs_cli.errors import ExitCode
from cyphrs_cli.server import spec
from cyphrs_cli.server.limits import Rate, RateLimiter
from cyphrs_cli.server.problems import STATUS_BY_EXIT

REPO = Path(__file__).resolve().parents[3]


def test_committed_openapi_document_is_current() -> None:
    committed = (REPO / "docs" / "openapi.json").read_text()
    assert committed == spec.openapi_text(), "stale docs/openapi.json: run scripts/gen_docs.py"


def test_every_operation_has_a_handler_and_back() -> None:
    from cyphrs_cli.server.app import HANDLERS

    ids = [op.operation_id for op in spec.OPERATIONS]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(HANDLERS)


def test_document_shape() -> None:
    document = json.loads(spec.openapi_text())
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    for path in ("/v1/enroll", "/v1/renew", "/v1/revoke", "/v1/admin/tokens", "/ocsp", "/metrics"):
        assert path in paths
    assert paths["/v1/renew"]["post"]["security"] == [{"mtls": []}]
    # Every JSON request schema refuses unknown fields (a typo is a 400, not ignored).
    for name in ("EnrollRequest", "RenewRequest", "RevokeRequest", "TokenSpec"):
        assert document["components"]["schemas"][name]["additionalProperties"] is False


def test_every_exit_code_has_an_http_status() -> None:
    assert set(STATUS_BY_EXIT) == set(ExitCode) - {ExitCode.OK}
    assert STATUS_BY_EXIT[ExitCode.POLICY_DENIED] == 403
    assert STATUS_BY_EXIT[ExitCode.STORAGE] == 503


def test_rate_limiter_bucket() -> None:
    limiter = RateLimiter(Rate.parse("2/m"), max_keys=2)
    assert limiter.retry_after("a", now=0.0) == 0
    assert limiter.retry_after("a", now=0.0) == 0
    assert limiter.retry_after("a", now=0.0) == 30  # one request refills every 30 s
    assert limiter.retry_after("a", now=30.0) == 0
    assert limiter.retry_after("b", now=0.0) == 0  # keys are independent
    limiter.retry_after("c", now=0.0)  # evicts the least recently used ("a")
    assert limiter.retry_after("a", now=30.0) == 0
    assert RateLimiter(Rate.parse("0/s")).retry_after("x") == 0
