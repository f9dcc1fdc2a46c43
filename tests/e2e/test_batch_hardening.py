"""Batch issuance attacked: escaping and colliding outputs, late field errors, failed delivery.

Every test drives the real ``cyphrs`` executable in a subprocess. The promise under test:
one bad item refuses the whole batch before the first signature (nothing recorded, nothing
written), outputs stay below ``--out-dir`` and never collide, and a certificate recorded
but not delivered is explained in the ledger by a ``certificate.delivery_failed`` event.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyphrs_cli.errors import ExitCode
from tests.cli.test_json_contract import assert_valid
from tests.helpers import Hierarchy, build_hierarchy, openssl_csr, run_cyphrs, tool


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    """One hierarchy for the refusal tests: a refused batch must leave it untouched."""
    return build_hierarchy(tmp_path_factory.mktemp("batch-hardening"), "p256")


def _counts(h: Hierarchy) -> tuple[int, int]:
    return h.ledger_rows("certificates"), h.ledger_rows("events")


def _write_batch(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def _batch_args(h: Hierarchy, batch: Path, out: Path | None, *extra: str) -> list[str]:
    where = ["--out-dir", str(out)] if out is not None else []
    return [
        "issue",
        "agent",
        "--batch",
        str(batch),
        "--json",
        *where,
        *extra,
        "--home",
        str(h.home),
        "--passphrase-file",
        str(h.inter_pass),
    ]


def _refused(
    h: Hierarchy, tmp_path: Path, items: list[dict[str, object]], code: int = ExitCode.INVALID_INPUT
) -> str:
    """Run the batch; assert it exits ``code`` with nothing signed, recorded or written."""
    out = tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", items)
    before = _counts(h)
    proc = run_cyphrs(*_batch_args(h, batch, out))
    stderr = proc.stderr.decode()
    assert proc.returncode == code, stderr
    assert proc.stdout == b""
    assert _counts(h) == before
    assert not out.exists()
    return stderr


# --- output confinement -------------------------------------------------------------------


@pytest.mark.parametrize(
    "items",
    [
        [{"name": "a", "out_dir": "x"}, {"name": "b", "out_dir": "x"}],
        [{"name": "x"}, {"name": "b", "out_dir": "x"}],  # a default dir and an explicit one
        [{"name": "a", "out_dir": "x/"}, {"name": "b", "out_dir": "./x"}],
        [{"name": "a", "out_dir": "t/x"}, {"name": "b", "out_dir": "t//./x"}],
        [{"name": "a", "out_dir": "Team"}, {"name": "b", "out_dir": "team"}],  # case-folding FS
        [{"name": "Agent"}, {"name": "agent"}],
    ],
    ids=["same", "name-vs-out_dir", "slash-dot", "normalised", "case", "names-case"],
)
def test_two_items_writing_one_directory_are_refused_before_issuance(
    shared: Hierarchy, tmp_path: Path, items: list[dict[str, object]]
) -> None:
    full = [{"workflow": "wf", **item} for item in items]
    stderr = _refused(shared, tmp_path, full)
    assert "item 2" in stderr


@pytest.mark.parametrize(
    "out_dir",
    [
        "ABSOLUTE",
        "../x",
        "a/../../x",
        "a/../b",
        "..",
        "",
        ".",
        "a\x00b",
        "a\nb",
        "a\x1b[31mb",
        "x" * 256,
        "/".join(["y" * 200] * 25),
        "00001/cert.pem",  # a directory where item 1 writes its certificate
        "evil\u202egp",
    ],
    ids=[
        "absolute",
        "dotdot",
        "climb",
        "cancelling-dotdot",
        "parent",
        "empty",
        "itself",
        "nul",
        "newline",
        "escape",
        "long-component",
        "long-path",
        "output-file-name",
        "bidi-override",
    ],
)
def test_out_dir_that_could_escape_or_fail_late_is_refused(
    shared: Hierarchy, tmp_path: Path, out_dir: str
) -> None:
    escape = tmp_path / "abs-escape"
    if out_dir == "ABSOLUTE":
        out_dir = str(escape)
    stderr = _refused(
        shared,
        tmp_path,
        [{"workflow": "wf"}, {"workflow": "wf"}, {"workflow": "wf", "out_dir": out_dir}],
    )
    assert "item 3" in stderr
    assert not escape.exists()


@pytest.mark.parametrize("link_at", ["link", "link/inner"], ids=["item-dir", "parent-dir"])
def test_symlink_below_out_dir_is_refused(shared: Hierarchy, tmp_path: Path, link_at: str) -> None:
    """A link inside --out-dir pointing elsewhere must not carry a key out of it."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    batch = _write_batch(
        tmp_path / "b.jsonl",
        [{"workflow": "wf", "name": "ok"}, {"workflow": "wf", "out_dir": link_at}],
    )
    before = _counts(shared)
    proc = run_cyphrs(*_batch_args(shared, batch, out))
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert b"symbolic link" in proc.stderr
    assert _counts(shared) == before
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["link"]


