"""Use cases that sign one leaf from an order: ``issue`` and its question form ``dry_run``.

Order of work (DESIGN "The one issuance path"): profile and output directory checked and
the request validated (key generated) before the issuer is unlocked; the policy decision,
signature and ledger record happen in ``ca.issuance.issue_leaf``; files are written only
after the commit. Batch issuance is ``service.batch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from cyphrs_cli.ca.models import IssuedCertificate
    from cyphrs_cli.ca.orders import LeafOrder
    from cyphrs_cli.service.authority import Authority
    from cyphrs_cli.service.requests import DryRunResult, IssueRequest, IssueResult


def issue_one(authority: Authority, request: IssueRequest) -> IssueResult:
    """Issue the order of ``request``; see the module docstring for the order of work.

    Raises:
        CyphrsError: 2/3 a bad order, 5 a policy refusal (recorded), 6 an unknown profile
            or issuer, 7 an existing output without ``force`` or a duplicate agent
            instance, 8 a storage failure, 4/9 the issuer's key.
    """
    from cyphrs_cli.ca.delivery import check_output_dir
    from cyphrs_cli.ca.issuance import issue_leaf
    from cyphrs_cli.ca.orders import prepare_request

    order = request.order
    authority.issuer_name  # noqa: B018 -- an unknown --issuer is refused first (exit 6)
    profile = authority.profile(order.profile)
    if request.out_dir is not None:
        check_output_dir(request.out_dir, with_key=order.csr_pem is None, force=request.force)
    # The trust domain comes from the ledger (checked against config.toml), never the file.
    leaf, private_key = prepare_request(order, profile, authority.facts.trust_domain)
    issuer = authority.issuer
    issued = issue_leaf(authority.ledger, issuer, profile, leaf)
    return deliver(issued, private_key, request.out_dir)


def deliver(
    issued: IssuedCertificate,
    private_key: CertificateIssuerPrivateKeyTypes | None,
    out_dir: Path | None,
    *,
    replaces: str | None = None,
) -> IssueResult:
    """Only after the commit: the PEM bundle, and its files when there is a directory."""
    from cyphrs_cli.ca.delivery import pem_bundle, write_output_dir
    from cyphrs_cli.service.requests import IssueResult

    bundle = pem_bundle(issued, private_key)
    files = write_output_dir(out_dir, bundle) if out_dir is not None else None
    return IssueResult(issued, private_key, bundle, files, replaces)


def dry_run(authority: Authority, order: LeafOrder) -> DryRunResult:
    """The decision and the exact plan, with no key unlocked; a refusal raises
    ``PolicyDenied`` (exit 5) naming the rule and is not recorded (a question, not a
    request)."""
    from cyphrs_cli.ca.issuance import explain_leaf
    from cyphrs_cli.ca.orders import prepare_request
    from cyphrs_cli.service.requests import DryRunResult

    facts = authority.facts
    profile = authority.profile(order.profile)
    leaf, _ = prepare_request(order, profile, facts.trust_domain)
    decision, plan = explain_leaf(facts, profile, leaf)
    return DryRunResult(facts.name, leaf.key_type, decision, plan)
