"""The cluster's bus on NATS: what this node's batches changed, out; the others', in.

Every node publishes on one subject and listens to it. The subject, and the key
that seals every message, come from the server's static private key, which only
the nodes hold: a process that can publish on the NATS server but lacks the key
can neither find the cluster's subject nor say anything its nodes would believe.
What a message looks like, and why a node drops one, is the core's
(:mod:`udpchat_proto.bus`, specified in ``docs/PROTOCOL.md``); this module is
NATS and the thread around it. What the nodes tell each other:

* ``news``: a :class:`~udpchat_proto.chat.ClusterNews` (users with new messages,
  encoded pushes, ended sessions, caches to forget, who came online or went
  offline there);
* ``snapshot``: part of the node's heartbeat, everyone online on it (a long list is
  split to stay under NATS's payload limit);
* ``resync``: the sender was cut off from the bus: look for every connection;
* ``bye``: the sender is stopping: its users are offline now, not in 15 s.

It is core NATS, with no durable log of its own: the database is the only record.
Lost news costs time, never a message (see ``udpchat_proto.chat.cluster``), and
when the connection to NATS comes back the node looks in the database for every
connection it has (the news of the gap is gone), so delivery never depends on the
bus. Presence heals with the next heartbeats. A message dropped (forged, replayed,
stale ...) is lost news as well: it is counted by reason (:attr:`NatsBus.dropped`,
in the server's counters as ``bus_dropped``) and logged at most once a minute.
What the bus hands the server loop is bounded whatever the number of nodes: at
most :data:`~udpchat_proto.bus.MAX_REMOTE_NAMES` names online elsewhere in all
(:class:`~udpchat_proto.bus.RemoteNames`), and at most :data:`MAX_BACKLOG` entries
waiting.

The NATS server itself may ask for credentials (a user and password or a token in
the URL, an nkey seed or a creds file) and TLS (``tls://``): :class:`BusOptions`.

nats-py is asyncio-only: the bus runs its own event loop on a thread, and wakes the
server loop (through its wake-up socket) when something arrived. Messages are
sealed on that thread, in the order they are published.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

from udpchat_proto.bus import (
    MAX_REMOTE_NAMES,
    NODE_SIZE,
    SUBJECT_PREFIX,
    BusDropError,
    BusKeys,
    Bye,
    Heard,
    Heartbeats,
    News,
    Opener,
    RemoteNames,
    Resync,
    Sealer,
    Snapshot,
    SnapshotPart,
    bye_body,
    news_bodies,
    parse,
    resync_body,
    snapshot_bodies,
)
from udpchat_proto.chat import ClusterNews

__all__ = [
    "BACKLOG",
    "SUBJECT",
    "BusConfigError",
    "BusOptions",
    "Bye",
    "Heard",
    "NatsBus",
    "News",
    "Snapshot",
    "shown_bus",
]

log = logging.getLogger(__name__)

SUBJECT: Final = SUBJECT_PREFIX
"""The prefix of a cluster's subject: ``udpchat.cluster.TOKEN``, where TOKEN is
derived from the private key its nodes share (:class:`~udpchat_proto.bus.BusKeys`):
two clusters on one NATS never hear each other, and nobody without the key can
name the subject."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds :meth:`NatsBus.start` waits for NATS before serving without it."""
RETRY_INTERVAL: Final = 2.0
"""Seconds between attempts to reach NATS when it was away at start."""
DROP_LOG_INTERVAL: Final = 60.0
"""Shortest time between two log lines about dropped bus messages (and about
names ignored)."""
MAX_BACKLOG: Final = 2 * MAX_REMOTE_NAMES
"""Most entries (names, pushes, sessions ...) of what was heard that wait for the
server loop to take them. A loop that falls this far behind (stalled by a flood,
or a long batch) loses what comes next (``backlog``), as it would in a gap of
the bus, and looks in the database for every connection once it catches up."""
SWITCH_INTERVAL: Final = 0.0005
"""Seconds the bus's thread waits at most for the interpreter while the loop's
thread runs Python (``sys.setswitchinterval``, set by :meth:`NatsBus.start` if it
was longer). At CPython's 5 ms, news to publish, or heard, waited up to that long
behind a busy loop (the p99 of handing news to the bus thread was 5.2 ms at 200
msg/s across two nodes). The loop's thread gives the interpreter up sooner only
while the bus's thread asks for it, and that thread holds it briefly (sealing,
opening)."""
BACKLOG: Final = "backlog"
"""The drop reason of what the server loop was too far behind to take (counted
with the wire's, :data:`~udpchat_proto.bus.DROP_REASONS`, in ``bus_dropped``)."""


