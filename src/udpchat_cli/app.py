"""What every command of ``udpchat-cli`` shares.

:class:`App` holds the global options (the home directory, the profile, the server,
the timeout, the output) and the steps of a command: read or change the profile,
connect (pinning or checking the server's key), resume the profile's login session,
send one request and check its answer. A failure to report is a :class:`CliError`:
its exit status, its code and one line for people. The command line itself (the
group, its options, ``main()``) is :mod:`udpchat_cli.cli`; the commands are in
:mod:`udpchat_cli.commands`.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import click

from udpchat_proto import ClientConnection, ErrorCode, fingerprint
from udpchat_proto import messages as m

from .output import Output
from .profiles import Home, Profile
from .session import KeyMismatchError, Session, parse_servers

if TYPE_CHECKING:
    from .device import DeviceKeeper

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_KEY_MISMATCH",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "App",
    "CliError",
    "Seconds",
    "current_app",
    "expect",
    "hex_bytes",
    "json_option",
    "key_mismatch",
    "not_logged_in",
    "read_password",
    "refused",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_KEY_MISMATCH = 4

DEFAULT_SERVER = "127.0.0.1:9999"

MESSAGE_ID_SIZE = 16
"""A message id's bytes (random: the sender draws it, the server de-duplicates by it)."""

R = TypeVar("R")


class CliError(Exception):
    """A failure to report: one ``error:`` line, the JSON refusal, an exit status."""

    def __init__(self, exit_code: int, code: str, message: str) -> None:
        self.exit_code = exit_code
        self.code = code
        self.message = message
        super().__init__(message)


def key_mismatch(exc: KeyMismatchError, known_servers: Path) -> CliError:
    """The refusal of a server whose key differs from the pinned one (exit 4)."""
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


def refused(code: str, message: str) -> CliError:
    """A refusal (exit 1): the server's, or one the client can tell in advance."""
    return CliError(EXIT_REFUSED, code, message)


def not_logged_in() -> CliError:
    return refused(ErrorCode.NOT_LOGGED_IN, "not logged in: run 'udpchat-cli login USER' first")


