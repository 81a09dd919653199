"""The udpchat core embedded in asyncio: a ``DatagramProtocol`` around ``ClientConnection``.

The sans-IO core does no I/O and reads no clock, so wiring it to asyncio takes four
things, as for any other event loop:

* ``datagram_received`` feeds the core (``receive_datagram``), then drains its events;
* after every input, ``datagrams_to_send`` goes to the transport;
* one ``call_at`` timer follows ``get_timer()``; it calls ``handle_timer``;
* each request's answer is matched by ``request_id`` to a future the caller awaits.

Run it against a local server::

    udpchat-server --port 9999 &
    python examples/asyncio_client.py --server 127.0.0.1:9999 --user alice \\
        --password 'correct horse battery staple' --register --send bob 'hi from asyncio'

The first contact's server key is printed; pass it as ``--server-key HEX`` to pin it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import cast

from udpchat_proto import ClientConnection, Connected, Disconnected, fingerprint
from udpchat_proto import messages as m

Address = tuple[str, int]


class ChatClientProtocol(asyncio.DatagramProtocol):
    """Drive one :class:`ClientConnection` from asyncio.

    Await :meth:`connected`, then :meth:`request` for each command; pushes (messages,
    presence, invitations ...) arrive on :attr:`pushes`.
    """

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.pushes: asyncio.Queue[m.Push] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answers: dict[int, asyncio.Future[m.Response]] = {}
        self._connected: asyncio.Future[bytes] = self._loop.create_future()
        self._closed: asyncio.Future[Disconnected] = self._loop.create_future()

    # --- asyncio's side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (not always a DatagramTransport subclass).
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.conn.connect(time.monotonic())
        self._after_input()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.conn.receive_datagram(data, (str(addr[0]), int(str(addr[1]))), time.monotonic())
        self._after_input()

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable: the core's timers retry, then give up

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # --- the caller's side --------------------------------------------------------------

    async def connected(self, timeout: float) -> bytes:
        """Wait for the handshake; return the server's public key."""
        return await asyncio.wait_for(asyncio.shield(self._connected), timeout)

    async def request(self, issue: Callable[[ClientConnection], int], timeout: float) -> m.Response:
        """Send one request (``issue`` calls a command method) and await its answer."""
        request_id = issue(self.conn)
        answer = self._answers[request_id] = self._loop.create_future()
        self._after_input()
        try:
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._answers.pop(request_id, None)

    async def close(self) -> None:
        """Close the connection politely (bounded), then the socket."""
        self.conn.close(time.monotonic())
        self._after_input()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), 1.0)
        if self._transport is not None:
            self._transport.close()

    # --- the core's side ---------------------------------------------------------------

    def _after_input(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, Connected):
                if not self._connected.done():
                    self._connected.set_result(event.server_key)
            elif isinstance(event, Disconnected):
                failure = ConnectionError(f"disconnected: {event.code.name} {event.reason}")
                if not self._connected.done():
                    self._connected.set_exception(failure)
                for pending in self._answers.values():
                    if not pending.done():
                        pending.set_exception(failure)
                if not self._closed.done():
                    self._closed.set_result(event)
            elif isinstance(event, m.Response):
                future = self._answers.get(event.request_id)
                if future is not None and not future.done():
                    future.set_result(event)
            else:
                self.pushes.put_nowait(event)
        if self._transport is not None and not self._transport.is_closing():
            for data, addr in self.conn.datagrams_to_send(time.monotonic()):
                self._transport.sendto(data, addr)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.conn.get_timer()
        if deadline is not None:
            # The core speaks wall-clock seconds; asyncio's timers use loop.time().
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer, deadline)

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        self.conn.handle_timer(max(deadline, time.monotonic()))  # a wake-up may come early
        self._after_input()


async def open_client(
    server: Address, *, server_key: bytes | None = None, timeout: float = 5.0
) -> ChatClientProtocol:
    """Open a UDP endpoint to ``server`` and complete the handshake."""
    loop = asyncio.get_running_loop()
    conn = ClientConnection(server_address=server, expected_server_key=server_key)
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: ChatClientProtocol(conn), remote_addr=server
    )
    await protocol.connected(timeout)
    return protocol


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[::1]:9999`` for IPv6).

    Raises:
        ValueError: not ``HOST:PORT``.
    """
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid server address {text!r}: expected HOST:PORT")
    return host, int(port)


def check(answer: m.Response) -> m.Response:
    """Exit with the server's refusal, if it refused."""
    if isinstance(answer, m.ErrorResponse):
        print(f"error: {answer.code}: {answer.message}", file=sys.stderr)
        raise SystemExit(1)
    return answer


async def run(args: argparse.Namespace) -> None:
    key = bytes.fromhex(args.server_key) if args.server_key else None
    client = await open_client(parse_address(args.server), server_key=key, timeout=args.timeout)
    assert client.conn.server_key is not None
    presented = client.conn.server_key
    print(f"connected, server key {fingerprint(presented)} (--server-key {presented.hex()})")
    try:
        if args.register:
            check(
                await client.request(lambda c: c.register(args.user, args.password), args.timeout)
            )
            print(f"registered {args.user}")
        answer = check(
            await client.request(lambda c: c.login(args.user, args.password), args.timeout)
        )
        assert isinstance(answer, m.LoggedIn)
        print(f"logged in as {answer.username}")
        online = check(await client.request(lambda c: c.list_online(), args.timeout))
        assert isinstance(online, m.OnlineUsers)
        print(f"online: {', '.join(online.usernames)}")
        if args.send:
            to, text = args.send
            accepted = check(await client.request(lambda c: c.send_message(to, text), args.timeout))
            assert isinstance(accepted, m.MessageAccepted)
            print(f"sent {accepted.message_id.hex()} to {to}")
        end = time.monotonic() + args.listen
        while (left := end - time.monotonic()) > 0:
            try:
                push = await asyncio.wait_for(client.pushes.get(), left)
            except TimeoutError:
                break
            print(f"push: {push}")
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:9999", help="HOST:PORT")
    parser.add_argument("--server-key", help="the pinned public key, hex (default: any)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--register", action="store_true", help="create the account first")
    parser.add_argument("--send", nargs=2, metavar=("TO", "TEXT"), help="send one message")
    parser.add_argument("--listen", type=float, default=0.0, help="print pushes this long")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except (TimeoutError, ConnectionError) as exc:
        print(f"error: no answer from the server: {exc or 'timeout'}", file=sys.stderr)
        raise SystemExit(3) from None
    except ValueError as exc:  # a bad --server, or a name or text the core refuses
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
