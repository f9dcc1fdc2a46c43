"""``token create|list|revoke`` and ``provisioner add|list|remove``: the credentials that let
agents enroll with ``cyphrs serve`` without a human at the CA (see
``cyphrs_cli.service.tokens`` and ``cyphrs_cli.service.provisioners``).

Nothing here signs: these commands open the ledger only, never a CA key. A token's secret
is printed once (stdout) and stored as its SHA-256; it never appears on a command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.authority import open_authority
from cyphrs_cli.cli.options import HomeOption, IssuerOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.service.provisioners import ProvisionerSpec

TOKEN_EPILOG = f"""\
Examples:

  cyphrs token create --workflow payments-recon --permission ledger:read --uses 1 --ttl 10m

  TOKEN=$(cyphrs token create --workflow payments-recon --max-ttl 1h --json | jq -r .token)

  cyphrs token list --all --json

  cyphrs token revoke tok_3f9a0c1d2e4b5a69

A token is 256 random bits (cyphrs_tok_...), printed once and stored only as its SHA-256.
It binds profile, workflow, permissions, trust domain, the certificates' maximum TTL, its
number of uses and its own expiry; the agent's CSR contributes its key only. Uses are
spent in the same ledger transaction as the certificate they pay for. Created, used,
refused (with the rule) and revoked tokens are ledger events.

{EXIT_CODE_HELP}"""

PROVISIONER_EPILOG = f"""\
Examples:

  cyphrs provisioner add github --jwt-issuer https://token.actions.githubusercontent.com \\
      --audience https://ca.acme.internal --jwks-url \\
      https://token.actions.githubusercontent.com/.well-known/jwks \\
      --workflow payments-ci --require-claim repository=acme/payments \\
      --instance-claim run_id --permission ledger:read --max-ttl 1h

  cyphrs provisioner add ci --jwt-issuer https://ci.example --audience cyphrs \\
      --jwks-file jwks.json --workflow-claim job --algorithm ES256

  cyphrs provisioner list --json

  cyphrs provisioner remove github

