"""Adversarial review (h-review): what an unauthenticated enrollment costs the event loop.

The threat model ("Blocking work on the event loop") says invalid credentials cost the loop
"a parse and a failed lookup". ``start_enrollment`` checks the CSR's self-signature on the
loop before the token (``ca.parsing.load_csr``), and nothing bounds the RSA public exponent
first: an RSA-3072 key with a 3,000-bit exponent makes that one verification a full-size
modular exponentiation, about 70 times a normal CSR's (4.3 ms against 0.06 ms, measured).
A CSR whose signature does NOT verify costs the same and is exit 3, which the per-address
refusal limiter does not count (``server/app.py`` counts ``PolicyDenied`` only), so the
requests are unlimited. Real keys, real CSRs, real verification, real asyncio loop.
(Found by review; fixed: only P-256, P-384 and Ed25519 CSRs are verified on the loop, the
rest go whole to a worker thread, ``service.enrollment._cheap_to_verify``.)"""

from __future__ import annotations

import asyncio
import math
import secrets
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cyphrs_cli.errors import CyphrsError
from cyphrs_cli.service.authority import Authority
from cyphrs_cli.service.enrollment import EnrollRequest, start_enrollment

BITS = 3072
ROUNDS = 5


def _csr(*, huge_exponent: bool, break_signature: bool = False) -> bytes:
    """A CSR of a real RSA-3072 key whose public exponent is 65537 or ~3,000 bits."""
    numbers = rsa.generate_private_key(65537, BITS).private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    e = 65537
    while huge_exponent:
        e = secrets.randbits(BITS - 8) | 1 | (1 << (BITS - 9))
        if math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    private = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    ).private_key(unsafe_skip_rsa_key_validation=True)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "review")]))
        .sign(private, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if break_signature:
        der[-1] ^= 0x01  # the last byte of the signature
    return bytes(der)


def _loop_seconds(ca: Authority, csr: bytes) -> float:
    """Seconds ``start_enrollment`` holds the loop per request (a made-up token)."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        request = EnrollRequest(csr_pem=csr, token="cyphrs_tok_" + "A" * 43)
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.perf_counter()
            try:
                outcome = start_enrollment(ca, request, loop)
                assert outcome is None  # refused: handed to the blocking path
            except CyphrsError as error:
                assert error.exit_code == 3  # a signature that does not verify
            best = min(best, time.perf_counter() - started)
        return best

    return asyncio.run(main())


def test_a_hostile_csr_costs_the_loop_no_more_than_a_normal_one(ca: Authority) -> None:
    ca.start_group_commit()
    normal = _loop_seconds(ca, _csr(huge_exponent=False))
    hostile = _loop_seconds(ca, _csr(huge_exponent=True, break_signature=True))
    assert hostile < 10 * normal + 0.0005, (
        f"a hostile CSR held the loop {hostile * 1000:.2f} ms, a normal one {normal * 1000:.2f} ms"
    )
