"""Fixed, seeded sessions shared by the fuzz harnesses and ``make_corpus.py``.

Everything here is deterministic: keys and ids come from
:class:`~udpchat_proto.randomness.SeededRandomSource` with fixed seeds and the clock
is a fixed number (:data:`START`), so a harness given the same input does the same
thing every time, and a crash reproduces from its input alone.

Two kinds of peer exist:

* the real roles (:func:`new_server`, :func:`new_client`), driven in memory by
  :class:`Loop` (lossless, in order, no sockets, no sleeps);
* :class:`RawClient`, a client written with the public Noise and packet encoders
  only, and :class:`RawServerPeer`, its server counterpart: they hold the transport
  keys of an established connection, so a harness can seal fuzzed plaintext with
  them and reach the frame, stream and codec layers behind decryption.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Final, Protocol

from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.codec import encode
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.ratelimit import RateLimit
from udpchat_proto.transport import PROLOGUE
from udpchat_proto.transport.handshake import CipherState, HandshakeState
from udpchat_proto.transport.keys import ServerKey
from udpchat_proto.transport.packets import (
    CONNECTION_ID_SIZE,
    INITIATION_SIZE,
    HandshakeInitiation,
    HandshakeResponse,
    StreamFrame,
    decode_packet,
    encode_data_header,
    encode_frames,
    encode_initiation,
    encode_response,
    encode_varint,
)

__all__ = [
    "ALICE_ADDRESS",
    "BOB_ADDRESS",
    "OTHER_ADDRESS",
    "PASSWORD",
    "SERVER_ADDRESS",
    "SERVER_KEY",
    "SERVER_SEED",
    "START",
    "Address",
    "Loop",
    "RawClient",
    "RawServerPeer",
    "drain",
    "end_server_batch",
    "established_server",
    "handshaking_client",
    "new_client",
    "new_server",
    "settle",
    "settle_server",
    "stream_message",
]

Address = tuple[str, int]

SERVER_ADDRESS: Final = ("127.0.0.1", 4433)
ALICE_ADDRESS: Final = ("127.0.0.2", 50000)
BOB_ADDRESS: Final = ("127.0.0.3", 50001)
#: A third address: a DATA packet from it makes an established connection migrate.
OTHER_ADDRESS: Final = ("127.0.0.9", 40000)
#: The fixed clock (a plausible POSIX time, as in tests/simnet.py).
START: Final = 1_700_000_000.0
PASSWORD: Final = "correct horse"
SERVER_KEY: Final = ServerKey.generate(SeededRandomSource("fuzz-server-key"))
#: The seed of the server's randomness; its first draw is the ephemeral key of the
#: first handshake it answers.
SERVER_SEED: Final = "fuzz-server"
#: Noise message 1 is e (32 bytes) + a zero payload padding the initiation.
INITIATION_PADDING: Final = INITIATION_SIZE - (2 + CONNECTION_ID_SIZE) - 32


def new_server() -> tuple[ChatServer, MemoryStore]:
    """A fresh server on a fresh MemoryStore: tiny scrypt, rate limits out of the way."""
    generous = RateLimit(burst=10_000, interval=0.001)
    config = ServerConfig(
        scrypt=ScryptParams(n=16, r=1, p=1),
        registrations_per_address=generous,
        message_rate=generous,
        request_rate=generous,
    )
    store = MemoryStore()
    server = ChatServer(
        store=store,
        static_key=SERVER_KEY,
        config=config,
        random=SeededRandomSource(SERVER_SEED),
        clock=_fixed_wall_clock,
    )
    return server, store


def _fixed_wall_clock() -> float:
    return START


def new_client(name: str) -> ClientConnection:
    """A fresh client of :data:`SERVER_ADDRESS` pinning :data:`SERVER_KEY`."""
    return ClientConnection(
        server_address=SERVER_ADDRESS,
        expected_server_key=SERVER_KEY.public_bytes,
        random=SeededRandomSource(f"fuzz-client-{name}"),
    )


def end_server_batch(server: ChatServer, now: float) -> list[tuple[bytes, Address]]:
    """What the real server loop does after input: end the batch (hash jobs, here;
    due timers; group commit), and write the datagrams it returns."""
    return list(server.end_batch(now, run_hashes=True).datagrams)


class _Endpoint(Protocol):
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> Any: ...


def drain(endpoint: _Endpoint) -> list[Any]:
    """Take every pending event of ``endpoint``."""
    events = []
    while (event := endpoint.next_event()) is not None:
        events.append(event)
    return events


class Loop:
    """Real roles in memory: lossless, in-order delivery and a clock that steps.

    Every datagram handed over is recorded in :attr:`captured` as
    ``(source, destination, data)``.
    """

    def __init__(self) -> None:
        self.now = START
        self.server, self.store = new_server()
        self.clients: dict[Address, ClientConnection] = {}
        self.captured: list[tuple[Address, Address, bytes]] = []
        self.events: dict[Address, list[Any]] = {SERVER_ADDRESS: []}

    def add(self, client: ClientConnection, address: Address) -> None:
        """Attach a client at ``address``."""
        self.clients[address] = client
        self.events[address] = []

    def _endpoints(self) -> list[tuple[Address, _Endpoint]]:
        pairs: list[tuple[Address, _Endpoint]] = [(SERVER_ADDRESS, self.server)]
        pairs.extend(self.clients.items())
        return pairs

    def _flush(self) -> bool:
        """Deliver everything there is to send; True if anything moved."""
        moved = False
        for _ in range(1000):
            outgoing: list[tuple[Address, Address, bytes]] = []
            for address, endpoint in self._endpoints():
                self.events[address].extend(drain(endpoint))
                datagrams = (
                    end_server_batch(self.server, self.now)
                    if endpoint is self.server
                    else endpoint.datagrams_to_send(self.now)
                )
                outgoing.extend((address, destination, data) for data, destination in datagrams)
                self.events[address].extend(drain(endpoint))
            if not outgoing:
                return moved
            moved = True
            for source, destination, data in outgoing:
                self.captured.append((source, destination, data))
                target: _Endpoint | None = (
                    self.server if destination == SERVER_ADDRESS else self.clients.get(destination)
                )
                if target is not None:
                    target.receive_datagram(data, source, self.now)
        raise AssertionError("the session does not settle")

    def run(self, seconds: float = 0.5, step: float = 0.01) -> None:
        """Deliver and fire timers for ``seconds`` of simulated time."""
        end = self.now + seconds
        while self.now < end:
            self._flush()
            for _, endpoint in self._endpoints():
                timer = endpoint.get_timer()
                if timer is not None and timer <= self.now:
                    endpoint.handle_timer(self.now)
            self.now += step
        self._flush()

    def until(self, predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
        """Run until ``predicate()`` holds (bounded in simulated time)."""
        end = self.now + limit
        while not predicate():
            if self.now > end:
                raise AssertionError(f"not reached: {what}")
            self.run(0.01)


def stream_message(offset: int, payload: bytes) -> bytes:
    """The frames of a DATA packet carrying one stream message at ``offset``."""
    data = encode_varint(len(payload)) + payload
    return encode_frames([StreamFrame(offset=offset, data=data)])


class RawClient:
    """A client built from the public Noise and packet encoders.

    With ``seed`` equal to a :func:`new_client` name's, its connection id and
    ephemeral key are those of that ClientConnection.
    """

    def __init__(self, name: str) -> None:
        random = SeededRandomSource(f"fuzz-client-{name}")
        self.connection_id = random.token_bytes(CONNECTION_ID_SIZE)
        self.handshake = HandshakeState.initiator(
            random=random, prologue=PROLOGUE + self.connection_id
        )
        noise_message = self.handshake.write_message(bytes(INITIATION_PADDING))
        self.initiation = encode_initiation(self.connection_id, noise_message)
        self.send_cipher: CipherState | None = None
        self.next_packet_number = 0
        self.stream_offset = 0

    def complete(self, response: bytes) -> None:
        """Read the server's RESPONSE datagram; the connection is then established."""
        packet = decode_packet(response)
        assert isinstance(packet, HandshakeResponse), packet
        self.handshake.read_message(packet.noise_message)
        self.send_cipher, _ = self.handshake.split()

    def seal(self, plaintext: bytes, packet_number: int | None = None) -> bytes:
        """A DATA datagram carrying ``plaintext`` (frames) under the client's key."""
        assert self.send_cipher is not None, "handshake not complete"
        if packet_number is None:
            packet_number = self.next_packet_number
            self.next_packet_number += 1
        header = encode_data_header(self.connection_id, packet_number)
        return header + self.send_cipher.seal(packet_number, header, plaintext)

    def request(self, *messages: m.Message) -> bytes:
        """A DATA datagram carrying ``messages`` on the stream, in order."""
        frames = b""
        for message in messages:
            payload = encode(message)
            frames += stream_message(self.stream_offset, payload)
            self.stream_offset += len(encode_varint(len(payload))) + len(payload)
        return self.seal(frames)


