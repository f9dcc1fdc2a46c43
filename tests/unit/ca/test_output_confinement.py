"""Batch output confinement on a real file system: path syntax, links, collisions, writes."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

import pytest

from cyphrs_cli.ca.delivery import (
    PemBundle,
    check_confined_outputs,
    confine_output,
    output_key,
    relative_output_path,
    write_confined,
)
from cyphrs_cli.errors import ConflictError, InvalidInputError, StorageError

BUNDLE = PemBundle(certificate="CERT\n", chain="CHAIN\n", root="ROOT\n", private_key="KEY\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a", "a"), ("a/b", "a/b"), ("./a//b/", "a/b"), ("é-ü", "é-ü"), ("a b", "a b")],
)
def test_relative_paths_below_out_dir_are_accepted(text: str, expected: str) -> None:
    assert relative_output_path(text) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "text",
    [
        "/abs",
        "//abs",
        "..",
        "../x",
        "a/..",
        "a/../b",
        "a/../../x",
        "",
        ".",
        "./",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "a\x1b]0;title\x07",
        "x" * 256,
        "\ud800",
        "evil\u202egp.pem",
        "a\u2028b",
        "a\u200bb",
        "x/cert.pem",
        "KEY.PEM/x",
        ".hidden",
        "a/.cert.pem.0123456789ab.tmp",
    ],
)
def test_escaping_or_unwritable_paths_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        relative_output_path(text)


def test_output_keys_collide_as_case_folding_and_normalising_file_systems_would() -> None:
    nfc = unicodedata.normalize("NFC", "Ä")
    nfd = unicodedata.normalize("NFD", "Ä")
    assert nfc != nfd
    assert output_key(PurePosixPath(nfc)) == output_key(PurePosixPath(nfd))
    assert output_key(PurePosixPath("Team/A")) == output_key(PurePosixPath("team/a"))
    assert output_key(PurePosixPath("a/b")) != output_key(PurePosixPath("a/c"))


def test_confine_resolves_below_the_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert confine_output(out, PurePosixPath("a/b")) == out.resolve() / "a" / "b"
    (out / "a").mkdir(parents=True)
    assert confine_output(out, PurePosixPath("a/b")) == out.resolve() / "a" / "b"


def test_an_out_dir_that_is_itself_a_link_is_the_operators_choice(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    assert confine_output(tmp_path / "via", PurePosixPath("x")) == real.resolve() / "x"


@pytest.mark.parametrize("points_inside", [False, True])
@pytest.mark.parametrize("relative", ["link", "link/x", "link/x/y"])
def test_any_link_below_the_out_dir_is_refused(
    tmp_path: Path, relative: str, points_inside: bool
) -> None:
    out = tmp_path / "out"
    (out / "inside").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(out / "inside" if points_inside else elsewhere)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        confine_output(out, PurePosixPath(relative))


def test_a_file_in_the_way_is_a_conflict(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("x")
    with pytest.raises(ConflictError):
        confine_output(out, PurePosixPath("a/b"))
    with pytest.raises(ConflictError):
        confine_output(out / "a", PurePosixPath("b"))


def test_an_over_long_resolved_path_is_refused(tmp_path: Path) -> None:
    deep = "/".join(["d" * 250] * 17)
    with pytest.raises(InvalidInputError, match="too long"):
        confine_output(tmp_path, PurePosixPath(deep))


def test_existing_outputs_need_force_and_never_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "item"
    target.mkdir()
    check_confined_outputs(target, with_key=True, force=False)
    (target / "key.pem").symlink_to(tmp_path / "dangling")
    with pytest.raises(ConflictError):
        check_confined_outputs(target, with_key=True, force=False)
    check_confined_outputs(target, with_key=False, force=False)  # key.pem not written
    check_confined_outputs(target, with_key=True, force=True)
    (target / "cert.pem").mkdir()
    with pytest.raises(ConflictError, match="not a regular file"):
        check_confined_outputs(target, with_key=True, force=True)


def test_write_confined_writes_private_dirs_and_modes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = write_confined(out, PurePosixPath("team/a"), BUNDLE, force=False)
    target = out / "team" / "a"
    assert files["private_key"] == str(target / "key.pem")
    assert (target / "fullchain.pem").read_text() == "CERT\nCHAIN\n"
    assert (target / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (target / "cert.pem").stat().st_mode & 0o777 == 0o644
    assert (out / "team").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in target.iterdir()) == [
        "ca.pem",
        "cert.pem",
        "chain.pem",
        "fullchain.pem",
        "key.pem",
    ]


def test_write_confined_never_follows_a_link_planted_after_the_check(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "team").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="symbolic link"):
        write_confined(out, PurePosixPath("team/a"), BUNDLE, force=True)
    assert list(elsewhere.iterdir()) == []


def test_write_confined_without_force_never_replaces(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "cert.pem").write_text("theirs")
    with pytest.raises(StorageError, match="appeared after the check"):
        write_confined(out, PurePosixPath("a"), BUNDLE, force=False)
    assert (out / "a" / "cert.pem").read_text() == "theirs"
    assert not [p for p in (out / "a").iterdir() if p.name.endswith(".tmp")]


def test_write_confined_with_force_replaces_a_linked_file_not_its_target(tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.pem"
    victim.write_text("precious")
    (out / "a").mkdir(parents=True)
    (out / "a" / "key.pem").symlink_to(victim)
    write_confined(out, PurePosixPath("a"), BUNDLE, force=True)
    assert victim.read_text() == "precious"
    assert not (out / "a" / "key.pem").is_symlink()
    assert (out / "a" / "key.pem").read_text() == "KEY\n"


def test_write_confined_reports_a_file_in_the_way_as_storage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        write_confined(out, PurePosixPath("a/b"), BUNDLE, force=True)
    assert os.listdir(out) == ["a"]
