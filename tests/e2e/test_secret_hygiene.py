"""Passphrases and PINs never appear in any output: stdout, stderr, ledger, config, exports.

Every command runs as a real process with its secrets from files and from environment
variables, on success and on failure (wrong secret, policy refusal, --debug tracebacks,
JSON errors). Each secret is unique random text, searched for raw, hex- and base64-encoded,
in every byte the command printed and in every file of the CA homes and bundles afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from cyphrs_cli.keystore.file import MIN_PASSPHRASE_BYTES
from tests.helpers import run_cyphrs


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")]


class Watch:
    """Runs cyphrs and fails if any watched secret shows up in anything it leaves behind."""

    def __init__(self, base: Path, names: Iterable[str]) -> None:
        self.base = base
        self.secrets = {name: f"{name}-{secrets.token_hex(12)}" for name in names}
        self.files: dict[str, Path] = {}
        for name, value in self.secrets.items():
            path = base / "secrets" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(value + "\n")
            self.files[name] = path
        self.runs = 0

    def env(self) -> dict[str, str]:
        return {f"CYPHRS_T_{n.upper().replace('-', '_')}": v for n, v in self.secrets.items()}

    def var(self, name: str) -> str:
        return f"CYPHRS_T_{name.upper().replace('-', '_')}"

    def check(self, where: str, data: bytes) -> None:
        for name, value in self.secrets.items():
            for form in _forms(value):
                assert form not in data, f"{name} leaked into {where}"

    def run(self, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> bytes:
        proc = run_cyphrs(*args, env={"CI": "true", **self.env(), **(env or {})})
        self.runs += 1
        label = " ".join(args[:2])
        assert proc.returncode == expect, (args, proc.returncode, proc.stderr.decode())
        self.check(f"stdout of {label}", proc.stdout)
        self.check(f"stderr of {label}", proc.stderr)
        return proc.stdout

    def scan_tree(self, *roots: Path) -> int:
        """Every file under the roots (secret files excluded); archives are opened."""
        scanned = 0
        for root in roots:
            for path in root.rglob("*"):
                if not path.is_file() or path.parent == self.base / "secrets":
                    continue
                self.check(str(path), path.read_bytes())
                scanned += 1
                if path.name.endswith(".tar.gz"):
                    with tarfile.open(path) as archive:
                        for member in archive.getmembers():
                            handle = archive.extractfile(member)
                            if handle is not None:
                                self.check(f"{path}:{member.name}", handle.read())
        return scanned


def test_passphrases_never_leak(tmp_path: Path) -> None:
    w = Watch(tmp_path, ["root-pass", "inter-pass", "wrong-pass", "offline-pass"])
    home = ("--home", str(tmp_path / "home"))
    root_file = ("--passphrase-file", str(w.files["root-pass"]))
    root_env = ("--passphrase-env", w.var("root-pass"))
    inter_file = ("--passphrase-file", str(w.files["inter-pass"]))
    inter_env = ("--passphrase-env", w.var("inter-pass"))
    wrong_file = ("--passphrase-file", str(w.files["wrong-pass"]))
    wrong_env = ("--passphrase-env", w.var("wrong-pass"))

    # A passphrase below the minimum length is refused without being echoed.
    short = "s" + secrets.token_hex(MIN_PASSPHRASE_BYTES)[: MIN_PASSPHRASE_BYTES - 2]
    w.secrets["short"] = short
    w.run(
        "init-root",
        "--name",
        "R",
        "--home",
        str(tmp_path / "h0"),
        "--passphrase-env",
        "CYPHRS_T_SHORT",
        expect=3,
        env={"CYPHRS_T_SHORT": short},
    )

    w.run("init-root", "--name", "Leak Root", *home, *root_file)
    for flags in (inter_file, inter_env):
        w.run(
            "create-intermediate",
            "--name",
            f"Leak Issuing {flags[0][-3:]}",
            "--trust-domain",
            "acme.internal",
            *home,
            *flags,
            "--root-passphrase-env",
            w.var("root-pass"),
            "--json",
        )
    # The second intermediate got an alias from its name; use the first everywhere.
    issuer = ("--issuer", "leak-issuing-ile")
    w.run(
        "create-intermediate",
        "--name",
        "Bad Root Pass",
        *home,
        *inter_file,
        "--root-passphrase-file",
        str(w.files["wrong-pass"]),
        expect=4,
    )

    out = tmp_path / "out"
    never = ("--out-dir", str(tmp_path / "never"))
    for i, flags in enumerate((inter_file, inter_env)):
        w.run(
            "issue",
            "agent",
            "--workflow",
            "leak",
            "--instance",
            f"i{i}",
            *issuer,
            *home,
            *flags,
            "--out-dir",
            str(out / str(i)),
        )
        w.run("issue", "server", "--dns", f"s{i}.acme.internal", *issuer, *home, *flags, "--json")
        w.run("issue", "client", "--cn", f"c{i}", *issuer, *home, *flags, "--out", "-")
    w.run("issue", "agent", "--workflow", "leak", "--dry-run", *issuer, *home, "--json")
    # Failures: wrong passphrase (file, env; human, JSON, --debug traceback), policy refusal.
    for flags in (wrong_file, wrong_env):
        w.run("issue", "agent", "--workflow", "leak", *issuer, *home, *flags, *never, expect=4)
        w.run("issue", "agent", "--workflow", "leak", *issuer, *home, *flags, "--json", expect=4)
        w.run(
            "--debug", "issue", "agent", "--workflow", "w", *issuer, *home, *flags, *never, expect=4
        )
        w.run("crl", *issuer, *home, *flags, expect=4, env={"CYPHRS_DEBUG": "1"})
        w.run("audit", "checkpoint", *issuer, *home, *flags, expect=4)
    w.run(
        "issue",
        "agent",
        "--workflow",
        "leak",
        "--ttl",
        "30d",
        *issuer,
        *home,
        *inter_env,
        *never,
        expect=5,
    )
    w.run(
        "issue",
        "agent",
        "--workflow",
        "leak",
        "--ttl",
        "30d",
        *issuer,
        *home,
        *inter_env,
        "--json",
        expect=5,
    )
    w.run("issue", "agent", "--workflow", "leak", *issuer, *home, *inter_file, *inter_env, expect=2)

    batch = tmp_path / "b.jsonl"
    batch.write_text('{"workflow": "bl", "instance": "b1"}\n{"workflow": "bl", "ttl": "9d"}\n')
    w.run(
        "issue",
        "agent",
        "--batch",
        str(batch),
        "--keep-going",
        "--json",
        *issuer,
        *home,
        *inter_env,
        expect=5,
    )
    # A batch with a refused item is refused before any key is unlocked (exit 5), so the
    # wrong-passphrase path needs a clean one.
    clean = tmp_path / "clean.jsonl"
    clean.write_text('{"workflow": "bl", "instance": "b2"}\n')
    w.run("issue", "agent", "--batch", str(clean), "--json", *issuer, *home, *wrong_env, expect=4)

    listed = w.run("list", "--json", *home)
    leaves = [c for c in json.loads(listed)["certificates"] if not c["is_ca"]]
    serial = leaves[0]["serial"]
    w.run("renew", "--serial", serial, *home, *inter_env, "--json")
    w.run("renew", "--serial", leaves[1]["serial"], *home, *wrong_file, *never, expect=4)
    w.run("revoke", "--serial", leaves[2]["serial"], *home)
    w.run("crl", *issuer, *home, *inter_file, "--out", str(tmp_path / "crl.pem"))
    w.run("crl", *issuer, *home, *inter_env, "--json")
    w.run("crl", "--issuer", "leak-root", *home, *root_env)
    w.run("audit", "checkpoint", *issuer, *home, *inter_env, "--out", str(tmp_path / "cp.json"))
    w.run("audit", "verify", *home)
    root_pem = str(tmp_path / "home" / "certs" / "leak-root.pem")
    w.run("audit", "verify", *home, "--checkpoint", str(tmp_path / "cp.json"), "--root", root_pem)
    bundle = tmp_path / "bundle"
    w.run(
        "audit-export",
        "--since",
        "2000-01-01",
        "--out",
        str(bundle),
        "--sign-with",
        "leak-issuing-ile",
        *home,
        *inter_file,
    )
    w.run(
        "audit-export",
        "--since",
        "2000-01-01",
        "--out",
        str(tmp_path / "bundle2"),
        "--archive",
        "--sign-with",
        "leak-root",
        *home,
        *root_env,
    )
    w.run(
        "audit-export",
        "--since",
        "2000-01-01",
        "--out",
        str(tmp_path / "bundle3"),
        "--sign-with",
        "leak-root",
        *home,
        *wrong_env,
        expect=4,
    )
    w.run(
        "audit",
        "verify-export",
        str(bundle),
        "--root",
        str(tmp_path / "home" / "certs" / "leak-root.pem"),
    )
    w.run("inspect", str(out / "0" / "fullchain.pem"), *home)
    w.run("inspect", "--serial", serial, *home, "--json")
    w.run("list", *home)
    w.run("list", "--csv", *home)
    w.run("profiles", "list", *home)
    w.run("profiles", "show", "agent", *home, "--json")
    w.run("keys", "list", *home, "--json", expect=2)  # file keys: needs --token-uri

    # The offline-root flow: request on one home, sign on another, import.
    online = ("--home", str(tmp_path / "online"))
    csr = tmp_path / "off.csr"
    w.run(
        "create-intermediate",
        "--name",
        "Offline Issuing",
        "--trust-domain",
        "acme.internal",
        *online,
        "--passphrase-env",
        w.var("offline-pass"),
        "--csr-out",
        str(csr),
    )
    signed = tmp_path / "off.pem"
    w.run(
        "sign-intermediate",
        str(csr),
        "--out",
        str(signed),
        *home,
        *wrong_file,
        expect=4,
    )
    w.run(
        "sign-intermediate",
        str(csr),
        "--out",
        str(signed),
        *home,
        *root_env,
    )
    w.run("import-intermediate", str(signed), *online, "--root", root_pem)
    w.run(
        "issue",
        "agent",
        "--workflow",
        "off",
        *online,
        "--passphrase-file",
        str(w.files["offline-pass"]),
        "--json",
    )

    assert not (tmp_path / "never").exists()
    scanned = w.scan_tree(
        tmp_path / "home",
        tmp_path / "online",
        out,
        bundle,
        tmp_path / "bundle2",
        tmp_path / "crl.pem",
        tmp_path / "cp.json",
        signed,
    )
    config = (tmp_path / "home" / "config.toml").read_bytes()
    w.check("config.toml", config)
    assert scanned > 20 and w.runs > 40


def _leak_token(tmp_path: Path, user_pin: str) -> dict[str, str]:
    """A fresh SoftHSM2 token labelled "leak" in ``tmp_path``; the environment that
    selects it."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "leak",
         "--pin", user_pin, "--so-pin", secrets.token_hex(8)],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )  # fmt: skip
    return env


