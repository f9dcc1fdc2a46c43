"""CA keys on real SoftHSM2 tokens: hierarchy, oracles, mTLS, key attributes, failures.

Every cyphrs call here is a real process, so each one initialises the PKCS#11 module
afresh, as in production.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_mtls import _handshake
from tests.helpers import openssl_verify, pkilint_findings, run_cyphrs, tool

pytestmark = pytest.mark.hsm

PIN = "472019"


def _module() -> str:
    for candidate in (
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ):
        if Path(candidate).is_file():
            return candidate
    pytest.fail("SoftHSM2 is not installed; scripts/test installs the softhsm2 package")


@dataclass
class Tokens:
    conf: Path
    module: str
    pin_file: Path

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf), "CI": "true"}

    def uri(self, token: str, obj: str) -> str:
        return f"pkcs11:token={token};object={obj}?module-path={self.module}"

    def init_token(self, label: str) -> None:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                "12345678",
            ],
            env={**os.environ, **self.env()},
            check=True,
            capture_output=True,
        )

    def cyphrs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = run_cyphrs(*args, env=self.env())
        if check:
            assert proc.returncode == 0, proc.stderr.decode()
        return proc


def make_tokens(base: Path, *labels: str) -> Tokens:
    """A SoftHSM2 configuration of its own in ``base`` with the named tokens (PIN ``PIN``)."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util missing; scripts/test installs the softhsm2 package")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin_file = base / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    t = Tokens(conf, _module(), pin_file)
    for label in labels:
        t.init_token(label)
    return t


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    yield make_tokens(tmp_path_factory.mktemp("softhsm"), "root-token", "issuing-token")


@dataclass
class HsmCa:
    home: Path
    root_uri: str
    inter_uri: str


def _hsm_hierarchy(t: Tokens, base: Path, key_type: str) -> HsmCa:
    home = base / "home"
    root_uri = t.uri("root-token", f"root-{key_type}-{base.name}")
    inter_uri = t.uri("issuing-token", f"inter-{key_type}-{base.name}")
    t.cyphrs(
        "init-root",
        "--home",
        str(home),
        "--name",
        f"HSM Root {key_type}",
        "--key-type",
        key_type,
        "--key-uri",
        root_uri,
        "--pin-file",
        str(t.pin_file),
    )
    t.cyphrs(
        "create-intermediate",
        "--home",
        str(home),
        "--name",
        f"HSM Issuing {key_type}",
        "--key-type",
        key_type,
        "--trust-domain",
        "acme.internal",
        "--key-uri",
        inter_uri,
        "--pin-file",
        str(t.pin_file),
    )
    return HsmCa(home, root_uri, inter_uri)


