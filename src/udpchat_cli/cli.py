"""``udpchat-cli``: the chat from a shell, one command per process.

::

    udpchat-cli [--server HOST:PORT] [--home DIR] [--profile NAME] [--timeout SECONDS]
                [--json] COMMAND [ARGS]

Every command is a short-lived connection: connect (pinning or checking the
server's key), resume the profile's login session, send one request, print its
answer, close. Messages the server delivers meanwhile are kept in the profile for
``inbox``. The contract (commands, JSON shapes, exit statuses) is in the README.

Exit statuses: 0 success; 1 the server refused (or not logged in, or a request the
server would refuse); 2 usage error; 3 the server did not answer within
``--timeout``; 4 the server's key differs from the pinned one.

This module is the command line: the group and its global options, and
:func:`main`, which maps every failure to its exit status. What the commands share
is :mod:`udpchat_cli.app`; the commands, by concern, are :mod:`udpchat_cli.commands`.
"""

from __future__ import annotations

import gc
import signal
import sys

# Ctrl-C while the module loads (a good part of a second) gets the contract's one
# ``error:`` line, not a traceback from an import. It is held back while the module
# loads and let through at its end (after the imports, the module-level code below
# runs click's, which imports more): vodozemac, cryptography and orjson are Rust
# extensions, and a KeyboardInterrupt raised inside one's initialisation kills the
# process with SIGSEGV instead of unwinding. So all three are initialised here,
# held, even vodozemac, whose Python side (end-to-end encryption's state) a command
# loads only when it encrypts or decrypts: what loads later is pure Python, where a
# KeyboardInterrupt unwinds to main().
_SIGINT_HELD = hasattr(signal, "pthread_sigmask")


def _interrupted() -> None:
    """Exit with the contract's answer to a Ctrl-C while the module loads."""
    print("error: interrupted", file=sys.stderr, flush=True)
    args = sys.argv[1:]
    if "--json" in (args[: args.index("--")] if "--" in args else args):
        print('{"ok": false, "error": "interrupted", "message": "interrupted"}', flush=True)
    sys.exit(1)


# The collector is off while they load: they make some hundred thousand objects and
# no garbage, and its passes over them were a twentieth of every command's start-up
# (the suite runs about a thousand commands).
gc.disable()
try:
    if _SIGINT_HELD:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    import os
    import socket
    from pathlib import Path
    from typing import NoReturn

    import click

    from udpchat_proto import CloseCode, ErrorCode, LocalProtocolError, ValidationError

    # (Initialises vodozemac's extension, held: see above. Its module, the device's
    # keys, is a few functions; the state, the sessions and their attrs classes are not
    # loaded until a command encrypts or decrypts.)
    from udpchat_proto.e2ee import verify_device_keys  # noqa: F401

    from .app import (
        DEFAULT_SERVER,
        EXIT_KEY_MISMATCH,
        EXIT_OK,
        EXIT_REFUSED,
        EXIT_TIMEOUT,
        EXIT_USAGE,
        App,
        CliError,
        Seconds,
        json_option,
        key_mismatch,
        refused,
    )
    from .commands import COMMANDS
    from .output import Output, OutputClosedError
    from .profiles import Home, HomeError, check_profile_name
    from .session import ConnectionLostError, KeyMismatchError, ServerTimeoutError, parse_servers

    gc.freeze()  # (what they made lives as long as the process: never scanned again)
    gc.enable()
except KeyboardInterrupt:  # raised by an import itself, not by Ctrl-C (held)
    try:
        if _SIGINT_HELD:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    except KeyboardInterrupt:  # (one held meanwhile: the same answer)
        pass
    _interrupted()

