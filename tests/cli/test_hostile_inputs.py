"""A sweep of hostile input over every command: never exit 1, never a traceback.

Exit 1 means "a bug in cyphrs"; whatever a user (or a file they pass) gets wrong has its own
exit code. Each command below gets each hostile value in each of its free-text options and
its input files; the only assertion is that the failure is an expected one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cyphrs_cli.errors import ExitCode
from tests.helpers import Hierarchy, build_hierarchy, cli, run_cyphrs

HOSTILE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "a\nb",
    "\r",
    "\u202e",
    "\udcff",
    "x" * 5000,
    "9" * 5000,
    "99999999999999999999d",
    "99999999d",
    "1e309",
    "-1",
    "0",
    "../../../etc/passwd",
    "/",
    "-",
    "%s%n",
    "☃",
    "=cmd|'/C calc'!A0",
    "spiffe://",
    "pkcs11:",
    "2026-13-45",
    "0x",
    "nan",
    "-nan",
    "inf",
    "9" * 30,
]

# Templates: "{v}" is the hostile value; "{pass}" the issuing CA passphrase file.
TEMPLATES = [
    ("issue", "agent", "--workflow", "{v}", "--json"),
    ("issue", "agent", "--workflow", "w", "--ttl", "{v}", "--json"),
    ("issue", "agent", "--workflow", "w", "--permission", "{v}", "--json"),
    ("issue", "agent", "--workflow", "w", "--instance", "{v}", "--json"),
    ("issue", "agent", "--workflow", "w", "--requester", "{v}", "--json"),
    ("issue", "agent", "--spiffe-id", "{v}", "--json"),
    ("issue", "server", "--dns", "{v}", "--json"),
    ("issue", "server", "--dns", "a.acme.internal", "--ip", "{v}", "--json"),
    ("issue", "client", "--cn", "{v}", "--json"),
    ("issue", "client", "--cn", "c", "--key-type", "{v}", "--json"),
    ("issue", "{v}", "--json"),
    ("issue", "agent", "--workflow", "w", "--issuer", "{v}", "--json"),
    ("list", "--status", "{v}"),
    ("list", "--issued-after", "{v}"),
    ("list", "--expiring-within", "{v}"),
    ("list", "--san", "{v}"),
    ("list", "--workflow", "{v}"),
    ("list", "--limit", "{v}"),
    ("renew", "--serial", "00", "--check", "--due-fraction", "{v}"),
    ("inspect", "--serial", "{v}"),
    ("renew", "--serial", "{v}", "--json"),
    ("revoke", "--serial", "{v}", "--reason", "superseded"),
    ("revoke", "--serial", "00", "--reason", "{v}"),
    ("crl", "--issuer", "{v}"),
    ("crl", "--validity", "{v}"),
    ("audit-export", "--since", "{v}", "--out", "{tmp}/bundle"),
    ("profiles", "show", "{v}"),
    ("keys", "list", "--token-uri", "{v}"),
]
NEEDS_PASS = {"issue", "renew", "revoke", "crl", "audit-export"}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return build_hierarchy(tmp_path_factory.mktemp("hostile"))


def _args(template: tuple[str, ...], value: str, h: Hierarchy, tmp: Path) -> list[str]:
    args = [part.replace("{v}", value).replace("{tmp}", str(tmp)) for part in template]
    args += ["--home", str(h.home)]
    if template[0] in NEEDS_PASS:
        args += ["--passphrase-file", str(h.inter_pass)]
    return args


def _assert_expected_failure(args: list[str], code: int, stderr: str) -> None:
    assert code != ExitCode.INTERNAL, f"exit 1 for {args!r}: {stderr[-500:]}"
    assert "Traceback" not in stderr, args
    assert "internal error" not in stderr, args


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: " ".join(t[:3]))
def test_hostile_option_values(
    victim: Hierarchy, tmp_path: Path, template: tuple[str, ...]
) -> None:
    for value in HOSTILE:
        args = _args(template, value, victim, tmp_path)
        result = cli(*args)
        _assert_expected_failure(args, result.exit_code, result.stderr)


HOSTILE_FILES = {
    "empty": b"",
    "nul": b"\0" * 64,
    "invalid-utf8": b"\xff\xfe\xfd",
    "pem-garbage": b"-----BEGIN CERTIFICATE-----\n\xff\xfe!!\n-----END CERTIFICATE-----\n",
    "csr-garbage": b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    "huge-line": b"A" * 200_000,
    "json-bomb": b"[" * 10_000,
    # Deeper than the JSON parser's recursion limit, inside a JSON Lines object.
    "jsonl-bomb": b'{"a": ' + b"[" * 100_000 + b"\n",
    "toml-garbage": b"[[certificate]]\nprofile = 5\nname = []\n",
    "jsonl-types": b'{"profile": 5, "ttl": [], "dns": "x", "permissions": "p"}\n',
    "jsonl-nested": b'{"profile": "agent", "workflow": {"a": 1}}\n',
}

FILE_TEMPLATES: list[Any] = [
    ("inspect", "{f}"),
    ("issue", "server", "--dns", "a.acme.internal", "--csr", "{f}", "--json"),
    ("issue", "--batch", "{f}", "--json", "--out-dir", "{tmp}/batch"),
    ("revoke", "{f}", "--reason", "superseded"),
    ("renew", "{f}", "--json"),
    ("audit", "verify", "--checkpoint", "{f}", "--root-fingerprint", "sha256:" + "ab" * 32),
    ("audit", "verify-export", "{f}"),
    ("import-intermediate", "{f}"),
    ("sign-intermediate", "{f}", "--out", "{tmp}/signed.pem"),
]


@pytest.mark.parametrize("template", FILE_TEMPLATES, ids=lambda t: " ".join(t[:2]))
def test_hostile_input_files(victim: Hierarchy, tmp_path: Path, template: tuple[str, ...]) -> None:
    for name, content in HOSTILE_FILES.items():
        path = tmp_path / name
        path.write_bytes(content)
        args = [part.replace("{f}", str(path)).replace("{tmp}", str(tmp_path)) for part in template]
        args += ["--home", str(victim.home)]
        if template[0] in NEEDS_PASS | {"sign-intermediate"}:
            args += ["--passphrase-file", str(victim.root_pass)]
        result = cli(*args)
        _assert_expected_failure(args, result.exit_code, result.stderr)


def test_undecodable_argv_bytes_in_a_real_process(victim: Hierarchy) -> None:
    """Bytes that are not UTF-8 arrive as lone surrogates: no UnicodeEncodeError on output."""
    for args in itertools.product(
        [("issue", "client", "--cn"), ("list", "--status"), ("inspect",), ("profiles", "show")],
        [b"\xff", b"\x1b[31m\xfe", b"\xc3\x28"],
    ):
        command, raw = args
        argv = [c.encode() for c in command] + [raw]
        argv += (
            [b"--home", str(victim.home).encode(), b"--json"]
            if command[0] == "issue"
            else [
                b"--home",
                str(victim.home).encode(),
            ]
        )
        if command[0] == "issue":
            argv += [b"--passphrase-file", str(victim.inter_pass).encode()]
        proc = run_cyphrs(*[a.decode("utf-8", "surrogateescape") for a in argv])
        stderr = proc.stderr.decode(errors="replace")
        _assert_expected_failure([repr(a) for a in argv], proc.returncode, stderr)


def test_huge_ttl_is_invalid_input(victim: Hierarchy) -> None:
    for ttl in ("99999999d", "9999999999999999999999d", "999999999999w", "1" + "0" * 40 + "s"):
        result = victim.issue("agent", "--workflow", "ttl", "--ttl", ttl, "--json")
        assert result.exit_code in (ExitCode.INVALID_INPUT, ExitCode.POLICY_DENIED), result.stderr
        assert "internal" not in result.stderr
    result = cli("list", "--expiring-within", "99999999999d", "--home", str(victim.home))
    assert result.exit_code == ExitCode.INVALID_INPUT, result.stderr


PROFILE_CASES = [
    ('description = "x"\nextended_key_usage = "clientAuth"\n', "extended_key_usage"),
    ("extended_key_usage = [1]\n", "extended_key_usage"),
    ('extended_key_usage = ["clientAuth"]\nnames = "spiffe"\n', "names"),
    ('extended_key_usage = ["clientAuth"]\nkey_types = "p256"\n', "key_types"),
    ('extended_key_usage = ["clientAuth"]\nkey_types = [256]\n', "key_types"),
    ('extended_key_usage = ["clientAuth"]\nkey_types = ["p999"]\n', "key_types"),
    ('extended_key_usage = ["clientAuth"]\nmax_tll = "1h"\n', "max_tll"),
    ('extended_key_usage = ["clientAuth"]\n[names]\nspife = "required"\n', "spife"),
    ('extended_key_usage = ["clientAuth"]\n[names]\nip_ranges = [10]\n', "ip_ranges"),
    ('extended_key_usage = ["clientAuth"]\n[names]\ndns_patterns = "*.x"\n', "dns_patterns"),
    ('extended_key_usage = ["clientAuth"]\n[names]\nrequire_common_name = "yes"\n', "require"),
    ('extended_key_usage = ["clientAuth"]\n[names]\nspiffe = 1\n', "names.spiffe"),
    ('extended_key_usage = ["clientAuth"]\nissuers = "x"\n', "issuers"),
    ('extended_key_usage = ["clientAuth"]\ndescription = 5\n', "description"),
    ('extended_key_usage = ["clientAuth"]\nkey_usage = "digitalSignature"\n', "key_usage"),
    ('extended_key_usage = ["bogusAuth"]\n', "extended_key_usage"),
]


def _with_home_profile(h: Hierarchy, data: bytes) -> Iterator[None]:
    folder = h.home / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "mine.toml").write_bytes(data)
    try:
        yield
    finally:
        (folder / "mine.toml").unlink()


@pytest.mark.parametrize(("body", "field"), PROFILE_CASES)
def test_malformed_home_profile_is_exit_3_naming_the_field(
    victim: Hierarchy, body: str, field: str
) -> None:
    ttl = 'default_ttl = "1h"\nmin_ttl = "1m"\nmax_ttl = "2h"\n'
    with contextmanager(_with_home_profile)(victim, (ttl + body).encode()):
        result = victim.issue("mine", "--cn", "x", "--json")
    assert result.exit_code == ExitCode.INVALID_INPUT, result.stderr
    assert field in result.error()["error"]["message"]


@pytest.mark.parametrize(
    ("ttl_line", "field"),
    [
        ('default_ttl = 3600\nmin_ttl = "1m"\nmax_ttl = "2h"\n', "default_ttl"),
        ('default_ttl = "1h"\nmin_ttl = "soon"\nmax_ttl = "2h"\n', "min_ttl"),
        ('default_ttl = "1h"\nmin_ttl = "1m"\nmax_ttl = "99999999999d"\n', "max_ttl"),
        ('default_ttl = "1h"\nmin_ttl = "1m"\nmax_ttl = 1979-05-27\n', "max_ttl"),
    ],
)
def test_malformed_profile_durations(victim: Hierarchy, ttl_line: str, field: str) -> None:
    body = (ttl_line + 'extended_key_usage = ["clientAuth"]\n').encode()
    with contextmanager(_with_home_profile)(victim, body):
        result = victim.issue("mine", "--cn", "x", "--json")
    assert result.exit_code == ExitCode.INVALID_INPUT, result.stderr
    assert field in result.error()["error"]["message"]


def test_profile_file_that_is_not_utf8(victim: Hierarchy) -> None:
    with contextmanager(_with_home_profile)(victim, b'description = "\xff\xfe"\n'):
        result = cli("profiles", "list", "--home", str(victim.home))
    assert result.exit_code == ExitCode.INVALID_INPUT, result.stderr


def test_inspect_certificate_with_invalid_utf8_name(tmp_path: Path) -> None:
    """Structurally valid DER whose UTF8String CN is not UTF-8: exit 3, not a crash."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "QQQQ")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER).replace(b"QQQQ", b"\xff\xfe\xc3\x28")
    for suffix, data in (
        ("der", der),
        (
            "pem",
            b"-----BEGIN CERTIFICATE-----\n"
            + __import__("base64").encodebytes(der)
            + b"-----END CERTIFICATE-----\n",
        ),
    ):
        path = tmp_path / f"bad.{suffix}"
        path.write_bytes(data)
        for extra in ((), ("--json",)):
            proc = run_cyphrs("inspect", str(path), *extra)
            assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr.decode()
            assert b"internal" not in proc.stderr


def test_numeric_options_out_of_range(victim: Hierarchy) -> None:
    issued = victim.issue("agent", "--workflow", "numbers", "--json")
    assert issued.exit_code == 0, issued.stderr
    serial = issued.json()["certificate"]["serial"]
    for fraction in ("nan", "-nan"):
        result = cli(
            "renew",
            "--serial",
            serial,
            "--check",
            "--due-fraction",
            fraction,
            "--home",
            str(victim.home),
        )
        assert result.exit_code == ExitCode.USAGE, result.stderr
    result = cli("list", "--limit", "9" * 30, "--home", str(victim.home))
    assert result.exit_code == ExitCode.INVALID_INPUT, result.stderr


@pytest.mark.parametrize("option", ["--name", "--validity", "--key-uri", "--alias", "--key-type"])
def test_hostile_init_root_values(victim: Hierarchy, tmp_path: Path, option: str) -> None:
    for index, value in enumerate(HOSTILE):
        home = tmp_path / f"home-{index}"
        args = ["init-root", "--home", str(home), "--passphrase-file", str(victim.root_pass)]
        args += [option, value] + (["--name", "Sweep Root"] if option != "--name" else [])
        result = cli(*args)
        _assert_expected_failure(args, result.exit_code, result.stderr)
