"""``inspect``: show a certificate, chain, CSR, or a ledger serial, and whether it chains here."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import HomeOption, JsonOption, QuietOption
from cyphrs_cli.errors import EXIT_CODE_HELP

INSPECT_EPILOG = f"""\
Examples:

  cyphrs inspect ./agent1/cert.pem

  cyphrs inspect ./agent1/fullchain.pem --json | jq '.objects[0].spiffe_id'

  cyphrs inspect --serial 3f1a... --json

  cat api.csr | cyphrs inspect -

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("inspect", epilog=INSPECT_EPILOG)(inspect)


def inspect(
    source: Annotated[str | None, typer.Argument(help="PEM/DER file, or - for stdin.")] = None,
    serial: Annotated[
        str | None, typer.Option("--serial", help="Inspect a certificate from the ledger.")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode certificates and CSRs: names, SPIFFE ID, agent claims, validity, chain status."""
    from cryptography import x509

    from cyphrs_cli.ca.chains import chains_to
    from cyphrs_cli.ca.parsing import (
        certificate_summary,
        csr_summary,
        is_csr,
        load_certificates,
        load_csr,
    )
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import InvalidInputError, UsageError
    from cyphrs_cli.fsutil import read_input
    from cyphrs_cli.service.records import home_authorities, ledger_records, recorded_pem

    if (source is None) == (serial is None):
        raise UsageError("give a file (or -) or --serial, exactly one")
    ca_home = resolve_home(home)
    objects: list[dict[str, Any]] = []
    if serial is not None:
        data = recorded_pem(ca_home, serial)
        label = f"ledger serial {serial}"
    else:
        assert source is not None
        data = read_input(source)
        label = source
    # cryptography decodes names and extensions lazily: a structurally valid certificate
    # with, say, invalid UTF-8 in a UTF8String fails only when a field is read. That is the
    # input's fault (exit 3), not a bug.
    try:
        if is_csr(data):
            objects.append(csr_summary(load_csr(data, source=label)))
        else:
            certs = load_certificates(data, source=label)
            authorities, claims_oid = home_authorities(ca_home)
            for cert, record in zip(certs, ledger_records(ca_home, certs), strict=True):
                summary = certificate_summary(cert, claims_oid=claims_oid)
                roots = [c for c in authorities if c.subject == c.issuer]
                summary["chains_to_home_root"] = (
                    chains_to(cert, certs + authorities, roots) if authorities else None
                )
                summary["ledger"] = record
                objects.append(summary)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidInputError(f"{label}: malformed certificate or request field ({exc})") from exc
    document = {"schema": "cyphrs.inspect/v1", "source": label, "objects": objects}
    if render.json_mode():
        render.emit_json(document)
    else:
        _print_human(document)


def _print_human(document: dict[str, Any]) -> None:
    """Rows of (label, value, style); the console has markup off, so data prints as is."""
    from datetime import timedelta

    from cyphrs_cli.durations import format_duration

    console = render.console()

    def row(label: str, value: str, style: str | None = None) -> None:
        console.print(f"  {label:<12} ", end="")
        console.print(value, style=style)

    for index, obj in enumerate(document["objects"]):
        if index:
            console.print()
        if obj["type"] == "csr":
            console.print(
                f"Certificate request  {obj['subject'] or '(empty subject)'}", style="bold"
            )
            row("key", _key_text(obj["key"]))
            row("requested", ", ".join(obj["requested_sans"]) or "-")
            row(
                "signature",
                "valid" if obj["signature_valid"] else "INVALID",
                None if obj["signature_valid"] else "red",
            )
            continue
        kind = "CA certificate" if obj["is_ca"] else "Certificate"
        ledger = obj.get("ledger") or {}
        revoked = ledger.get("status") == "revoked"
        headline = f"{kind}  {obj['subject'] or '(empty subject)'}"
        if revoked:
            reason = f", {ledger['reason']}" if ledger.get("reason") else ""
            headline += f"  REVOKED {ledger.get('revoked_at') or ''}{reason}".rstrip()
        console.print(headline, style="bold red" if revoked else "bold")
        row("issuer", obj["issuer"])
        row("serial", obj["serial"])
        if revoked:
            row("valid", f"{obj['not_before']} → {obj['not_after']} (revoked)", "red")
        elif obj["expired"]:
            row("valid", f"{obj['not_before']} → {obj['not_after']} (expired)", "red")
        else:
            left = format_duration(timedelta(seconds=obj["seconds_left"]))
            row("valid", f"{obj['not_before']} → {obj['not_after']} ({left} left)")
        row("key", _key_text(obj["key"]))
        row("signature", obj["signature_algorithm"])
        row("sha256", obj["fingerprints"]["sha256"].removeprefix("sha256:"))
        if obj["sans"]:
            row("names", ", ".join(obj["sans"]))
        if obj["spiffe_id"]:
            row("spiffe id", obj["spiffe_id"])
        claims = obj["agent_claims"]
        if claims:
            row("workflow", claims["workflow"])
            row("permissions", ", ".join(claims["permissions"]) or "-")
            row("requester", claims["requester"])
        chain = obj.get("chains_to_home_root")
        row(
            "chains here",
            {True: "yes", False: "NO", None: "no CA home"}[chain],
            {True: "green", False: "red", None: None}[chain],
        )
        if ledger:
            status = ledger.get("status", "") if ledger["recorded"] else "not recorded"
            row("ledger", status, {"valid": "green", "superseded": "yellow"}.get(status, "red"))
        for ext in obj["extensions"]:
            crit = " (critical)" if ext["critical"] else ""
            console.print(f"  ext {ext['name']}{crit}: {extension_text(ext['value'])}", style="dim")


def extension_text(value: Any) -> str:
    """An extension's decoded value in words, never a Python repr: basic constraints as
    "CA: no" / "CA: yes, path length 0", lists joined, tables as "key: value; ..."."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(extension_text(v) for v in value) or "none"
    if isinstance(value, dict):
        if set(value) == {"ca", "path_length"}:
            if not value["ca"]:
                return "CA: no"
            limit = value["path_length"]
            return "CA: yes, " + (
                "no path length limit" if limit is None else f"path length {limit}"
            )
        return "; ".join(
            f"{key.replace('_', ' ')}: {extension_text(item)}" for key, item in value.items()
        )
    return str(value)


def _key_text(key: dict[str, Any]) -> str:
    if key["type"] == "ec":
        return f"EC {key['curve']}"
    return f"{key['type'].upper()} {key.get('bits', '')}".strip()
