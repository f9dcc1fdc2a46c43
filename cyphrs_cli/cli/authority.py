"""Opening the CA home a command names (``--home``) as an ``Authority``, key still locked.

The service modules are imported inside the function: command modules import this one at
their top, and ``cyphrs --help`` must stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyphrs_cli.keystore.base import SecretProvider
    from cyphrs_cli.service.authority import Authority


def no_secrets(purpose: str) -> bytes:
    """The secrets of a command that never unlocks a key: being asked is a bug."""
    raise AssertionError(f"no secret expected here ({purpose})")


def open_authority(
    home: str | None, *, issuer: str | None = None, secrets: SecretProvider | None = None
) -> Authority:
    """The ``Authority`` of ``home`` (``--home``, else CYPHRS_HOME, else the platform's),
    its key unlocked only when a call needs it, with ``secrets``; without them the
    command must need none."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.service.authority import Authority

    return Authority.open(
        resolve_home(home), issuer=issuer, secrets=secrets or no_secrets, unlock=False
    )