class Seconds(click.FloatRange):
    """A finite number of seconds (click's FloatRange lets ``nan`` and ``inf``
    through, and a NaN deadline makes a wait unbounded: no comparison is true)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


@attrs.define
class App:
    """The global options, and the steps every command shares."""

    home: Home
    profile_name: str
    server_option: str | None
    timeout: float
    out: Output
    _device: DeviceKeeper | None = attrs.field(init=False, default=None)

    @property
    def device(self) -> DeviceKeeper:
        """The profile's device (end-to-end encryption), under its lock (made at the
        first use)."""
        if self._device is None:
            # Imported at the first use: the device is end-to-end encryption
            # (vodozemac, the Olm and Megolm state), which a command that neither
            # sends nor receives a message (whoami, friends, join ...) never needs.
            from .device import DeviceKeeper  # noqa: PLC0415

            self._device = DeviceKeeper(self.home, self.profile_name)
        return self._device

    def _device_pushes(self, pushes: list[m.DevicePush]) -> None:
        """The session's handler of device pushes (the device made only for one)."""
        self.device.device_pushes(pushes)

    def read(self, pushes: list[m.Push]) -> list[m.Push]:
        """Decrypt the deliveries among ``pushes`` (see :meth:`DeviceKeeper.read`)."""
        if not any(isinstance(push, m.MessageDelivered) for push in pushes):
            return pushes
        return self.device.read(pushes)

    def profile(self) -> Profile:
        """The current profile, as saved."""
        return self.home.load(self.profile_name)

    def update(self, change: Callable[[Profile], R]) -> R:
        """Change the profile under its lock (see :meth:`Home.update`)."""
        return self.home.update(self.profile_name, change)

    def keep_messages(self, pushes: list[m.Push]) -> None:
        """The default push handler: keep delivered messages (decrypted) for ``inbox``."""
        pushes = self.read(pushes)
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
            raise not_logged_in()
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
                on_device_pushes=self._device_pushes,
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
                    assert profile.username is not None and profile.token is not None
                    if not self.home.crypto(self.profile_name).path.exists():
                        # Logged in before the upgrade: the device is made now.
                        self.device.ensure(session, profile.username, profile.token)
                yield session, server
                if resume and self._device is not None:
                    self._device.top_up(session)
            except KeyMismatchError as exc:  # at the handshake, or from the core later
                raise key_mismatch(exc, known.path) from None

    def _check_same_server(self, profile: Profile, server: str, key: bytes) -> None:
        """Refuse to hand the login token to another server than the one that issued it.

        The token is a bearer credential: a server with another key (``--server``
        naming some other host) must never see it. Another name for the same server
        (``localhost:9999`` for ``127.0.0.1:9999``) presents the same key, and is fine.
        """
        if server == profile.server or profile.server is None:
            return
        if key != self.home.known_servers.get(profile.server):
            raise refused(
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
                self.end_session()
                raise refused(
                    ErrorCode.NOT_LOGGED_IN,
                    f"the login session of {profile.username} on {server} has ended: log in again",
                )
            raise refused(answer.code, answer.message)

    def end_session(self) -> None:
        """The profile's login session ended (logout, revoked, expired): forget it
        and its device (a later login is a new device)."""
        self.update(lambda saved: saved.logout())
        self.home.crypto(self.profile_name).forget()

    def send(self, session: Session, to: str, text: str) -> m.MessageAccepted:
        """Send ``text`` end-to-end encrypted to ``to`` on ``session`` (resumed).

        Raises:
            CliError: the server refused it (``no_device``: nobody to read it), or a
                device of the conversation is stated with other keys.
        """
        from .device import UntrustedDeviceError  # noqa: PLC0415 (see device)

        message_id = secrets.token_bytes(MESSAGE_ID_SIZE)
        try:
            answer = self.device.send(session, to, text, message_id)
        except UntrustedDeviceError as exc:
            raise refused("untrusted_device", f"not sent: {exc}") from None
        return expect(answer, m.MessageAccepted)

    def call(self, issue: Callable[[ClientConnection], int], expected: type[R]) -> R:
        """Connect, resume, send one request and return its answer.

        Raises:
            CliError: the server refused (exit 1) or answered nonsense.
        """
        with self.connect(resume=True) as (session, _server):
            return expect(session.request(issue), expected)


def expect(answer: m.Response, expected: type[R]) -> R:
    """``answer`` if it is an ``expected``; else the server's refusal (exit 1)."""
    if isinstance(answer, m.ErrorResponse):
        raise refused(answer.code, answer.message)
    if not isinstance(answer, expected):
        raise refused(ErrorCode.INTERNAL, f"unexpected answer {type(answer).__name__}")
    return answer


def hex_bytes(text: str) -> bytes:
    """Bytes from hex, or none at all (an id's check then refuses them)."""
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def read_password(from_stdin: bool, *, confirm: bool, prompt: str = "Password") -> str:
    """A password from one line of stdin, or asked on the terminal (not echoed)."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    with warnings.catch_warnings():
        # Without a terminal getpass warns (with its source line) that it cannot
        # hide the input; click already says so in one line of its own.
        warnings.simplefilter("ignore")
        password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    return password


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        # Before the group's callback the context object is main()'s Output; after
        # it, the App holding that same Output.
        app = ctx.find_object(App)
        out = app.out if app is not None else ctx.find_object(Output)
        if out is not None:
            out.json_mode = True


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``, on the group and on every command (so that it is accepted after
    the command too)."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print one JSON object (see the README's contract).",
    )(function)


def current_app() -> App:
    """The running command's :class:`App` (the group's callback made it)."""
    return click.get_current_context().find_object(App)  # type: ignore[return-value]
