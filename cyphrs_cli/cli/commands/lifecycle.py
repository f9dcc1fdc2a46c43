"""``renew``, ``revoke`` and ``crl``: what happens to certificates after issuance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.authority import open_authority
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
from cyphrs_cli.cli.output_file import refuse_existing_output, write_output
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.service.requests import CertificateTarget

RENEW_EPILOG = f"""\
Examples:

  cyphrs renew ./agent1/cert.pem --out-dir ./agent1 --force

  cyphrs renew --serial 3f1a... --reuse-key --json

  cyphrs renew a1/cert.pem --check && cyphrs renew a1/cert.pem --out-dir a1 --force

  cyphrs renew --ca-url https://ca.acme.internal:8443 ./agent

  cyphrs renew --ca-url https://ca.acme.internal:8443 ./agent --daemon \
      --exec 'systemctl reload my-agent'

With --check, exit 0 means renewal is due (2/3 of the lifetime has passed, or the
certificate is revoked or expired) and exit 10 means it is not.

With --ca-url, the agent renews online on its own machine (no CA home): DIR (or
DIR/cert.pem) is the directory 'cyphrs enroll' wrote; the current certificate and key
authenticate by mTLS, a new key is made here each time, and the files are swapped
atomically (the certificate last; an interrupted swap is finished on the next run). Only
DIR/ca.pem (or --root) is trusted for the CA. --daemon renews at --due-fraction of each
lifetime (+-5 % jitter), runs --exec (sh -c, with CYPHRS_CERT_DIR and CYPHRS_SERIAL set)
and/or sends --signal after each swap, backs off with jitter on errors, and exits with
the error's code when the certificate can no longer be renewed (revoked, superseded
elsewhere, expired). SIGTERM stops it between renewals.

{EXIT_CODE_HELP}"""

REVOKE_EPILOG = f"""\
Examples:

  cyphrs revoke ./agent1/cert.pem --reason key-compromise

  cyphrs revoke --serial 3f1a... --json

Reasons: key-compromise, ca-compromise, affiliation-changed, superseded,
cessation-of-operation, privilege-withdrawn, aa-compromise (omit for none). Publish a new CRL
afterwards with 'cyphrs crl'.

{EXIT_CODE_HELP}"""

CRL_EPILOG = f"""\
Examples:

  cyphrs crl --out agents.crl.pem

  cyphrs crl --issuer acme-root-ca --validity 30d --der --out root.crl

The CRL is also kept in the CA home as crls/ALIAS.crl (DER) and crls/ALIAS.crl.pem.
Concurrent runs are serialised; a CRL file of this issuer with a higher number is never
replaced by an older one (exit 7).

Deploying CRLs: nginx (ssl_crl) and Python ssl (VERIFY_CRL_CHECK_CHAIN) need the CRL of
every CA in the chain, root included. 'cyphrs crl --all --out crls.pem' writes every CA's
newest published CRL into one file (leaf issuers first, the root last; Node reads only
the first CRL of a PEM, so give it 'cyphrs crl --all --out-dir DIR', one file per CA).
--all signs nothing and needs no key. A CRL past its nextUpdate makes these services
refuse EVERY client: publish well before nextUpdate (24 h by default; run 'cyphrs crl'
from a timer every few hours, then 'cyphrs crl --all' and reload the service), and let
'cyphrs doctor --crl-file crls.pem' watch the deployed file.

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("renew", epilog=RENEW_EPILOG)(renew)
    app.command("revoke", epilog=REVOKE_EPILOG)(revoke)
    app.command("crl", epilog=CRL_EPILOG)(crl)


def _target(source: str | None, serial: str | None) -> CertificateTarget:
    """The certificate named on the command line: a file (or - for stdin) or --serial."""
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.requests import CertificateTarget

    if (source is None) == (serial is None):
        raise UsageError("name the certificate by file (or -) or by --serial, exactly one")
    if serial is not None:
        return CertificateTarget(serial=serial)
    assert source is not None
    return CertificateTarget(certificate=read_input(source), source=source)


CertArgument = Annotated[
    str | None, typer.Argument(help="Certificate file (PEM/DER), or - for stdin.")
]
SerialOption = Annotated[str | None, typer.Option("--serial", help="Ledger serial (hex).")]


