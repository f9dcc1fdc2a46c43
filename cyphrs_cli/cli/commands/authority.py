"""``init-root`` and ``create-intermediate``: build the CA hierarchy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.completion import complete_authorities
from cyphrs_cli.cli.options import (
    AliasOption,
    ExistingKeyOption,
    ForceOption,
    HomeOption,
    JsonOption,
    KeyUriOption,
    NoInputOption,
    OrganizationOption,
    PassphraseEnvOption,
    PassphraseFileOption,
    PinEnvOption,
    PinFileOption,
    QuietOption,
)
from cyphrs_cli.cli.output_file import refuse_existing_output, write_output
from cyphrs_cli.errors import EXIT_CODE_HELP

if TYPE_CHECKING:
    from cyphrs_cli.ca.hierarchy import CaCreated
    from cyphrs_cli.config.home import CaHome

INIT_ROOT_EPILOG = f"""\
Examples:

  cyphrs init-root --name "Acme Root CA" --passphrase-file root.pass

  cyphrs init-root --name "Acme Root CA" --key-type rsa4096 --validity 20y --json

{EXIT_CODE_HELP}"""

INTERMEDIATE_EPILOG = f"""\
Examples:

  cyphrs create-intermediate --name "Acme Agents CA" --trust-domain acme.internal
  --passphrase-file inter.pass --root-passphrase-file root.pass

  cyphrs create-intermediate --name "Acme Web CA" --name-constraints --permit-dns acme.internal ...

{EXIT_CODE_HELP}"""


OFFLINE_EPILOG = f"""\
The offline-root flow, in three steps:

  online$  cyphrs create-intermediate --name "Acme Agents CA" --trust-domain acme.internal
           --name-constraints --validity 2y --passphrase-file inter.pass --csr-out agents.csr

  root$    cyphrs sign-intermediate agents.csr --dry-run

  root$    cyphrs sign-intermediate agents.csr --out agents.pem --passphrase-file root.pass

  online$  cyphrs import-intermediate agents.pem --root root.pem

Examples: as above. The trust domain, name constraints, path length and validity are asked
for on the online host and travel inside the CSR; sign-intermediate shows them (--dry-run,
--json, or a prompt on a terminal; --yes skips it) and refuses --trust-domain,
--name-constraints, --permit-*, --path-length and --validity for such a CSR (exit 2): those
options apply only to a CSR made by another tool. The import checks that the certificate
carries exactly the requested constraints (exit 3 otherwise). The root's key never leaves
its host; the online home records the root certificate with the key URI "offline:". The
import trusts only this home's root or --root (copy it from the root's host and compare its
fingerprint): a root inside agents.pem that differs from it, or a chain that does not
validate, is refused (exit 3). See docs/runbook.md.

{EXIT_CODE_HELP}"""


def created_json(created: CaCreated, home: CaHome) -> dict[str, Any]:
    from cyphrs_cli.ledger.events import rfc3339

    issued = created.issued
    return {
        "home": str(home.root),
        "authority": {
            "alias": created.alias,
            "role": created.role,
            "subject": issued.certificate.subject.rfc4514_string(),
            "serial": issued.serial,
            "fingerprint": issued.fingerprint,
            "not_before": rfc3339(issued.not_before),
            "not_after": rfc3339(issued.not_after),
            "validity_clamped": issued.clamped,
            "key_uri": created.key_uri,
            "certificate_path": str(home.resolve(created.cert_path)),
        },
    }


def _render_created(command: str, created: CaCreated, home: CaHome) -> None:
    document = created_json(created, home)
    if render.json_mode():
        render.emit_json({"schema": f"cyphrs.{command}/v1", **document})
        return
    auth = document["authority"]
    out = render.console()
    out.print(f"Created {auth['role']} CA {auth['alias']} in {document['home']}", style="bold")
    for label in ("subject", "serial", "fingerprint", "not_after", "key_uri", "certificate_path"):
        out.print(f"  {label.replace('_', ' '):<17}{auth[label]}")
    if auth["validity_clamped"]:
        render.note("note: validity was shortened to end with the issuer's")


def register(app: typer.Typer) -> None:
    app.command("init-root", epilog=INIT_ROOT_EPILOG)(init_root)
    app.command("create-intermediate", epilog=INTERMEDIATE_EPILOG)(create_intermediate)
    app.command("sign-intermediate", epilog=OFFLINE_EPILOG)(sign_intermediate)
    app.command("import-intermediate", epilog=OFFLINE_EPILOG)(import_intermediate)


def init_root(
    name: Annotated[str, typer.Option("--name", "-n", help="Root CA common name.")],
    organization: OrganizationOption = None,
    alias: AliasOption = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="p384, p256, rsa3072, rsa4096 or ed25519.")
    ] = "p384",
    key_uri: KeyUriOption = None,
    validity: Annotated[str, typer.Option("--validity", help="Lifetime, e.g. 10y.")] = "10y",
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    existing_key: ExistingKeyOption = False,
    claims_oid: Annotated[
        str | None,
        typer.Option(
            "--claims-oid",
            help="Your organisation's OID for the agent-claims extension (recorded).",
        ),
    ] = None,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create a CA home with a new self-signed root CA (key encrypted, or on a token)."""
    from cyphrs_cli.ca.hierarchy import create_root
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import prepare_home_dir, resolve_home
    from cyphrs_cli.config.trust import set_claims_oid, validate_claims_oid
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.keystore.base import KeySpec

    ca_home = resolve_home(home)
    if claims_oid is not None:
        validate_claims_oid(claims_oid)
    prepare_home_dir(ca_home)
    created = create_root(
        ca_home,
        common_name=name,
        organization=organization,
        alias=alias,
        key_spec=KeySpec.parse(key_type),
        key_uri=key_uri,
        ttl=parse_duration(validity),
        secrets=ca_key_secrets(
            passphrase_file, passphrase_env, pin_file, pin_env, no_input, new=True
        ),
        existing_key=existing_key,
    )
    if claims_oid is not None:
        set_claims_oid(ca_home, claims_oid)
    _render_created("init-root", created, ca_home)


