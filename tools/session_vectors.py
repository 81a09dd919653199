"""Write docs/vectors/session.json: every datagram of a whole udpchat session.

Two clients (the reference ``ClientConnection``) and a server (``ChatServer`` on a
memory store) on a simulated network with a fixed 10 ms latency, fixed keys and
seeded randomness: handshakes, register, login, an invitation, a message each
way, their acknowledgements and receipts, and the closes. The format is in
``docs/vectors/README.md``; ``tests/test_session_vectors.py`` regenerates the file
and compares, and replays the recorded client datagrams to a fresh server.

Run after a change to the wire behaviour::

    .venv/bin/python tools/session_vectors.py
"""

from __future__ import annotations

import heapq
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from udpchat_proto import ChatServer, ClientConnection, MemoryStore, ScryptParams, ServerConfig
from udpchat_proto.chat import decode
from udpchat_proto.errors import DecodeError
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.handshake import CipherState, HandshakeState, public_key
from udpchat_proto.transport.keys import ServerKey
from udpchat_proto.transport.packets import (
    AckFrame,
    CloseFrame,
    DataPacket,
    Frame,
    PaddingFrame,
    PathChallengeFrame,
    PathResponseFrame,
    PingFrame,
    StreamFrame,
    decode_frames,
    decode_packet,
    decode_varint,
)

ROOT: Final = Path(__file__).resolve().parent.parent
OUTPUT: Final = ROOT / "docs" / "vectors" / "session.json"

Address = tuple[str, int]

SERVER_ADDRESS: Final[Address] = ("192.0.2.1", 9999)
#: The server's static private key: bytes 0x00..0x1f.
SERVER_STATIC: Final = bytes(range(32))
#: The server's wall clock (POSIX seconds) when the simulated clock reads 0:
#: 2026-01-01T00:00:00Z.
WALL_CLOCK_AT_ZERO: Final = 1_767_225_600.0
LATENCY: Final = 0.010
#: The session ends here: the server's timers due later are not fired.
END: Final = 8.0
#: Cheap scrypt, so that the vectors take no time to make (the cost is in the stored
#: hash only, never on the wire).
SCRYPT: Final = ScryptParams(n=16, r=1, p=1)
CLIENTS: Final[dict[str, Address]] = {
    "alice": ("198.51.100.1", 40001),
    "bob": ("198.51.100.2", 40002),
}
PASSWORD: Final = "correct horse battery"


class RecordingRandom:
    """Seeded randomness that remembers every draw (to find the ephemeral keys)."""

    def __init__(self, seed: str) -> None:
        self._random = SeededRandomSource(seed)
        self.draws: list[bytes] = []

    def token_bytes(self, n: int) -> bytes:
        data = self._random.token_bytes(n)
        self.draws.append(data)
        return data

    def private_key_of(self, public: bytes) -> bytes:
        """The 32-byte draw whose X25519 public key is ``public``."""
        return next(d for d in self.draws if len(d) == 32 and public_key(d) == public)


class ServerDriver:
    """The server role run as the real loop runs it, on simulated time.

    Before an arrival at time t, every timer due at or before t fires (at its own
    deadline); after each arrival or timer, the batch ends (``end_batch``: hash
    jobs, commit, then the datagrams). The same rule generates the vectors and
    replays them.
    """

    def __init__(self, seed: str = "udpchat session vectors: server") -> None:
        self.now = 0.0
        self.random = RecordingRandom(seed)
        self.server = ChatServer(
            store=MemoryStore(),
            static_key=ServerKey.from_bytes(SERVER_STATIC),
            clock=lambda: WALL_CLOCK_AT_ZERO + self.now,
            config=ServerConfig(scrypt=SCRYPT),
            random=self.random,
        )
        self.sent: list[tuple[float, bytes, Address]] = []

    def _flush(self) -> None:
        end = self.server.end_batch(self.now, run_hashes=True)
        while self.server.next_event() is not None:
            pass
        self.sent.extend((self.now, data, addr) for data, addr in end.datagrams)

    def advance(self, until: float) -> None:
        """Fire every timer due at or before ``until``."""
        for _ in range(10_000):
            deadline = self.server.get_timer()
            if deadline is None or deadline > until:
                return
            self.now = max(self.now, deadline)
            self.server.handle_timer(self.now)
            self._flush()
        raise RuntimeError("the server's timers do not settle")

    def receive(self, data: bytes, addr: Address, at: float) -> None:
        self.advance(at)
        self.now = at
        self.server.receive_datagram(data, addr, at)
        self._flush()


