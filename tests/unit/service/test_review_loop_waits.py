"""Adversarial review of "the event loop never waits" (threat model, "Blocking work on the
event loop"; h-review). The fast path calls ``Authority.issuer`` / ``facts`` / ``profiles``
on the loop, and each takes ``Authority._lock``, which a worker thread holds for as long
as it unlocks another CA's key (``signing_issuer`` -> ``load_issuer``: the secrets
callback, the KDF, a PKCS#11 login). In ``cyphrs serve`` that happens on a public request:
``GET`` of the root's CRL or an OCSP request for the root's responder unlocks the root on
a worker thread the first time. The secrets callback below takes 0.5 s for the root, the
time a network HSM login or a production-cost KDF can take; everything else is real (real
hierarchy, real SQLite, a real asyncio loop, a real token enrollment). (Found by review;
fixed: ``Authority._unlock`` unlocks under a lock of its own, cached reads take none.)"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

from cyphrs_cli.config.home import CaHome
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest, start_enrollment
from cyphrs_cli.service.tokens import TokenSpec
from tests.enrollment_helpers import make_csr
from tests.helpers import INTER_PASS, ROOT_PASS

ROOT_UNLOCK_SECONDS = 0.5


def test_the_loop_does_not_wait_while_a_worker_unlocks_another_ca(home: CaHome) -> None:
    root_asked = threading.Event()

    def secrets(purpose: str) -> bytes:
        if "root" in purpose:
            root_asked.set()
            time.sleep(ROOT_UNLOCK_SECONDS)  # a network HSM login, a costly KDF
            return ROOT_PASS.encode()
        return INTER_PASS.encode()

    with Authority.open(home, secrets=secrets) as authority:
        authority.start_group_commit()
        token = authority.create_token(
            TokenSpec(workflow="payments-recon", permissions=("ledger:read",), uses=1,
                      max_ttl=timedelta(hours=1))
        ).token  # fmt: skip
        # Warm everything the fast path reads once (config, facts, profiles, ledgers).
        root_name = next(n for n in authority.config.authorities if n != authority.issuer_name)
        assert authority.facts is not None and authority.profile("agent") is not None
        request = EnrollRequest(csr_pem=make_csr()[0], token=token)

        async def main() -> float:
            loop = asyncio.get_running_loop()
            unlocking = threading.Thread(target=authority.signing_issuer, args=(root_name,))
            unlocking.start()  # the worker thread of a GET /crl/<root> request
            try:
                await loop.run_in_executor(None, root_asked.wait, 10)
                before = time.monotonic()
                started = start_enrollment(authority, request, loop)  # on the loop
                stalled = time.monotonic() - before
                assert started is not None
                await asyncio.wrap_future(started)
                return stalled
            finally:
                await loop.run_in_executor(None, unlocking.join, 10)

        stalled = asyncio.run(main())
        assert stalled < 0.1, f"the event loop was blocked {stalled:.3f} s on Authority._lock"


def test_an_authority_closed_during_an_unlock_keeps_nothing_unlocked(home: CaHome) -> None:
    """The unlock runs outside the authority's lock, so ``close`` can come in the middle of
    it: the CA unlocked afterwards must not be kept (nor its session left open), and the
    caller gets the "closed" error (exit 2), not a key."""
    from cyphrs_cli.errors import UsageError

    root_asked = threading.Event()

    def secrets(purpose: str) -> bytes:
        if "root" in purpose:
            root_asked.set()
            time.sleep(ROOT_UNLOCK_SECONDS)
            return ROOT_PASS.encode()
        return INTER_PASS.encode()

    authority = Authority.open(home, secrets=secrets)
    root_name = next(n for n in authority.config.authorities if n != authority.issuer_name)
    outcome: list[object] = []

    def unlock() -> None:
        try:
            outcome.append(authority.signing_issuer(root_name))
        except UsageError as error:
            outcome.append(error)

    worker = threading.Thread(target=unlock)
    worker.start()
    assert root_asked.wait(10)
    authority.close()  # while the root's passphrase is being "typed"
    worker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], UsageError), outcome
    assert outcome[0].exit_code == 2
    assert root_name not in authority._issuers  # nothing kept after close