def create_intermediate(
    name: Annotated[str, typer.Option("--name", "-n", help="Intermediate CA common name.")],
    organization: OrganizationOption = None,
    alias: AliasOption = None,
    trust_domain: Annotated[
        str | None,
        typer.Option("--trust-domain", help="SPIFFE trust domain this CA issues agent IDs in."),
    ] = None,
    name_constraints: Annotated[
        bool,
        typer.Option(
            "--name-constraints",
            help=(
                "Add critical name constraints: URI:<trust-domain>, each --permit-dns and"
                " each --permit-ip."
            ),
        ),
    ] = False,
    permit_dns: Annotated[
        list[str] | None,
        typer.Option("--permit-dns", help="Permitted DNS subtree (with --name-constraints)."),
    ] = None,
    permit_ip: Annotated[
        list[str] | None,
        typer.Option("--permit-ip", help="Permitted IP subtree, CIDR (with --name-constraints)."),
    ] = None,
    path_length: Annotated[
        int,
        typer.Option(
            "--path-length", min=0, max=3, help="CAs allowed below this one (pathLenConstraint)."
        ),
    ] = 0,
    key_type: Annotated[str, typer.Option("--key-type", help="p256, p384, rsa3072, ...")] = "p256",
    key_uri: KeyUriOption = None,
    validity: Annotated[
        str,
        typer.Option(
            "--validity",
            help="Lifetime, clamped to the root's (carried in the CSR with --csr-out).",
        ),
    ] = "5y",
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    existing_key: ExistingKeyOption = False,
    root_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--root-passphrase-file",
            envvar="CYPHRS_ROOT_PASSPHRASE_FILE",
            dir_okay=False,
            help="File holding the root key's passphrase.",
        ),
    ] = None,
    root_passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--root-passphrase-env",
            metavar="VAR",
            help="Environment variable holding the root key's passphrase.",
        ),
    ] = None,
    csr_out: Annotated[
        Path | None,
        typer.Option(
            "--csr-out",
            dir_okay=False,
            help=(
                "Offline root: create the key and write a CSR here for the root's host to sign;"
                " trust domain, name constraints, path length and validity travel in it."
            ),
        ),
    ] = None,
    force: ForceOption = False,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create an intermediate CA signed by this home's root (pathLen 0 by default)."""
    from cyphrs_cli.ca.hierarchy import create_intermediate as create
    from cyphrs_cli.cli.secrets import ca_key_secrets, secret_provider
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.durations import parse_duration
    from cyphrs_cli.keystore.base import KeySpec

    ca_home = resolve_home(home)
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input, new=True)
    if csr_out is None and force:
        from cyphrs_cli.errors import UsageError

        raise UsageError("--force applies only to --csr-out (an existing CSR file)")
    if csr_out is not None:
        from cyphrs_cli.ca.offline import IntermediateRequest
        from cyphrs_cli.errors import UsageError

        ignored = [
            flag
            for flag, value in (
                ("--root-passphrase-file", root_passphrase_file),
                ("--root-passphrase-env", root_passphrase_env),
            )
            if value is not None
        ]
        if ignored:
            raise UsageError(
                f"{', '.join(ignored)}: the root key is not used with --csr-out"
                " (the root's host signs the CSR)"
            )
        _request_intermediate(
            ca_home,
            csr_out,
            force,
            name=name,
            organization=organization,
            alias=alias,
            key_spec=KeySpec.parse(key_type),
            key_uri=key_uri,
            request=IntermediateRequest(
                trust_domain=trust_domain,
                name_constraints=name_constraints,
                permitted_dns=tuple(permit_dns or ()),
                permitted_ip=tuple(permit_ip or ()),
                path_length=path_length,
                validity=validity,
            ),
            secrets=secrets,
            existing_key=existing_key,
        )
        return
    created = create(
        ca_home,
        common_name=name,
        organization=organization,
        alias=alias,
        key_spec=KeySpec.parse(key_type),
        key_uri=key_uri,
        ttl=parse_duration(validity),
        trust_domain=trust_domain,
        name_constraints=name_constraints,
        permitted_dns=tuple(permit_dns or ()),
        permitted_ip=tuple(permit_ip or ()),
        path_length=path_length,
        ekus=("clientAuth", "serverAuth"),
        secrets=secrets,
        root_secrets=secret_provider(
            file=root_passphrase_file,
            env=root_passphrase_env,
            flag="--root-passphrase",
            no_input=no_input,
            pin_file=pin_file,
            pin_env=pin_env,
        ),
        existing_key=existing_key,
    )
    _render_created("create-intermediate", created, ca_home)


