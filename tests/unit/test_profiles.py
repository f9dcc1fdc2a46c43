"""Profile TOML loading: built-ins, home profiles, and every field check naming file and field."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.errors import InvalidInputError, NotFoundError
from cyphrs_cli.profiles.model import get_profile, load_profiles, profile_from_toml

MINIMAL = """
extended_key_usage = ["clientAuth"]
default_ttl = "1h"
min_ttl = "1m"
max_ttl = "2h"
"""


def _data(text: str = MINIMAL, **extra: Any) -> dict[str, Any]:
    data = tomllib.loads(text)
    data.update(extra)
    return data


def test_builtins_load_with_their_documented_limits() -> None:
    profiles = load_profiles(None)
    assert sorted(profiles) == ["admin", "agent", "client", "ocsp-responder", "server"]
    agent = profiles["agent"]
    assert agent.source == "builtin"
    assert agent.spiffe == "required" and agent.dns == "forbidden" and agent.ip == "forbidden"
    assert agent.default_ttl == timedelta(hours=4) and agent.max_ttl == timedelta(hours=24)
    assert agent.min_ttl == timedelta(minutes=1)
    assert set(agent.extended_key_usage) == {"clientAuth", "serverAuth"}
    for profile in profiles.values():
        assert profile.min_ttl <= profile.default_ttl <= profile.max_ttl
        assert "digitalSignature" in profile.key_usage


def test_minimal_profile_gets_safe_defaults() -> None:
    profile = profile_from_toml("mine", _data(), source="test")
    assert profile.name == "mine" and profile.source == "test" and profile.description == ""
    assert profile.default_ttl == timedelta(hours=1)
    assert (profile.spiffe, profile.dns, profile.ip) == ("forbidden",) * 3
    assert profile.key_types == ("p256", "p384")
    assert profile.key_usage == ("digitalSignature",)
    assert profile.require_one_of == () and profile.require_common_name is False
    assert profile.dns_patterns == profile.ip_ranges == profile.trust_domains == ()
    assert profile.spiffe_path_patterns == profile.issuers == ()


def test_every_field_is_read() -> None:
    text = (
        MINIMAL
        + """
description = "payments agents"
key_types = ["ed25519"]
key_usage = ["digitalSignature", "keyAgreement"]
issuers = ["payments-ca"]
[names]
spiffe = "required"
dns = "optional"
ip = "optional"
require_one_of = ["dns", "ip"]
require_common_name = true
dns_patterns = ["*.pay.internal"]
ip_ranges = ["10.0.0.0/8"]
trust_domains = ["pay.internal"]
spiffe_path_patterns = ["/agent/*"]
"""
    )
    profile = profile_from_toml("pay", tomllib.loads(text), source="t")
    assert profile.description == "payments agents"
    assert profile.key_types == ("ed25519",)
    assert profile.key_usage == ("digitalSignature", "keyAgreement")
    assert profile.issuers == ("payments-ca",)
    assert (profile.spiffe, profile.dns, profile.ip) == ("required", "optional", "optional")
    assert profile.require_one_of == ("dns", "ip") and profile.require_common_name is True
    assert profile.dns_patterns == ("*.pay.internal",)
    assert profile.ip_ranges == ("10.0.0.0/8",)
    assert profile.trust_domains == ("pay.internal",)
    assert profile.spiffe_path_patterns == ("/agent/*",)
    doc = profile.to_json()
    assert doc["names"]["require_one_of"] == ["dns", "ip"]
    assert doc["default_ttl_seconds"] == 3600 and doc["max_ttl_seconds"] == 7200
    assert doc["min_ttl_seconds"] == 60 and doc["source"] == "t"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_ttl": None}, "missing default_ttl"),
        ({"min_ttl": None}, "missing min_ttl"),
        ({"max_ttl": None}, "missing max_ttl"),
        ({"default_ttl": "soon"}, "invalid duration"),
        ({"default_ttl": "3h"}, "need min_ttl <= default_ttl <= max_ttl"),
        ({"min_ttl": "2h", "default_ttl": "1h"}, "need min_ttl <= default_ttl <= max_ttl"),
        ({"names": {"dns": "sometimes"}}, "names.dns must be one of"),
        ({"names": {"spiffe": "yes"}}, "names.spiffe must be one of"),
        ({"names": {"ip": "Required"}}, "names.ip must be one of"),
        ({"extended_key_usage": []}, "extended_key_usage must list at least one usage"),
        ({"extended_key_usage": ["anyUsage"]}, "unknown extended key usage"),
        ({"key_types": ["rsa1024"]}, "unknown key type"),
        ({"key_usage": ["keyAgreement"]}, "key_usage must include digitalSignature"),
        ({"key_usage": ["digitalSignature", "keyCertSign"]}, "key_usage must include"),
        ({"names": {"dns_patterns": "*.x"}}, "names.dns_patterns must be a list"),
        ({"names": {"ip_ranges": "10.0.0.0/8"}}, "names.ip_ranges must be a list"),
        ({"names": {"trust_domains": "x"}}, "names.trust_domains must be a list"),
        ({"names": {"spiffe_path_patterns": "/x"}}, "names.spiffe_path_patterns must be a list"),
        ({"names": {"ip_ranges": ["10.0.0.0/33"]}}, "'10.0.0.0/33' is not a network"),
        ({"names": {"ip_ranges": ["not-an-ip"]}}, "is not a network"),
    ],
)
def test_invalid_fields_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    data = _data()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(InvalidInputError) as caught:
        profile_from_toml("bad", data, source="/home/p/bad.toml")
    assert message in caught.value.message
    if "unknown" not in message:
        assert caught.value.message.startswith("profile 'bad' (/home/p/bad.toml): ")


def test_names_rules_accept_every_documented_value() -> None:
    for rule in ("required", "optional", "forbidden"):
        profile = profile_from_toml("r", _data(names={"dns": rule}), source="t")
        assert profile.dns == rule


@pytest.mark.parametrize("name", ["Upper", "-dash", "has space", "a/b", "", "x" * 64, "dot.ted"])
def test_invalid_profile_names(name: str) -> None:
    with pytest.raises(InvalidInputError, match="name must be lowercase"):
        profile_from_toml(name, _data(), source="t")


@pytest.mark.parametrize("name", ["a", "batch-worker", "web_2", "x" * 63, "0day"])
def test_valid_profile_names(name: str) -> None:
    assert profile_from_toml(name, _data(), source="t").name == name


def test_home_profiles_are_added_with_their_path_as_source(tmp_path: Path) -> None:
    (tmp_path / "batch-worker.toml").write_text(MINIMAL)
    (tmp_path / "notes.txt").write_text("not a profile")
    profiles = load_profiles(tmp_path)
    assert sorted(profiles) == ["admin", "agent", "batch-worker", "client", "ocsp-responder", "server"]
    assert profiles["batch-worker"].source == str(tmp_path / "batch-worker.toml")
    assert get_profile(tmp_path, "batch-worker").max_ttl == timedelta(hours=2)
    assert load_profiles(tmp_path / "missing") == load_profiles(None)


def test_broken_home_profile_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text("extended_key_usage = [")
    with pytest.raises(InvalidInputError) as caught:
        load_profiles(tmp_path)
    assert caught.value.message.startswith(
        f"profile 'web' ({tmp_path / 'web.toml'}): not valid TOML"
    )


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        get_profile(tmp_path, "nope")
    assert caught.value.message == "unknown profile 'nope'"
    assert caught.value.hint == "known profiles: admin, agent, client, ocsp-responder, server"
