"""Chain building by signature: does a certificate lead up to one of our anchors?"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

MAX_DEPTH = 8


def chains_to(
    cert: x509.Certificate, pool: list[x509.Certificate], anchors: list[x509.Certificate]
) -> bool:
    """Follow issuer links whose signatures verify, through ``pool``, to any of ``anchors``.

    Names alone prove nothing: each step checks the signature, so a look-alike issuer
    with the same subject never completes a chain.
    """
    from cryptography.exceptions import InvalidSignature

    candidates = pool + anchors
    current = cert
    for _ in range(MAX_DEPTH):
        if any(current == anchor for anchor in anchors):
            return True
        for parent in candidates:
            if parent == current or parent.subject != current.issuer:
                continue
            try:
                current.verify_directly_issued_by(parent)
            except (InvalidSignature, ValueError, TypeError):
                continue
            current = parent
            break
        else:
            return False
    return False
