"""Test support for ACME: a tiny loopback DNS server (dnspython wire format, real UDP) and
an ACME client built on jwcrypto for the refusal tests (real JWS, real HTTPS).

``LoopbackDns`` answers every A query with 127.0.0.1 (or what ``addresses`` maps), TXT
from ``txt`` (what dns-01 clients publish through lego's ``exec`` provider), and counts
queries. It runs on a thread of the test process, bound to 127.0.0.1 on a free port, and
is stopped by ``close``.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class LoopbackDns:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addresses: dict[str, str] = {}
        self.default_address = "127.0.0.1"
        self.txt: dict[str, list[str]] = {}
        self.txt_file: Path | None = None  # JSON {name: value}, written by a client's hook
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import dns.message
        import dns.rdatatype
        import dns.rrset

        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: S112 -- a garbled datagram: ignore it
                continue
            response = dns.message.make_response(query)
            for question in query.question:
                name = question.name.to_text().rstrip(".").lower()
                kind = dns.rdatatype.to_text(question.rdtype)
                self.queries.append((name, kind))
                if kind == "A":
                    value = self.addresses.get(name, self.default_address)
                    response.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A", value))
                elif kind == "TXT" and name in self._txt_records():
                    values = self._txt_records()[name]
                    response.answer.append(
                        dns.rrset.from_text_list(
                            question.name, 5, "IN", "TXT", [f'"{v}"' for v in values]
                        )
                    )
            self.sock.sendto(response.to_wire(), peer)

    def _txt_records(self) -> dict[str, list[str]]:
        records = dict(self.txt)
        if self.txt_file is not None and self.txt_file.exists():
            try:
                written = json.loads(self.txt_file.read_text())
            except ValueError:
                written = {}
            for name, value in written.items():
                records.setdefault(name.lower(), []).append(value)
        return records

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class AcmeClient:
    """A minimal RFC 8555 client (jwcrypto signatures) that can also misbehave on purpose."""

    directory_url: str
    ca_file: Path
    key: Any = None
    kid: str | None = None
    nonce: str | None = None
    directory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from jwcrypto import jwk

        if self.key is None:
            self.key = jwk.JWK.generate(kty="EC", crv="P-256")
        self.context = ssl.create_default_context(cafile=str(self.ca_file))
        self.directory = json.loads(self._http("GET", self.directory_url)[2])

    def _http(self, method: str, url: str, body: bytes | None = None,
              content_type: str = "application/jose+json") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(  # noqa: S310 -- https URLs of the test server
                request, context=self.context, timeout=20
            ) as response:
                status, headers, data = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, headers, data = error.code, dict(error.headers), error.read()
        if "Replay-Nonce" in headers:
            self.nonce = headers["Replay-Nonce"]
        return status, headers, data

    def fresh_nonce(self) -> str:
        self._http("HEAD", self.directory["newNonce"])
        assert self.nonce is not None
        return self.nonce

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.export_public(as_dict=True))

    def sign(self, url: str, payload: Any, *, nonce: str | None = None, use_jwk: bool = False,
             key: Any = None, url_header: str | None = None, alg: str = "ES256") -> bytes:
        from jwcrypto import jws

        key = key or self.key
        protected: dict[str, Any] = {"alg": alg, "url": url_header or url,
                                     "nonce": nonce or self.nonce or self.fresh_nonce()}
        if use_jwk or self.kid is None:
            protected["jwk"] = dict(key.export_public(as_dict=True))
        else:
            protected["kid"] = self.kid
        body = b"" if payload is None else json.dumps(payload).encode()
        token = jws.JWS(body)
        token.add_signature(key, alg, protected=json.dumps(protected))
        return token.serialize().encode()

    def post(self, url: str, payload: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, data = self._http("POST", url, self.sign(url, payload, **kwargs))
        try:
            document = json.loads(data) if data else None
        except ValueError:
            document = data
        return status, headers, document

    def eab(self, kid: str, hmac_key: str, url: str | None = None) -> dict[str, Any]:
        from jwcrypto import jwk, jws

        token = jws.JWS(json.dumps(self.public_jwk()).encode())
        token.add_signature(
            jwk.JWK(kty="oct", k=hmac_key), "HS256",
            protected=json.dumps({"alg": "HS256", "kid": kid,
                                  "url": url or self.directory["newAccount"]}),
        )
        return dict(json.loads(token.serialize()))

    def register(self, kid: str | None, hmac_key: str | None) -> tuple[int, dict[str, str], Any]:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if kid is not None and hmac_key is not None:
            payload["externalAccountBinding"] = self.eab(kid, hmac_key)
        status, headers, document = self.post(self.directory["newAccount"], payload,
                                              use_jwk=True)
        if status in (200, 201):
            self.kid = headers["Location"]
        return status, headers, document