class RawServerPeer:
    """The server side of a handshake, built from the public Noise encoders.

    Answers one client's INITIATION datagram exactly as a fresh :func:`new_server`
    would (same static key, same seeded ephemeral key), and keeps the
    server-to-client transport key.
    """

    def __init__(self, initiation: bytes) -> None:
        packet = decode_packet(initiation)
        assert isinstance(packet, HandshakeInitiation), packet
        self.connection_id = packet.connection_id
        handshake = HandshakeState.responder(
            static_private=SERVER_KEY.private_bytes,
            random=SeededRandomSource(SERVER_SEED),
            prologue=PROLOGUE + self.connection_id,
        )
        handshake.read_message(packet.noise_message)
        self.response = encode_response(self.connection_id, handshake.write_message(b""))
        _, self.send_cipher = handshake.split()

    def seal(self, plaintext: bytes, packet_number: int) -> bytes:
        """A DATA datagram carrying ``plaintext`` (frames) under the server's key."""
        header = encode_data_header(self.connection_id, packet_number)
        return header + self.send_cipher.seal(packet_number, header, plaintext)


# --- what the receive_datagram harnesses start from -------------------------------------------


def handshaking_client() -> ClientConnection:
    """A fresh client "alice" that has sent its initiation (its first datagram).

    A register (request 1) and a login (request 2) are queued, so that responses
    to them have somewhere to go. Call ``datagrams_to_send(START)`` for the
    initiation.
    """
    client = new_client("alice")
    client.register("alice", PASSWORD)
    client.login("alice", PASSWORD)
    client.connect(START)
    return client


