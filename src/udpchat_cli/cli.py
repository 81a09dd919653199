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
"""

from __future__ import annotations

import sys

# Ctrl-C while the modules below load (a good part of a second) gets the contract's
# one ``error:`` line, not a traceback from an import.
try:
    import contextlib
    import math
    import os
    import socket
    import time
    import warnings
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any, NoReturn, TypeVar

    import attrs
    import click
    import platformdirs

    from udpchat_proto import ErrorCode, LocalProtocolError
    from udpchat_proto.chat import (
        ClientConnection,
        ValidationError,
        check_history_limit,
        check_password,
        check_text,
        session_id,
        token_hash,
        valid_room,
        valid_target,
        valid_username,
    )
    from udpchat_proto.chat import messages as m
    from udpchat_proto.transport import CloseCode, fingerprint

    from . import output
    from .output import Output, OutputClosedError
    from .profiles import Home, HomeError, Profile, check_profile_name
    from .session import (
        ConnectionLostError,
        KeyMismatchError,
        ServerTimeoutError,
        Session,
        parse_servers,
    )
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr, flush=True)
    _args = sys.argv[1:]
    if "--json" in (_args[: _args.index("--")] if "--" in _args else _args):
        print('{"ok": false, "error": "interrupted", "message": "interrupted"}', flush=True)
    sys.exit(1)

__all__ = [
    "EXIT_KEY_MISMATCH",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "main",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_KEY_MISMATCH = 4

DEFAULT_SERVER = "127.0.0.1:9999"

DEFAULT_DELIVERY_WAIT = 60.0
"""Seconds ``send --wait delivered`` waits unless ``--for`` says otherwise."""
_STATUS_POLL_INTERVAL = 5.0
"""While waiting for a receipt, how often the status is asked as well."""

R = TypeVar("R")


class CliError(Exception):
    """A failure to report: one ``error:`` line, the JSON refusal, an exit status."""

    def __init__(self, exit_code: int, code: str, message: str) -> None:
        self.exit_code = exit_code
        self.code = code
        self.message = message
        super().__init__(message)


def _key_mismatch(exc: KeyMismatchError, known_servers: Path) -> CliError:
    then = (
        f" (the new key {fingerprint(exc.presented)} will then be pinned)"
        if exc.presented is not None
        else ""
    )
    return CliError(
        EXIT_KEY_MISMATCH,
        "server_key_mismatch",
        f"{exc}. Someone may be impersonating the server, or its key was changed. "
        f"If the change is legitimate, remove the line starting with "
        f"'{exc.server} ' from {known_servers} and run the command again{then}.",
    )


class Seconds(click.FloatRange):
    """A finite number of seconds (click's FloatRange lets ``nan`` and ``inf``
    through, and a NaN deadline makes a wait unbounded: no comparison is true)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def _refused(code: str, message: str) -> CliError:
    return CliError(EXIT_REFUSED, code, message)


def _not_logged_in() -> CliError:
    return _refused(ErrorCode.NOT_LOGGED_IN, "not logged in: run 'udpchat-cli login USER' first")