@pytest.mark.parametrize("key_type", ["p256", "p384", "rsa3072", "ed25519"])
def test_token_hierarchy_passes_the_oracles(tokens: Tokens, tmp_path: Path, key_type: str) -> None:
    ca = _hsm_hierarchy(tokens, tmp_path, key_type)
    agent, server = tmp_path / "agent", tmp_path / "server"
    tokens.cyphrs(
        "issue",
        "agent",
        "--home",
        str(ca.home),
        "--workflow",
        "payments-recon",
        "--out-dir",
        str(agent),
        "--pin-file",
        str(tokens.pin_file),
    )
    tokens.cyphrs(
        "issue",
        "server",
        "--home",
        str(ca.home),
        "--dns",
        "api.acme.internal",
        "--out-dir",
        str(server),
        "--pin-file",
        str(tokens.pin_file),
    )
    for out, purpose in ((agent, "sslclient"), (server, "sslserver")):
        proc = openssl_verify(out / "ca.pem", out / "chain.pem", out / "cert.pem", purpose)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pkilint_findings("lint_pkix_cert", str(out / "cert.pem")) == []
        assert (
            pkilint_findings(
                "lint_pkix_signer_signee_cert_chain", str(out / "chain.pem"), str(out / "cert.pem")
            )
            == []
        )
    assert pkilint_findings("lint_pkix_cert", str(agent / "ca.pem")) == []
    outcome, reply = _handshake(server, agent, server)
    assert reply == b"hello agent", outcome
    # inspect shows where the CA key lives and the token's own evidence about it.
    shown = json.loads(
        tokens.cyphrs(
            "inspect",
            str(ca.home / "certs" / f"hsm-issuing-{key_type}.pem"),
            "--home",
            str(ca.home),
            "--json",
        ).stdout
    )
    authority = shown["objects"][0]["ledger"]["authority"]
    assert (
        authority["key_uri"] == ca.inter_uri
        and authority["key_attributes"]["NEVER_EXTRACTABLE"] is True
    )
    # A CRL signed on the token verifies and puts the revoked agent out of service.
    tokens.cyphrs("revoke", str(agent / "cert.pem"), "--home", str(ca.home))
    crl = tmp_path / "crl.pem"
    tokens.cyphrs(
        "crl", "--home", str(ca.home), "--out", str(crl), "--pin-file", str(tokens.pin_file)
    )
    check = subprocess.run(
        [
            "openssl",
            "crl",
            "-verify",
            "-noout",
            "-in",
            str(crl),
            "-CAfile",
            str(ca.home / "certs" / f"hsm-issuing-{key_type}.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr
    proc = openssl_verify(
        agent / "ca.pem",
        agent / "chain.pem",
        agent / "cert.pem",
        "sslclient",
        "-crl_check",
        "-CRLfile",
        str(crl),
    )
    assert "error 23 at 0 depth" in proc.stdout + proc.stderr
    lint = subprocess.run(
        [tool("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(crl)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.stdout.strip() == "" and lint.returncode == 0
    # The ledger records where each CA key lives, with the token's own attributes.
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        rows = conn.execute(
            "SELECT key_uri, key_storage, key_generated_in, key_attributes"
            " FROM authorities ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [ca.root_uri, ca.inter_uri]
    for _, storage, generated_in, attrs in rows:
        assert storage == "pkcs11" and generated_in == "hsm"
        assert json.loads(attrs) == {
            "SENSITIVE": True,
            "EXTRACTABLE": False,
            "NEVER_EXTRACTABLE": True,
            "ALWAYS_SENSITIVE": True,
            "LOCAL": True,
        }


def test_token_keys_are_sensitive_and_unextractable(tokens: Tokens, tmp_path: Path) -> None:
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    label = ca.inter_uri.split("object=")[1].split("?")[0]
    probe = f"""
import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
lib = pkcs11.lib({tokens.module!r})
with lib.get_token(token_label="issuing-token").open(user_pin={PIN!r}) as s:
    key = s.get_key(label={label!r}, object_class=ObjectClass.PRIVATE_KEY)
    names = ("SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE", "SIGN", "DECRYPT")
    flags = [key[getattr(Attribute, n)] for n in names]
    try:
        key[Attribute.VALUE]
        print("VALUE-READABLE", flags)
    except AttributeSensitive:
        print("VALUE-SENSITIVE", flags)
"""
    proc = subprocess.run(
        [os.sys.executable, "-c", probe],
        env={**os.environ, **tokens.env()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "VALUE-SENSITIVE [True, False, True, True, True, False]"


def test_keys_list_shows_token_keys_and_their_cas(tokens: Tokens, tmp_path: Path) -> None:
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    proc = tokens.cyphrs(
        "keys",
        "list",
        "--home",
        str(ca.home),
        "--json",
        "--pin-file",
        str(tokens.pin_file),
        "--token-uri",
        f"pkcs11:token=issuing-token?module-path={tokens.module}",
    )
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "cyphrs.keys-list/v1" and doc["token"] == "issuing-token"
    mine = [k for k in doc["keys"] if k["used_by"]]
    assert [k["used_by"] for k in mine] == [["hsm-issuing-p256"]]
    assert mine[0]["algorithm"] == "p256" and mine[0]["attributes"]["NEVER_EXTRACTABLE"] is True


def _error(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = proc.stderr.decode()
    assert text.count("\n") == 1 and text.startswith("cyphrs: error: "), text
    return text


def test_wrong_pin_is_exit_4_and_recorded(tokens: Tokens, tmp_path: Path) -> None:
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("000000")
    proc = tokens.cyphrs(
        "issue",
        "agent",
        "--home",
        str(ca.home),
        "--workflow",
        "w",
        "--json",
        "--pin-file",
        str(wrong),
        check=False,
    )
    assert proc.returncode == 4
    assert json.loads(proc.stderr)["error"]["message"] == "wrong PIN for token 'issuing-token'"
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        last = conn.execute("SELECT type, outcome FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    assert last == ("key.unlock_failed", "failure")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "pkcs11:token=root-token;object=x?module-path=/nonexistent/lib.so",
            "PKCS#11 module /nonexistent/lib.so not found",
        ),
        (
            "pkcs11:token=no-such-token;object=x?module-path={module}",
            "no PKCS#11 token labelled 'no-such-token'",
        ),
    ],
)
def test_store_failures_are_exit_9(tokens: Tokens, tmp_path: Path, uri: str, message: str) -> None:
    home = tmp_path / "home"
    proc = tokens.cyphrs(
        "init-root",
        "--home",
        str(home),
        "--name",
        "R",
        "--pin-file",
        str(tokens.pin_file),
        "--key-uri",
        uri.format(module=tokens.module),
        check=False,
    )
    assert proc.returncode == 9
    assert message in _error(proc)
    assert not home.exists()


def test_missing_object_is_exit_9(tokens: Tokens, tmp_path: Path) -> None:
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    # The key URI is a trust fact recorded in the ledger (config.toml only caches it), so
    # the "key went missing" case is a URI that both agree on naming an absent object.
    label = ca.inter_uri.split("object=")[1].split("?")[0]
    config = (ca.home / "config.toml").read_text()
    (ca.home / "config.toml").write_text(config.replace(label, "gone"))
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        conn.execute("UPDATE authorities SET key_uri = replace(key_uri, ?, 'gone')", (label,))
    proc = tokens.cyphrs(
        "issue",
        "agent",
        "--home",
        str(ca.home),
        "--workflow",
        "w",
        "--out-dir",
        str(tmp_path / "o"),
        "--pin-file",
        str(tokens.pin_file),
        check=False,
    )
    assert proc.returncode == 9
    assert "no key pair labelled 'gone' on token 'issuing-token'" in _error(proc)
    assert not (tmp_path / "o").exists()


def test_pin_value_in_uri_is_refused(tokens: Tokens, tmp_path: Path) -> None:
    proc = tokens.cyphrs(
        "init-root",
        "--home",
        str(tmp_path / "h"),
        "--name",
        "R",
        "--key-uri",
        f"pkcs11:token=root-token;object=x?module-path={tokens.module}&pin-value=1234",
        check=False,
    )
    assert proc.returncode == 3 and "pin-value" in _error(proc)


def test_failed_creation_destroys_the_generated_token_key(tokens: Tokens, tmp_path: Path) -> None:
    """The ledger refuses the write: the key made for the new CA must not stay on the token."""
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    blocker = sqlite3.connect(ca.home / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        proc = run_cyphrs(
            "create-intermediate",
            "--home",
            str(ca.home),
            "--name",
            "Second",
            "--key-uri",
            tokens.uri("issuing-token", "second-ca"),
            "--pin-file",
            str(tokens.pin_file),
            env={**tokens.env(), "CYPHRS_BUSY_TIMEOUT_MS": "300"},
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert proc.returncode == 8, proc.stderr
    listing = tokens.cyphrs(
        "keys",
        "list",
        "--json",
        "--pin-file",
        str(tokens.pin_file),
        "--token-uri",
        f"pkcs11:token=issuing-token?module-path={tokens.module}",
    )
    assert "second-ca" not in [k["label"] for k in json.loads(listing.stdout)["keys"]]
    assert "second" not in (ca.home / "config.toml").read_text()


BUILDERS_PROBE = r"""
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from cyphrs_cli.keystore.base import KeySpec
from cyphrs_cli.keystore.pkcs11 import Pkcs11KeyStore, TokenEcKey, TokenRsaKey

module, suffix = sys.argv[1], sys.argv[2]
store = Pkcs11KeyStore(lambda purpose: b"472019")
uri = "pkcs11:token=issuing-token;object=probe-{}-" + suffix + "?module-path=" + module
ec_key = store.create_key(KeySpec.parse("p256"), uri.format("ec")).signer
rsa_key = store.create_key(KeySpec.parse("rsa3072"), uri.format("rsa")).signer
assert isinstance(ec_key, TokenEcKey) and isinstance(rsa_key, TokenRsaKey)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe")])
now = datetime.datetime.now(datetime.UTC)
results = []
for key, alg in ((ec_key, hashes.SHA256()), (rsa_key, hashes.SHA256())):
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, alg))
    cert.verify_directly_issued_by(cert)
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, alg)
    results.append(csr.is_signature_valid)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + datetime.timedelta(hours=1)).sign(key, alg))
    results.append(crl.is_signature_valid(key.public_key()))
    response = (ocsp.OCSPResponseBuilder()
                .add_response(cert=cert, issuer=cert, algorithm=hashes.SHA256(),
                              cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
                              next_update=now + datetime.timedelta(hours=1), revocation_time=None,
                              revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, cert).sign(key, alg))
    if isinstance(key, TokenEcKey):
        key.public_key().verify(response.signature, response.tbs_response_bytes, ec.ECDSA(alg))
    else:
        key.public_key().verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), alg)
    results.append(True)
# ECDSA: the host hashes, the token signs the digest with CKM_ECDSA; the DER r||s verifies,
# also when the caller passes a digest it computed itself.
digest = hashes.Hash(hashes.SHA256()); digest.update(b"pinned"); prehashed = digest.finalize()
signature = ec_key.sign(prehashed, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
r, s = utils.decode_dss_signature(signature)
ec_key.public_key().verify(signature, b"pinned", ec.ECDSA(hashes.SHA256()))
# RSA-PSS where asked, with the token's combined mechanism.
pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
rsa_key.public_key().verify(rsa_key.sign(b"pss", pss, hashes.SHA256()), b"pss", pss, hashes.SHA256())
try:
    ec_key.private_bytes(None, None, None)
    results.append(False)
except Exception as exc:
    results.append(type(exc).__name__ == "KeyStoreError")
print("OK" if all(results) else f"FAILED {results}")
"""


def test_token_signers_work_with_every_builder(tokens: Tokens, tmp_path: Path) -> None:
    """cryptography's certificate, CSR, CRL and OCSP builders accept our token-key subclasses."""
    proc = subprocess.run(
        [os.sys.executable, "-c", BUILDERS_PROBE, tokens.module, tmp_path.name],
        env={**os.environ, **tokens.env()},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


ADOPT_PROBE = r"""
import sys
import pkcs11
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters
lib = pkcs11.lib(sys.argv[1])
with lib.get_token(token_label="root-token").open(user_pin="472019", rw=True) as session:
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")}, local=True)
    params.generate_keypair(store=True, label=sys.argv[2], id=b"adopt",
                            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                              Attribute.SIGN: True})
print("made")
"""


def test_existing_token_key_is_adopted_and_never_destroyed(tokens: Tokens, tmp_path: Path) -> None:
    label = f"pre-made-{tmp_path.name}"
    made = subprocess.run(
        [os.sys.executable, "-c", ADOPT_PROBE, tokens.module, label],
        env={**os.environ, **tokens.env()},
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.stdout.strip() == "made", made.stderr
    uri = tokens.uri("root-token", label)
    home = tmp_path / "home"
    args = (
        "init-root",
        "--home",
        str(home),
        "--name",
        "Adopting Root",
        "--key-uri",
        uri,
        "--existing-key",
        "--pin-file",
        str(tokens.pin_file),
    )
    # First attempt: the ledger refuses the write after the key was adopted. A failure must
    # never destroy a key cyphrs did not create.
    from cyphrs_cli.ledger.db import Ledger

    home.mkdir()
    Ledger(home / "ledger.sqlite3", create=True).close()
    blocker = sqlite3.connect(home / "ledger.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        failed = run_cyphrs(*args, env={**tokens.env(), "CYPHRS_BUSY_TIMEOUT_MS": "300"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert failed.returncode == 8, failed.stderr
    tokens.cyphrs(*args, "--json")
    with sqlite3.connect(home / "ledger.sqlite3") as conn:
        row = conn.execute(
            "SELECT key_generated_in, key_algorithm, key_attributes FROM authorities"
        ).fetchone()
    assert row[0] == "hsm" and row[1] == "p384" and json.loads(row[2])["NEVER_EXTRACTABLE"] is True
    again = tokens.cyphrs(
        "init-root",
        "--home",
        str(tmp_path / "other"),
        "--name",
        "Same Label",
        "--key-uri",
        uri,
        "--pin-file",
        str(tokens.pin_file),
        check=False,
    )
    assert again.returncode == 7 and "--existing-key" in again.stderr.decode()
    listing = tokens.cyphrs(
        "keys",
        "list",
        "--json",
        "--pin-file",
        str(tokens.pin_file),
        "--token-uri",
        f"pkcs11:token=root-token?module-path={tokens.module}",
    )
    assert label in [k["label"] for k in json.loads(listing.stdout)["keys"]]


TOKEN_EDIT_PROBE = r"""
import sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib(sys.argv[1])
action, label = sys.argv[2], sys.argv[3]
with lib.get_token(token_label="issuing-token").open(user_pin="472019", rw=True) as session:
    key = session.get_key(label=label, object_class=ObjectClass.PRIVATE_KEY)
    if action == "no-sign":
        key[Attribute.SIGN] = False
    else:
        key.destroy()
print("done")
"""


def _edit_token_key(tokens: Tokens, action: str, label: str) -> None:
    """Change the token from another process, as an operator or another tool would."""
    proc = subprocess.run(
        [os.sys.executable, "-c", TOKEN_EDIT_PROBE, tokens.module, action, label],
        env={**os.environ, **tokens.env()},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip() == "done", proc.stderr


def _label(uri: str) -> str:
    return uri.split("object=")[1].split("?")[0]


def test_token_refusing_to_sign_is_exit_9(tokens: Tokens, tmp_path: Path) -> None:
    """The key is found and the session logged in, but C_SignInit fails on the token
    (CKA_SIGN cleared): a key-store error (exit 9, one line), nothing recorded or written."""
    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    _edit_token_key(tokens, "no-sign", _label(ca.inter_uri))
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        before = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
    for extra in ((), ("--json",)):
        proc = tokens.cyphrs(
            "issue",
            "agent",
            "--home",
            str(ca.home),
            "--workflow",
            "signfail",
            "--out-dir",
            str(tmp_path / "o"),
            "--pin-file",
            str(tokens.pin_file),
            *extra,
            check=False,
        )
        assert proc.returncode == 9, proc.stderr
        if extra:
            error = json.loads(proc.stderr)["error"]
            assert error["slug"] == "keystore" and "issuing-token" in error["message"]
        else:
            assert "issuing-token" in _error(proc) and "internal error" not in _error(proc)
        assert proc.stdout == b""
    crl = tokens.cyphrs(
        "crl", "--home", str(ca.home), "--pin-file", str(tokens.pin_file), check=False
    )
    assert crl.returncode == 9 and "internal error" not in _error(crl)
    assert not (tmp_path / "o").exists()
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM certificates").fetchone()[0] == before
        assert conn.execute("SELECT count(*) FROM crls").fetchone()[0] == 0


def _blocked_in_pipe_write(pid: int) -> bool:
    try:
        # "pipe_write" before Linux 6.x, "anon_pipe_write" after.
        return Path(f"/proc/{pid}/wchan").read_text().strip().endswith("pipe_write")
    except OSError:
        return False


def test_key_destroyed_between_unlock_and_sign_is_exit_9(tokens: Tokens, tmp_path: Path) -> None:
    """A batch unlocks the token once, then signs group after group. The JSON lines of the
    first group fill the (shrunk) stdout pipe, so the process blocks between two groups;
    meanwhile another process destroys the CA key on the token. The next signature then
    fails inside the token (C_SignInit on a handle whose object is gone): exit 9 per item,
    never 1."""
    import fcntl
    import time

    from cyphrs_cli.service.batch import DEFAULT_GROUP_SIZE

    ca = _hsm_hierarchy(tokens, tmp_path, "p256")
    batch = tmp_path / "b.jsonl"
    n = DEFAULT_GROUP_SIZE + 6  # two groups: the key vanishes between them
    batch.write_text("".join(f'{{"workflow": "gone", "instance": "i{i}"}}\n' for i in range(n)))
    proc = subprocess.Popen(
        [
            tool("cyphrs"),
            "issue",
            "agent",
            "--batch",
            str(batch),
            "--keep-going",
            "--json",
            "--home",
            str(ca.home),
            "--pin-file",
            str(tokens.pin_file),
        ],
        env={**os.environ, **tokens.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
        deadline = time.monotonic() + 60
        while not _blocked_in_pipe_write(proc.pid):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "cyphrs never blocked writing item 1"
            time.sleep(0.05)
        _edit_token_key(tokens, "destroy", _label(ca.inter_uri))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    items = [line for line in lines if line["schema"] == "cyphrs.issue-batch-item/v1"]
    ok = [item["ok"] for item in items]
    assert len(ok) == n and False in ok, items
    signed = ok.index(False)  # items signed before the key vanished
    assert signed >= 1 and all(ok[:signed]) and not any(ok[signed:]), ok
    for failed in items[signed:]:
        assert failed["error"]["code"] == 9 and failed["error"]["slug"] == "keystore", failed
        assert failed["error"]["message"].startswith(
            "token 'issuing-token' failed to sign: "
        ), failed
    assert proc.returncode == 9, err.decode()
    assert b"internal error" not in err
    with sqlite3.connect(ca.home / "ledger.sqlite3") as conn:
        leaves = conn.execute("SELECT count(*) FROM certificates WHERE is_ca = 0").fetchone()[0]
    assert leaves == signed