def settle(endpoint: _Endpoint, now: float, *, fire_timers: bool = True) -> None:
    """Use every output method of ``endpoint`` once, and fire its next timer."""
    drain(endpoint)
    endpoint.datagrams_to_send(now)
    drain(endpoint)
    timer = endpoint.get_timer()
    if fire_timers and timer is not None:
        later = max(timer, now)
        endpoint.handle_timer(later)
        drain(endpoint)
        endpoint.datagrams_to_send(later)
        drain(endpoint)
        endpoint.get_timer()


def settle_server(server: ChatServer, now: float) -> None:
    """:func:`settle` as the real loop does it: the batch's end (hash jobs, group
    commit, datagrams), then again at the next timer (which it fires)."""
    drain(server)
    end_server_batch(server, now)
    drain(server)
    timer = server.get_timer()
    if timer is not None:
        end_server_batch(server, max(timer, now))
        drain(server)
        server.get_timer()


_SERVER_SETUP: list[tuple[bytes, float]] = []
_ALICE: list[RawClient] = []


def _record_server_setup() -> None:
    server, _ = new_server()
    alice = RawClient("alice")
    script: list[tuple[bytes, float]] = [(alice.initiation, START)]
    server.receive_datagram(alice.initiation, ALICE_ADDRESS, START)
    [(response, _)] = server.datagrams_to_send(START)
    alice.complete(response)
    login = alice.request(
        m.Register(request_id=1, username="alice", password=PASSWORD),
        m.Register(request_id=2, username="bob", password=PASSWORD),
        m.Login(request_id=3, username="alice", password=PASSWORD),
    )
    script.append((login, START + 0.01))
    _SERVER_SETUP.extend(script)
    _ALICE.append(alice)


def established_server() -> tuple[ChatServer, MemoryStore, RawClient]:
    """A fresh server on which alice (a :class:`RawClient`) is connected and logged
    in, and bob is registered; plus a copy of alice to seal her next packets with.

    The set-up is recorded once and replayed into a fresh server on each call (the
    server's randomness is seeded, so it derives the same keys every time).
    """
    if not _SERVER_SETUP:
        _record_server_setup()
    server, store = new_server()
    for data, now in _SERVER_SETUP:
        server.receive_datagram(data, ALICE_ADDRESS, now)
        drain(server)
        end_server_batch(server, now)
        drain(server)
    if server.online_users != ["alice"]:
        raise AssertionError(f"the set-up did not log alice in: {server.online_users}")
    return server, store, copy.copy(_ALICE[0])