@attrs.define
class App:
    """The global options, and the steps every command shares."""

    home: Home
    profile_name: str
    server_option: str | None
    timeout: float
    out: Output

    def profile(self) -> Profile:
        """The current profile, as saved."""
        return self.home.load(self.profile_name)

    def update(self, change: Callable[[Profile], R]) -> R:
        """Change the profile under its lock (see :meth:`Home.update`)."""
        return self.home.update(self.profile_name, change)

    def keep_messages(self, pushes: list[m.Push]) -> None:
        """The default push handler: keep delivered messages for ``inbox``."""
        received = [push.message for push in pushes if isinstance(push, m.MessageDelivered)]
        if received:
            self.update(lambda profile: profile.record(received, shown=False))

    @contextlib.contextmanager
    def connect(
        self, *, resume: bool, on_pushes: Callable[[list[m.Push]], None] | None = None
    ) -> Iterator[tuple[Session, str]]:
        """Open a session (and resume the profile's login session if ``resume``).

        Yields:
            The open session and the ``HOST:PORT`` it talks to.

        Raises:
            CliError: not logged in, or the login session has ended.
            ServerTimeoutError, ConnectionLostError, KeyMismatchError.
        """
        profile = self.profile()
        if resume and not profile.logged_in:
            raise _not_logged_in()
        # An explicit --server (or UDPCHAT_SERVER) wins; else the server the profile
        # last logged in to (register and login included: it is "this user's server").
        server = self.server_option or profile.server or DEFAULT_SERVER
        try:
            parse_servers(server)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, "usage", str(exc)) from None
        known = self.home.known_servers
        pinned = known.get(server)
        try:
            session = Session(
                server=server,
                pinned=pinned,
                timeout=self.timeout,
                delivered_ids=profile.delivered,
                on_pushes=on_pushes or self.keep_messages,
            )
        except (OSError, ValueError) as exc:  # unresolvable, or not even a host name
            raise CliError(EXIT_USAGE, "usage", f"cannot use server {server}: {exc}") from None
        with session:
            try:
                key = session.open()
                # First contact pins the key; a list's nodes not pinned yet get the
                # key of the node that answered (checked against the pin, if any).
                known.pin(server, key)
                if resume:
                    self._check_same_server(profile, server, key)
                    self._resume(session, profile, server)
                yield session, server
            except KeyMismatchError as exc:  # at the handshake, or from the core later
                raise _key_mismatch(exc, known.path) from None

    def _check_same_server(self, profile: Profile, server: str, key: bytes) -> None:
        """Refuse to hand the login token to another server than the one that issued it.

        The token is a bearer credential: a server with another key (``--server``
        naming some other host) must never see it. Another name for the same server
        (``localhost:9999`` for ``127.0.0.1:9999``) presents the same key, and is fine.
        """
        if server == profile.server or profile.server is None:
            return
        if key != self.home.known_servers.get(profile.server):
            raise _refused(
                ErrorCode.NOT_LOGGED_IN,
                f"profile {self.profile_name} is logged in on {profile.server}, not on "
                f"{server}: run 'udpchat-cli --server {server} login USER' (or use "
                f"another --profile)",
            )

    def _resume(self, session: Session, profile: Profile, server: str) -> None:
        token = profile.token
        assert token is not None  # checked by connect()
        answer = session.request(lambda conn: conn.resume(token))
        if isinstance(answer, m.ErrorResponse):
            # The server that issued the token (under any name: connect() checked
            # the key) no longer knows it: this login is over.
            if answer.code in (ErrorCode.NOT_LOGGED_IN, ErrorCode.BAD_CREDENTIALS):
                self.update(lambda saved: saved.logout())
                raise _refused(
                    ErrorCode.NOT_LOGGED_IN,
                    f"the login session of {profile.username} on {server} has ended: log in again",
                )
            raise _refused(answer.code, answer.message)

    def call(self, issue: Callable[[ClientConnection], int], expected: type[R]) -> R:
        """Connect, resume, send one request and return its answer.

        Raises:
            CliError: the server refused (exit 1) or answered nonsense.
        """
        with self.connect(resume=True) as (session, _server):
            return _expect(session.request(issue), expected)


def _expect(answer: m.Response, expected: type[R]) -> R:
    if isinstance(answer, m.ErrorResponse):
        raise _refused(answer.code, answer.message)
    if not isinstance(answer, expected):
        raise _refused(ErrorCode.INTERNAL, f"unexpected answer {type(answer).__name__}")
    return answer


def _validate(build: Callable[[], R]) -> R:
    """Build a request locally, so that an invalid one is refused exactly as the
    server would refuse it (same validators, same error code), before any I/O."""
    try:
        return build()
    except ValidationError as exc:
        raise _refused(exc.code, str(exc)) from None


def _hex(text: str) -> bytes:
    """Bytes from hex, or none at all (the request's validator then refuses them)."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def _room(name: str) -> str:
    """``general`` or ``#general`` -> ``#general``."""
    return name if name.startswith("#") else "#" + name


