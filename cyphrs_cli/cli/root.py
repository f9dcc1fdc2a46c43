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
from cyphrs_cli.cli.commands import (
    audit,
    authority,
    homeconfig,
    inspect,
    issue,
    keys,
    lifecycle,
    listing,
    profiles,
)
from cyphrs_cli.errors import EXIT_CODE_HELP, CyphrsError, ExitCode, UsageError

DEBUG_ENV = "CYPHRS_DEBUG"


def _debug() -> bool:
    return render.debug() or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class CyphrsGroup(TyperGroup):
    """Runs a subcommand and maps what it raises to one stderr line and an exit code."""

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


authority.register(app)
issue.register(app)
lifecycle.register(app)
listing.register(app)
inspect.register(app)
audit.register(app)
keys.register(app)
profiles.register(app)
homeconfig.register(app)