def _request_intermediate(home: CaHome, csr_out: Path, force: bool, **request: Any) -> None:
    from cyphrs_cli.ca.offline import request_intermediate
    from cyphrs_cli.config.home import prepare_home_dir
    from cyphrs_cli.fsutil import PUBLIC_FILE, atomic_write, refuse_existing

    refuse_existing([csr_out], force=force)
    prepare_home_dir(home)
    alias, csr_pem = request_intermediate(
        home,
        common_name=request["name"],
        organization=request["organization"],
        alias=request["alias"],
        key_spec=request["key_spec"],
        key_uri=request["key_uri"],
        request=request["request"],
        secrets=request["secrets"],
        existing_key=request["existing_key"],
    )
    atomic_write(csr_out, csr_pem, mode=PUBLIC_FILE)
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.intermediate-request/v1",
                "home": str(home.root),
                "alias": alias,
                "csr_path": str(csr_out),
                "request": request["request"].to_json(),
            }
        )
        return
    out = render.console()
    out.print(f"Created the key of {alias} and wrote its CSR to {csr_out}; it requests:")
    for label, value in request["request"].lines():
        out.print(f"  {label:<17}{value}")
    render.note(
        "sign it on the root's host: cyphrs sign-intermediate CSR --out CERT, then "
        "cyphrs import-intermediate CERT --root ROOT.pem here"
    )


