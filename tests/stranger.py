"""A client written from docs/PROTOCOL.md alone, on third-party libraries.

It knows nothing of ``udpchat_proto.transport``: the Noise NX handshake is
``noiseprotocol``'s, packets are protected with the split keys and
``cryptography``'s ChaCha20Poly1305, and frames, varints and messages are written
out here as the specification describes them (JSON by the standard library).
:class:`SansIOServer` runs the server role as the real loop does, without sockets:
a memory store, a fake clock, seeded randomness.
"""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection

from tests.chat_helpers import test_config
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey

NOISE_NAME = b"Noise_NX_25519_ChaChaPoly_SHA256"


def noise_handshake(
    *, initiator: bool, prologue: bytes, ephemeral: bytes, static: bytes | None = None
) -> Any:
    """A noiseprotocol handshake with a fixed ephemeral key (it warns about that)."""
    noise = NoiseConnection.from_name(NOISE_NAME)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, static)
    noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    noise.set_prologue(prologue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ephemeral keypair already set: for testing"
        noise.start_handshake()
    return noise


# --- what the specification says, written out -------------------------------------------------


def varint(value: int) -> bytes:
    """RFC 9000, section 16."""
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    size = 1 << (data[pos] >> 6)
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def nonce(packet_number: int) -> bytes:
    """Noise's ChaChaPoly nonce: 4 zero bytes, the number as 64-bit little-endian."""
    return bytes(4) + packet_number.to_bytes(8, "little")


class StrangerClient:
    """One connection, from the specification: handshake, frames, stream, messages."""

    def __init__(self, name: str, seed: int) -> None:
        random = SeededRandomSource(f"stranger-{name}-{seed}")
        self.address = (f"198.51.100.{seed % 250 + 1}", 40000 + seed)
        self.connection_id = random.token_bytes(8)
        self.noise = noise_handshake(
            initiator=True,
            prologue=b"udpchat/1" + self.connection_id,
            ephemeral=random.token_bytes(32),
        )
        self.send_key = self.receive_key = b""
        self.server_key = b""
        self.next_packet_number = 0
        self.received: set[int] = set()
        self.stream_out = 0
        self.stream_in = bytearray()
        self.stream_end = 0
        self.fragments: dict[int, bytes] = {}
        self.messages: list[dict[str, Any]] = []
        self.next_request_id = 1
        self.closed: tuple[int, str] | None = None

    def initiation(self) -> bytes:
        # The payload: token length 0, then zeros, so that the datagram is 1200 bytes.
        message = bytes(self.noise.write_message(bytes(1200 - 10 - 32)))
        datagram = b"\x01\x01" + self.connection_id + message
        assert len(datagram) == 1200
        return datagram

    def on_response(self, datagram: bytes) -> None:
        assert datagram[0] == 0x02 and len(datagram) == 105
        assert datagram[1:9] == self.connection_id
        state = self.noise.noise_protocol.handshake_state  # dropped once complete
        assert self.noise.read_message(datagram[9:]) == b""  # empty payload in version 1
        assert self.noise.handshake_finished
        self.server_key = state.rs.public_bytes
        # Split(): the initiator sends with c1 and receives with c2.
        self.send_key = self.noise.noise_protocol.cipher_state_encrypt.k
        self.receive_key = self.noise.noise_protocol.cipher_state_decrypt.k

    def packet(self, frames: bytes) -> bytes:
        number = self.next_packet_number
        self.next_packet_number += 1
        header = b"\x03" + self.connection_id + number.to_bytes(8, "big")
        return header + ChaCha20Poly1305(self.send_key).encrypt(nonce(number), frames, header)

    def ack_frame(self) -> bytes:
        """QUIC's ACK frame, delay in microseconds, with every range received."""
        if not self.received:
            return b""
        numbers = sorted(self.received, reverse=True)
        ranges: list[tuple[int, int]] = []  # (largest, smallest), descending
        for number in numbers:
            if ranges and ranges[-1][1] == number + 1:
                ranges[-1] = (ranges[-1][0], number)
            else:
                ranges.append((number, number))
        out = b"\x02" + varint(ranges[0][0]) + varint(0) + varint(len(ranges) - 1)
        out += varint(ranges[0][0] - ranges[0][1])
        for (_, previous_smallest), (largest, smallest) in itertools.pairwise(ranges):
            out += varint(previous_smallest - largest - 2) + varint(largest - smallest)
        return out

    def encode(self, message: dict[str, Any]) -> bytes:
        """One application message as a STREAM frame: version byte 1, then JSON."""
        return self.encode_raw(b"\x01" + json.dumps(message).encode())

    def encode_raw(self, data: bytes) -> bytes:
        """Any bytes as the next message of the stream, in a STREAM frame."""
        chunk = varint(len(data)) + data
        frame = b"\x03" + varint(self.stream_out) + varint(len(chunk)) + chunk
        self.stream_out += len(chunk)
        return frame

    def request(self, message: dict[str, Any]) -> tuple[int, bytes]:
        request_id = self.next_request_id
        self.next_request_id += 1
        return request_id, self.encode({"request_id": request_id, **message})

    def receive(self, datagram: bytes) -> bool:
        """Open a DATA packet and process its frames; True if it asks for an ACK."""
        assert datagram[0] == 0x03 and datagram[1:9] == self.connection_id
        number = int.from_bytes(datagram[9:17], "big")
        plain = ChaCha20Poly1305(self.receive_key).decrypt(
            nonce(number), datagram[17:], datagram[:17]
        )
        self.received.add(number)
        eliciting = False
        pos = 0
        while pos < len(plain):
            kind = plain[pos]  # one byte, not a varint
            pos += 1
            if kind == 0x00:  # PADDING
                continue
            if kind == 0x01:  # PING
                eliciting = True
            elif kind == 0x02:  # ACK: largest, delay, count, first, (gap, length) * count
                _, pos = read_varint(plain, pos)
                _, pos = read_varint(plain, pos)
                count, pos = read_varint(plain, pos)
                for _ in range(1 + 2 * count):
                    _, pos = read_varint(plain, pos)
            elif kind == 0x03:  # STREAM
                offset, pos = read_varint(plain, pos)
                length, pos = read_varint(plain, pos)
                self.fragments[offset] = plain[pos : pos + length]
                pos += length
                eliciting = True
            elif kind == 0x04:  # CLOSE
                code, pos = read_varint(plain, pos)
                length, pos = read_varint(plain, pos)
                self.closed = (code, plain[pos : pos + length].decode())
                pos += length
            else:
                raise AssertionError(f"unexpected frame {kind:#04x}")
        self._reassemble()
        return eliciting

    def _reassemble(self) -> None:
        while self.stream_end in self.fragments:
            data = self.fragments.pop(self.stream_end)
            self.stream_in += data
            self.stream_end += len(data)
        while self.stream_in:
            length, start = read_varint(bytes(self.stream_in), 0)
            if len(self.stream_in) < start + length:
                return
            data = bytes(self.stream_in[start : start + length])
            del self.stream_in[: start + length]
            assert data[0] == 1
            self.messages.append(json.loads(data[1:]))


class SansIOServer:
    """The server role as the real loop runs it: feed, end the batch (hashes, due
    timers, commit), send."""

    def __init__(self, seed: int) -> None:
        self.now = 1000.0
        self.key = ServerKey.generate(SeededRandomSource(f"interop-key-{seed}"))
        self.server = ChatServer(
            store=MemoryStore(),
            static_key=self.key,
            clock=lambda: 1_767_225_600.0 + self.now,
            config=test_config(),
            random=SeededRandomSource(f"interop-server-{seed}"),
        )

    def feed(self, datagram: bytes, addr: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
        self.now += 0.001
        self.server.receive_datagram(datagram, addr, self.now)
        return self.end_batch()

    def end_batch(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The turn's end, with the hashes run here (a pipelined login's too)."""
        end = self.server.end_batch(self.now, run_hashes=True)
        while self.server.next_event() is not None:
            pass
        return list(end.datagrams)


def exchange(
    server: SansIOServer, client: StrangerClient, clients: dict[Any, StrangerClient], frames: bytes
) -> None:
    """Send one packet of ``frames`` and everything that follows, until quiet."""
    queue = [(client.packet(frames), client.address)]
    while queue:
        datagram, addr = queue.pop(0)
        for reply, to in server.feed(datagram, addr):
            receiver = clients[to]
            if receiver.receive(reply):
                queue.append((receiver.packet(receiver.ack_frame()), receiver.address))


def connect(server: SansIOServer, client: StrangerClient) -> None:
    replies = server.feed(client.initiation(), client.address)
    assert [addr for _, addr in replies] == [client.address]
    client.on_response(replies[0][0])


def answer(client: StrangerClient, request_id: int) -> dict[str, Any]:
    answers = [m for m in client.messages if m.get("request_id") == request_id]
    assert len(answers) == 1, client.messages
    return answers[0]


def established(
    seed: int = 1, first_frames: bytes = b"\x01"
) -> tuple[SansIOServer, StrangerClient, dict[Any, StrangerClient]]:
    """A server and one stranger whose handshake its first DATA packet (by default a
    lone PING) confirmed."""
    server = SansIOServer(seed=seed)
    client = StrangerClient("alice", seed)
    clients = {client.address: client}
    connect(server, client)
    exchange(server, client, clients, first_frames)
    return server, client, clients
