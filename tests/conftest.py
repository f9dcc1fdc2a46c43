"""Session fixtures: one CA hierarchy per key type, built once through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Hierarchy, build_hierarchy

KEY_TYPES = ["p256", "p384", "rsa3072", "ed25519"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read the developer's real CA home or prompt on a terminal."""
    monkeypatch.delenv("CYPHRS_HOME", raising=False)
    monkeypatch.delenv("CYPHRS_TEST_FAULT", raising=False)
    monkeypatch.delenv("CYPHRS_TEST_DELAY", raising=False)
    monkeypatch.delenv("CYPHRS_TEST_NOW", raising=False)
    monkeypatch.delenv("CYPHRS_ALLOW_INSECURE_HOME", raising=False)
    monkeypatch.setenv("CI", "true")


@pytest.fixture(scope="session")
def hierarchies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Hierarchy]:
    """Built lazily per key type by ``hierarchy``; cached for the session."""
    return {}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hierarchies")


@pytest.fixture(params=KEY_TYPES)
def any_hierarchy(
    request: pytest.FixtureRequest, hierarchies: dict[str, Hierarchy], session_dir: Path
) -> Hierarchy:
    key_type: str = request.param
    if key_type not in hierarchies:
        hierarchies[key_type] = build_hierarchy(session_dir / key_type, key_type)
    return hierarchies[key_type]


@pytest.fixture
def hierarchy(hierarchies: dict[str, Hierarchy], session_dir: Path) -> Hierarchy:
    """The P-256 hierarchy most tests share (read-mostly: tests only add certificates)."""
    if "p256" not in hierarchies:
        hierarchies["p256"] = build_hierarchy(session_dir / "p256", "p256")
    return hierarchies["p256"]


@pytest.fixture
def fresh_hierarchy(tmp_path: Path) -> Hierarchy:
    """A private hierarchy for tests that tamper with or count the ledger."""
    return build_hierarchy(tmp_path, "p256")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print the random-order seed last as well: ``-q`` hides pytest-randomly's header line."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(
            f"random order seed {seed}: replay with pytest -p randomly --randomly-seed={seed}"
        )