def _read_password(from_stdin: bool, *, confirm: bool, prompt: str = "Password") -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    with warnings.catch_warnings():
        # Without a terminal getpass warns (with its source line) that it cannot
        # hide the input; click already says so in one line of its own.
        warnings.simplefilter("ignore")
        password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    return password


# --- the group and its global options ------------------------------------------------------


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        # Before the group's callback the context object is main()'s Output; after
        # it, the App holding that same Output.
        app = ctx.find_object(App)
        out = app.out if app is not None else ctx.find_object(Output)
        if out is not None:
            out.json_mode = True


def _json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` is accepted after the command too."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print one JSON object (see the README's contract).",
    )(function)


def _app() -> App:
    return click.get_current_context().find_object(App)  # type: ignore[return-value]


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
@_json_option
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
    home_path = home if home is not None else Path(platformdirs.user_state_dir("udpchat"))
    out = ctx.find_object(Output)
    assert out is not None  # main() passes it
    ctx.obj = App(
        home=Home(home_path),
        profile_name=profile,
        server_option=server,
        timeout=timeout,
        out=out,
    )


# --- account ------------------------------------------------------------------------------


@cli.command()
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@_json_option
def register(user: str, password_stdin: bool) -> None:
    """Create the account USER (the password is asked twice)."""
    app = _app()
    password = _read_password(password_stdin, confirm=True)
    username = _validate(lambda: valid_username(user))
    _validate(lambda: check_password(password))
    with app.connect(resume=False) as (session, _server):
        answer = session.request(lambda conn: conn.register(username, password))
        _expect(answer, m.Ok)
    app.out.result(f"registered {username}", {"ok": True, "user": username})


@cli.command()
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@_json_option
def login(user: str, password_stdin: bool) -> None:
    """Log in as USER; the profile keeps the login session."""
    app = _app()
    password = _read_password(password_stdin, confirm=False)
    username = _validate(lambda: valid_username(user))
    _validate(lambda: check_password(password))
    with app.connect(resume=False) as (session, server):
        answer = session.request(lambda conn: conn.login(username, password))
        logged_in = _expect(answer, m.LoggedIn)
        app.update(lambda profile: profile.login(logged_in.username, logged_in.token, server))
    app.out.result(f"logged in as {logged_in.username}", {"ok": True, "user": logged_in.username})


@cli.command()
@click.option(
    "--all", "everywhere", is_flag=True, help="End every login session of yours, this one too."
)
@_json_option
def logout(everywhere: bool) -> None:
    """End the login session (with --all, every one of the user's)."""
    app = _app()
    if everywhere:
        ended = app.call(lambda conn: conn.logout_all(), m.LoggedOutAll).ended
        app.update(lambda profile: profile.logout())
        app.out.result(f"logged out everywhere ({ended} sessions)", {"ok": True, "ended": ended})
        return
    app.call(lambda conn: conn.logout(), m.Ok)
    app.update(lambda profile: profile.logout())
    app.out.result("logged out", {"ok": True})


@cli.command()
@_json_option
def sessions() -> None:
    """List your login sessions, newest first (the ids are for revoke)."""
    app = _app()
    answer = app.call(lambda conn: conn.list_sessions(), m.Sessions)
    app.out.result(*output.sessions_result(answer))


@cli.command()
@click.argument("session", metavar="SESSION_ID")
@_json_option
def revoke(session: str) -> None:
    """End one of your login sessions (its id from 'sessions'); it is disconnected."""
    app = _app()
    chosen = _validate(lambda: m.RevokeSession(request_id=0, session_id=_hex(session)).session_id)
    app.call(lambda conn: conn.revoke_session(chosen), m.Ok)
    token = app.profile().token
    if token is not None and session_id(token_hash(token)) == chosen:
        app.update(lambda profile: profile.logout())  # this profile's own session
    app.out.result("session ended", {"ok": True})


@cli.command()
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read two lines from stdin: the current password, then the new one.",
)
@_json_option
def passwd(password_stdin: bool) -> None:
    """Change your password (asks the current one, then the new one twice); every
    other login session of yours ends."""
    app = _app()
    if not app.profile().logged_in:
        raise _not_logged_in()
    current = _read_password(password_stdin, confirm=False, prompt="Current password")
    new = _read_password(password_stdin, confirm=True, prompt="New password")
    if password_stdin and not new:
        raise click.UsageError(
            "--password-stdin expects two lines: the current password, then the new one"
        )
    _validate(lambda: m.ChangePassword(request_id=0, current=current, new=new))
    app.call(lambda conn: conn.change_password(current, new), m.Ok)
    app.out.result("password changed; your other sessions have ended", {"ok": True})


@cli.command(name="delete-account")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@_json_option
def delete_account(password_stdin: bool) -> None:
    """Delete your account for good, after its password: sessions, friends,
    invitations, rooms and the messages waiting for you. What you sent stays in
    its recipients' history; your name can never be registered again."""
    app = _app()
    profile = app.profile()
    if not profile.logged_in:
        raise _not_logged_in()
    password = _read_password(password_stdin, confirm=False)
    _validate(lambda: check_password(password))
    app.call(lambda conn: conn.delete_account(password), m.Ok)
    app.update(lambda saved: saved.logout())
    app.out.result(f"account {profile.username} deleted", {"ok": True})


@cli.command()
@_json_option
def whoami() -> None:
    """Show who is logged in, and where (checked with the server)."""
    app = _app()
    with app.connect(resume=True) as (_session, server):
        user = app.profile().username
    app.out.result(f"{user} on {server}", {"user": user, "server": server})


# --- messages -------------------------------------------------------------------------------


@cli.command()
@click.argument("to", metavar="TO")
@click.argument("text")
@click.option(
    "--wait",
    type=click.Choice(["delivered"]),
    default=None,
    help="Wait until a device of the friend TO has received it (exit 3 if not in time).",
)
@click.option(
    "--for",
    "wait_for",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help=f"How long --wait delivered waits [default: {DEFAULT_DELIVERY_WAIT:g}].",
)
@_json_option
def send(to: str, text: str, wait: str | None, wait_for: float | None) -> None:
    """Send TEXT to the friend TO, or to the room TO when it starts with '#'."""
    app = _app()
    if wait_for is not None and wait is None:
        raise click.UsageError("--for goes with --wait delivered")
    target = _validate(lambda: valid_target(to))
    _validate(lambda: check_text(text))
    if wait is not None and target.startswith("#"):
        raise CliError(
            EXIT_USAGE, "usage", "--wait delivered is for direct messages: rooms have no receipts"
        )
    if wait is None:
        accepted = app.call(lambda conn: conn.send_message(target, text), m.MessageAccepted)
        app.out.result(
            f"sent to {target} (id {accepted.message_id.hex()})",
            {"ok": True, "id": accepted.message_id.hex(), "to": target},
        )
        return
    _send_and_wait(app, target, text, DEFAULT_DELIVERY_WAIT if wait_for is None else wait_for)


def _send_and_wait(app: App, target: str, text: str, wait_for: float) -> None:
    """``send --wait delivered``: send, then wait for the receipt on the same
    connection (asking the status now and then, should a push be missed)."""
    receipts: set[bytes] = set()

    def keep(pushes: list[m.Push]) -> None:
        app.keep_messages(pushes)
        for push in pushes:
            if isinstance(push, m.DeliveryReceipts):
                receipts.update(receipt.message_id for receipt in push.receipts)

    with app.connect(resume=True, on_pushes=keep) as (session, _server):
        answer = session.request(lambda conn: conn.send_message(target, text))
        message_id = _expect(answer, m.MessageAccepted).message_id
        # The message is stored: from here on, whatever happens, its id is printed.
        deadline = time.monotonic() + wait_for
        why = f"not delivered within {wait_for:g} s; it is stored and will be delivered"
        delivered = False
        try:
            while True:
                status = session.request(lambda conn: conn.message_status(message_id))
                if isinstance(status, m.ErrorResponse):  # gone: its recipient was deleted
                    why = f"not delivered: {status.message}"
                    break
                delivered = (
                    isinstance(status, m.MessageStatus) and status.delivered_at is not None
                ) or message_id in receipts
                now = time.monotonic()
                if delivered or now >= deadline:
                    break
                session.run_until(
                    lambda: message_id in receipts, min(deadline, now + _STATUS_POLL_INTERVAL)
                )
        except (ServerTimeoutError, ConnectionLostError) as exc:
            why = (
                f"not known to be delivered ({exc}); it is stored: see 'status {message_id.hex()}'"
            )
    result = {"ok": True, "id": message_id.hex(), "to": target, "delivered": delivered}
    if delivered:
        app.out.result(f"delivered to {target} (id {message_id.hex()})", result)
        return
    app.out.result(f"sent to {target} (id {message_id.hex()}), not delivered yet", result)
    app.out.error_line(why)  # (it may carry the server's words)
    raise click.exceptions.Exit(EXIT_TIMEOUT)


@cli.command()
@click.argument("message", metavar="MESSAGE_ID")
@_json_option
def status(message: str) -> None:
    """Whether a direct message you sent (its id from 'send') was delivered."""
    app = _app()
    message_id = _validate(
        lambda: m.GetMessageStatus(request_id=0, message_id=_hex(message)).message_id
    )
    answer = app.call(lambda conn: conn.message_status(message_id), m.MessageStatus)
    app.out.result(*output.status_result(answer))


@cli.command()
@click.option(
    "--wait",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait up to this long for at least one message.",
)
@_json_option
def inbox(wait: float | None) -> None:
    """Print the messages not shown yet, oldest first (each exactly once)."""
    app = _app()
    arrived = 0

    def keep(pushes: list[m.Push]) -> None:
        nonlocal arrived
        app.keep_messages(pushes)
        arrived += sum(isinstance(push, m.MessageDelivered) for push in pushes)

    with app.connect(resume=True, on_pushes=keep) as (session, _server):
        _drain_backlog(session)
        if wait and not app.profile().unshown:
            session.run_until(lambda: arrived > 0, time.monotonic() + wait)
        shown = app.profile().unshown
        app.out.result(*output.messages_result(shown, empty="no new messages"))
        ids = {message.id for message in shown}
        app.update(lambda profile: profile.mark_shown(ids))


def _drain_backlog(session: Session) -> None:
    """Receive every message the server holds for this login session: the server
    pushes its backlog in windows, then ``caught_up`` (after every delivery it
    marks the end of, since the connection delivers in order).

    Raises:
        ServerTimeoutError: no ``caught_up`` within ``--timeout`` of the last push.
    """
    conn = session.connection
    progress = -1
    while not conn.caught_up:
        seen = conn.stats.deliveries
        if seen == progress:  # a whole timeout with no push: give up
            raise ServerTimeoutError(
                f"no answer from {session.server} within {session.timeout:g} s"
            )
        progress = seen
        session.run_until(lambda: conn.caught_up, time.monotonic() + session.timeout)


@cli.command()
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option(
    "--for",
    "duration",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help="Stop after this long.",
)
@_json_option
def listen(count: int | None, duration: float | None) -> None:
    """Stay online and print every event as it comes (pending messages first)."""
    # Ctrl-C ends listen successfully, whenever it comes (connecting included).
    with contextlib.suppress(KeyboardInterrupt):
        _listen(count, duration)


def _listen(count: int | None, duration: float | None) -> None:
    app = _app()
    deadline = math.inf if duration is None else time.monotonic() + duration
    printed = 0

    def full() -> bool:
        return count is not None and printed >= count

    def show(pushes: list[m.Push]) -> None:
        nonlocal printed
        shown: list[m.ChatMessage] = []
        kept: list[m.ChatMessage] = []
        for push in pushes:
            if isinstance(push, m.CaughtUp):  # bookkeeping, not an event for people
                continue
            if full():  # past --count: keep messages for inbox, drop the rest
                if isinstance(push, m.MessageDelivered):
                    kept.append(push.message)
                continue
            printed += app.out.event(push, None if count is None else count - printed)
            if isinstance(push, m.MessageDelivered):
                shown.append(push.message)

        def record(profile: Profile) -> None:
            profile.record(shown, shown=True)
            profile.record(kept, shown=False)

        if shown or kept:
            app.update(record)

    profile = app.profile()
    if not profile.logged_in:
        raise _not_logged_in()
    backlog = profile.unshown[:count] if count is not None else profile.unshown
    for message in backlog:
        app.out.event(m.MessageDelivered(message=message))
        printed += 1
    ids = {message.id for message in backlog}
    app.update(lambda saved: saved.mark_shown(ids))
    if full():
        return
    with app.connect(resume=True, on_pushes=show) as (session, _server):
        session.run_until(full, deadline)


@cli.command()
@_json_option
def chat() -> None:
    """Open the full-screen chat (Ctrl+Q or /quit leaves; /help lists commands)."""
    app = _app()
    profile = app.profile()
    if not profile.logged_in or profile.token is None or profile.username is None:
        raise _not_logged_in()
    server = app.server_option or profile.server or DEFAULT_SERVER
    known = app.home.known_servers
    pinned = known.get(server)
    if pinned is None or (profile.server is not None and pinned != known.get(profile.server)):
        raise _refused(
            ErrorCode.NOT_LOGGED_IN,
            f"profile {app.profile_name} is logged in on {profile.server}, not on {server}",
        )
    try:
        addresses = [
            socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4]
            for host, port in parse_servers(server)
        ]
    except (OSError, ValueError) as exc:
        raise CliError(EXIT_USAGE, "usage", f"cannot use server {server}: {exc}") from None
    # Textual takes a good part of a second to import: only this command pays it.
    from .chat.app import ChatApp  # noqa: PLC0415

    chat_app = ChatApp.for_profile(
        app.home,
        app.profile_name,
        server,
        [(str(address[0]), int(address[1])) for address in addresses],
        pinned,
    )
    code = chat_app.run()
    if code:
        raise click.exceptions.Exit(code)


# --- friends --------------------------------------------------------------------------------


def _friend_command(
    name: str,
    issue: Callable[[ClientConnection, str], int],
    done: str,
    help_text: str,
) -> None:
    @cli.command(name=name, help=help_text)
    @click.argument("user")
    @_json_option
    def command(user: str) -> None:
        app = _app()
        username = _validate(lambda: valid_username(user))
        app.call(lambda conn: issue(conn, username), m.Ok)
        app.out.result(done.format(user=username), {"ok": True, "user": username})


_friend_command(
    "invite",
    lambda conn, user: conn.invite(user),
    "invited {user}",
    "Invite USER to be friends.",
)
_friend_command(
    "accept",
    lambda conn, user: conn.accept_invitation(user),
    "you and {user} are now friends",
    "Accept USER's invitation.",
)
_friend_command(
    "decline",
    lambda conn, user: conn.decline_invitation(user),
    "declined {user}'s invitation",
    "Decline USER's invitation.",
)
_friend_command(
    "cancel",
    lambda conn, user: conn.cancel_invitation(user),
    "cancelled the invitation to {user}",
    "Withdraw your invitation to USER.",
)
_friend_command(
    "unfriend",
    lambda conn, user: conn.unfriend(user),
    "you and {user} are no longer friends",
    "Stop being friends with USER.",
)


_friend_command(
    "block",
    lambda conn, user: conn.block(user),
    "you block {user}",
    "Block USER: no friendship, no invitations, no messages; you look offline to them.",
)
_friend_command(
    "unblock",
    lambda conn, user: conn.unblock(user),
    "you no longer block {user}",
    "Stop blocking USER.",
)


@cli.command()
@_json_option
def blocked() -> None:
    """List the users you block."""
    app = _app()
    answer = app.call(lambda conn: conn.list_blocked(), m.Blocked)
    names = list(answer.usernames)
    app.out.result("\n".join(names) or "nobody blocked", {"blocked": names})


@cli.command()
@_json_option
def invitations() -> None:
    """List the invitations you received and sent."""
    app = _app()
    answer = app.call(lambda conn: conn.list_invitations(), m.Invitations)
    app.out.result(*output.invitations_result(answer))


@cli.command()
@_json_option
def friends() -> None:
    """List your friends and whether they are online."""
    app = _app()
    answer = app.call(lambda conn: conn.list_friends(), m.Friends)
    app.out.result(*output.friends_result(answer))


@cli.command()
@_json_option
def online() -> None:
    """List the users connected now."""
    app = _app()
    answer = app.call(lambda conn: conn.list_online(), m.OnlineUsers)
    app.out.result(*output.online_result(answer))


@cli.command()
@click.argument("peer")
@click.option("--limit", type=int, default=20, show_default=True, help="How many messages.")
@_json_option
def history(peer: str, limit: int) -> None:
    """The last messages with the friend PEER, or in the room PEER ('#room')."""
    app = _app()
    target = _validate(lambda: valid_target(peer))
    _validate(lambda: check_history_limit(limit))
    answer = app.call(lambda conn: conn.get_history(target, limit=limit), m.History)
    app.out.result(*output.messages_result(answer.messages, empty="no messages"))


# --- rooms --------------------------------------------------------------------------------------


@cli.command()
@click.argument("room")
@_json_option
def join(room: str) -> None:
    """Join ROOM ('#' optional), creating it if needed."""
    app = _app()
    name = _validate(lambda: valid_room(_room(room)))
    app.call(lambda conn: conn.join_room(name), m.Ok)
    app.out.result(f"joined {name}", {"ok": True, "room": name})


@cli.command()
@click.argument("room")
@_json_option
def leave(room: str) -> None:
    """Leave ROOM ('#' optional)."""
    app = _app()
    name = _validate(lambda: valid_room(_room(room)))
    app.call(lambda conn: conn.leave_room(name), m.Ok)
    app.out.result(f"left {name}", {"ok": True, "room": name})


@cli.command()
@_json_option
def rooms() -> None:
    """List your rooms with their member counts."""
    app = _app()
    answer = app.call(lambda conn: conn.list_rooms(), m.Rooms)
    app.out.result(*output.rooms_result(answer))


@cli.command()
@click.argument("room")
@_json_option
def members(room: str) -> None:
    """List the members of ROOM ('#' optional) and whether they are online."""
    app = _app()
    name = _validate(lambda: valid_room(_room(room)))
    answer = app.call(lambda conn: conn.list_members(name), m.RoomMembers)
    app.out.result(*output.members_result(answer))


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
            return _refused(exc.code, str(exc))
        case ServerTimeoutError():
            return CliError(EXIT_TIMEOUT, "timeout", str(exc))
        case ConnectionLostError(code=CloseCode.UNSUPPORTED_VERSION):
            # The server answered: it speaks another protocol version (a refusal).
            return _refused(ErrorCode.UNSUPPORTED_VERSION, exc.reason)
        case ConnectionLostError():
            return CliError(EXIT_TIMEOUT, "disconnected", str(exc))
        case KeyMismatchError():
            return _key_mismatch(exc, Path("known_servers"))
        case HomeError():
            return _refused("local_error", str(exc))
        case click.UsageError():
            return CliError(EXIT_USAGE, "usage", exc.format_message())
        case click.ClickException():
            return _refused("local_error", exc.format_message())
        case LocalProtocolError():
            return _refused(ErrorCode.BAD_REQUEST, str(exc))
        case socket.gaierror():
            return CliError(EXIT_USAGE, "usage", f"cannot resolve the server: {exc}")
    return _refused(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


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
        _fail(out, _refused("interrupted", "interrupted"))
    except (KeyboardInterrupt, EOFError):
        if out.stderr.isatty():  # after the terminal's "^C"
            print(file=out.stderr)
        _fail(out, _refused("interrupted", "interrupted"))
    except OutputClosedError:
        # The reader went away (``listen | head -1``): it had what it wanted. Point
        # stdout at /dev/null so that the interpreter's last flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_OK)
    except Exception as exc:
        _fail(out, _as_cli_error(exc))
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
