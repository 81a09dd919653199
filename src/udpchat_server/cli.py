"""``udpchat-server``: the chat server on a UDP socket, with a SQLite database.

::

    udpchat-server [--host 127.0.0.1] [--port 9999] [--db udpchat.sqlite3]
                   [--key-file PATH] [--log-level info]
                   [--max-room-members N] [--max-rooms-per-user N]

When ready it prints ``listening on HOST:PORT key FINGERPRINT`` on stdout (``--port 0``
picks a free port: read it there). Logs go to stderr. SIGINT and SIGTERM stop it
cleanly (last commit, database closed) with exit status 0; a port in use, an
unreadable key file or database exit 1 with one ``error:`` line.
"""

from __future__ import annotations

import gc
import signal
import sys


class _HeldSignals:
    """SIGINT and SIGTERM noted, not acted on, while the server starts.

    Start-up loads C and Rust extensions (orjson, vodozemac, cryptography, sqlite3),
    whose initialisation runs Python code (the imports it makes), where a Python
    signal handler runs too. One that raises (``KeyboardInterrupt``, Python's own
    SIGINT handler among them) fails that import, and an extension that does not
    check goes on with NULL: orjson's ``orjson_init_exec`` passes the module its
    import did not return to ``PyObject_GetAttrString`` and the process dies of
    SIGSEGV. A handler that only notes the signal fails nothing; the server acts on
    the note once its own handlers are in place (a clean stop, exit 0). Holding is
    for the main thread only (``signal.signal`` refuses any other): elsewhere it
    does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._before: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def hold(self) -> None:
        """Note SIGINT and SIGTERM from now on, until :meth:`release` or :meth:`take`."""
        self.received = None
        try:
            for signum in self.SIGNALS:
                self._before.setdefault(signum, signal.signal(signum, self._note))
        except ValueError:  # not the main thread: nothing is held
            self.release()

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def release(self) -> None:
        """The handlers from before :meth:`hold` are back (a signal noted is kept)."""
        for signum, before in self._before.items():
            signal.signal(signum, before)
        self._before.clear()

    def take(self) -> int | None:
        """The caller has installed its own handlers: forget the previous ones and
        return the signal noted meanwhile, if any, for the caller to act on."""
        self._before.clear()
        return self.received


# SIGINT or SIGTERM from here until command() installs the server's handlers (the
# module loads in a good part of a second, the database opens after) is a clean
# stop, exit 0: never a traceback, nor a death by signal, nor a segfault. Whoever
# imports this module gets their handlers back at its end (see the end of the file).
_held = _HeldSignals()
_held.hold()
# The collector is off while they load, and what they made is then frozen (never
# scanned again: it lives as long as the process): its passes over those objects
# were a tenth of the start-up's CPU, and every later pass would walk them again.
gc.disable()
try:
    import importlib.util
    import logging
    import os
    import re
    import socket
    import stat
    import time
    from collections.abc import Callable
    from pathlib import Path
    from types import FrameType
    from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn

    import attrs
    import click

    from udpchat_proto import (
        ChatServer,
        PasswordHash,
        RateLimit,
        ScryptParams,
        ServerConfig,
        Store,
        StoreUnavailableError,
        ValidationError,
    )
    from udpchat_proto.build import build_line
    from udpchat_proto.chat import check_password, hash_password

    from .config_file import ConfigError, load_defaults, to_toml
    from .control import ControlError, ControlInUseError, ControlNotOursError, ControlSocket
    from .ctl import ctl as ctl_command
    from .ctl import default_control_path
    from .dburl import is_postgres_url, shown_database
    from .keyfile import KeyFileError, default_key_path, load_or_create_key
    from .logformat import LOG_FORMATS, configure_logging
    from .loop import ServerLoop
    from .operations import Operations, Operator

    if TYPE_CHECKING:
        from .bus import NatsBus
    from .stores.sqlite import SQLiteStore
except KeyboardInterrupt:  # raised by an import itself, not by a signal (held)
    _held.release()
    sys.exit(0)
finally:
    gc.freeze()
    gc.enable()

__all__ = ["main"]

log = logging.getLogger("udpchat_server")

_LOG_LEVELS = ("debug", "info", "warning", "error")


METRICS_INSTALL = "pip install 'udpchat-proto[metrics]'"
"""What installs prometheus-client, named when ``--metrics`` finds it missing."""


class StartupError(Exception):
    """The server cannot start; the message is the one line shown to the user."""


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    _grow_receive_buffer(sock)
    # No SO_REUSEADDR: on Linux it would let a second server share the UDP port.
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


#: The server socket's receive buffer: with the kernel's default (~200 KiB), a burst
#: of a few hundred datagrams arriving while a batch commits is dropped.
RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Ask for :data:`RECEIVE_BUFFER` (beyond ``net.core.rmem_max`` when allowed)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
        except OSError:  # not privileged for FORCE: the plain one, capped by the kernel
            continue
        break
    log.debug("receive buffer: %d bytes", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def _format_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RateOption(click.ParamType):  # type: ignore[type-arg]
    """``BURST/SECONDS``: ``BURST`` events back to back, then one per ``SECONDS``."""

    name = "burst/seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, RateLimit):
            return value
        burst, sep, interval = str(value).partition("/")
        try:
            if not sep:
                raise ValueError("expected BURST/SECONDS")
            return RateLimit(burst=int(burst), interval=float(interval))
        except ValueError as exc:
            self.fail(f"{value!r}: {exc} (e.g. 10/6: 10 at once, then one every 6 s)", param, ctx)


class ByteSize(click.types.IntParamType):
    """A number of bytes: ``67108864``, or with a unit, ``64M`` (K, M, G: KiB, MiB,
    GiB; ``64MiB`` too). A whole number of bytes in a ``--config`` file."""

    name = "bytes"
    _UNITS: ClassVar[dict[str, int]] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
            if match is None:
                self.fail(f"{value!r} is not a size (e.g. 67108864, 64M or 1G)", param, ctx)
            size = int(match[1]) * self._UNITS[match[2].lower()]
        if size < 0:
            self.fail(f"{value!r} is not a size: it is below 0", param, ctx)
        return size


#: Storage limits that 0 turns off (None in ServerConfig).
_OFF_WHEN_ZERO = frozenset({"retain_days", "max_stored_per_user"})

#: The limits of ServerConfig that are options, with their help (the default and the
#: reason of each is in docs/PROTOCOL.md, "Limits and rate limits").
_COUNT_LIMITS: tuple[tuple[str, str], ...] = (
    ("max_room_members", "Most members a room may have."),
    ("max_rooms_per_user", "Most rooms one user may be in."),
    ("max_outgoing_invitations", "Most invitations a user may have waiting for an answer."),
    ("max_blocked_per_user", "Most users one user may block."),
    ("protected_connections_per_user", "A user's connections kept when the server is full."),
    ("max_sessions_per_user", "Most login sessions per user (beyond: the LRU one ends)."),
    ("max_pending_hash_jobs", "Most password hashes waiting or running at once."),
    ("max_hash_jobs_per_address", "Most password hashes at once per client address."),
    ("max_hash_jobs_per_user", "Most password hashes at once per username and address."),
    ("max_waiting_per_recipient", "Most direct messages waiting for one user."),
)
_RATE_LIMITS: tuple[tuple[str, str], ...] = (
    ("login_failures_per_user_address", "Failed logins per (username, address)."),
    ("login_failures_per_user", "Failed logins per username, from all addresses."),
    (
        "login_failures_beyond_ceiling",
        "Failed logins per (username, address) once the username's ceiling is spent.",
    ),
    ("login_failures_per_address", "Failed logins per client address."),
    ("logins_per_user", "Successful logins per username."),
    ("registrations_per_address", "Registrations per client address."),
    ("message_rate", "Messages per user, all sessions together."),
    ("membership_changes_per_user", "Room joins and leaves per user."),
    ("key_claims_per_user", "Keys claimed per user (end-to-end encryption)."),
    ("key_claims_per_device", "One-time keys handed out per device; then its fallback key."),
    ("request_rate", "Requests per connection."),
)


def _limit_options(function: Any) -> Any:
    """The options of every limit above (``--max-room-members`` ...)."""
    defaults = ServerConfig()
    for field, text in reversed(_RATE_LIMITS):
        rate = getattr(defaults, field)
        function = click.option(
            "--" + field.replace("_", "-"),
            field,
            type=RateOption(),
            default=None,
            help=f"{text} BURST/SECONDS [default: {rate.burst}/{rate.interval:g}]",
        )(function)
    for field, text in reversed(_COUNT_LIMITS):
        function = click.option(
            "--" + field.replace("_", "-"),
            field,
            type=click.IntRange(1),
            default=None,
            help=f"{text} [default: {getattr(defaults, field)}]",
        )(function)
    return function


def _config(limits: dict[str, Any], scrypt_n: int | None) -> ServerConfig:
    changes: dict[str, Any] = {
        name: None if name in _OFF_WHEN_ZERO and value == 0 else value
        for name, value in limits.items()
        if value is not None
    }
    if scrypt_n is not None:
        try:
            changes["scrypt"] = ScryptParams(n=scrypt_n)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scrypt-n") from None
    return attrs.evolve(ServerConfig(), **changes)


def _in_force(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """For ``--print-config``: the options with what an unset limit means, and the
    paths an unset control socket and key file follow from the database."""
    values, defaults = dict(params), ServerConfig()
    for name, value in params.items():
        if value is None and name in attrs.fields_dict(ServerConfig):
            values[name] = getattr(defaults, name)
    db = str(values["db"])
    derived: dict[str, Any] = {"control": default_control_path(db)}
    if not is_postgres_url(db):
        derived["key_file"] = default_key_path(Path(db))
    return values, derived


def _warn_about(config: ServerConfig) -> None:
    """Say loudly what weakens the server (once it starts: an error that stops the
    start stays the one line on stderr)."""
    if config.scrypt.n < ScryptParams().n:
        log.warning(
            "WARNING: the scrypt cost is lowered to N=%d (UDPCHAT_SCRYPT_N or --scrypt-n; "
            "the default is %d): stored passwords are that much cheaper to guess. "
            "For tests only.",
            config.scrypt.n,
            ScryptParams().n,
        )


def _load_config(ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    """``--config``: the file's options become the defaults (the command line wins)."""
    if path is not None:
        try:
            ctx.default_map = load_defaults(ctx, path)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
    return path


