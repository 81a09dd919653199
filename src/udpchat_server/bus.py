"""The cluster's bus on NATS: what this node's batches changed, out; the others', in.

Every node publishes on one subject and listens to it (a node drops its own
messages). A message is one JSON object with the sending node's id and one of:

* ``news``: a :class:`~udpchat_proto.chat.ClusterNews` (users with new messages,
  encoded pushes in base64, ended sessions in hex, caches to forget, who came
  online or went offline there);
* ``snapshot``: part of the node's heartbeat, everyone online on it
  (``part``/``parts``: a long list is split to stay under NATS's payload limit);
* ``resync``: the sender was cut off from the bus: look for every connection;
* ``bye``: the sender is stopping: its users are offline now, not in 15 s.

It is core NATS, with no durable log of its own: the database is the only record.
Lost news costs time, never a message (see ``udpchat_proto.chat.cluster``), and
when the connection to NATS comes back the node looks in the database for every
connection it has (the news of the gap is gone), so delivery never depends on the
bus. Presence heals with the next heartbeats.

nats-py is asyncio-only: the bus runs its own event loop on a thread, and wakes the
server loop (through its wake-up socket) when something arrived.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson

from udpchat_proto.chat import ClusterNews

__all__ = ["SUBJECT", "Bye", "Heard", "NatsBus", "News", "Snapshot"]

log = logging.getLogger(__name__)

SUBJECT: Final = "udpchat.cluster"
"""The prefix of a cluster's subject: ``udpchat.cluster.CLUSTER``, where CLUSTER
names the server key its nodes share, so that two clusters on one NATS never
hear each other."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds :meth:`NatsBus.start` waits for NATS before serving without it."""
RETRY_INTERVAL: Final = 2.0
"""Seconds between attempts to reach NATS when it was away at start."""
SNAPSHOT_PART: Final = 2000
"""Names per heartbeat message (about 70 KB at most: NATS takes 1 MB by default)."""
MAX_MESSAGE: Final = 512 * 1024
"""Largest news message sent whole (NATS refuses over 1 MB by default)."""
PARTS_MAX: Final = 64
"""Most nodes whose heartbeat may be half received at once (a bound on memory)."""


@attrs.frozen
class News:
    """Another node's :class:`~udpchat_proto.chat.ClusterNews`."""

    node: str
    news: ClusterNews


@attrs.frozen
class Snapshot:
    """Another node's heartbeat: everyone online on it."""

    node: str
    users: list[str]


@attrs.frozen
class Bye:
    """Another node is stopping."""

    node: str


Heard = News | Snapshot | Bye


