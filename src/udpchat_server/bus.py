"""The cluster's bus on NATS: this node's delivery hints out, the others' in.

What travels is only a hint (``{"node": ID, "users": [...]}``: these users have new
messages in the database), on core NATS, with no durable log of its own: the
database is the only record. A lost hint costs time, never a message (see
``udpchat_proto.chat.cluster``), and when the connection to NATS comes back the
node looks in the database for every connection it has (the hints of the gap
are gone), so delivery never depends on the bus.

nats-py is asyncio-only: the bus runs its own event loop on a thread, and wakes the
server loop (through its wake-up socket) when hints arrive.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["SUBJECT", "BusError", "NatsBus"]

log = logging.getLogger(__name__)

SUBJECT: Final = "udpchat.hints"
"""Where every node publishes its hints (and listens for the others')."""
CONNECT_TIMEOUT: Final = 10.0


class BusError(Exception):
    """The bus cannot be reached at start (the message says why)."""


class NatsBus:
    """One node's connection to the cluster's NATS.

    Args:
        url: ``nats://HOST:PORT``.
        wake: called (from the bus's thread) when hints arrived.
    """

    def __init__(self, url: str, wake: Callable[[], None] = lambda: None) -> None:
        self.url = url
        self.wake = wake
        self.node = uuid.uuid4().hex
        """This node's id: its own hints come back from NATS and are dropped."""
        self._lock = threading.Lock()
        self._users: dict[str, None] = {}
        self._resync = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="udpchat-bus", daemon=True)
        self._nc: Any = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # --- the server loop's side -----------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe (bounded).

        Raises:
            BusError: NATS cannot be reached.
        """
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT + 5) or self._failure is not None:
            self.close()
            raise BusError(f"cannot reach the bus at {self.url}: {self._failure or 'timeout'}")

    def publish(self, usernames: list[str]) -> None:
        """Tell the other nodes that these users have new messages (never blocks)."""
        payload = orjson.dumps({"node": self.node, "users": usernames})
        self._loop.call_soon_threadsafe(self._publish, payload)

    @property
    def connected(self) -> bool:
        """Whether hints flow now (False while NATS is away)."""
        return self._nc is not None and bool(self._nc.is_connected)

    def take(self) -> tuple[list[str], bool]:
        """The users the other nodes hinted since the last call, and whether the
        bus came back from a gap meanwhile (then look for everyone)."""
        with self._lock:
            users, self._users = list(self._users), {}
            resync, self._resync = self._resync, False
        return users, resync

    def close(self) -> None:
        """Disconnect and stop the thread (bounded)."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            self._thread.join(timeout=5)

    # --- the bus's thread --------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._connect())
        except Exception as exc:  # reported by start()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self) -> None:
        import nats  # noqa: PLC0415 (the cluster extra: imported only by a node that uses it)

        self._nc = await nats.connect(
            self.url,
            connect_timeout=CONNECT_TIMEOUT,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            reconnected_cb=self._reconnected,
            disconnected_cb=self._disconnected,
        )
        await self._nc.subscribe(SUBJECT, cb=self._received)

    async def _received(self, msg: Any) -> None:
        try:
            hint = orjson.loads(msg.data)
            if hint["node"] == self.node:
                return
            users = hint.get("users", [])
            resync = hint.get("resync") is True
            if not isinstance(users, list):
                return
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.debug("a malformed hint on %s ignored", SUBJECT)
            return
        with self._lock:
            self._users.update(dict.fromkeys(u for u in users if isinstance(u, str)))
            self._resync |= resync
        self.wake()

    async def _reconnected(self) -> None:
        # Hints were lost both ways meanwhile: this node looks for all of its
        # connections, and asks the others to do the same for theirs.
        log.info("the bus is back: looking for every connection's messages")
        with self._lock:
            self._resync = True
        self.wake()
        await self._nc.publish(SUBJECT, orjson.dumps({"node": self.node, "resync": True}))

    async def _disconnected(self) -> None:
        log.warning("lost the bus at %s: reconnecting (deliveries go on, later)", self.url)

    def _publish(self, payload: bytes) -> None:
        if self._nc is not None and self._nc.is_connected:
            self._loop.create_task(self._nc.publish(SUBJECT, payload))

    async def _close(self) -> None:
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception:  # closing: nothing left to do about it
                log.debug("closing the bus", exc_info=True)
        self._loop.stop()
