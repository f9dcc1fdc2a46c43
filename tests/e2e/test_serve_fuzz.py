"""Schemathesis (pinned in the test extra) against ``/openapi.json`` of a real server: no 5xx,
every status, content type and body as documented. One bounded run: at most 20 examples
per operation, an admin client certificate presented (so admin routes are reached), rate
limits off (a 429 is documented, but would hide the handlers)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import Hierarchy, tool
from tests.serve_clients import issue_offline
from tests.server_process import start_server


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = fresh_hierarchy
    admin = issue_offline(ca.home, ca.inter_pass, tmp_path / "admin", "admin", "--cn", "fuzzer")
    with start_server(
        ca.home, ca.inter_pass, "--identity-rate", "0/m", "--token-rate", "0/m"
    ) as server:
        done = subprocess.run(
            [
                tool("st"), "run", server.url + "/openapi.json",
                "--tls-verify", str(server.root_pem),
                "--request-cert", str(admin / "fullchain.pem"),
                "--request-cert-key", str(admin / "key.pem"),
                "--checks", "not_a_server_error,status_code_conformance,"
                "content_type_conformance,response_schema_conformance",
                "--phases", "examples,coverage,fuzzing",
                # The OCSP POST body is DER (application/ocsp-request), which schemathesis
                # cannot generate; the openssl ocsp tests cover that route.
                "--exclude-operation-id", "ocspPost",
                "--max-examples", "20", "--seed", "20261207", "--no-shrink",
                "--request-timeout", "20", "--workers", "1",
            ],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert server.process.poll() is None, "the server died under fuzzing"
    failures = done.stdout.split("= FAILURES =", 1)[-1].split("= WARNINGS =", 1)[0]
    assert done.returncode == 0, failures[:3000] + done.stdout[-1500:]
    assert "Tested: 13" in done.stdout, done.stdout[-3000:]