class NatsBus:
    """One node's connection to the cluster's NATS.

    Args:
        url: ``nats://HOST:PORT``.
        cluster: the cluster's name on the bus (a subject token: the nodes derive
            it from the key they share).
        wake: called (from the bus's thread) when something arrived.
    """

    def __init__(
        self, url: str, cluster: str = "default", wake: Callable[[], None] = lambda: None
    ) -> None:
        self.url = url
        self.subject = f"{SUBJECT}.{cluster}"
        """Where every node of this cluster publishes (and listens for the others)."""
        self.wake = wake
        self.node = uuid.uuid4().hex
        """This node's id: its own messages come back from NATS and are dropped."""
        self._lock = threading.Lock()
        self._heard: list[Heard] = []
        self._parts: dict[str, list[str]] = {}
        """Heartbeats arriving in parts, by node (a node's parts arrive in order)."""
        self._resync = False
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

        self._thread.start()
        if not self._first_try.wait(CONNECT_TIMEOUT) or not self.connected:
            log.warning(
                "cannot reach the bus at %s yet: serving without it, and trying again", self.url
            )

    def publish(self, news: ClusterNews) -> None:
        """Tell the other nodes what this node's batches changed (never blocks);
        news too large for one NATS message goes in halves."""
        payload = self._encode(news)
        if len(payload) > MAX_MESSAGE and _count(news) > 1:
            for half in _halves(news):
                self.publish(half)
            return
        self._send(payload)

    def _encode(self, news: ClusterNews) -> bytes:
        body = {
            "node": self.node,
            "news": {
                "users": news.users,
                "pushes": [[u, base64.b64encode(p).decode()] for u, p in news.pushes],
                "sessions": [[h.hex(), reason] for h, reason in news.sessions],
                "forget": news.forget,
                "online": news.online,
                "offline": news.offline,
            },
        }
        return orjson.dumps(body)

    def heartbeat(self, online: list[str]) -> None:
        """Tell the other nodes everyone online here (in parts if it is long)."""
        parts = [online[i : i + SNAPSHOT_PART] for i in range(0, len(online), SNAPSHOT_PART)]
        parts = parts or [[]]
        for index, part in enumerate(parts):
            body = {"node": self.node, "snapshot": part, "part": index, "parts": len(parts)}
            self._send(orjson.dumps(body))

    def goodbye(self) -> None:
        """Tell the other nodes that this one is stopping (its users go offline)."""
        self._send(orjson.dumps({"node": self.node, "bye": True}))

    @property
    def connected(self) -> bool:
        """Whether messages flow now (False while NATS is away)."""
        return self._nc is not None and bool(self._nc.is_connected)

    def take(self) -> tuple[list[Heard], bool]:
        """What the other nodes told since the last call, in order, and whether the
        bus came back from a gap meanwhile (then look for everyone)."""
        with self._lock:
            heard, self._heard = self._heard, []
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
                    reconnected_cb=self._reconnected,
                    disconnected_cb=self._disconnected,
                    error_cb=self._error,
                )
                await self._nc.subscribe(self.subject, cb=self._received)
            except Exception as exc:  # not reachable (yet): serve without it, try again
                log.debug("connecting to the bus at %s: %s", self.url, exc)
                self._first_try.set()
                first = False
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            self._first_try.set()
            if not first:
                log.info("reached the bus at %s", self.url)
            await self._reconnected()  # whatever was published meanwhile was lost
            return
        self._first_try.set()

    async def _received(self, msg: Any) -> None:
        try:
            body = orjson.loads(msg.data)
            node = body["node"]
            if node == self.node or not isinstance(node, str):
                return
            heard = self._parse(node, body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
            log.debug("a malformed message on %s ignored", self.subject)
            return
        with self._lock:
            if heard is not None:
                self._heard.append(heard)
            self._resync |= body.get("resync") is True
        self.wake()

    def _parse(self, node: str, body: dict[str, Any]) -> Heard | None:
        """The message as the server loop takes it (None: nothing for it yet).

        Raises:
            KeyError, TypeError, ValueError, binascii.Error: a malformed message.
        """
        if "news" in body:
            news = body["news"]
            return News(
                node,
                ClusterNews(
                    users=_names(news["users"]),
                    pushes=tuple((str(u), base64.b64decode(p)) for u, p in news["pushes"]),
                    sessions=tuple(
                        (bytes.fromhex(h), None if r is None else str(r))
                        for h, r in news["sessions"]
                    ),
                    forget=_names(news["forget"]),
                    online=_names(news["online"]),
                    offline=_names(news["offline"]),
                ),
            )
        if "snapshot" in body:
            part, parts = int(body["part"]), int(body["parts"])
            names = [*self._parts.pop(node, [])] if part > 0 else []
            names.extend(_names(body["snapshot"]))
            if part + 1 < parts:
                if len(self._parts) >= PARTS_MAX:  # halves of gone nodes: forget them
                    self._parts.clear()
                self._parts[node] = names
                return None
            return Snapshot(node, names)
        if body.get("bye") is True:
            self._parts.pop(node, None)
            return Bye(node)
        return None

    async def _reconnected(self) -> None:
        # Messages were lost both ways meanwhile: this node looks for all of its
        # connections, and asks the others to do the same for theirs.
        log.info("the bus is up: looking for every connection's messages")
        with self._lock:
            self._resync = True
        self.wake()
        await self._nc.publish(self.subject, orjson.dumps({"node": self.node, "resync": True}))

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("lost the bus at %s: reconnecting (deliveries go on, later)", self.url)

    async def _error(self, exc: Exception) -> None:
        # nats-py reports every failed reconnection attempt here: the disconnect was
        # logged once already.
        log.debug("bus: %s", exc)

    def _send(self, payload: bytes) -> None:
        self._loop.call_soon_threadsafe(self._publish, payload)

    def _publish(self, payload: bytes) -> None:
        if self._nc is not None and self._nc.is_connected:
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


def _names(value: Any) -> tuple[str, ...]:
    """A list of names from the wire (only strings kept).

    Raises:
        TypeError: not a list.
    """
    if not isinstance(value, list):
        raise TypeError("a list of names was expected")
    return tuple(v for v in value if isinstance(v, str))


def _count(news: ClusterNews) -> int:
    return sum(len(part) for part in attrs.astuple(news, recurse=False))


def _halves(news: ClusterNews) -> tuple[ClusterNews, ClusterNews]:
    """Two news with half of each list each (their order kept: the first half
    first)."""
    fields = attrs.asdict(news, recurse=False)
    first = {name: value[: len(value) // 2] for name, value in fields.items()}
    second = {name: value[len(value) // 2 :] for name, value in fields.items()}
    return ClusterNews(**first), ClusterNews(**second)
