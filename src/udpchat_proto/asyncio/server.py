"""The chat's server on asyncio: :func:`serve` runs a :class:`~udpchat_proto.ChatServer`
on a datagram endpoint of the running loop, for a chat inside an asyncio application.

Each turn is ``udpchat-server``'s: the datagrams read are fed, then one
``end_batch`` hands back the finished password hashes, fires the due timers,
commits the store once (group commit) and only then gives the datagrams to send:
nothing is answered before what it answers is durable. A turn runs once the loop
has gone round with nothing more to read (or :data:`BATCH` datagrams are waiting),
so the datagrams of a burst share one commit; a small batch with writes, while
commits are frequent, first waits up to a millisecond for more (commits paced by
load, ``ServerConfig.commit_pacing``, as ``udpchat-server``). The store's ``commit`` runs on the
loop (a SQLite commit is a few milliseconds; the store is not thread-safe), the
password hashes (tens of milliseconds of CPU each, on purpose) on an executor.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..chat.config import ServerConfig
from ..chat.events import ServerEvent
from ..chat.server import ChatServer
from ..chat.store import Store
from ..clock import WallClock
from ..randomness import RandomSource
from ..transport.events import Address
from ..transport.keys import ServerKey

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["BATCH", "ChatService", "serve"]

log = logging.getLogger(__name__)

BATCH: Final = 256
"""Most datagrams fed before the batch is committed and answered (as
``udpchat-server``): bounds the latency a flood adds to everyone else's replies."""