def _address(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


class Simulation:
    """The simulated network: the server, the clients and the script of what users do.

    ``tools/e2ee_vectors.py`` runs its own script on it, with a third client and
    ``on_event`` handlers that answer what the clients receive (the encrypted
    sends' next steps, the deliveries to decrypt).
    """

    def __init__(
        self,
        clients: dict[str, Address] = CLIENTS,
        seed: str = "udpchat session vectors",
    ) -> None:
        self.addresses = clients
        self.server = ServerDriver(f"{seed}: server")
        self.randoms = {name: RecordingRandom(f"{seed}: {name}") for name in clients}
        self.clients = {
            name: ClientConnection(server_address=SERVER_ADDRESS, random=self.randoms[name])
            for name in clients
        }
        self.by_address = {addr: name for name, addr in clients.items()}
        self.now = 0.0
        self.queue: list[tuple[float, int, str, Any]] = []
        self.order = itertools.count()
        self.datagrams: list[tuple[float, str, str, bytes]] = []
        self.on_event: dict[str, Callable[[Any], None]] = {}
        """Per client: called with each event it takes (by default they are dropped)."""

    def at(self, time: float, action: Callable[[], Any]) -> None:
        heapq.heappush(self.queue, (time, next(self.order), "action", action))

    def _send_from_clients(self) -> None:
        for name, client in self.clients.items():
            handler = self.on_event.get(name)
            # Taking a delivery acknowledges it.
            while (event := client.next_event()) is not None:
                if handler is not None:
                    handler(event)
            for data, _ in client.datagrams_to_send(self.now):
                self.datagrams.append((self.now, name, "server", data))
                item = (data, self.addresses[name])
                heapq.heappush(self.queue, (self.now + LATENCY, next(self.order), "server", item))

    def _send_from_server(self) -> None:
        for sent_at, data, addr in self.server.sent:
            name = self.by_address[addr]
            self.datagrams.append((sent_at, "server", name, data))
            heapq.heappush(self.queue, (sent_at + LATENCY, next(self.order), name, data))
        self.server.sent.clear()

    def run(self, end: float = END) -> None:
        """Run until nothing is due at or before ``end``."""
        while True:
            timers = [
                (deadline, name)
                for name, client in self.clients.items()
                if (deadline := client.get_timer()) is not None
            ]
            server_timer = self.server.server.get_timer()
            if server_timer is not None:
                timers.append((server_timer, "server"))
            next_timer = min(timers, default=(float("inf"), ""))
            next_item = self.queue[0][0] if self.queue else float("inf")
            if min(next_timer[0], next_item) > end:
                return
            if next_timer[0] <= next_item:
                self.now = max(self.now, next_timer[0])
                if next_timer[1] == "server":
                    self.server.advance(self.now)
                else:
                    self.clients[next_timer[1]].handle_timer(self.now)
            else:
                time, _, kind, item = heapq.heappop(self.queue)
                self.now = time
                if kind == "action":
                    item()
                elif kind == "server":
                    data, addr = item
                    self.server.receive(data, addr, time)
                else:
                    self.clients[kind].receive_datagram(item, SERVER_ADDRESS, time)
            self._send_from_server()
            self._send_from_clients()


def _script(session: Simulation) -> None:
    alice, bob = session.clients["alice"], session.clients["bob"]

    def start(client: ClientConnection, name: str) -> None:
        # Requests may be queued before the handshake completes (pipelining).
        client.connect(session.now)
        client.register(name, PASSWORD)
        client.login(name, PASSWORD)

    session.at(0.0, lambda: start(alice, "alice"))
    session.at(0.5, lambda: start(bob, "bob"))
    session.at(1.0, lambda: alice.invite("bob"))
    session.at(1.5, lambda: bob.accept_invitation("alice"))
    session.at(2.0, lambda: alice.send_message("bob", "Hi Bob!"))
    session.at(3.5, lambda: bob.send_message("alice", "Hi Alice, how are you?"))
    session.at(6.0, lambda: alice.close(session.now))
    session.at(6.5, lambda: bob.close(session.now))


# --- the document ------------------------------------------------------------------------------


def _frame(frame: Frame) -> dict[str, Any]:
    if isinstance(frame, PaddingFrame):
        return {"type": "PADDING", "length": frame.length}
    if isinstance(frame, PingFrame):
        return {"type": "PING"}
    if isinstance(frame, AckFrame):
        ranges = [[start, stop - 1] for start, stop in frame.ranges]
        return {"type": "ACK", "ranges": ranges, "delay_us": frame.delay_us}
    if isinstance(frame, StreamFrame):
        return {"type": "STREAM", "offset": frame.offset, "length": len(frame.data)}
    if isinstance(frame, CloseFrame):
        return {"type": "CLOSE", "code": frame.code, "reason": frame.reason}
    kind = "PATH_CHALLENGE" if isinstance(frame, PathChallengeFrame) else "PATH_RESPONSE"
    assert isinstance(frame, PathChallengeFrame | PathResponseFrame)
    return {"type": kind, "data": frame.data.hex()}


class _Stream:
    """One direction's byte stream, to name the messages each datagram completes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.start = 0

    def add(self, frame: StreamFrame) -> list[tuple[int, Any]]:
        """The (version byte, JSON object) of each message this frame completes."""
        end = self.start + len(self.data)
        if frame.offset + len(frame.data) > end:  # no loss here: never a gap
            assert frame.offset <= end
            self.data += frame.data[end - frame.offset :]
        messages = []
        while self.data:
            try:
                length, pos = decode_varint(bytes(self.data), 0)
            except DecodeError:
                break
            if len(self.data) < pos + length:
                break
            payload = bytes(self.data[pos : pos + length])
            del self.data[: pos + length]
            self.start += pos + length
            assert decode(payload) is not None  # a valid message of the catalogue
            messages.append((payload[0], json.loads(payload[1:])))
        return messages


def _connection(name: str, session: Simulation) -> dict[str, Any]:
    """The keys of one connection, checked by running the handshake again."""
    initiation = next(d for _, src, _, d in session.datagrams if src == name)
    response = next(d for _, src, dst, d in session.datagrams if dst == name and d[0] == 0x02)
    connection_id = initiation[2:10]
    client_e = session.randoms[name].private_key_of(initiation[10:42])
    server_e = session.server.random.private_key_of(response[9:41])
    prologue = b"udpchat/1" + connection_id
    unused = SeededRandomSource("unused")
    client = HandshakeState.initiator(random=unused, prologue=prologue, ephemeral_private=client_e)
    server = HandshakeState.responder(
        static_private=SERVER_STATIC, random=unused, prologue=prologue, ephemeral_private=server_e
    )
    payload = initiation[42:]
    assert b"\x01\x01" + connection_id + client.write_message(payload) == initiation
    server.read_message(initiation[10:])
    assert b"\x02" + connection_id + server.write_message(b"") == response
    client.read_message(response[9:])
    c1, c2 = client.split()
    assert c1.key is not None and c2.key is not None
    return {
        "name": name,
        "address": _address(session.addresses[name]),
        "connection_id": connection_id.hex(),
        "prologue": prologue.hex(),
        "client_ephemeral_private": client_e.hex(),
        "server_ephemeral_private": server_e.hex(),
        "handshake_hash": client.handshake_hash.hex(),
        "client_to_server_key": c1.key.hex(),
        "server_to_client_key": c2.key.hex(),
    }


def record(
    session: Simulation, *, versions: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run session's connections (their keys) and datagrams, as the file lists
    them (with ``versions``, each DATA datagram's also lists its messages' version
    bytes)."""
    connections = [_connection(name, session) for name in session.addresses]
    keys = {
        (bytes.fromhex(c["connection_id"]), src != "server"): bytes.fromhex(
            c["client_to_server_key"] if src != "server" else c["server_to_client_key"]
        )
        for c in connections
        for src in ("server", c["name"])
    }
    streams: dict[tuple[str, str], _Stream] = {}
    datagrams = []
    for time, src, dst, data in session.datagrams:
        entry: dict[str, Any] = {
            "time": time,
            "from": src,
            "to": dst,
            "datagram": data.hex(),
        }
        packet = decode_packet(data)
        entry["packet"] = type(packet).__name__
        if isinstance(packet, DataPacket):
            key = keys[(packet.connection_id, src != "server")]
            cipher = CipherState(key)
            plaintext = cipher.open(packet.packet_number, packet.header, packet.ciphertext)
            frames = decode_frames(plaintext)
            stream = streams.setdefault((src, dst), _Stream())
            entry["packet_number"] = packet.packet_number
            entry["plaintext"] = plaintext.hex()
            entry["frames"] = [_frame(frame) for frame in frames]
            completed = [
                message
                for frame in frames
                if isinstance(frame, StreamFrame)
                for message in stream.add(frame)
            ]
            entry["messages"] = [message for _, message in completed]
            if versions:
                entry["versions"] = [version for version, _ in completed]
        datagrams.append(entry)
    return connections, datagrams


def server_entry() -> dict[str, Any]:
    """The ``server`` member: its address, keys, clock and scrypt cost."""
    server_key = ServerKey.from_bytes(SERVER_STATIC)
    return {
        "address": _address(SERVER_ADDRESS),
        "static_private": SERVER_STATIC.hex(),
        "static_public": server_key.public_bytes.hex(),
        "fingerprint": server_key.fingerprint,
        "wall_clock_at_zero": WALL_CLOCK_AT_ZERO,
        "scrypt": {"n": SCRYPT.n, "r": SCRYPT.r, "p": SCRYPT.p},
    }


def generate() -> dict[str, Any]:
    """Run the session and return the document (what ``session.json`` holds)."""
    session = Simulation()
    _script(session)
    session.run()
    connections, datagrams = record(session)
    return {
        "description": (
            "Every datagram of one udpchat version 1 session: two clients register, log "
            "in, become friends, exchange a message each way, acknowledge them and "
            "close. Format: docs/vectors/README.md. Made by tools/session_vectors.py."
        ),
        "protocol": "udpchat/1",
        "noise_protocol": "Noise_NX_25519_ChaChaPoly_SHA256",
        "latency": LATENCY,
        "end": END,
        "server": server_entry(),
        "connections": connections,
        "datagrams": datagrams,
    }


def render(document: dict[str, Any]) -> str:
    """The file's text: one datagram a line is too long to read; two-space JSON."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    document = generate()
    OUTPUT.write_text(render(document), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(document['datagrams'])} datagrams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