__all__ = [
    "EXIT_KEY_MISMATCH",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "cli",
    "main",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="UDPCHAT_SERVER",
    default=None,
    metavar="HOST:PORT",
    help=f"The server [env UDPCHAT_SERVER; default: the profile's server after login, "
    f"else {DEFAULT_SERVER}].",
)
@click.option(
    "--home",
    envvar="UDPCHAT_HOME",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where profiles and known_servers live [env UDPCHAT_HOME; default: the user "
    "state directory].",
)
@click.option(
    "--profile",
    envvar="UDPCHAT_PROFILE",
    default="default",
    show_default=True,
    help="Which profile (one user each) [env UDPCHAT_PROFILE].",
)
@click.option(
    "--timeout",
    type=Seconds(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each answer from the server.",
)
@json_option
@click.version_option(package_name="udpchat-proto")
@click.pass_context
def cli(
    ctx: click.Context, server: str | None, home: Path | None, profile: str, timeout: float
) -> None:
    """Chat over udpchat from the shell."""
    try:
        check_profile_name(profile)
        if server is not None:
            parse_servers(server)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if home is None:
        import platformdirs  # noqa: PLC0415 (only without --home: a fifth of the imports' time)

        home = Path(platformdirs.user_state_dir("udpchat"))
    out = ctx.find_object(Output)
    assert out is not None  # main() passes it
    ctx.obj = App(
        home=Home(home),
        profile_name=profile,
        server_option=server,
        timeout=timeout,
        out=out,
    )


for _command in COMMANDS:
    cli.add_command(_command)


# --- entry point ------------------------------------------------------------------------------


def _wants_json(args: list[str]) -> bool:
    """Whether ``--json`` was asked for, when parsing itself failed."""
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


def _fail(out: Output, error: CliError) -> NoReturn:
    out.error(error.code, error.message)
    sys.exit(error.exit_code)


def _as_cli_error(exc: BaseException) -> CliError:
    """Map every failure to its exit status (the contract's table)."""
    match exc:
        case CliError():
            return exc
        case ValidationError():
            # A command's check before any I/O, with the core's rules: refused exactly
            # as the server would refuse the request (its code, its words).
            return refused(exc.code, str(exc))
        case ServerTimeoutError():
            return CliError(EXIT_TIMEOUT, "timeout", str(exc))
        case ConnectionLostError(code=CloseCode.UNSUPPORTED_VERSION):
            # The server answered: it speaks another protocol version (a refusal).
            return refused(ErrorCode.UNSUPPORTED_VERSION, exc.reason)
        case ConnectionLostError():
            return CliError(EXIT_TIMEOUT, "disconnected", str(exc))
        case KeyMismatchError():
            return key_mismatch(exc, Path("known_servers"))
        case HomeError():
            return refused("local_error", str(exc))
        case click.UsageError():
            return CliError(EXIT_USAGE, "usage", exc.format_message())
        case click.ClickException():
            return refused("local_error", exc.format_message())
        case LocalProtocolError():
            return refused(ErrorCode.BAD_REQUEST, str(exc))
        case socket.gaierror():
            return CliError(EXIT_USAGE, "usage", f"cannot resolve the server: {exc}")
    return refused(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``udpchat-cli`` console script. Never shows a traceback."""
    if (instruction := os.environ.get("_UDPCHAT_CLI_COMPLETE")) is not None:
        # Shell completion (click's, which make_context() below never reaches).
        from click.shell_completion import shell_complete  # noqa: PLC0415 (only then)

        sys.exit(shell_complete(cli, {}, "udpchat-cli", "_UDPCHAT_CLI_COMPLETE", instruction))
    args = list(sys.argv[1:] if argv is None else argv)
    out = Output(json_mode=_wants_json(args))
    try:
        # What click's main() does, less its handling of Ctrl-C (a blank line on
        # stderr before the error: the error must be one line).
        with cli.make_context("udpchat-cli", args, obj=out) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # no command: the help, as usage
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:  # Ctrl-C or end of input at a password prompt
        _fail(out, refused("interrupted", "interrupted"))
    except (KeyboardInterrupt, EOFError):
        if out.stderr.isatty():  # after the terminal's "^C"
            print(file=out.stderr)
        _fail(out, refused("interrupted", "interrupted"))
    except OutputClosedError:
        # The reader went away (``listen | head -1``): it had what it wanted. Point
        # stdout at /dev/null so that the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_OK)
    except Exception as exc:
        _fail(out, _as_cli_error(exc))
    sys.exit(EXIT_OK)


# The end of the module: Ctrl-C is let through, and one held while it loaded is
# raised here, as the contract's answer.
try:
    if _SIGINT_HELD:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
except KeyboardInterrupt:
    _interrupted()

if __name__ == "__main__":
    main()