def renew(
    source: CertArgument = None,
    serial: SerialOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only answer: exit 0 if renewal is due, 10 if not.")
    ] = False,
    due_fraction: Annotated[
        float,
        typer.Option(
            "--due-fraction", min=0.01, max=1.0, help="Due after this share of the lifetime."
        ),
    ] = 2 / 3,
    reuse_key: Annotated[
        bool, typer.Option("--reuse-key", help="Keep the certificate's public key.")
    ] = False,
    csr: Annotated[
        str | None, typer.Option("--csr", help="Take the new public key from this CSR (or -).")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="New lifetime [default: the old one's].")
    ] = None,
    requester: Annotated[
        str | None,
        typer.Option(
            "--requester",
            help="Change who the claims say asked [default: the original requester, kept];"
            " who renews is the actor (--actor, CYPHRS_ACTOR).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", file_okay=False, help="Write the new PEM files here."),
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="'-' writes PEM to stdout.")] = None,
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    force: ForceOption = False,
    no_input: NoInputOption = False,
    ca_url: Annotated[
        str | None,
        typer.Option("--ca-url", help="Renew online from 'cyphrs serve' (agent side, mTLS)."),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", dir_okay=False, help="With --ca-url: trust [default: DIR/ca.pem]."),
    ] = None,
    key_type: Annotated[
        str | None,
        typer.Option("--key-type", help="With --ca-url: new key type [default: the current]."),
    ] = None,
    daemon: Annotated[
        bool, typer.Option("--daemon", help="With --ca-url: keep renewing whenever due.")
    ] = False,
    exec_command: Annotated[
        str | None,
        typer.Option("--exec", metavar="CMD", help="With --daemon: run after each swap."),
    ] = None,
    signal_spec: Annotated[
        str | None,
        typer.Option("--signal", metavar="PID:SIG", help="With --daemon: signal after each swap."),
    ] = None,
    pid_file: Annotated[
        Path | None,
        typer.Option("--pid-file", dir_okay=False, help="With --signal SIG: whom to signal."),
    ] = None,
    jitter: Annotated[
        float,
        typer.Option("--jitter", min=0.0, max=0.49, help="With --daemon: share of the lifetime."),
    ] = 0.05,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, max=600.0, help="With --ca-url: seconds per call."),
    ] = 15.0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Renew a certificate: same identity and names, new serial, validity and (by default) key."""

    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.cli.views import refuse_key_on_terminal, render_issued
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.errors import CheckNotMet, UsageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.ledger.events import rfc3339
    from cyphrs_cli.service.requests import RenewalCheckRequest, RenewRequest

    if not 0.01 <= due_fraction <= 1.0:  # click's range check lets NaN through
        raise UsageError("--due-fraction must be a number from 0.01 to 1")
    online_only = (root, key_type, exec_command, signal_spec, pid_file)
    if ca_url is None and (daemon or any(v is not None for v in online_only)):
        raise UsageError("--root, --key-type, --daemon, --exec, --signal need --ca-url")
    if ca_url is not None:
        from cyphrs_cli.cli.commands.agent import renew_online

        offline = (serial, csr, out_dir, out, passphrase_file, passphrase_env, pin_file, pin_env)
        if check or reuse_key or force or any(v is not None for v in offline):
            raise UsageError(
                "with --ca-url give the agent's directory; --serial, --check, --reuse-key,"
                " --csr, --out-dir, --out, --force and CA secrets are for the CA host"
            )
        renew_online(
            ca_url=ca_url,
            source=source,
            root=root,
            ttl=ttl,
            key_type=key_type,
            daemon=daemon,
            exec_command=exec_command,
            signal_spec=signal_spec,
            pid_file=pid_file,
            due_fraction=due_fraction,
            jitter=jitter,
            timeout=timeout,
        )
        return
    target = _target(source, serial)
    if check:
        with open_authority(home) as ca:
            answer = ca.check_renewal(RenewalCheckRequest(target, due_fraction))
        if render.json_mode():
            render.emit_json(
                {
                    "schema": "cyphrs.renew-check/v1",
                    "serial": answer.serial,
                    "due": answer.due,
                    "due_at": rfc3339(answer.due_at),
                    "status": answer.status,
                }
            )
        if not answer.due:
            raise CheckNotMet(
                f"renewal of {answer.serial} is not due until {rfc3339(answer.due_at)}"
            )
        render.note(f"renewal of {answer.serial} is due (since {rfc3339(answer.due_at)})")
        return
    if reuse_key and csr is not None:
        raise UsageError("--reuse-key and --csr exclude each other")
    if out not in (None, "-") or (out == "-" and (out_dir or render.json_mode())):
        raise UsageError("--out takes only '-', without --out-dir or --json")
    if out is None and out_dir is None and not render.json_mode():
        raise UsageError("say where the certificate goes: --out-dir DIR, --out - or --json")
    if not reuse_key and csr is None and out_dir is None and (out == "-" or render.json_mode()):
        refuse_key_on_terminal(force=force)
    request = RenewRequest(
        target,
        reuse_key=reuse_key,
        csr_pem=read_input(csr) if csr else None,
        ttl=parse_duration(ttl) if ttl else None,
        requester=requester,
        out_dir=out_dir,
        force=force,
    )
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)
    with open_authority(home, secrets=secrets) as ca:
        result = ca.renew(request)
    render_issued(result, out=out, command="renew", headline="Renewed {replaces} as {serial}")


def revoke(
    source: CertArgument = None,
    serial: SerialOption = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="RFC 5280 reason (see below).")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Revoke a certificate (leaf or intermediate); recorded at once, listed on the next CRL."""
    from cyphrs_cli.ledger.events import rfc3339
    from cyphrs_cli.service.requests import RevokeRequest

    request = RevokeRequest(_target(source, serial), reason)  # checks the reason first
    with open_authority(home) as ca:
        revocation = ca.revoke(request)
    document = {
        "serial": revocation.serial,
        "revoked_at": rfc3339(revocation.revoked_at),
        "reason": revocation.reason,
        "is_ca": revocation.was_ca,
    }
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.revoke/v1", "revoked": document})
        return
    render.console().print(
        f"Revoked {revocation.serial} at {document['revoked_at']}"
        + (f" ({revocation.reason})" if revocation.reason else "")
    )
    render.note("publish a new CRL so relying parties learn of it: cyphrs crl")


