"""The blocking client loop: one :class:`ClientConnection` on one UDP socket.

Each turn: fire the timers that are due, drain ``next_event()`` (answers
are kept by request id, pushes handed to the caller's handler), send
``datagrams_to_send(now)``, then wait on the socket until the next timer or the
caller's deadline, and feed everything that arrived.

The push handler runs *before* the turn's datagrams leave. The core acknowledges
each delivered message to the server on its own; because the acknowledgement only
leaves in the send step, a handler that saves the message (the inbox) makes it
durable on this side before the server may forget it.

Every wait is bounded: by ``timeout`` for an answer from the server (exit status 3
when it passes), or by the caller's own deadline (``listen --for``, ``inbox --wait``).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from udpchat_proto import (
    Address,
    ClientConnection,
    CloseCode,
    Connected,
    Disconnected,
    TransportConfig,
    fingerprint,
)
from udpchat_proto import messages as m

__all__ = [
    "ConnectionLostError",
    "KeyMismatchError",
    "ServerTimeoutError",
    "Session",
    "parse_server",
    "parse_servers",
    "server_names",
]

#: Datagrams read in one go before the core gets to answer them.
_READ_BATCH = 64
_MAX_DATAGRAM = 65_535


class ServerTimeoutError(Exception):
    """The server did not answer within the timeout (exit status 3)."""


class ConnectionLostError(Exception):
    """The connection ended before the answer came (exit status 3)."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed ({code.name.lower()}): {reason}")


class KeyMismatchError(Exception):
    """The server presented another key than the one pinned (exit status 4)."""

    def __init__(self, server: str, pinned: bytes, presented: bytes | None) -> None:
        self.server = server
        self.pinned = pinned
        self.presented = presented
        shown = fingerprint(presented) if presented is not None else "another key"
        super().__init__(
            f"the server at {server} presented {shown}, not the pinned key {fingerprint(pinned)}"
        )