def test_token_pins_never_leak(tmp_path: Path) -> None:
    """The same for a SoftHSM2 token: PIN from --pin-file, --pin-env, a pin-source URI."""
    from tests.e2e.test_hsm import _module

    w = Watch(tmp_path, ["user-pin", "wrong-pin"])
    env = _leak_token(tmp_path, w.secrets["user-pin"])
    module = _module()
    home = ("--home", str(tmp_path / "home"))
    pin_file = ("--pin-file", str(w.files["user-pin"]))
    pin_env = ("--pin-env", w.var("user-pin"))

    def uri(obj: str, query: str = "") -> str:
        return f"pkcs11:token=leak;object={obj}?module-path={module}{query}"

    w.run("init-root", "--name", "Pin Root", "--key-uri", uri("root"), *home, *pin_file, env=env)
    w.run(
        "create-intermediate",
        "--name",
        "Pin Issuing",
        "--trust-domain",
        "acme.internal",
        "--key-uri",
        uri("inter", f"&pin-source=file:{w.files['user-pin']}"),
        *home,
        *pin_env,
        env=env,
    )
    # The pin-source unlocked the token at creation; its path is not recorded (issue 14),
    # so later commands name the PIN themselves.
    w.run("issue", "agent", "--workflow", "pin", *home, *pin_file, "--json", env=env)
    w.run("crl", "--issuer", "pin-root", *home, *pin_env, env=env)
    w.run(
        "init-root",
        "--name",
        "Wrong",
        "--key-uri",
        uri("x"),
        "--home",
        str(tmp_path / "h2"),
        "--pin-file",
        str(w.files["wrong-pin"]),
        expect=4,
        env=env,
    )
    w.run(
        "crl",
        "--issuer",
        "pin-root",
        *home,
        "--pin-env",
        w.var("wrong-pin"),
        "--json",
        expect=4,
        env=env,
    )
    w.run(
        "--debug",
        "crl",
        "--issuer",
        "pin-root",
        *home,
        "--pin-file",
        str(w.files["wrong-pin"]),
        expect=4,
        env=env,
    )
    w.run(
        "keys",
        "list",
        "--token-uri",
        f"pkcs11:token=leak?module-path={module}",
        *pin_env,
        "--json",
        env=env,
    )
    w.run(
        "keys",
        "list",
        "--token-uri",
        f"pkcs11:token=leak?module-path={module}",
        "--pin-env",
        w.var("wrong-pin"),
        expect=4,
        env=env,
    )
    w.run(
        "audit-export",
        "--since",
        "2000-01-01",
        "--out",
        str(tmp_path / "bundle"),
        "--sign-with",
        "pin-root",
        *home,
        *pin_file,
        env=env,
    )
    w.run("list", "--csv", *home, env=env)
    assert w.scan_tree(tmp_path / "home", tmp_path / "bundle") > 5


