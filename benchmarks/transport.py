"""Transport cost, in messages per second of CPU, beside the bare AEAD in the same run.

Run: ``.venv/bin/python benchmarks/transport.py``. Loopback only: no sockets, no
sleeps; CPU time is ``time.process_time``. Each figure is the median of several
runs. Three measurements per message size:

* **bare AEAD**: ``ChaCha20Poly1305.encrypt`` + ``decrypt`` of the message bytes
  with a fresh nonce (the floor: the cryptography alone);
* **seal + open**: one message per DATA packet through the transport's packet
  path: STREAM frame and header encoding, seal with the packet number as nonce,
  then header parsing, replay check, open and frame decoding;
* **transfer**: a client sends messages to a server through
  ``ClientTransport``/``ServerTransport`` (handshake done beforehand), every
  datagram carried both ways in memory, until the server has emitted every
  ``PayloadReceived``: packing, ACKs, loss recovery bookkeeping, reassembly and
  events included;
* **exchange**: one message each way per round, as a chat server relays: the
  client sends one, the server answers it with one; each packet carries one
  message and an ACK, so this is the transport's cost per packet (the rate
  counts messages, both directions).

The ratio is transport rate / bare AEAD rate (1.0 would mean the transport costs
nothing beyond its cryptography; a transfer packs several small messages per
packet, so it can exceed the per-message AEAD rate).

``--once exchange N`` (or ``--once transfer N``) runs one fixed exchange of ``N``
rounds (a transfer of ``N`` 100-byte messages) and times nothing, for an
instruction count: ``PYTHONHASHSEED=0 valgrind --tool=callgrind python
benchmarks/transport.py --once exchange 1000``, minus the same with ``0`` (the
start-up and the handshake alone).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from udpchat_proto import SeededRandomSource, ServerKey
from udpchat_proto.transport import (
    CipherState,
    ClientTransport,
    DataPacket,
    HandshakeCompleted,
    PayloadReceived,
    ReplayWindow,
    ServerTransport,
    StreamFrame,
    decode_frames,
    decode_packet,
    encode_data_header,
    encode_frame,
)

RUNS = 5
SIZES = (100, 1000)
PACKETS = 20_000
TRANSFER = 20_000
EXCHANGE = 5_000
SERVER = ("127.0.0.1", 4433)
CLIENT = ("127.0.0.1", 50000)
NONCE = struct.Struct("<4xQ")


def cpu(func: Callable[[], int]) -> float:
    """Median messages per CPU second of ``func`` (which returns its message count)."""
    rates = []
    for _ in range(RUNS):
        start = time.process_time()
        count = func()
        rates.append(count / (time.process_time() - start))
    return statistics.median(rates)


def bare_aead(size: int) -> Callable[[], int]:
    aead = ChaCha20Poly1305(bytes(range(32)))
    message = bytes(size)
    header = bytes(17)

    def run() -> int:
        for n in range(PACKETS):
            nonce = NONCE.pack(n)
            aead.decrypt(nonce, aead.encrypt(nonce, message, header), header)
        return PACKETS

    return run


def seal_open(size: int) -> Callable[[], int]:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    cid = bytes(8)
    message = bytes(size)

    def run() -> int:
        window = ReplayWindow()
        for pn in range(PACKETS):
            header = encode_data_header(cid, pn)
            frame = encode_frame(StreamFrame(offset=pn * size, data=message))
            datagram = header + sender.seal(pn, header, frame)
            packet = decode_packet(datagram)
            assert isinstance(packet, DataPacket)
            number = packet.packet_number
            if window.check(number):
                plain = receiver.open(number, packet.header, packet.ciphertext)
                window.update(number)
                decode_frames(plain)
        return PACKETS

    return run


def connected_pair() -> tuple[ClientTransport, ServerTransport, bytes]:
    server = ServerTransport(
        static_key=ServerKey.generate(SeededRandomSource(1)), random=SeededRandomSource(2)
    )
    client = ClientTransport(server_address=SERVER, random=SeededRandomSource(3))
    now = 1000.0
    client.connect(now)
    for _ in range(4):
        shuttle(client, server, now)
    assert client.is_established
    cid = None
    while (event := server.next_event()) is not None:
        if isinstance(event, HandshakeCompleted):
            cid = event.connection_id
    assert cid is not None
    while client.next_event() is not None:
        pass
    return client, server, cid


def shuttle(client: ClientTransport, server: ServerTransport, now: float) -> int:
    moved = 0
    for data, _ in client.datagrams_to_send(now):
        server.receive_datagram(data, CLIENT, now)
        moved += 1
    for data, _ in server.datagrams_to_send(now):
        client.receive_datagram(data, SERVER, now)
        moved += 1
    return moved


def transfer(size: int, total: int = TRANSFER) -> Callable[[], int]:
    message = bytes(size)

    def run() -> int:
        client, server, _ = connected_pair()
        now = 1000.0
        received = 0
        sent = 0
        while received < total:
            # Keep the send buffer topped up, as an application writing steadily.
            while sent < total and client.send_buffer_size < 512 * 1024:
                client.send(message)
                sent += 1
            now += 0.001
            client.handle_timer(now)
            server.handle_timer(now)
            shuttle(client, server, now)
            while (event := server.next_event()) is not None:
                if isinstance(event, PayloadReceived):
                    received += 1
        return total

    return run


def exchange(size: int, rounds: int = EXCHANGE) -> Callable[[], int]:
    message = bytes(size)

    def run() -> int:
        client, server, cid = connected_pair()
        now = 1000.0
        got = 0
        for _ in range(rounds):
            client.send(message)
            now += 0.0005
            shuttle(client, server, now)
            while (event := server.next_event()) is not None:
                if isinstance(event, PayloadReceived):
                    server.send(cid, message)
            now += 0.0005
            client.handle_timer(now)
            server.handle_timer(now)
            shuttle(client, server, now)
            while (event := client.next_event()) is not None:
                if isinstance(event, PayloadReceived):
                    got += 1
        assert got == rounds
        return 2 * rounds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--once",
        nargs=2,
        metavar=("KIND", "N"),
        help="run one fixed exchange (N rounds) or transfer (N messages) of 100 bytes, untimed",
    )
    args = parser.parse_args()
    if args.once is not None:
        kind, count = args.once[0], int(args.once[1])
        if kind not in {"exchange", "transfer"}:
            parser.error("KIND is exchange or transfer")
        work = exchange(100, count) if kind == "exchange" else transfer(100, count)
        print(f"{kind} {count}: {work()} messages")
        return
    print(f"median of {RUNS} runs, messages per CPU second (time.process_time)")
    for size in SIZES:
        aead = cpu(bare_aead(size))
        packet = cpu(seal_open(size))
        flow = cpu(transfer(size))
        rounds = cpu(exchange(size))
        print(f"{size}-byte messages:")
        print(f"  bare ChaCha20Poly1305 encrypt+decrypt {aead:12,.0f} /s")
        print(f"  seal + open, one per packet           {packet:12,.0f} /s", end="")
        print(f"   ratio {packet / aead:.3f}")
        print(f"  full transfer, client -> server       {flow:12,.0f} /s", end="")
        print(f"   ratio {flow / aead:.3f}")
        print(f"  exchange, one message a packet        {rounds:12,.0f} /s", end="")
        print(f"   ratio {rounds / aead:.3f}")


if __name__ == "__main__":
    main()
