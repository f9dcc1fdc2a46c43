"""``trust-bundle``: the home's root certificate(s) as PEM, for relying parties' trust stores."""

from __future__ import annotations

from typing import Annotated

import typer

from cyphrs_cli.cli import render
from cyphrs_cli.cli.options import ForceOption, HomeOption, JsonOption, QuietOption
from cyphrs_cli.cli.output_file import refuse_existing_output, write_output
from cyphrs_cli.errors import EXIT_CODE_HELP

TRUST_BUNDLE_EPILOG = f"""\
Services that verify agents (nginx ssl_client_certificate, Python ssl, Node tls 'ca',
Go tls.Config.ClientCAs) should trust the root and take intermediates from the chain
each agent presents (fullchain.pem). Every root in force is written, old and new during a
root rotation; compare the printed SHA-256 fingerprints with the ones your CA operator
published before deploying.

Examples:

  cyphrs trust-bundle --out /etc/nginx/agents-ca.pem

  cyphrs trust-bundle --out - | openssl x509 -noout -subject

  cyphrs trust-bundle --out ca.pem --json | jq -r '.roots[].fingerprint_sha256'

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("trust-bundle", epilog=TRUST_BUNDLE_EPILOG)(trust_bundle)


def trust_bundle(
    out: Annotated[
        str, typer.Option("--out", help="Write the PEM bundle here (- for stdout).")
    ] = "-",
    home: HomeOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write the home's root certificate(s) as PEM for trust stores, with fingerprints."""
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import UsageError
    from cyphrs_cli.service.trust_bundle import collect_trust_anchors

    if out == "-" and render.json_mode():
        raise UsageError("--json needs --out FILE (stdout carries the JSON document)")
    refuse_existing_output(out, force=force)
    anchors = collect_trust_anchors(resolve_home(home))
    write_output(out, "".join(anchor.pem for anchor in anchors).encode())
    views = [
        {
            "authority": anchor.authority,
            "subject": anchor.subject,
            "serial": anchor.serial,
            "fingerprint_sha256": anchor.fingerprint_sha256,
            "not_before": anchor.not_before,
            "not_after": anchor.not_after,
        }
        for anchor in anchors
    ]
    if render.json_mode():
        render.emit_json({"schema": "cyphrs.trust-bundle/v1", "roots": views, "file": out})
        return
    # With --out -, stdout is the PEM: the summary goes to stderr.
    console = render.console(stderr=out == "-")
    for view in views:
        console.print(f"root {view['authority']}: {view['subject']}")
        console.print(f"  {view['fingerprint_sha256']}  (until {view['not_after']})")
    if out != "-":
        console.print(f"written: {out}")
