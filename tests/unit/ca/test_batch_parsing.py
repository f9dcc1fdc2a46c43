"""Batch files (JSON Lines or TOML) are parsed and checked as a whole before anything is issued."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyphrs_cli.ca.batch import parse_batch
from cyphrs_cli.errors import InvalidInputError


def _parse(text: str | bytes, base: Path, profile: str | None = "agent") -> list:  # type: ignore[type-arg]
    data = text.encode() if isinstance(text, str) else text
    return parse_batch(data, source="b.jsonl", default_profile=profile, base_dir=base)


def _refused(text: str | bytes, base: Path, profile: str | None = "agent") -> str:
    with pytest.raises(InvalidInputError) as caught:
        _parse(text, base, profile)
    return caught.value.message


def test_json_lines_items_in_order(tmp_path: Path) -> None:
    items = _parse(
        '{"workflow": "a", "permissions": ["q:r"], "ttl": "1h"}\n'
        "\n"
        '{"profile": "server", "name": "api", "dns": ["api.x"], "ip": ["10.0.0.1"], "cn": "api"}\n',
        tmp_path,
    )
    assert [i.index for i in items] == [1, 2]
    first, second = items
    assert first.name == "00001" and first.out_dir is None
    assert first.order.profile == "agent" and first.order.workflow == "a"
    assert first.order.permissions == ("q:r",) and first.order.ttl == "1h"
    assert first.order.csr_pem is None and first.order.dns_names == ()
    assert second.name == "api" and second.order.profile == "server"
    assert second.order.dns_names == ("api.x",) and second.order.ip_addresses == ("10.0.0.1",)
    assert second.order.common_name == "api"


def test_toml_certificate_tables(tmp_path: Path) -> None:
    items = _parse(
        '[[certificate]]\nworkflow = "a"\ninstance = "i1"\nrequester = "ci"\n'
        '[[certificate]]\nprofile = "client"\ncn = "deployer"\nkey_type = "p384"\n',
        tmp_path,
    )
    assert [(i.index, i.name, i.order.profile) for i in items] == [
        (1, "00001", "agent"),
        (2, "00002", "client"),
    ]
    assert items[0].order.instance == "i1" and items[0].order.requester == "ci"
    assert items[1].order.key_type == "p384"


def test_csr_paths_are_read_relative_to_the_batch_file(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "a.csr").write_bytes(b"PEM BYTES")
    (item,) = _parse('{"csr": "reqs/a.csr"}\n', tmp_path)
    assert item.order.csr_pem == b"PEM BYTES"
    assert item.order.csr_source == "b.jsonl: item 1 CSR"


def test_missing_csr_names_the_item(tmp_path: Path) -> None:
    message = _refused('{"workflow": "a"}\n{"csr": "nope.csr"}\n', tmp_path)
    assert message.startswith("b.jsonl: item 2: cannot read CSR")


def test_profile_from_the_command_line_or_the_item(tmp_path: Path) -> None:
    assert _parse('{"profile": "client", "cn": "x"}\n', tmp_path, None)[0].order.profile == (
        "client"
    )
    message = _refused('{"cn": "x"}\n', tmp_path, None)
    assert message == "b.jsonl: item 1: no profile (set it per item or on the command line)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "b.jsonl: the batch is empty"),
        ("\n\n", "b.jsonl: the batch is empty"),
        ('{"workflow": "a"}\nnot json\n', "b.jsonl: line 2 is not JSON"),
        ('{"workflow": "a"}\n["list"]\n', "b.jsonl: line 2 is not a JSON object"),
        ('{"workflow": "a", "colour": "blue"}\n', "b.jsonl: item 1: unknown field(s) colour"),
        ('{"ttl": 3600}\n', "b.jsonl: item 1: ttl must be a string"),
        ('{"workflow": ["a"]}\n', "b.jsonl: item 1: workflow must be a string"),
        ('{"dns": "a.x"}\n', "b.jsonl: item 1: dns must be a list of strings"),
        ('{"permissions": [1]}\n', "b.jsonl: item 1: permissions must be a list of strings"),
        ('{"name": "a/b"}\n', "b.jsonl: item 1: name 'a/b' must be one non-empty name without '/'"),
        ('{"name": ".."}\n', "b.jsonl: item 1: name '..' must be one non-empty name without '/'"),
        ('{"name": "x"}\n{"name": "x"}\n', "b.jsonl: item 2: name 'x' is already used by item 1"),
        ('{"name": "00002"}\n{"workflow": "b"}\n', "b.jsonl: item 2: name '00002' is already used by item 1"),
        ("title = 'x'\n", "b.jsonl: a TOML batch lists [[certificate]] tables"),
        ("[[certificate\n", "b.jsonl: neither JSON Lines nor TOML"),
    ],
)
def test_malformed_batches_name_the_line_or_item(tmp_path: Path, text: str, message: str) -> None:
    assert _refused(text, tmp_path).startswith(message)


def test_non_utf8_is_refused(tmp_path: Path) -> None:
    assert _refused(b'{"workflow": "\xff"}\n', tmp_path) == "b.jsonl: not UTF-8 text"


def test_item_limit(tmp_path: Path) -> None:
    from cyphrs_cli.ca import batch

    assert batch.MAX_ITEMS == 100_000
    many = '{"workflow": "a"}\n' * (batch.MAX_ITEMS + 1)
    assert _refused(many, tmp_path).startswith("b.jsonl: more than 100000 items")
