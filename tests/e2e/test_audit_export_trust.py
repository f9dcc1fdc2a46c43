"""Exports of a tampered ledger are refused or marked-and-rejected; ``verify-export``
needs an anchor and says which one it used; malformed bundles are invalid input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.e2e.audit_attacks import connect
from tests.e2e.test_audit import busy  # noqa: F401 - shared fixture
from tests.helpers import Hierarchy, run_cyphrs


def _run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return run_cyphrs(*[str(a) for a in args])


def _export(h: Hierarchy, out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return _run(
        "audit-export", "--out", out, "--since", "2000-01-01", "--home", h.home,
        "--passphrase-file", h.inter_pass, *extra,
    )  # fmt: skip


@pytest.fixture
def bundle(busy: Hierarchy, tmp_path: Path) -> Path:  # noqa: F811
    out = tmp_path / "bundle"
    made = _export(busy, out, "--archive")
    assert made.returncode == 0, made.stderr
    return out


def test_export_of_a_tampered_ledger_is_refused(busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    conn = connect(busy.home / "ledger.sqlite3")
    conn.execute("UPDATE certificates SET status = 'valid' WHERE status = 'revoked'")
    conn.close()
    out = tmp_path / "bundle"
    refused = _export(busy, out)
    assert refused.returncode == ExitCode.STORAGE, refused.stderr
    assert b"the ledger does not verify, nothing exported" in refused.stderr
    assert not out.exists() or not any(out.iterdir())

    marked = _export(busy, out, "--allow-unverified", "--archive")
    assert marked.returncode == 0, marked.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ledger_verified"] is False and manifest["ledger_problems"]
    archive = out.with_name("bundle.tar.gz")
    for target in (out, archive):
        for anchor in (("--root", str(busy.root_cert)), ("--trust-bundle-root",)):
            result = _run("audit", "verify-export", target, *anchor)
            assert result.returncode == ExitCode.CHECK_NOT_MET, result.stdout
            assert b"exported from a ledger that did not verify" in result.stderr


def test_verify_export_needs_an_anchor_and_names_it(bundle: Path, busy: Hierarchy) -> None:  # noqa: F811
    none = _run("audit", "verify-export", bundle)
    assert none.returncode == ExitCode.USAGE
    assert b"needs a trust anchor" in none.stderr

    pinned = _run("audit", "verify-export", bundle, "--root", busy.root_cert, "--json")
    assert pinned.returncode == 0, pinned.stdout
    assert_valid(json.loads(pinned.stdout))
    anchor = json.loads(pinned.stdout)["anchor"]
    assert anchor["source"] == f"--root {busy.root_cert}"
    assert anchor["fingerprint"].startswith("sha256:")

    by_fp = _run("audit", "verify-export", bundle, "--root-fingerprint", anchor["fingerprint"])
    assert by_fp.returncode == 0 and b"Trust anchor: sha256:" in by_fp.stdout

    self_trust = _run("audit", "verify-export", bundle, "--trust-bundle-root", "--json")
    assert self_trust.returncode == 0
    assert_valid(json.loads(self_trust.stdout))
    assert json.loads(self_trust.stdout)["anchor"]["source"].startswith("bundle root (self-trusted")
    human = _run("audit", "verify-export", bundle, "--trust-bundle-root")
    assert b"self-trusted" in human.stdout and b"self-consistent" in human.stderr

    both = _run("audit", "verify-export", bundle, "--trust-bundle-root", "--root", busy.root_cert)
    assert both.returncode == ExitCode.USAGE


def test_bundle_pinned_to_a_foreign_fingerprint_fails(bundle: Path) -> None:
    result = _run("audit", "verify-export", bundle, "--root-fingerprint", "sha256:" + "cd" * 32)
    assert result.returncode == ExitCode.CHECK_NOT_MET
    assert b"pinned fingerprint" in result.stderr


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def _manifest(bundle: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((bundle / "manifest.json").read_text())
    return value


@pytest.mark.parametrize(
    "damage",
    [
        "missing-manifest",
        "missing-signature",
        "missing-listed-file",
        "manifest-not-json",
        "manifest-nested-too-deep",
        "manifest-is-a-list",
        "files-not-a-dict",
        "file-entry-wrong-type",
        "manifest-path-traversal",
        "manifest-absolute-path",
        "ledger-verified-missing",
        "signature-field-wrong-type",
        "checkpoint-not-an-object",
        "signer-certificate-garbage",
    ],
)
def test_malformed_bundle_directories_are_invalid_input(
    bundle: Path,
    busy: Hierarchy,  # noqa: F811
    damage: str,
) -> None:
    manifest = _manifest(bundle)
    files = manifest["files"]
    assert isinstance(files, dict)
    if damage == "missing-manifest":
        (bundle / "manifest.json").unlink()
    elif damage == "missing-signature":
        (bundle / "signature.json").unlink()
    elif damage == "missing-listed-file":
        (bundle / "certificates.csv").unlink()
    elif damage == "manifest-nested-too-deep":
        # Deeper than the JSON parser's recursion limit: hostile input, not a crash.
        (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "manifest-not-json":
        (bundle / "manifest.json").write_text("{not json")
    elif damage == "manifest-is-a-list":
        _write_json(bundle / "manifest.json", [1, 2])
    elif damage == "files-not-a-dict":
        _write_json(bundle / "manifest.json", {**manifest, "files": ["a"]})
    elif damage == "file-entry-wrong-type":
        files["keys.csv"] = {"sha256": 5, "bytes": "12"}
        _write_json(bundle / "manifest.json", manifest)
    elif damage == "manifest-path-traversal":
        files["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
        _write_json(bundle / "manifest.json", manifest)
    elif damage == "manifest-absolute-path":
        files["/etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
        _write_json(bundle / "manifest.json", manifest)
    elif damage == "ledger-verified-missing":
        del manifest["ledger_verified"]
        _write_json(bundle / "manifest.json", manifest)
    elif damage == "signature-field-wrong-type":
        signature = json.loads((bundle / "signature.json").read_text())
        signature["signature"] = 12
        _write_json(bundle / "signature.json", signature)
    elif damage == "checkpoint-not-an-object":
        _write_json(bundle / "checkpoint.json", "x")
    elif damage == "signer-certificate-garbage":
        signature = json.loads((bundle / "signature.json").read_text())
        signature["certificate"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        _write_json(bundle / "signature.json", signature)
    for anchor in (("--root", str(busy.root_cert)), ("--trust-bundle-root",)):
        result = _run("audit", "verify-export", bundle, *anchor)
        assert result.returncode == ExitCode.INVALID_INPUT, (damage, result.stderr)
        assert b"Traceback" not in result.stderr
        assert result.stderr.count(b"\n") == 1


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


@pytest.mark.parametrize(
    "members",
    [
        [_file("b/manifest.json"), _file("b/../../escaped.txt")],
        [_file("../escaped/manifest.json")],
        [_file("/tmp/cyphrs-escaped/manifest.json")],
        [_file("b/manifest.json"), _link("b/evil", "/etc/passwd", tarfile.SYMTYPE)],
        [_file("b/manifest.json"), _link("b/hard", "/etc/passwd", tarfile.LNKTYPE)],
        [_file("b/manifest.json"), _link("b/fifo", "", tarfile.FIFOTYPE)],
        [_file("one/manifest.json"), _file("two/manifest.json")],
        [],
    ],
    ids=["dotdot", "top-dotdot", "absolute", "symlink", "hardlink", "fifo", "two-tops", "empty"],
)
def test_hostile_archives_are_invalid_input(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    archive = tmp_path / "hostile.tar.gz"
    _tar(archive, members)
    result = _run("audit", "verify-export", archive, "--trust-bundle-root")
    assert result.returncode == ExitCode.INVALID_INPUT, result.stderr
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/cyphrs-escaped").exists()


def test_truncated_and_garbage_archives_are_invalid_input(bundle: Path, tmp_path: Path) -> None:
    archive = bundle.with_name("bundle.tar.gz")
    data = archive.read_bytes()
    for name, content in (
        ("truncated.tar.gz", data[: len(data) // 2]),
        ("tiny.tar.gz", data[:20]),
        ("garbage.tar.gz", b"\x1f\x8b" + b"x" * 200),
        ("plain.tar.gz", b"not an archive at all"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        result = _run("audit", "verify-export", path, "--trust-bundle-root")
        assert result.returncode == ExitCode.INVALID_INPUT, (name, result.stderr)
        assert b"Traceback" not in result.stderr


def test_intact_archive_still_verifies(bundle: Path, busy: Hierarchy, tmp_path: Path) -> None:  # noqa: F811
    archive = bundle.with_name("bundle.tar.gz")
    copy = tmp_path / "copy.tar.gz"
    shutil.copy(archive, copy)
    result = _run("audit", "verify-export", copy, "--root", busy.root_cert)
    assert result.returncode == 0, result.stderr


def test_export_checks_checkpoints_against_a_given_anchor(
    busy: Hierarchy,  # noqa: F811
    tmp_path: Path,
) -> None:
    foreign = "sha256:" + "ef" * 32
    refused = _export(busy, tmp_path / "a", "--root-fingerprint", foreign)
    assert refused.returncode == ExitCode.STORAGE
    assert b"is not a CA recorded in this ledger" in refused.stderr
    made = _export(busy, tmp_path / "b", "--root", str(busy.root_cert))
    assert made.returncode == 0, made.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["checkpoint_signatures_verified"] is True
