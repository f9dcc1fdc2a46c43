"""``ca.delivery.chain_pems``: an issuer's chain is PEM-encoded once and reused, and the
reuse never hands one chain's text to another chain (real hierarchy, openssl as oracle)."""

from __future__ import annotations

import subprocess

from cryptography import x509

from cyphrs_cli.ca.delivery import chain_pems
from tests.helpers import Hierarchy


def _openssl_pem(path: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", path], capture_output=True, check=True, text=True
    ).stdout


def test_each_chain_gets_its_own_pem_and_repeats_are_served_from_the_cache(
    hierarchy: Hierarchy,
) -> None:
    root = x509.load_pem_x509_certificate(hierarchy.root_cert.read_bytes())
    inter = x509.load_pem_x509_certificate(hierarchy.inter_cert.read_bytes())
    root_pem, inter_pem = (
        _openssl_pem(str(hierarchy.root_cert)),
        _openssl_pem(str(hierarchy.inter_cert)),
    )
    chain_pems.cache_clear()
    assert chain_pems((inter, root)) == (inter_pem, root_pem)
    assert chain_pems((root,)) == ("", root_pem)  # a root's own chain: no intermediates
    # Equal certificates loaded again hit the same entry; the other chain is not mixed in.
    again = (x509.load_pem_x509_certificate(inter_pem.encode()), root)
    assert chain_pems(again) == (inter_pem, root_pem)
    info = chain_pems.cache_info()
    assert info.hits == 1 and info.misses == 2
