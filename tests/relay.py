"""A relay on loopback between one asyncio client and a server, that a test can cut
(``up = False``) or make lose the server's answers (``drop_answers = True``)."""

from __future__ import annotations

import asyncio
from typing import cast

from udpchat_proto import Address


class Relay(asyncio.DatagramProtocol):
    """Forwards between one client and the server; ``up`` False cuts the wire,
    ``drop_answers`` loses what the server sends."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.up = True
        self.drop_answers = False
        self.client: Address | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, server: Address) -> Relay:
        """A relay to ``server`` listening on a free port of 127.0.0.1."""
        loop = asyncio.get_running_loop()
        relay = cls(server)
        await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
        upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(relay), remote_addr=server
        )
        relay.upstream = upstream
        return relay

    @property
    def address(self) -> Address:
        """Where the relay listens (the client's server address)."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def close(self) -> None:
        for transport in (self.transport, self.upstream):
            if transport is not None:
                transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (A datagram endpoint's transport, though not a DatagramTransport subclass.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.client = (str(addr[0]), int(str(addr[1])))
        if self.up and self.upstream is not None:
            self.upstream.sendto(data)

    def answer(self, data: bytes) -> None:
        if self.up and not self.drop_answers and self.transport and self.client:
            self.transport.sendto(data, self.client)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.relay.answer(data)
