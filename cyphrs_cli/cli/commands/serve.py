"""``serve``: run the online CA (HTTPS JSON API, mTLS renewal, admin, metrics)."""

from __future__ import annotations

from typing import Annotated

import typer

from cyphrs_cli.cli.options import (
    HomeOption,
    IssuerOption,
    JsonOption,
    NoInputOption,
    PassphraseEnvOption,
    PassphraseFileOption,
    PinEnvOption,
    PinFileOption,
)
from cyphrs_cli.errors import EXIT_CODE_HELP

SERVE_EPILOG = f"""\
Examples:

  cyphrs serve --listen 127.0.0.1:8443 --passphrase-file inter.pass

  cyphrs serve --listen 0.0.0.0:8443 --dns ca.acme.internal --pin-file /run/pin

  cyphrs serve --listen 0.0.0.0:8443 --dns ca.acme.internal --processes 4 --passphrase-file p

The server issues its own TLS certificate (profile server) from the CA it serves, keeps
its key in memory, and renews it at 2/3 of its lifetime (or at once on SIGHUP). When it
listens it prints one JSON line on stdout (schema cyphrs.serve/v1: listening URL, pid;
--json also makes a start-up error one JSON object on stderr); logs (one JSON object per
line, no secrets) go to stderr. SIGTERM stops it gracefully:
in-flight requests finish, then it exits 0. API: GET /openapi.json.

--processes N starts N worker processes on one socket and one ledger (a supervisor
passes the secrets to them over a pipe, replaces a worker that dies, and stops them all
on SIGTERM); each worker enforces ceil(R/N) of every rate R and of --max-connections.
ACME (--acme) runs in one process.

{EXIT_CODE_HELP}"""


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=SERVE_EPILOG)(serve)


def serve(
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: a free port).")
    ] = "127.0.0.1:8443",
    dns: Annotated[
        list[str] | None,
        typer.Option("--dns", help="DNS name for the server certificate (repeatable)."),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="The URL clients reach this server by (reported)."),
    ] = None,
    admin_profile: Annotated[
        str, typer.Option("--admin-profile", help="Profile whose certificates may administer.")
    ] = "admin",
    tls_ttl: Annotated[
        str, typer.Option("--tls-ttl", help="Lifetime of the server's own TLS certificate.")
    ] = "24h",
    max_body: Annotated[
        int, typer.Option("--max-body", min=1024, help="Largest request body, in bytes (413).")
    ] = 65536,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, help="Seconds to send the TLS handshake, headers or body."
        ),
    ] = 10.0,
    token_rate: Annotated[
        str,
        typer.Option(
            "--token-rate", help="Requests per enrollment credential (N/s|m|h; 0/m: off)."
        ),
    ] = "10/m",  # noqa: S107 -- a rate, not a password
    identity_rate: Annotated[
        str,
        typer.Option(
            "--identity-rate", help="Requests per client certificate (N/s|m|h; 0/m: off)."
        ),
    ] = "60/m",
    failure_rate: Annotated[
        str,
        typer.Option(
            "--failure-rate",
            help="Refused enrollments per client address before 429 (N/s|m|h; 0/m: off).",
        ),
    ] = "20/m",
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections", min=1, help="Open HTTP connections at most (more are closed)."
        ),
    ] = 1024,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Worker processes sharing the socket and the ledger (one core each).",
        ),
    ] = 1,
    acme: Annotated[
        bool, typer.Option("--acme", help="Serve ACME (RFC 8555) at /acme/directory.")
    ] = False,
    acme_allow_no_eab: Annotated[
        bool,
        typer.Option(
            "--acme-allow-no-eab", help="Allow ACME accounts without EAB (profile server)."
        ),
    ] = False,
    acme_dns_resolver: Annotated[
        str | None,
        typer.Option("--acme-dns-resolver", help="HOST:PORT of the DNS resolver for validation."),
    ] = None,
    acme_http_port: Annotated[
        int, typer.Option("--acme-http-port", min=1, max=65535, help="Port http-01 dials.")
    ] = 80,
    acme_tls_port: Annotated[
        int, typer.Option("--acme-tls-port", min=1, max=65535, help="Port tls-alpn-01 dials.")
    ] = 443,
    acme_allow_network: Annotated[
        list[str] | None,
        typer.Option(
            "--acme-allow-network",
            help="Network validation may dial (repeatable) [default: 10/8, 172.16/12,"
            " 192.168/16, fc00::/7; loopback only when listed].",
        ),
    ] = None,
    acme_rate: Annotated[
        str, typer.Option("--acme-rate", help="Requests per ACME account (N/s|m|h; 0/m: off).")
    ] = "300/m",
    issuer: IssuerOption = None,
    home: HomeOption = None,
    passphrase_file: PassphraseFileOption = None,
    passphrase_env: PassphraseEnvOption = None,
    pin_file: PinFileOption = None,
    pin_env: PinEnvOption = None,
    no_input: NoInputOption = False,
    json_output: JsonOption = False,
) -> None:
    """Run the online CA: enrollment by token, renewal and revocation over mTLS, OCSP."""
    import json
    import sys
    from dataclasses import replace

    from cyphrs_cli.cli.secrets import ca_key_secrets
    from cyphrs_cli.config.home import resolve_home
    from cyphrs_cli.errors import UsageError

    try:
        from cyphrs_cli.server.limits import Rate
        from cyphrs_cli.server.run import ServeOptions, parse_listen
        from cyphrs_cli.server.run import serve as run_server
        from cyphrs_cli.service.acme import acme_settings
    except ImportError as exc:
        raise UsageError(
            f"cyphrs serve needs the server extra ({exc.name} is not installed)",
            hint="pip install 'cyphrs[server]'",
        ) from exc
    host, port = parse_listen(listen)
    options = ServeOptions(
        host=host,
        port=port,
        issuer=issuer,
        public_url=public_url,
        dns_names=tuple(dns or ()),
        tls_ttl=tls_ttl,
        admin_profile=admin_profile,
        max_body=max_body,
        header_timeout=timeout,
        body_timeout=timeout,
        token_rate=Rate.parse(token_rate),
        identity_rate=Rate.parse(identity_rate),
        failure_rate=Rate.parse(failure_rate),
        max_connections=max_connections,
    )
    if acme or acme_allow_no_eab or acme_dns_resolver or acme_allow_network:
        options = replace(
            options,
            acme=acme_settings(
                acme_allow_no_eab, acme_dns_resolver, acme_http_port, acme_tls_port,
                tuple(acme_allow_network or ()),
            ),
            acme_rate=Rate.parse(acme_rate),
        )
    secrets = ca_key_secrets(passphrase_file, passphrase_env, pin_file, pin_env, no_input)

    def ready(document: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    if processes > 1:
        from cyphrs_cli.server.supervisor import supervise

        supervise(resolve_home(home), secrets, options, processes, ready)
    else:
        run_server(resolve_home(home), secrets, options, ready)
