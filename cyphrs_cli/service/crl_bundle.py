"""The CRL bundle use case (``cyphrs crl --all``): every CA's newest published CRL, for
services that check the whole chain.

nginx (``ssl_crl`` with ``ssl_verify_depth`` > 1) and Python ``ssl``
(``VERIFY_CRL_CHECK_CHAIN``) need a CRL from *every* CA in a client's chain -- root
included -- or they refuse every client ("unable to get certificate CRL"). Node reads
only the first CRL of a PEM string, so the bundle puts the leaf issuers first (deepest
CA first, the root last), and ``--out-dir`` writes one file per CA for it.

Nothing is signed here: the root's CRL is the one last published on the root's host
(30-day validity by default). A CA without a CRL, or whose newest CRL is past its
nextUpdate, is refused (exit 10): a bundle with a stale CRL makes nginx refuse everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyphrs_cli.config.home import CaHome


@dataclass(frozen=True)
class BundledCrl:
    authority: str
    role: str
    depth: int  # 0 for a root, 1 for its intermediates ...
    number: int
    this_update: str
    next_update: str
    pem: str


def collect_crls(home: CaHome, *, now: datetime | None = None) -> list[BundledCrl]:
    """The newest CRL of every CA in force (not revoked, not expired), deepest first.

    Raises:
        CyphrsError: 6 no CA home; 10 a CA has no CRL, or its newest is past nextUpdate.
    """
    from cyphrs_cli.ca.hierarchy import open_ledger
    from cyphrs_cli.errors import CheckNotMet
    from cyphrs_cli.ledger.events import rfc3339, utc_now

    home.require_initialised()
    moment = rfc3339(now or utc_now())
    with open_ledger(home) as ledger:
        authorities = ledger.conn.execute(
            "SELECT a.id, a.name, a.role, a.parent_id, c.status, c.not_after"
            " FROM authorities a JOIN certificates c ON c.id = a.certificate_id ORDER BY a.id"
        ).fetchall()
        parents = {row["id"]: row["parent_id"] for row in authorities}
        bundle = []
        for authority in authorities:
            if authority["status"] == "revoked" or authority["not_after"] < moment:
                continue
            name = str(authority["name"])
            newest = ledger.conn.execute(
                "SELECT number, this_update, next_update, pem FROM crls"
                " WHERE authority_id = ? AND pem IS NOT NULL ORDER BY number DESC LIMIT 1",
                (authority["id"],),
            ).fetchone()
            publish = f"cyphrs crl --issuer {name} (on the host that holds its key)"
            if newest is None:
                raise CheckNotMet(f"CA {name!r} has published no CRL", hint=publish)
            if newest["next_update"] <= moment:
                raise CheckNotMet(
                    f"the newest CRL of {name!r} (number {newest['number']}) passed its"
                    f" nextUpdate {newest['next_update']}; services would refuse every client",
                    hint=publish,
                )
            depth, parent = 0, parents.get(authority["id"])
            while parent is not None and depth < 16:
                depth, parent = depth + 1, parents.get(parent)
            bundle.append(
                BundledCrl(
                    name,
                    str(authority["role"]),
                    depth,
                    int(newest["number"]),
                    str(newest["this_update"]),
                    str(newest["next_update"]),
                    str(newest["pem"]),
                )
            )
    bundle.sort(key=lambda crl: (-crl.depth, crl.authority))
    return bundle