def wall_clock() -> float:
    """POSIX seconds now (what ``time.time`` returns): the server's default wall clock."""
    return datetime.datetime.now(datetime.UTC).timestamp()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: ChatService) -> None:
        self._service = service

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._service._received(data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        pass  # (an ICMP error for a client gone: its connection times out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._service._socket_closed()


class ChatService:
    """A :class:`~udpchat_proto.ChatServer` serving on the running loop (made by
    :func:`serve`). Close it with :meth:`close` (or ``async with``); the store is the
    caller's to close after."""

    def __init__(
        self,
        server: ChatServer,
        *,
        workers: int,
        executor: concurrent.futures.Executor | None,
        on_event: Callable[[ServerEvent], None] | None,
    ) -> None:
        self.server = server
        """The state machine (its ``stats``, ``connection_count`` ...)."""
        self.address: Address = ("", 0)
        """Where it listens (the port chosen when 0 was asked)."""
        self.commits = 0
        """Batches committed."""
        self.failed_commits = 0
        """Batches whose commit failed (their requests were answered ``unavailable``)."""
        self._loop = asyncio.get_running_loop()
        self._workers = workers
        self._executor = executor
        self._on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None
        self._fed = 0
        """Datagrams fed since the last turn."""
        self._reads = 0
        """Datagrams read in all (to see whether a loop round brought more)."""
        self._check_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._paced: asyncio.TimerHandle | None = None
        """The end of the wait of a small batch with writes (``commit_wait``): what
        arrives meanwhile joins it."""
        self.commit_waits = 0
        """Batches that waited for more work before their commit (commits paced by
        load: ``ServerConfig.commit_pacing``)."""
        self._hashing = 0
        self._hashed: list[tuple[int, bytes | None]] = []
        self._closed = self._loop.create_future()
        self._released = self._loop.create_future()
        """Done once the socket is closed (its port free)."""

    # --- the caller's side ------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading, commit and answer what was read, and close the socket; return
        once it is closed (its port free for another service)."""
        if self._transport is not None:
            self._turn()  # (what was read is committed and answered before leaving)
            self._stop()
        await asyncio.shield(self._released)

    async def wait_closed(self) -> None:
        """Wait until the service is closed (raises what stopped it, if anything)."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> ChatService:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # --- the loop's side --------------------------------------------------------------------

    def _socket_closed(self) -> None:
        if not self._released.done():
            self._released.set_result(None)

    def _received(self, data: bytes, addr: Address) -> None:
        now = self._loop.time()
        self._reads += 1
        self._fed += 1
        # The core never raises for remote input; the guard is for a bug in it,
        # which must cost one datagram, never the service.
        try:
            self.server.receive_datagram(data, addr, now)
        except Exception:
            log.exception("the core raised on a datagram from %s:%s", addr[0], addr[1])
        if self._fed >= BATCH:
            self._turn()
        else:
            self._want_turn()

    def _want_turn(self) -> None:
        if not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_soon(self._check, -1)

    def _check(self, reads: int) -> None:
        """Turn once a whole round of the loop read nothing more.

        A datagram endpoint reads one datagram per round of the loop, and a callback
        scheduled now runs before the next round's reads: so the check comes back
        one round later, until a round brought nothing.
        """
        if reads != self._reads:
            self._loop.call_soon(self._check, self._reads)
            return
        self._check_scheduled = False
        if self._paced is not None:
            return  # the batch waits: its end is scheduled
        now = self._loop.time()
        if (wait := self.server.commit_wait(now, self._fed)) > 0.0:
            self.commit_waits += 1
            self._paced = self._loop.call_later(wait, self._paced_turn, now, wait)
            return
        self._turn()

    def _paced_turn(self, started: float, asked: float) -> None:
        """The end of a batch's wait: tell the core how long it took, then turn."""
        self._paced = None
        now = self._loop.time()
        self.server.commit_waited(asked, now - started, now)
        self._turn()

    def _turn(self) -> None:
        if self._paced is not None:  # a full batch, or closing: no more waiting
            self._paced.cancel()
            self._paced = None
        transport = self._transport
        if transport is None:
            return
        self._fed = 0
        now = self._loop.time()
        done, self._hashed = self._hashed, []
        try:
            end = self.server.end_batch(
                now, hash_results=done, hash_slots=max(0, self._workers - self._hashing)
            )
        except Exception as exc:  # a store's bug (not a full disk): stop, answer nothing
            log.exception("the store failed to commit: stopping")
            self._stop(exc)
            return
        if end.committed:
            self.commits += 1
        elif end.failure is not None:
            self.failed_commits += 1
            log.error("cannot store anything: %s; answered 'unavailable'", end.failure)
        for job in end.hash_jobs:
            self._hashing += 1
            future = self._loop.run_in_executor(self._executor, job.run)
            future.add_done_callback(functools.partial(self._hash_done, job.job_id))
        for data, addr in end.datagrams:
            transport.sendto(data, addr)
        self._arm_timer()
        while (event := self.server.next_event()) is not None:
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:  # the application's callback must not stop the chat
                    log.exception("on_event raised")

    def _hash_done(self, job_id: int, future: asyncio.Future[bytes]) -> None:
        self._hashing -= 1
        digest: bytes | None = None
        if future.cancelled():
            return
        if (failure := future.exception()) is not None:
            log.error("password hash job %d failed: %r", job_id, failure)
        else:
            digest = future.result()
        self._hashed.append((job_id, digest))  # (None: its client is answered internal)
        self._want_turn()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        when = self.server.get_timer()
        self._timer = None if when is None else self._loop.call_at(when, self._want_turn)

    def _stop(self, failure: BaseException | None = None) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._paced is not None:
            self._paced.cancel()
            self._paced = None
        if not self._closed.done():
            if failure is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(failure)
                self._closed.exception()  # (retrieved: wait_closed raises it)


async def serve(
    *,
    store: Store,
    key: ServerKey,
    host: str = "127.0.0.1",
    port: int = 0,
    config: ServerConfig | None = None,
    clock: WallClock = wall_clock,
    random: RandomSource | None = None,
    workers: int = 2,
    executor: concurrent.futures.Executor | None = None,
    on_event: Callable[[ServerEvent], None] | None = None,
) -> ChatService:
    """Serve a chat on ``host:port`` (UDP) from the running loop.

    Args:
        store: where accounts and messages live (``MemoryStore``, or
            ``udpchat_server``'s ``SQLiteStore`` for a durable chat); committed once
            per batch, on the loop. It stays the caller's: close it after the service.
        key: the server's key pair (``ServerKey.generate(SystemRandomSource())``; keep
            it: clients pin it).
        host, port: where to listen (port 0: a free one, read :attr:`ChatService.address`).
        config: the server's limits (``ServerConfig()`` by default).
        clock: the wall clock (message and session times).
        random: where keys and tokens come from.
        workers: password hashes run at once.
        executor: where they run (None: the loop's default executor).
        on_event: called with each :class:`~udpchat_proto.ServerEvent` (for logging).
    """
    server = ChatServer(store=store, static_key=key, clock=clock, config=config, random=random)
    service = ChatService(server, workers=workers, executor=executor, on_event=on_event)
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.create_datagram_endpoint(
        lambda: _Protocol(service), local_addr=(host, port)
    )
    service._transport = transport
    sockname = transport.get_extra_info("sockname")
    service.address = (str(sockname[0]), int(sockname[1]))
    service._arm_timer()
    return service
