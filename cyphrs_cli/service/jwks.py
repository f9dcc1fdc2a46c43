"""Fetching a provisioner's JWKS from its URL, defensively: the JWKS host is outside the
CA's control, and every fetch holds one of the server's worker threads.

``JwksFetcher`` is PyJWT's ``PyJWKClient`` (cache, refresh on an unknown ``kid`` with a
cool-down) with a fetch that
- never follows a redirect (the configured URL is the trust anchor, not where it points),
- reads at most ``JWKS_MAX_BYTES`` (a huge answer is refused, not buffered),
- gives up after ``JWKS_FETCH_TIMEOUT_S`` in total (a host that drips one byte per socket
  timeout cannot hold a worker for long),
- after a failed fetch, refuses at once for ``JWKS_RETRY_AFTER_FAILURE_S`` instead of
  asking the host again: a slow or dead JWKS host costs one worker for one timeout per
  interval, not one per JWT presented (a flood of JWTs would otherwise pin every worker).
Imported lazily (PyJWT is an optional dependency of the server extra).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from typing import Any

from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError

from cyphrs_cli.service.provisioners import JWKS_FETCH_TIMEOUT_S

JWKS_MAX_BYTES = 256 * 1024
JWKS_RETRY_AFTER_FAILURE_S = 10.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then an HTTPError: a failed fetch


class JwksFetcher(PyJWKClient):
    """One JWKS URL's keys (cached 5 minutes); see the module docstring."""

    def __init__(self, uri: str, *, timeout: float = JWKS_FETCH_TIMEOUT_S) -> None:
        super().__init__(uri, cache_keys=True, lifespan=300, timeout=timeout)
        self._total_timeout = timeout
        self._failed_at: float | None = None
        self._failure = ""

    def fetch_data(self) -> Any:
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < JWKS_RETRY_AFTER_FAILURE_S:
            raise PyJWKClientConnectionError(
                f"{self._failure} (not retried for {JWKS_RETRY_AFTER_FAILURE_S:.0f} s)"
            )
        try:
            document = self._fetch_bounded()
        except PyJWKClientConnectionError as exc:
            self._failed_at, self._failure = time.monotonic(), str(exc)[:200]
            raise
        self._failed_at = None
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(document)
        self._last_successful_fetch = time.monotonic()
        return document

    def _fetch_bounded(self) -> Any:
        deadline = time.monotonic() + self._total_timeout
        handlers: list[Any] = [_NoRedirect()]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        opener = urllib.request.build_opener(*handlers)
        if not self.uri.lower().startswith(("https://", "http://")):  # never file:, ftp:
            raise PyJWKClientConnectionError("the JWKS URL is not http(s)")
        request = urllib.request.Request(url=self.uri, headers=self.headers)  # noqa: S310
        body = bytearray()
        try:
            with opener.open(request, timeout=self._total_timeout) as response:
                while chunk := response.read(16 * 1024):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise PyJWKClientConnectionError(
                            f"the JWKS is larger than {JWKS_MAX_BYTES} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise PyJWKClientConnectionError(
                            f"the JWKS took over {self._total_timeout:.0f} s to arrive"
                        )
            return json.loads(bytes(body))
        except PyJWKClientConnectionError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise PyJWKClientConnectionError(f"fetch failed: {type(exc).__name__}") from exc


__all__ = ["JWKS_FETCH_TIMEOUT_S", "JWKS_MAX_BYTES", "JwksFetcher"]