def parse_server(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9999`` for IPv6).

    Raises:
        ValueError: not ``HOST:PORT`` with a port from 1 to 65535.
    """
    host, sep, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    valid = (
        sep
        and host
        # An IPv6 address needs its brackets: "::1:9999" is ambiguous.
        and (bracketed or ":" not in host)
        and port_text.isascii()
        and port_text.isdigit()
        and 1 <= int(port_text) <= 65535
    )
    if not valid:
        raise ValueError(
            f"invalid server address {text!r}: expected HOST:PORT ([::1]:9999 for IPv6)"
        )
    return host, int(port_text)


def parse_servers(text: str) -> list[tuple[str, int]]:
    """Split ``HOST:PORT[,HOST:PORT...]``: the nodes of one server, tried in order.

    Raises:
        ValueError: an item is not ``HOST:PORT``, or the list is empty.
    """
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError(f"invalid server address {text!r}: expected HOST:PORT")
    return [parse_server(item) for item in items]


def server_names(text: str) -> list[str]:
    """The ``HOST:PORT`` items of a server list, as written (the pinning keys)."""
    return [item.strip() for item in text.split(",")]


PushHandler = Callable[[list[m.Push]], None]
DevicePushHandler = Callable[[list[m.DevicePush]], None]


class Session:
    """A connection to the server, driven by blocking calls.

    Args:
        server: the server as the user named it: ``HOST:PORT``, or the nodes of one
            server as ``HOST:PORT,HOST:PORT...``, tried in order (each presents the
            same key).
        pinned: the server key pinned for ``server``, or None on first contact.
        timeout: the longest wait for each answer, in seconds.
        delivered_ids: ids of messages already received (redeliveries are dropped).
        on_pushes: called once per turn with that turn's pushes, before the turn's
            datagrams (with their acknowledgements) are sent.
        on_device_pushes: called with the end-to-end encryption pushes
            (``device_added``, ``one_time_keys_low``) of the turn.
        clock: a monotonic clock, seconds (the core's ``now``, and every deadline).

    Raises:
        OSError: the address cannot be resolved or no socket can be made.
    """

    def __init__(
        self,
        *,
        server: str,
        pinned: bytes | None,
        timeout: float,
        delivered_ids: Iterable[bytes] = (),
        on_pushes: PushHandler | None = None,
        on_device_pushes: DevicePushHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.pinned = pinned
        self.timeout = timeout
        self.on_pushes = on_pushes
        self.on_device_pushes = on_device_pushes
        self.server_key: bytes | None = None
        self._clock = clock
        self._delivered = frozenset(delivered_ids)
        self._nodes = parse_servers(server)
        self._resolved: list[tuple[Any, ...]] = []
        failure: OSError | None = None
        for host, port in self._nodes:
            try:
                self._resolved.append(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0])
            except OSError as exc:  # (another node may do)
                failure = exc
        if not self._resolved:
            assert failure is not None
            raise failure
        self._answers: dict[int, m.Response] = {}
        self._attach(0)

    def _attach(self, index: int) -> None:
        """A socket and a core connection for node ``index`` of the list."""
        family, kind, proto, _name, address = self._resolved[index]
        self.server_key = None  # (each node's key is checked at its own handshake)
        self._address: Address = (str(address[0]), int(address[1]))
        self._sock = socket.socket(family, kind, proto)
        self._sock.setblocking(False)
        # The pinned key is checked here, at Connected, rather than by the core
        # (expected_server_key=): that way the refusal can show the key presented,
        # which the user compares with the one the server prints. Nothing is sent
        # before open() has checked the key, so an impostor learns nothing.
        # The user's --timeout bounds the handshake too: on a lossy path the
        # initiation is retried at a steady pace for as long as they chose to wait.
        self._conn = ClientConnection(
            server_address=self._address,
            config=TransportConfig(handshake_timeout=self.timeout),
            delivered_ids=self._delivered,
        )
        self._closed = False

    @property
    def connection(self) -> ClientConnection:
        """The core connection (for its command methods)."""
        return self._conn

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the blocking calls ------------------------------------------------------------

    def open(self) -> bytes:
        """Connect and wait for the handshake.

        Returns:
            The server's public key.

        Raises:
            ServerTimeoutError, ConnectionLostError, KeyMismatchError.
        """
        lost: ConnectionLostError | None = None
        for index in range(len(self._resolved)):
            if index:  # the previous node did not answer: the next one
                self._close_socket()
                self._attach(index)
            self._conn.connect(self._clock())
            try:
                self.run_until(lambda: self.server_key is not None, self._clock() + self.timeout)
            except ServerTimeoutError:
                continue
            except ConnectionLostError as exc:  # it answered, and refused (a version)
                lost = exc
                continue
            if self.server_key is not None:
                return self.server_key
        if lost is not None:
            raise lost
        raise ServerTimeoutError(f"no answer from {self.server} within {self.timeout:g} s")

    def _close_socket(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    def request(self, issue: Callable[[ClientConnection], int]) -> m.Response:
        """Send one request and wait for its answer.

        Args:
            issue: calls one command method of the connection and returns its
                request id (e.g. ``lambda conn: conn.list_friends()``).

        Returns:
            The answer (possibly an :class:`~udpchat_proto.chat.messages.ErrorResponse`).

        Raises:
            ValidationError: the command method refused the arguments.
            ServerTimeoutError, ConnectionLostError, KeyMismatchError.
        """
        request_id = issue(self._conn)
        self.run_until(lambda: request_id in self._answers, self._clock() + self.timeout)
        answer = self._answers.pop(request_id, None)
        if answer is None:
            raise ServerTimeoutError(f"no answer from {self.server} within {self.timeout:g} s")
        return answer

    def run_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Run turns until ``done()`` or the clock passes ``deadline``.

        Raises:
            ConnectionLostError, KeyMismatchError: the connection ended meanwhile.
        """
        while True:
            self._process()
            if done():
                return
            now = self._clock()
            if now >= deadline:
                return
            timer = self._conn.get_timer()
            wake = deadline if timer is None else min(deadline, timer)
            readable, _, _ = select.select([self._sock], [], [], max(0.0, wake - now))
            if readable:
                self._read()

    def close(self) -> None:
        """Close the connection (one close datagram, no wait) and the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._conn.is_connected:
                now = self._clock()
                self._conn.close(now)
                self._send(now)
        finally:
            self._sock.close()

    # --- one turn ------------------------------------------------------------------------

    def _read(self) -> None:
        now = self._clock()
        for _ in range(_READ_BATCH):
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. an ICMP "port unreachable": the timeout decides
                return
            self._conn.receive_datagram(data, (str(addr[0]), int(addr[1])), now)

    def _process(self) -> None:
        now = self._clock()
        timer = self._conn.get_timer()
        if timer is not None and timer <= now:
            self._conn.handle_timer(max(timer, now))  # the wait may end a hair early
        pushes: list[m.Push] = []
        lost: Disconnected | None = None
        while (event := self._conn.next_event()) is not None:
            if isinstance(event, Connected):
                self._on_connected(event.server_key)
            elif isinstance(event, Disconnected):
                lost = event
            elif isinstance(event, m.Response):
                self._answers[event.request_id] = event
            else:
                pushes.append(event)
        device_pushes = self._conn.take_device_pushes()
        if device_pushes and self.on_device_pushes is not None:
            self.on_device_pushes(device_pushes)
        if pushes and self.on_pushes is not None:
            try:
                self.on_pushes(pushes)
            except BaseException:
                # The handler could not keep these messages, but the core has queued
                # their acknowledgements: never send them (no polite close either),
                # so that the server delivers them again next time.
                self._closed = True
                self._sock.close()
                raise
        self._send(now)
        if lost is not None:
            self._closed = True
            self._sock.close()
            if lost.code == CloseCode.SERVER_KEY_MISMATCH and self.pinned is not None:
                raise KeyMismatchError(self.server, self.pinned, self.server_key)
            if lost.code == CloseCode.HANDSHAKE_TIMEOUT:
                # The handshake's limit is the user's --timeout: the same "no answer".
                raise ServerTimeoutError(f"no answer from {self.server} within {self.timeout:g} s")
            raise ConnectionLostError(lost.code, lost.reason)

    def _on_connected(self, key: bytes) -> None:
        self.server_key = key
        if self.pinned is not None and key != self.pinned:
            self._closed = True
            self._sock.close()
            raise KeyMismatchError(self.server, self.pinned, key)

    def _send(self, now: float) -> None:
        for data, addr in self._conn.datagrams_to_send(now):
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # the socket buffer is full: the core retransmits
            except OSError:
                pass  # unreachable: the timeout decides
