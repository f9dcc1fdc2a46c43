"""EAB HMAC keys as certbot and lego must read them from their command lines."""

from __future__ import annotations

import base64

from cyphrs_cli.service.acme_eab import new_hmac_key


def test_hmac_keys_never_start_with_a_dash_and_carry_32_random_bytes() -> None:
    # With plain base64url one key in 64 starts with "-", and certbot then fails with
    # "argument --eab-hmac-key: expected one argument" (seen in CI). 2,000 draws would hit
    # that about 31 times.
    drawn = [new_hmac_key() for _ in range(2000)]
    keys = [key for _, key in drawn]
    assert not [key for key in keys if key.startswith("-")]
    assert len(set(keys)) == len(keys)
    for raw, key in drawn[:50]:
        assert len(raw) == 32 and base64.urlsafe_b64decode(key + "=") == raw