@pytest.mark.parametrize(
    "name",
    ["a\x00b", "n" * 129, "é" * 128 + "x", "a/b", "..", "", "a\rb"],
    ids=["nul", "129-chars", "over-255-bytes", "slash", "dotdot", "empty", "cr"],
)
def test_bad_item_name_is_refused_before_recording(
    shared: Hierarchy, tmp_path: Path, name: str
) -> None:
    stderr = _refused(
        shared, tmp_path, [{"workflow": "wf"}, {"workflow": "wf"}, {"workflow": "wf", "name": name}]
    )
    assert "item 3" in stderr


def test_nul_in_any_field_is_refused_before_recording(shared: Hierarchy, tmp_path: Path) -> None:
    _refused(
        shared,
        tmp_path,
        [{"workflow": "wf"}, {"workflow": "wf", "requester": "bot\x00evil"}],
    )


def test_lone_surrogate_is_refused_before_recording(shared: Hierarchy, tmp_path: Path) -> None:
    """JSON can spell a lone surrogate; no UTF-8 writer or DER encoder can carry it."""
    out = tmp_path / "out"
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"workflow": "wf"}\n{"workflow": "wf", "requester": "bot\\ud800"}\n')
    before = _counts(shared)
    proc = run_cyphrs(*_batch_args(shared, batch, out))
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert b"item 2" in proc.stderr
    assert _counts(shared) == before
    assert not out.exists()


def test_existing_outputs_are_refused_without_force(shared: Hierarchy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "00002").mkdir(parents=True)
    (out / "00002" / "key.pem").symlink_to(tmp_path / "dangling")  # lexists, not exists
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "wf"}, {"workflow": "wf"}])
    before = _counts(shared)
    proc = run_cyphrs(*_batch_args(shared, batch, out))
    assert proc.returncode == ExitCode.CONFLICT, proc.stderr
    assert _counts(shared) == before
    assert sorted(p.name for p in out.iterdir()) == ["00002"]


def test_out_dir_without_dash_dash_out_dir_is_refused(shared: Hierarchy, tmp_path: Path) -> None:
    """Item paths are relative to --out-dir: without it there is nothing to confine them to."""
    batch = _write_batch(
        tmp_path / "b.jsonl", [{"workflow": "wf"}, {"workflow": "wf", "out_dir": "x"}]
    )
    before = _counts(shared)
    proc = run_cyphrs(*_batch_args(shared, batch, None))
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert proc.stdout == b""
    assert _counts(shared) == before


# --- every field validated before the first signature ----------------------------------------