A provisioner lets CI jobs enroll with their platform's OIDC JWT (Authorization: Bearer)
instead of a token. Its whole configuration (a --jwks-file's keys included) is recorded in
the ledger by a hash-chained provisioner.set event; an edited row verifies nothing
(exit 8). Only asymmetric algorithms can be allowed (RS256, RS384, RS512, PS256, PS384,
PS512, ES256, ES384, EdDSA). Each JWT enrolls once (its jti, or its hash, is recorded).
Always bind the claims that name your repository or project (--require-claim): an
issuer's audience alone is shared by everyone on that platform.

{EXIT_CODE_HELP}"""

token_app = typer.Typer(
    help="One-time enrollment tokens for agents (cyphrs serve's /v1/enroll).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
provisioner_app = typer.Typer(
    help="JWT provisioners: CI jobs enroll with their platform's OIDC token.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(provisioner_app, name="provisioner")


PermissionOption = Annotated[
    list[str] | None,
    typer.Option("--permission", help="Permission granted (repeatable).", show_default=False),
]
MaxTtlOption = Annotated[
    str | None,
    typer.Option("--max-ttl", help="Longest certificate lifetime [default: the profile's]."),
]


@token_app.command("create", epilog=TOKEN_EPILOG)
def create_token(
    workflow: Annotated[str, typer.Option("--workflow", help="Workflow the agent enrolls as.")],
    permission: PermissionOption = None,
    profile: Annotated[str, typer.Option("--profile", help="Issuance profile.")] = "agent",
    trust_domain: Annotated[
        str | None,
        typer.Option("--trust-domain", help="SPIFFE trust domain [default: the issuer's]."),
    ] = None,
    max_ttl: MaxTtlOption = None,
    uses: Annotated[int, typer.Option("--uses", help="Certificates it may pay for.")] = 1,
    ttl: Annotated[str, typer.Option("--ttl", help="How long the token itself is valid.")] = "10m",
    requester: Annotated[
        str | None,
        typer.Option("--requester", envvar="CYPHRS_ACTOR", help="Who asked for it."),
    ] = None,
    issuer: IssuerOption = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create a one-time enrollment token; its secret is printed once."""
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.ledger.events import utc_now
    from cyphrs_cli.service.tokens import TokenSpec

    spec = TokenSpec(
        profile=profile,
        workflow=workflow,
        permissions=tuple(permission or ()),
        trust_domain=trust_domain,
        max_ttl=parse_duration(max_ttl) if max_ttl else None,
        uses=uses,
        ttl=parse_duration(ttl),
        requester=requester,
    )
    with open_authority(home, issuer=issuer) as ca:
        created = ca.create_token(spec)
    if render.json_mode():
        render.emit_json(created.to_json(utc_now()))
        return
    render.emit_text(created.token + "\n")
    render.note(
        f"token {created.token_id}: workflow {workflow}, {uses} use(s), expires"
        f" {created.info.to_json(utc_now())['expires_at']}; shown once, stored only as a hash"
    )


@token_app.command("list", epilog=TOKEN_EPILOG)
def list_tokens(
    all_tokens: Annotated[
        bool, typer.Option("--all", help="Also used, expired and revoked tokens.")
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """List enrollment tokens (never their secrets), newest first."""
    from cyphrs_cli.ledger.events import utc_now

    now = utc_now()
    with open_authority(home) as ca:
        tokens = [t.to_json(now) for t in ca.list_tokens(include_inactive=all_tokens)]
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.token-list/v1", "tokens": tokens})
        return
    console = render.console()
    for t in tokens:
        console.print(
            f"{t['token_id']}  {t['status']:<8} {t['uses']}/{t['uses_allowed']}"
            f"  {t['profile']}/{t['workflow']}  until {t['expires_at']}"
            f"  {','.join(t['permissions'])}"
        )
    if not tokens:
        render.note("no tokens" + ("" if all_tokens else " (active); --all shows every one"))


@token_app.command("revoke", epilog=TOKEN_EPILOG)
def revoke_token(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_...), not its secret.")],
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Revoke an enrollment token so that it can no longer be used."""
    from cyphrs_cli.ledger.events import utc_now

    with open_authority(home) as ca:
        info = ca.revoke_token(token_id)
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.token-revoke/v1", **info.to_json(utc_now())})
        return
    render.console().print(f"Revoked token {info.token_id}")


def _claim_pairs(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    from cyphrs_cli.errors import UsageError

    out = []
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--require-claim takes NAME=VALUE, not {pair!r}")
        out.append((name, value))
    return tuple(sorted(out))


def _provisioner_json(spec: ProvisionerSpec) -> dict[str, Any]:
    document = spec.to_json()
    document["sha256"] = spec.sha256()
    return document


@provisioner_app.command("add", epilog=PROVISIONER_EPILOG)
def add_provisioner(
    name: Annotated[str, typer.Argument(help="Provisioner name.")],
    jwt_issuer: Annotated[str, typer.Option("--jwt-issuer", help="The JWTs' iss claim.")],
    audience: Annotated[str, typer.Option("--audience", help="The aud the JWTs must carry.")],
    jwks_file: Annotated[
        Path | None, typer.Option("--jwks-file", dir_okay=False, help="JWKS (pinned).")
    ] = None,
    jwks_url: Annotated[
        str | None, typer.Option("--jwks-url", help="JWKS URL (https; http on loopback only).")
    ] = None,
    algorithm: Annotated[
        list[str] | None,
        typer.Option("--algorithm", help="Allowed alg (repeatable) [default: RS256 ES256 EdDSA]."),
    ] = None,
    profile: Annotated[str, typer.Option("--profile", help="Issuance profile.")] = "agent",
    workflow: Annotated[
        str | None, typer.Option("--workflow", help="Fixed workflow for every JWT.")
    ] = None,
    workflow_claim: Annotated[
        str | None, typer.Option("--workflow-claim", help="Claim whose value is the workflow.")
    ] = None,
    permission: PermissionOption = None,
    permissions_claim: Annotated[
        str | None, typer.Option("--permissions-claim", help="Claim listing more permissions.")
    ] = None,
    instance_claim: Annotated[
        str | None, typer.Option("--instance-claim", help="Claim naming the instance (run id).")
    ] = None,
    require_claim: Annotated[
        list[str] | None,
        typer.Option("--require-claim", metavar="NAME=VALUE", help="Claim that must match."),
    ] = None,
    max_ttl: MaxTtlOption = None,
    replace: Annotated[bool, typer.Option("--replace", help="Change an existing one.")] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Record a JWT provisioner (its configuration is ledger trust state)."""
    import json

    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import InvalidInputError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.provisioners import DEFAULT_ALGORITHMS, ProvisionerSpec

    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(read_input(str(jwks_file)))
        except (ValueError, RecursionError) as exc:
            raise InvalidInputError(f"{jwks_file}: not JSON") from exc
    spec = ProvisionerSpec(
        name=name,
        issuer=jwt_issuer,
        audience=audience,
        jwks_url=jwks_url,
        jwks=jwks,
        algorithms=tuple(algorithm or DEFAULT_ALGORITHMS),
        profile=profile,
        workflow=workflow,
        workflow_claim=workflow_claim,
        permissions=tuple(permission or ()),
        permissions_claim=permissions_claim,
        instance_claim=instance_claim,
        required_claims=_claim_pairs(require_claim),
        max_ttl=parse_duration(max_ttl) if max_ttl else None,
    )
    with open_authority(home) as ca:
        changed = ca.set_provisioner(spec, replace=replace)
    if render.json_mode():
        render.emit_json(
            {"schema": "cyphrs.provisioner/v1", "changed": changed, **_provisioner_json(spec)}
        )
        return
    render.console().print(
        f"{'Recorded' if changed else 'Already recorded:'} provisioner {name}"
        f" (sha256 {spec.sha256()[:16]}…)"
    )


@provisioner_app.command("list", epilog=PROVISIONER_EPILOG)
def list_provisioners(
    home: HomeOption = None, json_output: JsonOption = False, quiet: QuietOption = False
) -> None:
    """List JWT provisioners, each checked against its ledger record."""
    with open_authority(home) as ca:
        specs = ca.list_provisioners()
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.provisioner-list/v1",
                "provisioners": [_provisioner_json(s) for s in specs],
            }
        )
        return
    console = render.console()
    for s in specs:
        console.print(
            f"{s.name}  iss={s.issuer}  aud={s.audience}  {s.jwks_url or 'jwks: pinned'}"
            f"  -> {s.profile}/{s.workflow or '{' + str(s.workflow_claim) + '}'}"
        )
    if not specs:
        render.note("no provisioners")


@provisioner_app.command("remove", epilog=PROVISIONER_EPILOG)
def remove_provisioner(
    name: Annotated[str, typer.Argument(help="Provisioner name.")],
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Withdraw a JWT provisioner: its JWTs enroll no more."""
    with open_authority(home) as ca:
        ca.remove_provisioner(name)
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.provisioner-remove/v1", "name": name})
        return
    render.console().print(f"Removed provisioner {name}")
