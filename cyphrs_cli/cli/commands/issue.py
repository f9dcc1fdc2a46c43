"""``issue PROFILE``: sign an end-entity certificate (agent, server, client, or a home profile)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.authority import open_authority
from cyphrs_cli.cli.completion import complete_profiles
from cyphrs_cli.cli.options import (
    ForceOption,
    HomeOption,
    IssuerOption,
    JsonOption,
    NoInputOption,
    PassphraseEnvOption,
    PassphraseFileOption,
    PinEnvOption,
    PinFileOption,
    QuietOption,
)
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.service.requests import DryRunResult

ISSUE_EPILOG = f"""\
Examples:

  cyphrs issue agent --workflow payments-recon --permission ledger:read --out-dir ./agent1

  cyphrs issue server --dns api.acme.internal --csr api.csr --out-dir ./api

  cyphrs issue client --cn ci-deployer --ttl 15m --json > cert.json

  openssl req ... | cyphrs issue server --dns x.acme.internal --csr - --out -

  cyphrs issue agent --workflow payments-recon --ttl 2h --dry-run

  cyphrs issue agent --batch agents.jsonl --out-dir ./agents --json

A batch file is JSON Lines (one object per line) or TOML ([[certificate]] tables) with the
fields profile, name, workflow, instance, permissions, spiffe_id, cn, dns, ip, ttl, key_type,
csr, requester, out_dir. Every item is validated first (names, TTL, key type, CSR, profile,
policy, duplicate names and instances, output paths); one bad item refuses the whole batch
before anything is signed. Items are then issued in order, each recorded before it is
written. An item's files go to --out-dir/<out_dir> (a relative path without '..'; default:
its name); no two items may share a directory and no symbolic link below --out-dir is
followed. Batch exit codes: 3 a bad item or output path, 5 an item the policy refuses
(recorded), 6 an unknown profile, 7 an existing output without --force, 8 a certificate
recorded but not delivered (recorded as a certificate.delivery_failed event).

Output files in --out-dir: cert.pem, chain.pem (intermediates), fullchain.pem, ca.pem (root),
key.pem (0600, only when the key was generated here).

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("issue", epilog=ISSUE_EPILOG)(issue)