def _bad_csr(tmp_path: Path) -> Path:
    """A real openssl CSR with one signature byte flipped: parses, does not verify."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _, csr = openssl_csr(tmp_path, "/CN=api")
    der = bytearray(
        x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    bad = tmp_path / "bad.csr"
    bad.write_bytes(bytes(der))
    return bad


BAD_THIRD_ITEMS: dict[str, tuple[dict[str, object], int]] = {
    "ttl": ({"workflow": "wf", "ttl": "banana"}, ExitCode.INVALID_INPUT),
    "dns": ({"profile": "server", "dns": ["-bad-.example"]}, ExitCode.INVALID_INPUT),
    "spiffe": ({"spiffe_id": "spiffe://bad td/x"}, ExitCode.INVALID_INPUT),
    "ip": ({"profile": "server", "dns": ["a.acme.internal"], "ip": ["999.1.1.1"]}, 3),
    "key-type": ({"workflow": "wf", "key_type": "p999"}, ExitCode.INVALID_INPUT),
    "profile": ({"profile": "no-such-profile", "cn": "x"}, ExitCode.NOT_FOUND),
    "policy": ({"workflow": "wf", "ttl": "3d"}, ExitCode.POLICY_DENIED),
    "policy-key-type": ({"workflow": "wf", "key_type": "rsa2048"}, ExitCode.POLICY_DENIED),
    "long-cn": ({"profile": "client", "cn": "c" * 65}, ExitCode.INVALID_INPUT),
    "same-instance": ({"workflow": "wf", "instance": "i1"}, ExitCode.INVALID_INPUT),
    "garbage-csr": ({"profile": "server", "dns": ["a.acme.internal"], "csr": "junk.csr"}, 3),
    "forged-csr": ({"profile": "server", "dns": ["a.acme.internal"], "csr": "bad.csr"}, 3),
    "missing-csr": ({"profile": "server", "dns": ["a.acme.internal"], "csr": "none.csr"}, 3),
}


@pytest.mark.parametrize("case", list(BAD_THIRD_ITEMS))
def test_bad_item_at_position_three_issues_nothing_for_items_one_and_two(
    shared: Hierarchy, tmp_path: Path, case: str
) -> None:
    (tmp_path / "junk.csr").write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    _bad_csr(tmp_path)
    bad, code = BAD_THIRD_ITEMS[case]
    items: list[dict[str, object]] = [
        {"workflow": "wf", "instance": "i1"},
        {"profile": "server", "dns": ["ok.acme.internal"]},
        bad,
    ]
    out = tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", items)
    certs, events = _counts(shared)
    proc = run_cyphrs(*_batch_args(shared, batch, out))
    assert proc.returncode == code, proc.stderr
    assert b"item 3" in proc.stderr
    assert proc.stdout == b""
    assert not out.exists()
    assert shared.ledger_rows("certificates") == certs
    # A policy refusal is evidence and is recorded (as for a single issue); nothing else is.
    expected_events = events + (1 if code == ExitCode.POLICY_DENIED else 0)
    assert shared.ledger_rows("events") == expected_events


# --- delivery failure after the commit ----------------------------------------------------


def _stopped(pid: int, timeout: float = 60.0) -> None:
    """Wait until the process has stopped itself at the pause point (state T)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        if state in ("Z", "X"):
            raise AssertionError("cyphrs finished without reaching the pause point")
        time.sleep(0.05)
    raise AssertionError("cyphrs never reached the pause point")