def _metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (then on loopback)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise StartupError(f"--metrics takes HOST:PORT or PORT, not {text!r}") from None
    return host, number


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    # (Not dir_okay=False: click's usage error, exit 2, for what is a bad config, exit 1.)
    type=click.Path(path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="A TOML file of options (their long names: port = 9999); the command line wins.",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the configuration in force as TOML, and exit.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=9999,
    show_default=True,
    help="UDP port; 0 picks a free one (printed on the 'listening on' line).",
)
@click.option(
    "--db",
    default="udpchat.sqlite3",
    show_default=True,
    help="SQLite database file, created with its schema if missing; or a PostgreSQL "
    "database, postgresql://USER@HOST:PORT/DBNAME (its schema created or migrated; "
    "needs the postgres extra and --key-file).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The server's static key (32 raw bytes, mode 0600), created on first start. "
    "Default: the database path plus '.key'.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Logs go to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text, or json: one object per line (time, level, logger, message, fields).",
)
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: on 127.0.0.1).",
)
@click.option(
    "--control",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The control socket for 'udpchat-server ctl' (mode 0600) [default: the "
    "database path plus '.ctl'; with PostgreSQL, none unless given].",
)
@_limit_options
@click.option(
    "--public-presence",
    is_flag=True,
    help="List every connected user to everyone who asks (online). By default a "
    "user sees only the online users who are friends or share a room with them.",
)
@click.option(
    "--retain-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Delete messages this many days old once every recipient device has them "
    "(never one still waiting for a device); 0 keeps them for ever "
    f"[default: {ServerConfig().retain_days:g}].",
)
@click.option(
    "--max-stored-per-user",
    type=ByteSize(),
    default=None,
    help="Most bytes of messages one user may have stored, each counted as its text "
    "plus 160; beyond, sending is refused with quota_exceeded. A number of bytes, or "
    "with K, M or G; 0: no quota [default: "
    f"{(ServerConfig().max_stored_per_user or 0) >> 20}M].",
)
@click.option(
    "--bus",
    default=None,
    metavar="nats://HOST:PORT",
    help="Join a cluster: the NATS server its nodes tell each other on (they share the "
    "PostgreSQL --db and the --key-file). nats://USER:PASSWORD@HOST:PORT or "
    "nats://TOKEN@HOST:PORT if it asks; tls://HOST:PORT for TLS.",
)
@click.option(
    "--bus-creds",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A NATS credentials file (user JWT and nkey seed) for the --bus server.",
)
@click.option(
    "--bus-nkey",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the nkey seed (SU...) this node signs in to the --bus server with.",
)
@click.option(
    "--bus-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CA certificates (PEM) for a tls:// --bus [default: the system's].",
)
@click.option(
    "--bus-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="This node's certificate (PEM) for a tls:// --bus that asks for one.",
)
@click.option(
    "--bus-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The private key (PEM) of --bus-cert, if not in the same file.",
)
@click.option(
    "--scrypt-n",
    type=click.IntRange(2),
    default=None,
    envvar="UDPCHAT_SCRYPT_N",
    hidden=True,
    help="For tests only: the scrypt cost N for new passwords (a power of two).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Threads hashing passwords.",
)
# The second line says whether the mypyc-compiled build runs (udpchat_proto.build).
@click.version_option(
    package_name="udpchat-proto", message=f"%(prog)s, version %(version)s\n{build_line()}"
)
def command(
    *,
    print_config: bool,
    host: str,
    port: int,
    db: str,
    key_file: Path | None,
    log_level: str,
    log_format: str,
    metrics: str | None,
    control: Path | None,
    scrypt_n: int | None,
    workers: int,
    retain_days: float | None,
    max_stored_per_user: int | None,
    public_presence: bool,
    bus: str | None,
    bus_creds: Path | None,
    bus_nkey: Path | None,
    bus_ca: Path | None,
    bus_cert: Path | None,
    bus_key: Path | None,
    **limits: Any,
) -> None:
    """Run the udpchat server."""
    if print_config:
        values, derived = _in_force(click.get_current_context().params)
        try:
            click.echo(to_toml(command, values, derived), nl=False)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        return
    if metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise StartupError(f"--metrics needs prometheus-client: {METRICS_INSTALL}")
    configure_logging(log_level, log_format)
    # From here on SIGINT and SIGTERM stop the server cleanly, even while it is
    # still opening its database: a supervisor's SIGTERM right after the start
    # must not kill it half-way (exit 0, files closed, the loop never started).
    loops: list[ServerLoop] = []
    stop_requested = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        log.info("%s: stopping", signal.Signals(signum).name)
        stop_requested = True
        for running in loops:
            running.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if (held := _held.take()) is not None:  # it came while the modules loaded
        on_signal(held, None)
    if bus is not None and not is_postgres_url(db):
        raise StartupError("--bus joins a cluster: its nodes share a PostgreSQL --db")
    bus_files = {
        "creds": bus_creds,
        "nkey": bus_nkey,
        "ca": bus_ca,
        "cert": bus_cert,
        "key": bus_key,
    }
    if bus is None and (given := [f"--bus-{name}" for name, v in bus_files.items() if v]):
        raise StartupError(f"{given[0]} needs --bus")
    if bus is not None:
        _check_bus(bus, bus_files)
    config = _config(
        {
            **limits,
            "retain_days": retain_days,
            "max_stored_per_user": max_stored_per_user,
            "public_presence": public_presence,
            "cluster": bus is not None,
        },
        scrypt_n,
    )
    sock = _bind(host, port)
    try:
        store = _open_store(db, key_file)
        node_bus: NatsBus | None = None
        operator: Operator | None = None
        try:
            key_path = key_file if key_file is not None else default_key_path(Path(db))
            try:
                key, created = load_or_create_key(key_path)
            except KeyFileError as exc:
                raise StartupError(str(exc)) from None
            if created:
                log.info("created key file %s", key_path)
            server = ChatServer(
                store=store,
                static_key=key,
                clock=time.time,
                config=config,
                # A database a round trip away: a batch's messages in one statement.
                stage_messages=is_postgres_url(db),
            )
            operator = _operator(
                server,
                store,
                loops,
                key_path=key_path,
                control=control if control is not None else default_control_path(db),
                explicit_control=control is not None,
                metrics=metrics,
                config=config,
            )
            # The nodes of one cluster share the key, and only they have it: the
            # bus's subject and the key of its messages come from its private half.
            if bus is not None:
                node_bus = _join_bus(bus, key.private_bytes, bus_files)
            loop = ServerLoop(
                server=server,
                store=store,
                sock=sock,
                workers=workers,
                bus=node_bus,
                operator=operator,
            )
            loops.append(loop)
            if stop_requested:  # a signal came while starting: stop at once, never ready
                loop.stop()
            else:
                _warn_about(config)
                address = _format_address(sock)
                click.echo(f"listening on {address} key {key.fingerprint}")
                sys.stdout.flush()
                log.info(
                    "listening on %s, database %s, key %s",
                    address,
                    shown_database(db),
                    key.fingerprint,
                )
            loop.run()
            log.info("stopped")
        finally:
            if node_bus is not None:
                node_bus.goodbye()  # its users are offline at once, not in 15 s
                node_bus.close()
            if operator is not None:
                operator.close()
            store.close()
    finally:
        sock.close()


def _operator(
    server: ChatServer,
    store: Store,
    loops: list[ServerLoop],
    *,
    key_path: Path,
    control: Path | None,
    explicit_control: bool,
    metrics: str | None,
    config: ServerConfig,
) -> Operator:
    """The control socket and the metrics endpoint, as asked.

    Raises:
        StartupError: one of them cannot be opened.
    """
    operations = Operations(
        server,
        store,
        counters=lambda: loops[0].counters(),  # noqa: PLW0108 (no loop yet)
        key_path=key_path,
    )
    socket_: ControlSocket | None = None
    if control is not None:
        socket_ = ControlSocket(control, prepare=_hash_new_passwords(config))
        try:
            socket_.open()
        except ControlInUseError as exc:  # another server on this database, most likely
            raise StartupError(f"{exc} (a second server on the same database?)") from None
        except ControlNotOursError as exc:  # planted? never used, never replaced
            if explicit_control:
                raise StartupError(f"cannot open the control socket: {exc}") from None
            log.warning("no control socket: %s; remove it, or give --control PATH", exc)
            socket_ = None
        except OSError as exc:
            if explicit_control:
                raise StartupError(f"cannot open the control socket {control}: {exc}") from None
            log.warning("no control socket (%s): %s", control, exc)
            socket_ = None
        else:
            log.info("control socket %s", control)
    endpoint = None
    if metrics is not None:
        host, port = _metrics_address(metrics)
        from .metrics import ServerMetrics  # noqa: PLC0415 (only when asked)

        endpoint = ServerMetrics()
        try:
            http = endpoint.serve(host, port)
        except OSError as exc:
            if socket_ is not None:
                socket_.close()
            raise StartupError(
                f"cannot serve metrics on {metrics}: {exc.strerror or exc}"
            ) from None
        bound_host, bound_port = http.server_address[:2]
        log.info("metrics on http://%s:%s/metrics", bound_host, bound_port)
    backup = store.backup if isinstance(store, SQLiteStore) else None
    return Operator(operations, control=socket_, metrics=endpoint, backup=backup)


def _hash_new_passwords(config: ServerConfig) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """What the control socket's thread does with ``reset-password`` before the loop
    sees it: check and hash the new password (scrypt: never on the loop)."""

    def prepare(command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command != "reset-password":
            return args
        password = args.get("password")
        if not isinstance(password, str):
            raise ControlError("bad_request", "reset-password needs the new password")
        try:
            check_password(password)
        except ValidationError as exc:
            raise ControlError("invalid_password", str(exc)) from None
        salt = os.urandom(16)
        digest = hash_password(password, salt, config.scrypt)
        hashed = PasswordHash(salt=salt, params=config.scrypt, digest=digest)
        return {"user": args.get("user"), "hash": hashed.to_string()}

    return prepare


def _check_bus(url: str, files: dict[str, Path | None]) -> None:
    """Refuse a ``--bus`` that cannot work before anything is opened.

    Raises:
        StartupError: the URL is not NATS's, or a file cannot be used.
    """
    from .bus import BusConfigError, BusOptions, shown_bus  # noqa: PLC0415 (only then)

    if not all(one.strip().startswith(("nats://", "tls://")) for one in url.split(",")):
        raise StartupError(
            f"--bus takes nats://HOST:PORT or tls://HOST:PORT, not {shown_bus(url)!r}"
        )
    try:
        BusOptions(**files).connect_options(url)
    except BusConfigError as exc:
        raise StartupError(str(exc)) from None


def _join_bus(url: str, secret: bytes, files: dict[str, Path | None]) -> NatsBus:
    """The cluster's bus, connected or trying to (see :meth:`NatsBus.start`).

    Raises:
        StartupError: nats-py is missing, or the bus's files cannot be used.
    """
    try:
        from .bus import BusConfigError, BusOptions, NatsBus  # noqa: PLC0415 (nats-py: optional)

        try:
            joined = NatsBus(url, secret, options=BusOptions(**files))
        except BusConfigError as exc:
            raise StartupError(str(exc)) from None
        joined.start()
    except ImportError as exc:
        raise StartupError(
            f"--bus needs nats-py: pip install 'udpchat-proto[cluster]' ({exc})"
        ) from None
    if joined.connected:
        log.info("joined the bus at %s", joined.shown_url)
    return joined


def _open_store(db: str, key_file: Path | None) -> Store:
    """The store ``--db`` names: PostgreSQL for a ``postgresql://`` URL, else SQLite.

    Raises:
        StartupError: it cannot be opened (the message says why).
    """
    if not is_postgres_url(db):
        if db != ":memory:":
            _claim_database(Path(db))
        try:
            return SQLiteStore.open(Path(db))
        except Exception as exc:
            raise StartupError(f"cannot open database {db}: {exc}") from None
    if key_file is None:
        raise StartupError(
            "--key-file is required with a PostgreSQL database: every node of a cluster "
            "presents the same key, so they share one key file"
        )
    try:
        from .stores.postgres import PostgresStore  # noqa: PLC0415 (psycopg: optional)
    except ImportError as exc:
        raise StartupError(
            f"a PostgreSQL database needs psycopg: pip install 'udpchat-proto[postgres]' ({exc})"
        ) from None
    try:
        return PostgresStore.open(db)
    except Exception as exc:
        raise StartupError(f"cannot open database {shown_database(db)}: {exc}") from None


def _claim_database(path: Path) -> None:
    """Make sure the SQLite database at ``path`` is this server's user's, before
    SQLite opens it: a new one is created here, 0600, never through a link.

    Another user could plant a file at the path in a shared directory (and read
    all that the server writes in it), or a link (dangling: SQLite created the
    database at its target, 0644). So a link at the path is taken only if this
    server's user or root made it and it leads to an existing database; the
    database and its ``-wal``, ``-shm`` and ``-journal`` files must belong to the
    server's (effective) user, and the last three must be no links.

    Raises:
        StartupError: what is at the path is refused (the message says why).
    """
    euid = os.geteuid()
    try:
        link = path.lstat()
    except FileNotFoundError:
        try:  # (O_EXCL never follows a link; O_NOFOLLOW says so)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(path, flags, 0o600))
        except OSError as exc:
            raise StartupError(f"cannot create database {path}: {exc.strerror or exc}") from None
        return
    except OSError as exc:
        raise StartupError(f"cannot open database {path}: {exc.strerror or exc}") from None
    database = path
    if stat.S_ISLNK(link.st_mode):
        if link.st_uid not in (euid, 0):
            raise StartupError(
                f"database {path} is a symbolic link that belongs to uid {link.st_uid}, "
                f"not to this server's user (uid {euid}) or root: it is not followed"
            )
        if not path.exists():
            raise StartupError(
                f"database {path} is a symbolic link to {os.readlink(path)}, which does "
                "not exist: a new database is never created through a link"
            )
        database = path.resolve()  # (where SQLite puts the -wal and -shm files too)
    for file in (database, *(database.with_name(database.name + x) for x in _SQLITE_FILES)):
        try:
            info = file.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StartupError(f"cannot open database {file}: {exc.strerror or exc}") from None
        if file != database and stat.S_ISLNK(info.st_mode):
            raise StartupError(f"{file} is a symbolic link: SQLite makes that file itself")
        if info.st_uid != euid:
            raise StartupError(
                f"{file} belongs to uid {info.st_uid}, not to this server's user "
                f"(uid {euid}): its owner could read every message and password hash"
            )


_SQLITE_FILES: Final = ("-wal", "-shm", "-journal")
"""What SQLite puts beside a database, by name."""


@click.command(name="migrate")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite database of the server to move (stop it first).",
)
@click.option(
    "--to", "target", required=True, help="The PostgreSQL database: postgresql://USER@HOST/DB."
)
def migrate_command(source: Path, target: str) -> None:
    """Copy a single server's SQLite database into an empty PostgreSQL database:
    accounts, login sessions, friends, rooms, messages and delivery cursors, as
    they are. Then start the server with --db pointing at PostgreSQL and
    --key-file at the old key file (SQLITE_PATH.key), so clients see the same
    server."""
    if not is_postgres_url(target):
        raise click.BadParameter("expected postgresql://USER@HOST:PORT/DBNAME", param_hint="--to")
    try:
        from .migrate import MigrationError, migrate  # noqa: PLC0415 (psycopg: optional)
    except ImportError as exc:
        raise StartupError(
            f"migrate needs psycopg: pip install 'udpchat-proto[postgres]' ({exc})"
        ) from None
    try:
        counts = migrate(source, target)
    except (MigrationError, StoreUnavailableError) as exc:
        raise StartupError(str(exc)) from None
    for table, count in counts.items():
        click.echo(f"{table}: {count}")
    click.echo(f"migrated {source} to {shown_database(target)}")


def _complete(instruction: str) -> NoReturn:
    """Shell completion: the server's options, and its ``migrate`` and ``ctl``
    commands (dispatched by hand in main(), so click sees them only here)."""
    from click.shell_completion import shell_complete  # noqa: PLC0415 (only then)

    tool = click.Group(
        "udpchat-server",
        params=command.params,
        commands={"migrate": migrate_command, "ctl": ctl_command},
        invoke_without_command=True,
    )
    sys.exit(shell_complete(tool, {}, "udpchat-server", "_UDPCHAT_SERVER_COMPLETE", instruction))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``udpchat-server`` console script (``migrate`` as its
    first argument runs the migration instead)."""
    if (instruction := os.environ.get("_UDPCHAT_SERVER_COMPLETE")) is not None:
        _complete(instruction)
    args = list(sys.argv[1:] if argv is None else argv)
    chosen: click.Command = command
    name = "udpchat-server"
    if args[:1] == ["migrate"]:
        chosen, name, args = migrate_command, "udpchat-server migrate", args[1:]
    elif args[:1] == ["ctl"]:
        chosen, name, args = ctl_command, "udpchat-server ctl", args[1:]
    if chosen is command:  # (migrate and ctl keep Ctrl-C's KeyboardInterrupt)
        _held.hold()  # until command() installs its handlers: see _HeldSignals
    try:
        chosen.main(args=args, prog_name=name, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(0)
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a crash (e.g. the disk is full): one line, no traceback
        log.debug("fatal", exc_info=True)
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        _held.release()  # (nothing left to restore once command() took over)
    sys.exit(0)


# The end of the module: the importer's handlers are back. A signal that came while
# it loaded stops the server here, cleanly, before main() parses anything.
_held.release()
if _held.received is not None:
    sys.exit(0)

if __name__ == "__main__":
    main()
