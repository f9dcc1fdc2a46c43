"""The use-case API over a real SoftHSM2 token, in this process: several threads signing
through one ``Authority`` (one token session, taken in turns), and a session closed
underneath (``C_CloseAllSessions`` called on the module directly) that is reopened."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cyphrs_cli.ca.orders import LeafOrder
from cyphrs_cli.config.home import CaHome
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.requests import CrlRequest, IssueRequest
from tests.e2e.test_hsm import PIN, _module
from tests.enrollment_helpers import audit_problems
from tests.helpers import cli

pytestmark = pytest.mark.hsm
TOKEN = "service-token"


@dataclass
class TokenHome:
    home: CaHome
    module: str


def _pin(purpose: str) -> bytes:
    return PIN.encode()


@pytest.fixture(scope="module")
def token_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenHome]:
    """A token of its own and a hierarchy on it. SoftHSM2 reads SOFTHSM2_CONF when the
    module is first initialised in this process, so the variable stays set for the module
    (no other test loads the module in-process)."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util missing; scripts/test installs the softhsm2 package")
    base = tmp_path_factory.mktemp("service-hsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n")
    pin_file = base / "pin"
    pin_file.write_text(PIN + "\n")
    module = _module()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(
            [
                *("softhsm2-util", "--init-token", "--free", "--label", TOKEN),
                *("--pin", PIN, "--so-pin", "12345678"),
            ],
            check=True,
            capture_output=True,
            env=dict(os.environ),
        )
        home = base / "home"
        for command, alias, extra in (
            ("init-root", "svc-root", ()),
            ("create-intermediate", "svc-inter", ("--trust-domain", "acme.internal")),
        ):
            done = cli(
                command,
                "--home",
                str(home),
                "--name",
                alias,
                "--alias",
                alias,
                "--key-uri",
                f"pkcs11:token={TOKEN};object={alias}?module-path={module}",
                "--pin-file",
                str(pin_file),
                *extra,
            )
            assert done.exit_code == 0, done.stderr
        yield TokenHome(CaHome(home), module)


def _close_all_sessions(module: str) -> None:
    """What a token reset or another process's ``C_CloseAllSessions`` does to us: every
    session of this process on the token ends, and its login with it."""
    import pkcs11

    slot = pkcs11.lib(module).get_token(token_label=TOKEN).slot.slot_id
    library = ctypes.CDLL(module)
    library.C_CloseAllSessions.argtypes = [ctypes.c_ulong]
    assert library.C_CloseAllSessions(slot) == 0  # CKR_OK


def _agent(workflow: str, instance: str) -> IssueRequest:
    return IssueRequest(LeafOrder(profile="agent", workflow=workflow, instance=instance))


def test_threads_sign_through_one_token_session(token_home: TokenHome) -> None:
    threads, each = 4, 5
    serials: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    with Authority.open(token_home.home, secrets=_pin) as ca:

        def work(n: int) -> None:
            try:
                start.wait()
                for m in range(each):
                    serials.append(ca.issue(_agent(f"hsm{n}", f"t{m}")).issued.serial)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert errors == []
        assert len(set(serials)) == threads * each
        recorded = ca.ledger.conn.execute(
            "SELECT count(*) FROM certificates WHERE workflow LIKE 'hsm%'"
        ).fetchone()[0]
        assert recorded == threads * each
    assert audit_problems(token_home.home) == []


def test_a_session_closed_underneath_is_reopened(token_home: TokenHome) -> None:
    with Authority.open(token_home.home, secrets=_pin) as ca:
        ca.issue(_agent("reopen", "before"))
        _close_all_sessions(token_home.module)
        # The next signature finds the session gone, reopens it, logs in again, signs.
        after = ca.issue(_agent("reopen", "after")).issued
        assert ca.facts.certificate is not None
        after.certificate.verify_directly_issued_by(ca.facts.certificate)
        _close_all_sessions(token_home.module)
        assert ca.crl(CrlRequest()).published.number >= 1
    assert audit_problems(token_home.home) == []


def test_enroll_online_signs_a_token_key_off_the_event_loop(token_home: TokenHome) -> None:
    """A PKCS#11 signature may wait on a device: ``enroll_online`` never signs with one on
    the event loop (``start_enrollment`` declines), and still issues through ``offload``."""
    import asyncio
    from collections.abc import Callable
    from concurrent.futures import ThreadPoolExecutor

    from cyphrs_cli.keystore.base import signs_in_process
    from cyphrs_cli.service.enrollment import EnrollRequest, start_enrollment
    from cyphrs_cli.service.requests import IssueResult
    from cyphrs_cli.service.tokens import TokenSpec
    from tests.enrollment_helpers import make_csr

    with Authority.open(token_home.home, secrets=_pin) as ca:
        ca.start_group_commit()
        assert not signs_in_process(ca.issuer.signer)
        token = ca.create_token(TokenSpec(workflow="online-token", uses=2)).token
        csr, key = make_csr()
        offloaded: list[str] = []

        async def main() -> IssueResult:
            loop = asyncio.get_running_loop()
            unhandled: list[object] = []
            loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
            assert start_enrollment(ca, EnrollRequest(csr_pem=csr, token=token), loop) is None
            with ThreadPoolExecutor(2) as pool:

                async def offload(work: Callable[[], IssueResult]) -> IssueResult:
                    offloaded.append(threading.current_thread().name)
                    return await loop.run_in_executor(pool, work)

                result = await ca.enroll_online(
                    EnrollRequest(csr_pem=csr, token=token), offload=offload
                )
            assert unhandled == []
            return result

        result = asyncio.run(main())
        assert len(offloaded) == 1
        issued = result.issued
        assert issued.certificate.public_key() == key.public_key()
        assert ca.facts.certificate is not None
        issued.certificate.verify_directly_issued_by(ca.facts.certificate)
        uses = ca.ledger.conn.execute("SELECT uses FROM tokens").fetchone()[0]
        assert uses == 1  # the start_enrollment call spent nothing
        status = ca.ledger.conn.execute(
            "SELECT status FROM certificates WHERE serial = ?", (issued.serial,)
        ).fetchone()[0]
        assert status == "valid"
    assert audit_problems(token_home.home) == []
