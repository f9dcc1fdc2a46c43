"""The SPIFFE-ID recipes of docs/recipes/ (Python ``ssl`` alone and with cyphrs'
``check_peer``, Node ``tls``, Go ``crypto/tls``), each run exactly as shipped as a real
server process on 127.0.0.1, against agent certificates issued by the CLI, a ``trust-bundle`` and a ``crl --all`` bundle: the allowed
agent is admitted, a revoked agent is refused on the CRL, and a valid agent with another
SPIFFE ID is refused on the ID check. Each refusal must show on the server's log with its
reason, so a recipe that skipped the CRL or the ID check would fail here."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers import Hierarchy, build_hierarchy, cli
from tests.processes import free_port, wait_for_port

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"


@dataclass(frozen=True)
class Deployment:
    hierarchy: Hierarchy
    server: Path  # fullchain.pem and key.pem of the service
    trust: Path  # cyphrs trust-bundle
    crls: Path  # cyphrs crl --all
    agents: dict[str, Path]  # allowed, revoked, intruder -> their --out-dir

    def spiffe_id(self, agent: str) -> str:
        cert = x509.load_pem_x509_certificate((self.agents[agent] / "cert.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (uri,) = sans.get_values_for_type(x509.UniformResourceIdentifier)
        return str(uri)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    base = tmp_path_factory.mktemp("recipes")
    h = build_hierarchy(base)
    home = ("--home", str(h.home))
    agents = {}
    for name in ("allowed", "revoked", "intruder"):
        agents[name] = base / name
        done = h.issue("agent", "--workflow", name, "--out-dir", str(agents[name]))
        assert done.exit_code == 0, done.stderr
    server = base / "server"
    assert h.issue("server", "--dns", "localhost", "--out-dir", str(server)).exit_code == 0
    revoked = cli(
        "revoke", str(agents["revoked"] / "cert.pem"), "--reason", "key-compromise", *home
    )
    assert revoked.exit_code == 0, revoked.stderr
    for issuer, secret in (("test-inter", h.inter_pass), ("test-root", h.root_pass)):
        published = cli("crl", "--issuer", issuer, "--passphrase-file", str(secret), *home)
        assert published.exit_code == 0, published.stderr
    trust, crls = base / "ca.pem", base / "crls.pem"
    assert cli("trust-bundle", "--out", str(trust), *home).exit_code == 0
    assert cli("crl", "--all", "--out", str(crls), *home).exit_code == 0
    return Deployment(h, server, trust, crls, agents)


def _command(recipe: str, tmp: Path) -> list[str]:
    if recipe == "python":
        return [sys.executable, str(RECIPES / "spiffe_server.py")]
    if recipe == "python-cyphrs":
        return [sys.executable, str(RECIPES / "spiffe_server_cyphrs.py")]
    if recipe == "node":
        node = shutil.which("node")
        if node is None:
            pytest.skip("node is not installed (scripts/test installs nodejs)")
        return [node, str(RECIPES / "spiffe_server.mjs")]
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (scripts/test installs golang-go)")
    binary = tmp / "spiffe-server"
    env = dict(os.environ)
    if "HOME" not in env and "XDG_CACHE_HOME" not in env:  # go needs a cache and a GOPATH
        env.setdefault("GOCACHE", str(tmp / "gocache"))
        env.setdefault("GOPATH", str(tmp / "gopath"))
    built = subprocess.run(
        [go, "build", "-o", str(binary), str(RECIPES / "go" / "main.go")],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return [str(binary)]


@pytest.fixture(params=["python", "python-cyphrs", "node", "go"])
def start_recipe(
    request: pytest.FixtureRequest, deployment: Deployment, tmp_path: Path
) -> Iterator[Callable[[Path], tuple[int, Path]]]:
    """Starts the recipe with a CRL file on a free loopback port (its port and log);
    every process started here is stopped by its PID afterwards."""
    command = _command(str(request.param), tmp_path)
    processes: list[subprocess.Popen[bytes]] = []

    def start(crls: Path) -> tuple[int, Path]:
        port = free_port()
        log = tmp_path / f"server{len(processes)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*command, str(deployment.server / "fullchain.pem"),
                 str(deployment.server / "key.pem"), str(deployment.trust), str(crls), str(port),
                 deployment.spiffe_id("allowed")],
                stdout=subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        processes.append(process)
        wait_for_port(port, process, seconds=30)
        return port, log

    try:
        yield start
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def _connect(port: int, agent: Path, deployment: Deployment) -> str:
    """What the service says to this agent: its line, or the TLS error that ended it."""
    context = ssl.create_default_context(cafile=str(deployment.trust))
    context.load_cert_chain(str(agent / "fullchain.pem"), str(agent / "key.pem"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.recv(4096).decode()
    except (ssl.SSLError, OSError) as error:
        return f"error: {error}"


def _log_after(log: Path, line: str, seconds: float = 10) -> str:
    """The server's log once it holds ``line``, case-insensitively (the server logs after the
    client sees it, and a readiness probe may already have logged an unrelated refusal)."""
    import time

    deadline = time.monotonic() + seconds
    while line.lower() not in (text := log.read_text()).lower() and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def test_recipe_admits_only_the_allowed_unrevoked_agent(
    start_recipe: Callable[[Path], tuple[int, Path]], deployment: Deployment
) -> None:
    port, log = start_recipe(deployment.crls)
    allowed = deployment.spiffe_id("allowed")
    assert _connect(port, deployment.agents["allowed"], deployment) == f"ok {allowed}\n"
    # Revoked (a valid chain, the allowed workflow's profile) -- refused on the CRL.
    answer = _connect(port, deployment.agents["revoked"], deployment)
    assert not answer.startswith("ok"), answer
    assert "revoked" in _log_after(log, "revoked").lower()
    # A valid, unrevoked agent of this CA with another SPIFFE ID: refused on the ID check.
    intruder = deployment.spiffe_id("intruder")
    answer = _connect(port, deployment.agents["intruder"], deployment)
    assert not answer.startswith("ok"), answer
    refusal = [line for line in _log_after(log, intruder).splitlines() if intruder in line]
    assert refusal and "not allowed" in refusal[0], refusal
    # And the service is still up for the allowed agent afterwards.
    assert _connect(port, deployment.agents["allowed"], deployment) == f"ok {allowed}\n"


def test_recipe_refuses_everyone_without_the_roots_crl(
    start_recipe: Callable[[Path], tuple[int, Path]], deployment: Deployment
) -> None:
    """Only the issuing CA's CRL deployed (the classic mistake): a recipe that checked only
    the leaf's issuer would admit the allowed agent; each recipe checks the whole chain."""
    partial = deployment.hierarchy.home / "crls" / "test-inter.crl.pem"
    port, log = start_recipe(partial)
    answer = _connect(port, deployment.agents["allowed"], deployment)
    assert not answer.startswith("ok"), answer
    assert "crl" in _log_after(log, "crl").lower()