def _run_paused(
    h: Hierarchy, batch: Path, out: Path, between: object, *extra: str
) -> tuple[int, str, str]:
    """Run a batch that pauses after validation, change the file system, let it go on."""
    import subprocess

    proc = subprocess.Popen(
        [tool("cyphrs"), *_batch_args(h, batch, out, *extra)],
        env={**os.environ, "CYPHRS_TEST_FAULT": "batch-validated"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _stopped(proc.pid)
        assert callable(between)
        between()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout.decode(), stderr.decode()


def _delivery_failures(h: Hierarchy) -> list[dict[str, object]]:
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        rows = conn.execute(
            "SELECT target, details FROM events WHERE type = 'certificate.delivery_failed'"
        ).fetchall()
    return [{"target": target, **json.loads(details)} for target, details in rows]


def test_delivery_failure_after_commit_is_recorded_and_exits_8(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A file appears where item 2's directory should be, after validation: item 2 is
    recorded, cannot be written, and the ledger says so; items 1 and 3, committed in the
    same group, are still delivered, and the batch stops after the group."""
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": f"wf{i}"} for i in range(3)])
    before = h.ledger_rows()

    def plant() -> None:
        out.mkdir()
        (out / "00002").write_text("in the way\n")

    code, stdout, stderr = _run_paused(h, batch, out, plant)
    assert code == ExitCode.STORAGE, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line.get("ok") for line in lines[:-1]] == [True, False, True]
    assert lines[1]["error"]["code"] == ExitCode.STORAGE
    for line in lines:
        assert_valid(line)
    assert lines[-1]["not_attempted"] == 0
    for name in ("00001", "00003"):
        assert (out / name / "cert.pem").exists() and (out / name / "key.pem").exists()
    assert h.ledger_rows() == before + 3
    failures = _delivery_failures(h)
    assert len(failures) == 1
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        serial = conn.execute(
            "SELECT serial FROM certificates ORDER BY id DESC LIMIT 1 OFFSET 1"
        ).fetchone()
    assert failures[0]["serial"] == serial[0]
    assert failures[0]["target"] == f"certificate:{serial[0]}"
    assert failures[0]["batch_item"] == 2 and failures[0]["reason"]
    assert "recorded as certificate.delivery_failed" in stderr
    verify = run_cyphrs("audit", "verify", "--home", str(h.home))
    assert verify.returncode == 0, verify.stderr


def test_symlink_planted_after_validation_is_not_followed(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """The check-then-write race: a link swapped in after validation still cannot carry
    the key out of --out-dir; the item is recorded as undelivered instead."""
    h, out, elsewhere = fresh_hierarchy, tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "wf", "out_dir": "team/a"}])

    def plant() -> None:
        out.mkdir()
        (out / "team").symlink_to(elsewhere)

    code, _, stderr = _run_paused(h, batch, out, plant)
    assert code == ExitCode.STORAGE, stderr
    assert list(elsewhere.iterdir()) == []
    assert [f["batch_item"] for f in _delivery_failures(h)] == [1]


def test_file_appearing_after_validation_is_not_overwritten_without_force(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "wf"}])

    def plant() -> None:
        (out / "00001").mkdir(parents=True)
        (out / "00001" / "cert.pem").write_text("someone else's\n")

    code, _, stderr = _run_paused(h, batch, out, plant)
    assert code == ExitCode.STORAGE, stderr
    assert (out / "00001" / "cert.pem").read_text() == "someone else's\n"
    assert [f["batch_item"] for f in _delivery_failures(h)] == [1]
    assert not [p for p in (out / "00001").iterdir() if p.name.endswith(".tmp")]


def test_a_clean_batch_still_issues_into_nested_confined_dirs(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(
        tmp_path / "b.jsonl",
        [{"workflow": "wf", "out_dir": "team/a"}, {"workflow": "wf", "out_dir": "team/b"}],
    )
    proc = run_cyphrs(*_batch_args(h, batch, out))
    assert proc.returncode == 0, proc.stderr
    for name in ("a", "b"):
        directory = out / "team" / name
        assert (directory / "cert.pem").exists()
        assert (directory / "key.pem").stat().st_mode & 0o777 == 0o600
        assert directory.stat().st_mode & 0o777 == 0o700


def test_closed_stdout_after_commit_is_recorded_and_exits_8(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """--json without --out-dir delivers on stdout: a reader that went away is a delivery
    failure like a full disk (recorded, exit 8), not an internal error."""
    import subprocess

    h = fresh_hierarchy
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "a"}, {"workflow": "b"}])
    before = h.ledger_rows()
    proc = subprocess.Popen(
        [tool("cyphrs"), *_batch_args(h, batch, None)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == ExitCode.STORAGE, stderr
    error = json.loads(stderr)["error"]
    assert "recorded as certificate.delivery_failed" in error["message"]
    assert h.ledger_rows() == before + 2  # one group: both committed, neither delivered
    failures = _delivery_failures(h)
    assert [f["batch_item"] for f in failures] == [1, 2]
    assert "standard output" in str(failures[0]["reason"])


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs filled to the last byte (needs root, as in CI); unmounted afterwards."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_after_commit_is_recorded_and_exits_8(
    fresh_hierarchy: Hierarchy, tmp_path: Path, full_tmpfs: Path
) -> None:
    """The pre-pass writes nothing, so a full output file system passes it; the first write
    after the commit fails with ENOSPC, which the ledger then explains."""
    h = fresh_hierarchy
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "a"}, {"workflow": "b"}])
    before = h.ledger_rows()
    proc = run_cyphrs(*_batch_args(h, batch, full_tmpfs / "out", "--keep-going"))
    stderr = proc.stderr.decode()
    assert proc.returncode == ExitCode.STORAGE, stderr
    assert "No space left on device" in stderr
    assert h.ledger_rows() == before + 2  # one group, committed; the batch stops after it
    failures = _delivery_failures(h)
    assert [f["batch_item"] for f in failures] == [1, 2]
    assert "No space left" in str(failures[0]["reason"])
    leftovers = [p for p in full_tmpfs.rglob("*") if p.is_file() and p.name != "filler"]
    assert leftovers == []  # no half-written key or temporary file is left behind


def test_nothing_is_written_or_printed_for_an_item_before_its_commit(
    fresh_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    """A crash between signing and recording item 1 leaves no file and no output line."""
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "a"}, {"workflow": "b"}])
    before = h.ledger_rows()
    proc = run_cyphrs(*_batch_args(h, batch, out), env={"CYPHRS_TEST_FAULT": "after-sign"})
    assert proc.returncode == 86
    assert proc.stdout == b""
    assert not out.exists() or list(out.rglob("*")) == []
    assert h.ledger_rows() == before


@pytest.mark.parametrize("keep_going", [False, True])
def test_keep_going_covers_refusals_at_signing_time(
    fresh_hierarchy: Hierarchy, tmp_path: Path, keep_going: bool
) -> None:
    """The issuer is revoked after validation: every item is refused at signing time and
    recorded; --keep-going attempts the rest instead of stopping at the first."""
    h, out = fresh_hierarchy, tmp_path / "out"
    batch = _write_batch(tmp_path / "b.jsonl", [{"workflow": "a"}, {"workflow": "b"}])
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        (serial,) = conn.execute(
            "SELECT serial FROM certificates WHERE is_ca = 1 AND subject LIKE '%Issuing%'"
        ).fetchone()
    before = h.ledger_rows()

    def revoke_issuer() -> None:
        done = run_cyphrs("revoke", "--serial", serial, "--home", str(h.home))
        assert done.returncode == 0, done.stderr

    extra = ("--keep-going",) if keep_going else ()
    code, stdout, stderr = _run_paused(h, batch, out, revoke_issuer, *extra)
    assert code == ExitCode.POLICY_DENIED, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    attempted = 2 if keep_going else 1
    assert [line["ok"] for line in lines[:-1]] == [False] * attempted
    assert lines[-1]["not_attempted"] == 2 - attempted
    assert h.ledger_rows() == before
    assert not out.exists()
    with sqlite3.connect(h.home / "ledger.sqlite3") as conn:
        denied = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'policy.denied'"
        ).fetchone()[0]
    assert denied == attempted


def test_instance_holding_a_valid_certificate_is_refused_before_signing(
    tmp_path: Path,
) -> None:
    """The ledger's one-valid-certificate-per-instance rule is part of the pre-pass: a batch
    whose third item names an instance that already has a certificate issues nothing."""
    h = build_hierarchy(tmp_path / "ca", "p256")
    assert h.issue("agent", "--workflow", "wf", "--instance", "taken", "--json").exit_code == 0
    items: list[dict[str, object]] = [
        {"workflow": "wf", "instance": "a"},
        {"workflow": "wf", "instance": "b"},
        {"workflow": "wf", "instance": "taken"},
    ]
    batch = _write_batch(tmp_path / "b.jsonl", items)
    out = tmp_path / "out"
    certs, events = _counts(h)
    proc = run_cyphrs(*_batch_args(h, batch, out))
    assert proc.returncode == ExitCode.CONFLICT, proc.stderr
    assert b"item 3" in proc.stderr and b"already has a valid certificate" in proc.stderr
    assert proc.stdout == b"" and not out.exists()
    assert _counts(h) == (certs, events)