def crl(
    issuer: IssuerOption = None,
    validity: Annotated[
        str | None,
        typer.Option("--validity", help="Until nextUpdate [default: 24h; 30d for a root]."),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Also write here (or - for stdout).")
    ] = None,
    der: Annotated[bool, typer.Option("--der", help="DER instead of PEM for --out.")] = False,
    all_issuers: Annotated[
        bool,
        typer.Option(
            "--all", help="Write every CA's newest CRL (no signing) to --out or --out-dir."
        ),
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", file_okay=False, help="With --all: one ALIAS.crl.pem per CA."),
    ] = None,
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
    """Publish the issuer's next CRL (v2, AKI, increasing CRL number) from the ledger."""
    from cryptography.hazmat.primitives import serialization

    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.ledger.events import rfc3339
    from cyphrs_cli.service.requests import CrlRequest

    if all_issuers or out_dir is not None:
        _crl_bundle(
            home,
            out,
            out_dir,
            all_issuers=all_issuers,
            force=force,
            der=der,
            issuer=issuer,
            validity=validity,
        )
        return
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)
    with open_authority(home, issuer=issuer, secrets=secrets) as ca:
        ca.issuer_name  # noqa: B018 -- an unknown --issuer is refused first (exit 6)
        refuse_existing_output(out, force=force)
        result = ca.crl(CrlRequest(parse_duration(validity) if validity else None))
    published, stored = result.published, result.path
    data = published.crl.public_bytes(
        serialization.Encoding.DER if der else serialization.Encoding.PEM
    )
    if out is not None:
        write_output(out, data)
    document = {
        "issuer": published.authority,
        "number": published.number,
        "this_update": rfc3339(published.this_update),
        "next_update": rfc3339(published.next_update),
        "entries": published.entries,
        "path": str(stored),
    }
    if render.json_mode() and out != "-":
        render.emit_json({"schema": "cyphrs.crl/v1", "crl": document})
    elif out != "-":
        render.console().print(
            f"Published CRL #{published.number} of {published.authority}: {published.entries}"
            f" revoked, next update {document['next_update']}"
        )


def _crl_bundle(
    home: str | None,
    out: str | None,
    out_dir: Path | None,
    *,
    all_issuers: bool,
    force: bool,
    der: bool,
    issuer: str | None,
    validity: str | None,
) -> None:
    """``crl --all``: every CA's newest CRL, into one PEM file (or stdout) or a directory."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, refuse_existing
    from cyphrs_cli.service.crl_bundle import collect_crls

    if not all_issuers:
        raise UsageError("--out-dir needs --all")
    if der or issuer or validity:
        raise UsageError("--all takes no --der, --issuer or --validity (it signs nothing)")
    if (out is None) == (out_dir is None):
        raise UsageError("--all needs --out FILE (or -) or --out-dir DIR, exactly one")
    crls = collect_crls(resolve_home(home))
    files: list[str] = []
    if out_dir is not None:
        targets = [out_dir / f"{crl.authority}.crl.pem" for crl in crls]
        refuse_existing(targets, force=force)
        out_dir.mkdir(parents=True, exist_ok=True)
        for target, crl in zip(targets, crls, strict=True):
            atomic_write(target, crl.pem.encode(), mode=PUBLIC_FILE)
            files.append(str(target))
    else:
        assert out is not None
        refuse_existing_output(out, force=force)
        write_output(out, "".join(crl.pem for crl in crls).encode())
        if out == "-":
            return
        files.append(out)
    views = [
        {
            "issuer": crl.authority,
            "role": crl.role,
            "number": crl.number,
            "this_update": crl.this_update,
            "next_update": crl.next_update,
        }
        for crl in crls
    ]
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.crl-bundle/v1", "crls": views, "files": files})
        return
    console = render.console()
    for view in views:
        console.print(
            f"CRL #{view['number']} of {view['issuer']} ({view['role']}), next update"
            f" {view['next_update']}"
        )
    console.print(f"written: {', '.join(files)}")
    soonest = min(crl.next_update for crl in crls)
    render.note(f"republish before {soonest}: past nextUpdate, services refuse every client")