@pytest.mark.parametrize("form", ["raw", "hex", "base64"])
def test_the_watch_itself_catches_a_leak(tmp_path: Path, form: str) -> None:
    """The checks above can fail: a secret in any watched form is reported."""
    w = Watch(tmp_path, ["s"])
    raw = w.secrets["s"].encode()
    leaked = {"raw": raw, "hex": raw.hex().encode(), "base64": base64.b64encode(raw)}[form]
    with pytest.raises(AssertionError, match="s leaked into probe"):
        w.check("probe", b"prefix " + leaked + b" suffix")


@pytest.mark.parametrize(
    "spelling",
    [
        "?module-path={module}&pin-value={pin}",
        "?module-path={module}&pin%2Dvalue={pin}",
        "?module-path={module}&PIN-VALUE={pin}",
        ";pin-value={pin}?module-path={module}",
    ],
)
def test_a_pin_inside_a_key_uri_is_never_stored(tmp_path: Path, spelling: str) -> None:
    """A PIN written into the key URI is refused before anything records the URI."""
    from tests.e2e.test_hsm import _module

    w = Watch(tmp_path, ["user-pin"])
    env = _leak_token(tmp_path, w.secrets["user-pin"])
    uri = "pkcs11:token=leak;object=root" + spelling.format(
        module=_module(), pin=w.secrets["user-pin"]
    )
    home = tmp_path / "home"
    proc = run_cyphrs(
        "init-root",
        "--name",
        "R",
        "--key-uri",
        uri,
        "--home",
        str(home),
        "--pin-file",
        str(w.files["user-pin"]),
        env={"CI": "true", **env},
    )
    assert proc.returncode == 3, proc.stderr
    w.check("stderr", proc.stderr)
    w.check("stdout", proc.stdout)
    if home.exists():
        w.scan_tree(home)