def sign_intermediate(
    csr: Annotated[str, typer.Argument(help="The intermediate's CSR (PEM/DER file, or -).")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Write the certificate and root (PEM) here, or - (not with --dry-run)."
        ),
    ] = None,
    trust_domain: Annotated[
        str | None,
        typer.Option(
            "--trust-domain",
            help="Foreign CSRs only: SPIFFE trust domain for --name-constraints"
            " (a cyphrs CSR carries its own).",
        ),
    ] = None,
    name_constraints: Annotated[
        bool,
        typer.Option(
            "--name-constraints",
            help="Foreign CSRs only: add critical name constraints (URI:<trust-domain>,"
            " --permit-dns, --permit-ip).",
        ),
    ] = False,
    permit_dns: Annotated[
        list[str] | None,
        typer.Option(
            "--permit-dns",
            help="Foreign CSRs only: permitted DNS subtree (with --name-constraints).",
        ),
    ] = None,
    permit_ip: Annotated[
        list[str] | None,
        typer.Option(
            "--permit-ip",
            help="Foreign CSRs only: permitted IP subtree, CIDR (with --name-constraints).",
        ),
    ] = None,
    path_length: Annotated[
        int | None,
        typer.Option(
            "--path-length",
            min=0,
            max=3,
            help="Foreign CSRs only: CAs allowed below the intermediate [default: 0].",
            show_default=False,
        ),
    ] = None,
    validity: Annotated[
        str | None,
        typer.Option(
            "--validity",
            help="Foreign CSRs only: lifetime, clamped to the root's [default: 5y].",
            show_default=False,
        ),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            help="Root CA (alias) to sign with [default: this home's root].",
            autocompletion=complete_authorities,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Show the request the CSR carries and stop (no key unlocked)."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Sign without asking on a terminal.")
    ] = False,
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
    """On the root's host: sign an intermediate CSR made elsewhere (offline-root flow)."""
    from cyphrs_cli.ca.offline import IntermediateRequest, SignedIntermediate
    from cyphrs_cli.ca.offline import sign_intermediate as sign
    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.fsutil import read_input

    if out is None and not dry_run:
        raise UsageError("name the output with --out FILE (or --out -)")
    if dry_run and (out is not None or force or yes):
        raise UsageError("--dry-run signs and writes nothing: drop --out, --force and --yes")
    if not dry_run:
        refuse_existing_output(out, force=force)
    given = tuple(
        flag
        for flag, value in (
            ("--trust-domain", trust_domain),
            ("--name-constraints", name_constraints or None),
            ("--permit-dns", permit_dns or None),
            ("--permit-ip", permit_ip or None),
            ("--path-length", path_length),
            ("--validity", validity),
        )
        if value is not None
    )
    flags = IntermediateRequest(
        trust_domain=trust_domain,
        name_constraints=name_constraints,
        permitted_dns=tuple(permit_dns or ()),
        permitted_ip=tuple(permit_ip or ()),
        path_length=0 if path_length is None else path_length,
        validity=validity or "5y",
    )

    def confirm(pending: SignedIntermediate) -> bool:
        """On a terminal: show the request and ask. Scripts (no terminal, --no-input,
        --yes) proceed; the request is in the output either way."""
        if yes or no_input or not sys.stdin.isatty() or not sys.stderr.isatty():
            return True
        from cyphrs_cli.safe_text import terminal_safe

        for line in _request_lines(pending):
            sys.stderr.write(terminal_safe(line) + "\n")
        return typer.confirm("Sign this intermediate?", err=True)

    ca_home = resolve_home(home)
    result = sign(
        ca_home,
        read_input(csr),
        source=csr,
        flags=flags,
        flags_given=given,
        secrets=ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input),
        root_name=issuer,
        dry_run=dry_run,
        confirm=confirm,
    )
    request_view = {**result.request.to_json(), "carried_in_csr": result.carried}
    if result.issued is None or result.bundle is None:  # --dry-run
        if render.json_mode():
            render.emit_json(
                {
                    "schema": "cyphrs.sign-intermediate/v1",
                    "dry_run": True,
                    "subject": result.subject,
                    "request": request_view,
                }
            )
            return
        console = render.console()
        for line in _request_lines(result):
            console.print(line)
        return
    assert out is not None
    write_output(out, result.bundle)
    if out == "-":
        return
    from cyphrs_cli.cli.views import issued_view

    view = {**issued_view(result.issued), "path": out}
    if render.json_mode():
        render.emit_json(
            {"schema": "cyphrs.sign-intermediate/v1", "certificate": view, "request": request_view}
        )
        return
    console = render.console()
    console.print(f"Signed intermediate {view['subject']} ({view['serial']}) into {out}")
    for line in _request_lines(result)[1:]:
        console.print(line)


def _request_lines(result: Any) -> list[str]:
    """The request being signed, as the operator confirms it."""
    origin = "carried in the CSR" if result.carried else "from this command's options"
    lines = [f"Intermediate {result.subject}, request {origin}:"]
    return lines + [f"  {label:<17}{value}" for label, value in result.request.lines()]


def import_intermediate(
    certificate: Annotated[str, typer.Argument(help="Signed certificate (+ root) PEM, or -.")],
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            dir_okay=False,
            help="The trusted root certificate (needed until this home has its root).",
        ),
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Finish the offline-root flow: record the signed intermediate for its pending key."""
    from cyphrs_cli.ca.offline import import_intermediate as do_import
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.fsutil import read_input

    ca_home = resolve_home(home)
    imported = do_import(
        ca_home,
        read_input(certificate),
        source=certificate,
        root_pem=read_input(str(root.absolute())) if root else None,
    )
    if render.json_mode():
        render.emit_json(
            {
                "schema": "cyphrs.import-intermediate/v1",
                "alias": imported.alias,
                "root": imported.root_alias,
                "subject": imported.certificate.subject.rfc4514_string(),
            }
        )
        return
    render.console().print(
        f"Imported intermediate {imported.alias} (root {imported.root_alias}); it can issue now"
    )