def issue(
    profile: Annotated[
        str | None,
        typer.Argument(
            help="Profile: agent, server, client or a home profile (default for --batch items).",
            autocompletion=complete_profiles,
        ),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Agent workflow (SPIFFE path segment).")
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Agent instance [default: random].")
    ] = None,
    permission: Annotated[
        list[str] | None,
        typer.Option(
            "--permission", "-p", help="Permission carried in the agent claims (repeatable)."
        ),
    ] = None,
    spiffe_id: Annotated[
        str | None, typer.Option("--spiffe-id", help="Explicit SPIFFE ID.")
    ] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="DNS SAN (repeatable).")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP SAN (repeatable).")] = None,
    cn: Annotated[str | None, typer.Option("--cn", help="Subject common name.")] = None,
    csr: Annotated[
        str | None,
        typer.Option(
            "--csr", help="Sign this CSR (path, or - for stdin) instead of generating a key."
        ),
    ] = None,
    key_type: Annotated[
        str | None,
        typer.Option(
            "--key-type", help="Generated key: p256 (default), p384, rsa3072, ed25519 ..."
        ),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Lifetime: 90s, 15m, 4h, 7d [default: profile's].")
    ] = None,
    requester: Annotated[
        str | None,
        typer.Option(
            "--requester",
            envvar="CYPHRS_REQUESTER",
            help="Who asked for it: a claim in the certificate [default: the actor]. The"
            " audit event's actor is who ran the command (--actor, CYPHRS_ACTOR).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write the PEM files here.", file_okay=False)
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", help="'-' writes certificate, chain and key PEM to stdout."),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="Issue every item of a TOML or JSON Lines file (or -)."),
    ] = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="With --batch: continue after an item refused at signing time"
            " (a storage failure still stops).",
        ),
    ] = False,
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            help="With --batch: items signed and committed per ledger transaction"
            " (default 128; each group's files are synced once).",
            min=1,
            max=4096,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be issued and which rules allow it."),
    ] = False,
    allow_duplicate: Annotated[
        bool,
        typer.Option(
            "--allow-duplicate",
            help="Issue even if this SPIFFE ID (agent instance) already has a valid certificate.",
        ),
    ] = False,
    issuer: IssuerOption = None,
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    force: ForceOption = False,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Issue a short-lived certificate from a profile, recorded in the ledger before output."""

    from cyphrs_cli.ca.orders import LeafOrder
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.cli.views import refuse_key_on_terminal, render_issued
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.requests import IssueRequest

    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)
    if batch is not None:
        from cyphrs_cli.cli.commands.batch import run_batch

        per_item = (
            workflow,
            instance,
            permission,
            spiffe_id,
            dns,
            ip,
            cn,
            csr,
            key_type,
            ttl,
            requester,
            allow_duplicate,
        )
        if out is not None or dry_run or any(v for v in per_item):
            raise UsageError(
                "with --batch, names, keys and TTLs go in the batch file and output in"
                " --out-dir or --json (not --out or --dry-run)"
            )
        run_batch(
            source=batch,
            default_profile=profile,
            issuer_name=issuer,
            home=home,
            out_dir=out_dir,
            force=force,
            keep_going=keep_going,
            secrets=secrets,
            group_size=group_size,
        )
        return
    if group_size is not None:
        raise UsageError("--group-size applies only to --batch")
    if profile is None:
        raise UsageError("name a profile (agent, server, client, ...) or use --batch FILE")
    if out not in (None, "-"):
        raise UsageError("--out takes only '-' (stdout); use --out-dir for files")
    if out == "-" and (out_dir is not None or render.json_mode()):
        raise UsageError("--out - cannot be combined with --out-dir or --json")
    if out is None and out_dir is None and not render.json_mode() and not dry_run:
        raise UsageError("say where the certificate goes: --out-dir DIR, --out - or --json")
    if csr is None and out_dir is None and (out == "-" or render.json_mode()) and not dry_run:
        refuse_key_on_terminal(force=force)
    order = LeafOrder(
        profile=profile,
        common_name=cn,
        dns_names=tuple(dns or ()),
        ip_addresses=tuple(ip or ()),
        spiffe_id=spiffe_id,
        workflow=workflow,
        instance=instance,
        permissions=tuple(permission or ()),
        requester=requester,
        ttl=ttl,
        key_type=key_type,
        csr_pem=read_input(csr) if csr is not None else None,
        csr_source=csr or "CSR",
        allow_duplicate=allow_duplicate,
    )
    # unlock=False: the key is unlocked only once the order, profile and outputs passed,
    # and never for --dry-run.
    with open_authority(home, issuer=issuer, secrets=secrets) as ca:
        if dry_run:
            _render_dry_run(ca.dry_run(order))
            return
        result = ca.issue(IssueRequest(order, out_dir=out_dir, force=force))
    render_issued(
        result, out=out, command="issue", headline="Issued {profile} certificate {serial}"
    )


def _render_dry_run(result: DryRunResult) -> None:
    from cyphrs_cli.ca.parsing import oid_name
    from cyphrs_cli.durations import format_duration

    decision, plan = result.decision, result.plan
    would = {
        "profile": plan.profile,
        "issuer": result.issuer,
        "subject": plan.subject.rfc4514_string(),
        "sans": list(plan.sans),
        "spiffe_id": plan.spiffe_id,
        "agent_claims": plan.claims.to_json() if plan.claims else None,
        "ttl_seconds": int(plan.ttl.total_seconds()),
        "key_type": result.key_type,
        "extensions": [{"name": oid_name(e.oid), "critical": c} for e, c in plan.extensions],
    }
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.issue-dry-run/v1",
                "allowed": True,
                "allowed_by": list(decision.allowed_by),
                "would_issue": would,
            }
        )
        return
    console = render.console()
    console.print(f"Would issue a certificate with profile {plan.profile} from {result.issuer}:")
    console.print(f"  subject      {would['subject'] or '(empty)'}")
    console.print(f"  names        {', '.join(plan.sans) or '-'}")
    console.print(f"  lifetime     {format_duration(decision.ttl)}")
    console.print("Allowed by:")
    for rule in decision.allowed_by:
        console.print(f"  - {rule}")