class BusConfigError(Exception):
    """The bus's options cannot be used (the message says which and why)."""


@attrs.frozen
class BusOptions:
    """How a node authenticates to the NATS server, beyond what the URL says
    (``nats://USER:PASSWORD@HOST:PORT``, ``nats://TOKEN@HOST:PORT``).

    Attributes:
        creds: a NATS credentials file (a user JWT and its nkey seed).
        nkey: a file holding an nkey seed (``SU...``).
        ca: CA certificates (PEM) that the NATS server's certificate must chain
            to (TLS; the system's by default).
        cert: this node's certificate (PEM), when the server asks for one.
        key: the private key of ``cert``, if it is not in the same file.
    """

    creds: Path | None = None
    nkey: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def connect_options(self, url: str) -> dict[str, Any]:
        """nats-py's ``connect()`` arguments for these options.

        Raises:
            BusConfigError: a file cannot be read or used, options that do not go
                together, or the nkeys package is missing.
        """
        tls = any(u.strip().startswith("tls://") for u in url.split(","))
        if (self.ca or self.cert) and not tls:
            raise BusConfigError("--bus-ca and --bus-cert need a tls:// --bus URL")
        if self.key and not self.cert:
            raise BusConfigError("--bus-key goes with --bus-cert")
        if self.creds and self.nkey:
            raise BusConfigError("give --bus-creds or --bus-nkey, not both")
        options: dict[str, Any] = {}
        if self.creds is not None:
            text = _read(self.creds, "--bus-creds")
            if "USER JWT" not in text or "NKEY SEED" not in text:
                raise BusConfigError(f"--bus-creds {self.creds}: not a NATS credentials file")
            _need_nkeys("--bus-creds")
            options["user_credentials"] = str(self.creds)
        if self.nkey is not None:
            seed = _read(self.nkey, "--bus-nkey").strip()
            nkeys = _need_nkeys("--bus-nkey")
            try:
                nkeys.from_seed(seed.encode())
            except Exception:
                raise BusConfigError(f"--bus-nkey {self.nkey}: not an nkey seed") from None
            options["nkeys_seed"] = str(self.nkey)
        if tls:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context: the server's certificate checked against ``ca`` (or the
        system's CAs) and its name; this node's certificate if given.

        Raises:
            BusConfigError: a file cannot be read, or is not what it should be.
        """
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca) if self.ca is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise BusConfigError(f"--bus-ca {self.ca}: {_why(exc)}") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(
                    str(self.cert), str(self.key) if self.key is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise BusConfigError(f"--bus-cert {self.cert}: {_why(exc)}") from None
        return context


def _read(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BusConfigError(f"{option} {path}: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _need_nkeys(option: str) -> Any:
    try:
        import nkeys  # type: ignore[import-untyped]  # noqa: PLC0415 (only for nkeys)
    except ImportError:
        raise BusConfigError(
            f"{option} needs the nkeys package: pip install 'udpchat-proto[cluster]'"
        ) from None
    return nkeys


def shown_bus(url: str) -> str:
    """``--bus`` fit for a log line: without a password or a token."""
    shown = []
    for one in url.split(","):
        parts = urllib.parse.urlsplit(one.strip())
        if parts.username is None and parts.password is None:
            shown.append(one.strip())
            continue
        user = "***" if parts.password is None else f"{parts.username}:***"
        host = parts.netloc.rpartition("@")[2]
        shown.append(urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}")))
    return ",".join(shown)


class NatsBus:
    """One node's connection to the cluster's NATS.

    Args:
        url: ``nats://HOST:PORT`` or ``tls://HOST:PORT``, with credentials if the
            NATS server asks for them (several, separated by commas).
        secret: what the nodes share and nobody else has: the server's static
            private key. The subject and the message keys are derived from it.
        options: credentials and TLS files.
        wake: called (from the bus's thread) when something arrived.
        clock: the wall clock (seconds since the epoch) that dates and checks
            each message.

    Raises:
        BusConfigError: ``options`` cannot be used.
    """

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        options: BusOptions | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.shown_url = shown_bus(url)
        """The URL for log lines (no password, no token)."""
        self._connect_options = (options or BusOptions()).connect_options(url)
        keys = BusKeys.derive(secret)
        self.subject = keys.subject
        """Where every node of this cluster publishes (and listens for the others)."""
        self.wake = wake
        node = os.urandom(NODE_SIZE)
        self.node = node.hex()
        """This node's id, new at each start (so its counter starts at 0 again)."""
        self._sealer = Sealer(keys, node, clock)
        self._opener = Opener(keys, node, clock)
        self._heartbeats = Heartbeats()
        self._names = RemoteNames()
        self._lock = threading.Lock()
        self._heard: list[Heard] = []
        self._backlog = 0
        """Entries in :attr:`_heard` (see :data:`MAX_BACKLOG`)."""
        self._resync = False
        self._dropped: collections.Counter[str] = collections.Counter()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._drops_logged_at = -DROP_LOG_INTERVAL
        self._ignored_logged = 0
        self._ignored_logged_at = -DROP_LOG_INTERVAL
        self._last_error = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="udpchat-bus", daemon=True)
        self._nc: Any = None
        self._first_try = threading.Event()
        self._closing = False

    # --- the server loop's side -----------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe, waiting at most :data:`CONNECT_TIMEOUT`. A bus that
        cannot be reached yet is not fatal: the node serves (delivering from the
        database every few seconds) and keeps trying.

        Raises:
            ImportError: nats-py is not installed (the ``cluster`` extra).
        """
        import nats  # noqa: F401, PLC0415 (the cluster extra: only a node that uses it)

        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread.start()
        if not self._first_try.wait(CONNECT_TIMEOUT) or not self.connected:
            log.warning(
                "cannot reach the bus at %s yet%s: serving without it, and trying again",
                self.shown_url,
                f" ({self._last_error})" if self._last_error else "",
            )

    def publish(self, news: ClusterNews) -> None:
        """Tell the other nodes what this node's batches changed (never blocks);
        news too large for one NATS message goes in parts."""
        for body in news_bodies(news):
            self._send(body)

    def heartbeat(self, online: list[str]) -> None:
        """Tell the other nodes everyone online here (in parts if it is long)."""
        for body in snapshot_bodies(online):
            self._send(body)

    def goodbye(self) -> None:
        """Tell the other nodes that this one is stopping (its users go offline)."""
        self._send(bye_body())

    @property
    def connected(self) -> bool:
        """Whether messages flow now (False while NATS is away)."""
        return self._nc is not None and bool(self._nc.is_connected)

    @property
    def dropped(self) -> dict[str, int]:
        """Messages from the bus dropped since the start, by reason (see
        :data:`~udpchat_proto.bus.DROP_REASONS`, or :data:`BACKLOG`)."""
        with self._lock:
            return dict(self._dropped)

    @property
    def names_ignored(self) -> int:
        """Names online on other nodes not handed on since the start: beyond the
        :data:`~udpchat_proto.bus.MAX_REMOTE_NAMES` a node takes from all of them."""
        return self._names.ignored

    def take(self) -> tuple[list[Heard], bool]:
        """What the other nodes told since the last call, in order, and whether the
        bus came back from a gap meanwhile (then look for everyone)."""
        with self._lock:
            heard, self._heard = self._heard, []
            self._backlog = 0
            resync, self._resync = self._resync, False
        return heard, resync

    def close(self) -> None:
        """Disconnect (after what was published is flushed) and stop the thread
        (bounded)."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            self._thread.join(timeout=5)

    # --- the bus's thread --------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._connect())
        self._loop.run_forever()

    async def _connect(self) -> None:
        import nats  # noqa: PLC0415 (see start)

        first = True
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    self.url,
                    name=f"udpchat-{self.node[:8]}",
                    connect_timeout=CONNECT_TIMEOUT,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    no_echo=True,  # its own messages never come back (one that does is a replay)
                    reconnected_cb=self._reconnected,
                    disconnected_cb=self._disconnected,
                    error_cb=self._error,
                    **self._connect_options,
                )
                await self._nc.subscribe(self.subject, cb=self._received)
            except Exception as exc:  # not reachable (yet): serve without it, try again
                self._last_error = str(exc)
                log.debug("connecting to the bus at %s: %s", self.shown_url, exc)
                self._first_try.set()
                first = False
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            self._first_try.set()
            if not first:
                log.info("reached the bus at %s", self.shown_url)
            await self._reconnected()  # whatever was published meanwhile was lost
            return
        self._first_try.set()

    async def _received(self, msg: Any) -> None:
        try:
            node, body = self._opener.open(msg.data)
            said = parse(node.hex(), body)
        except BusDropError as drop:
            self._drop(drop.reason, drop.detail)
            return
        heard: Heard | None = None
        if isinstance(said, SnapshotPart):
            heard = self._heartbeats.add(said)
        elif isinstance(said, Bye):
            self._heartbeats.forget(said.node)
            self._names.forget(said.node)
            heard = said
        elif isinstance(said, News):
            heard = said
        if isinstance(heard, News | Snapshot):
            with self._lock:
                behind = self._backlog >= MAX_BACKLOG
                self._resync |= behind  # (what is lost now, the database still has)
            if behind:
                self._drop(BACKLOG, "the server loop is behind")
                self.wake()
                return
            ignored = self._names.ignored
            now = time.monotonic()
            heard = (
                self._names.news(heard, now)
                if isinstance(heard, News)
                else self._names.snapshot(heard, now)
            )
            if self._names.ignored > ignored:
                self._log_ignored()
        with self._lock:
            if heard is not None:
                self._heard.append(heard)
                self._backlog += _entries(heard)
            self._resync |= isinstance(said, Resync)
        self.wake()

    def _log_ignored(self) -> None:
        now = time.monotonic()
        if now - self._ignored_logged_at < DROP_LOG_INTERVAL:
            return
        ignored = self._names.ignored
        log.warning(
            "ignored %d name(s) online on other nodes since the last report: a node takes "
            "at most %d in all (too many users elsewhere, or a node holding the "
            "cluster's key names made-up ones)",
            ignored - self._ignored_logged,
            self._names.limit,
        )
        self._ignored_logged, self._ignored_logged_at = ignored, now

    def _drop(self, reason: str, detail: str) -> None:
        log.debug("a message on the bus dropped: %s: %s", reason, detail)
        now = time.monotonic()
        with self._lock:
            self._dropped[reason] += 1
            self._unlogged[reason] += 1
            if now - self._drops_logged_at < DROP_LOG_INTERVAL:
                return
            unlogged, self._unlogged = self._unlogged, collections.Counter()
            self._drops_logged_at = now
        log.warning(
            "dropped %d message(s) on the bus since the last report (%s)%s",
            sum(unlogged.values()),
            ", ".join(f"{reason} {count}" for reason, count in sorted(unlogged.items())),
            # Only a holder of the key can seal; others' messages are noise, or worse.
            ": someone without the cluster's key publishes on its subject"
            if unlogged.keys() & {"forged", "replayed"}
            else "",
        )

    async def _reconnected(self) -> None:
        # Messages were lost both ways meanwhile: this node looks for all of its
        # connections, and asks the others to do the same for theirs.
        log.info("the bus is up: looking for every connection's messages")
        with self._lock:
            self._resync = True
        self.wake()
        self._publish(resync_body())

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning(
                "lost the bus at %s: reconnecting (deliveries go on, later)", self.shown_url
            )

    async def _error(self, exc: Exception) -> None:
        # nats-py reports every failed reconnection attempt here: the disconnect was
        # logged once already (and start() names the last error if it never came).
        self._last_error = str(exc)
        log.debug("bus: %s", exc)

    def _send(self, body: bytes) -> None:
        self._loop.call_soon_threadsafe(self._publish, body)

    def _publish(self, body: bytes) -> None:
        # Sealed here, on the bus's thread, in the order of publication: the
        # counters reach the other nodes in order (one connection keeps it).
        if self._nc is not None and self._nc.is_connected:
            payload = self._sealer.seal(body)
            self._loop.create_task(self._nc.publish(self.subject, payload))

    async def _close(self) -> None:
        self._closing = True
        await asyncio.sleep(0)  # the publishes scheduled before the close go first
        if self._nc is not None:
            try:
                await self._nc.flush(timeout=2)
                await self._nc.close()
            except Exception:  # closing: nothing left to do about it
                log.debug("closing the bus", exc_info=True)
        self._loop.stop()


def _count(news: ClusterNews) -> int:
    return sum(len(part) for part in attrs.astuple(news, recurse=False))


def _entries(heard: Heard) -> int:
    """What ``heard`` weighs in the backlog (at least 1: an empty one is an entry
    too)."""
    if isinstance(heard, News):
        return max(1, _count(heard.news))
    if isinstance(heard, Snapshot):
        return max(1, len(heard.users))
    return 1
