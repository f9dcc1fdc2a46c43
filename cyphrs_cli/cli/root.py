"""The root ``cyphrs`` command (the Typer app) and the single place that turns errors
into exit codes.

Only typer and our own light modules are imported here; each command imports
cryptography, sqlite3 or pkcs11 inside its body, so ``--help`` and completion stay fast.
``cyphrs_cli.cli.app`` is the entry point that answers ``--version`` before importing this.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cyphrs_cli import __version__
from cyphrs_cli.cli import render
from cyphrs_cli.errors import EXIT_CODE_HELP, CyphrsError, ExitCode, UsageError

DEBUG_ENV = "CYPHRS_DEBUG"

#: Every subcommand, in help order: the module of ``cyphrs_cli.cli.commands`` whose
#: ``register`` defines it, and the first paragraph of its help (what ``--help`` and TAB
#: completion show). Modules are imported only when one of their commands runs or its own
#: help is asked for; ``tests/e2e/test_startup.py`` checks this table against the commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "init-root": (
        "authority",
        "Create a CA home with a new self-signed root CA (key encrypted, or on a token).",
    ),
    "create-intermediate": (
        "authority",
        "Create an intermediate CA signed by this home's root (pathLen 0 by default).",
    ),
    "sign-intermediate": (
        "authority",
        "On the root's host: sign an intermediate CSR made elsewhere (offline-root flow).",
    ),
    "import-intermediate": (
        "authority",
        "Finish the offline-root flow: record the signed intermediate for its pending key.",
    ),
    "issue": (
        "issue",
        "Issue a short-lived certificate from a profile, recorded in the ledger before output.",
    ),
    "enroll": (
        "agent",
        "Get a certificate from 'cyphrs serve' with a one-time token or a JWT (key made here).",
    ),
    "renew": (
        "lifecycle",
        "Renew a certificate: same identity and names, new serial, validity and (by default) key.",
    ),
    "revoke": (
        "lifecycle",
        "Revoke a certificate (leaf or intermediate); recorded at once, listed on the next CRL.",
    ),
    "crl": (
        "lifecycle",
        "Publish the issuer's next CRL (v2, AKI, increasing CRL number) from the ledger.",
    ),
    "trust-bundle": (
        "trust",
        "Write the home's root certificate(s) as PEM for trust stores, with fingerprints.",
    ),
    "list": ("listing", "List certificates from the ledger, newest first, with renewal links."),
    "find": (
        "investigate",
        "Find a certificate by fingerprint, serial, SPIFFE ID or the certificate itself.",
    ),
    "timeline": (
        "investigate",
        "Events of an agent, a workflow, an issuer or a certificate in a window, chain-checked.",
    ),
    "inspect": (
        "inspect",
        "Decode certificates and CSRs: names, SPIFFE ID, agent claims, validity, chain status.",
    ),
    "audit-export": (
        "audit",
        "Export evidence for a time window: registers, events, CRLs, HTML report, signed manifest.",
    ),
    "audit": (
        "audit",
        "Read, verify and checkpoint the ledger's event log; verify audit bundles.",
    ),
    "keys": ("keys", "Inspect CA keys held in PKCS#11 tokens."),
    "profiles": ("profiles", "Issuance profiles: built-in and the CA home's own."),
    "token": ("enrollment", "One-time enrollment tokens for agents (cyphrs serve's /v1/enroll)."),
    "provisioner": (
        "enrollment",
        "JWT provisioners: CI jobs enroll with their platform's OIDC token.",
    ),
    "serve": (
        "serve",
        "Run the online CA: enrollment by token, renewal and revocation over mTLS, OCSP.",
    ),
    "acme": ("acme", "ACME (RFC 8555) for services: External Account Binding keys."),
    "config": (
        "homeconfig",
        "The CA home's trust state: check the files against the ledger, set the claims OID.",
    ),
    "doctor": (
        "doctor",
        "Check a CA home: keys, permissions, expiry, CRLs, policy, ledger, clock.",
    ),
    "scan": ("scan", "Scan existing certificates and score their posture (0-100)."),
}


def _debug() -> bool:
    return render.debug() or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class CyphrsGroup(TyperGroup):
    """Runs a subcommand and maps what it raises to one stderr line and an exit code.

    Subcommands are loaded lazily from ``COMMANDS``: the root's help and completion of
    command names need only that table, and running ``cyphrs list`` imports only the
    module that defines ``list``.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def _load(self, module_name: str) -> None:
        import importlib

        import typer.main

        module = importlib.import_module(f"cyphrs_cli.cli.commands.{module_name}")
        # The module registers on a scratch app with the root's settings; its click
        # commands (and sub-groups) then join this group.
        scratch = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
        module.register(scratch)
        for name, command in typer.main.get_group(scratch).commands.items():
            self.commands.setdefault(name, command)

    def load_all(self) -> None:
        """Every command (generated docs walk the whole tree)."""
        for module_name in dict.fromkeys(m for m, _ in COMMANDS.values()):
            self._load(module_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in COMMANDS:
            self.load_all()  # an unknown name: so the error can suggest a close match
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """What click writes (one line per command, cut to the width), from ``COMMANDS``."""
        from typer._click.utils import make_default_short_help

        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, make_default_short_help(text, limit).strip())
            for name, (_, text) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        """Command names (with their help) from ``COMMANDS``; options as click does."""
        from typer._click.shell_completion import CompletionItem

        results = [
            CompletionItem(name, help=make_short(text))
            for name, (_, text) in COMMANDS.items()
            if name.startswith(incomplete)
        ]
        # Skip TyperGroup's own command listing (it would load every module).
        results.extend(super(TyperGroup, self).shell_complete(ctx, incomplete))
        return results

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["cyphrs.argv"] = list(args)
        try:
            _refuse_undecodable(args)
        except CyphrsError as error:
            if "--json" in args:
                render.output(ctx).json = True
            render.print_error(error)
            raise typer.Exit(int(error.exit_code)) from None
        try:
            return list(super().parse_args(ctx, args))
        except typer.TyperException as error:
            if not _escapable(error):
                raise
            _show_parser_error(error)
            raise typer.Exit(int(getattr(error, "exit_code", ExitCode.USAGE))) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CyphrsError as error:
            if _debug():
                import traceback

                traceback.print_exc()
            render.print_error(error)
            raise typer.Exit(int(error.exit_code)) from None
        except typer.TyperException as error:
            # Parser errors (exit 2) honour --json too: scripts get one JSON object.
            if getattr(error, "exit_code", None) == 2 and "--json" in ctx.meta.get(
                "cyphrs.argv", []
            ):
                render.output(ctx).json = True
                render.print_error(UsageError(error.format_message()))
                raise typer.Exit(int(ExitCode.USAGE)) from None
            if not _escapable(error):
                raise
            _show_parser_error(error)
            raise typer.Exit(int(getattr(error, "exit_code", ExitCode.USAGE))) from None
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            sys.stderr.write("cyphrs: interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            from cyphrs_cli.cli.app import leave_for_gone_reader, stdout_reader_gone

            if not stdout_reader_gone():
                raise
            leave_for_gone_reader()
        except Exception as error:
            if _debug():
                raise
            render.print_error(
                CyphrsError(
                    f"internal error: {type(error).__name__}: {error}",
                    hint=f"rerun with {DEBUG_ENV}=1 for a traceback, and report it",
                )
            )
            raise typer.Exit(int(ExitCode.INTERNAL)) from None


def _refuse_undecodable(args: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (PEP 383); no name, label
    or path of ours may hold one (it could not be written to a certificate, the ledger or
    the terminal), so refuse them here, once, for every command and option (exit 3)."""
    from cyphrs_cli.errors import InvalidInputError

    for index, arg in enumerate(args, start=1):
        if any("\ud800" <= c <= "\udfff" for c in arg):
            raise InvalidInputError(f"command-line argument {index} is not valid UTF-8 text")
    for name, value in os.environ.items():
        if name.startswith("CYPHRS_") and any("\ud800" <= c <= "\udfff" for c in value):
            raise InvalidInputError(f"environment variable {name} is not valid UTF-8 text")


def _escapable(error: Exception) -> bool:
    """A parser error that echoes user input; not the help page shown for missing args."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    return isinstance(error, ClickException) and not isinstance(error, NoArgsIsHelpError)


def _show_parser_error(error: Any) -> None:
    """What click's ``show()`` prints (usage, help hint, message), but escaped.

    Click echoes the offending argument ("No such option: ...", "Invalid value ...") and only
    strips colour codes when stderr is not a terminal; an argument carrying escape sequences
    or a newline would otherwise reach the terminal raw.
    """
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        lines = ctx.get_usage().split("\n")
        if ctx.command.get_help_option(ctx) is not None:
            lines.append(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.")
        render.print_raw_error("\n".join([*lines, ""]))
    render.print_raw_error(f"Error: {error.format_message()}")


app = typer.Typer(
    cls=CyphrsGroup,
    # Plain click help: no markup is interpreted in help text, and Rich is not imported.
    rich_markup_mode=None,
    name="cyphrs",
    help="A private certificate authority for short-lived mTLS identities of agents and services.",
    epilog=EXIT_CODE_HELP,
    no_args_is_help=True,
    # Pretty exceptions print local variables, which may hold passphrases.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cyphrs {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help=f"Tracebacks for errors (or {DEBUG_ENV}=1).")
    ] = False,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Who is acting, for the audit log (or CYPHRS_ACTOR).",
            show_default=False,
        ),
    ] = None,
    home: Annotated[
        str | None,
        typer.Option(
            "--home", help="CA home for every command (same as CYPHRS_HOME).", show_default=False
        ),
    ] = None,
    allow_insecure_home: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-home",
            help="Only warn about a CA home others can write (or CYPHRS_ALLOW_INSECURE_HOME=1).",
        ),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Machine-readable output for the command (same as its own --json).",
            callback=render.set_json_mode,
            is_eager=True,
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress or remarks on stderr (same as the command's own -q).",
            callback=render.set_quiet,
        ),
    ] = False,
) -> None:
    """cyphrs: build and run a CA hierarchy for mTLS identities."""
    # Per-invocation settings: in the click context (render.Output) or in context variables
    # reset when this invocation's context closes -- never in os.environ or module globals.
    ctx = typer_context()
    state = render.output(ctx)
    state.debug = state.debug or debug
    # Commands read --home through their own option (see options.HomeOption): a
    # command-level --home still wins, and this one beats CYPHRS_HOME.
    state.home = home or None
    if actor:
        from cyphrs_cli.ledger.events import ACTOR_OVERRIDE

        actor_token = ACTOR_OVERRIDE.set(actor)
        ctx.call_on_close(lambda: ACTOR_OVERRIDE.reset(actor_token))
    if allow_insecure_home:
        from cyphrs_cli.config.home import ALLOW_INSECURE_HOME

        insecure_token = ALLOW_INSECURE_HOME.set(True)
        ctx.call_on_close(lambda: ALLOW_INSECURE_HOME.reset(insecure_token))


def typer_context() -> Any:
    from typer._click.globals import get_current_context

    return get_current_context()


def make_short(text: str) -> str:
    from typer._click.utils import make_default_short_help

    return make_default_short_help(text).strip()
