"""What a message costs through ``udpchat_proto.asyncio``'s client (the chat's),
end-to-end encryption included: a server (``serve()``, a ``MemoryStore``) and two
clients in this process, on loopback; alice sends N messages to bob, each awaited,
while bob reads every delivery.

Run: ``.venv/bin/python benchmarks/client_crypto.py [--messages 300] [--runs 3]
[--json] [--quick]``. Prints, per run, the CPU time of the whole process (both clients and
the server) and the wall time per message. The client does its device work (the
crypto state's lock, encryption, decryption, saving) on a thread of its own, so
this is where that thread's hops show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from udpchat_proto import (
    MemoryStore,
    RateLimit,
    ScryptParams,
    SeededRandomSource,
    ServerConfig,
    ServerKey,
)
from udpchat_proto import messages as m
from udpchat_proto.asyncio import MemoryCryptoStore, connect, serve

PASSWORD = "correct horse battery"
KEY = ServerKey.generate(SeededRandomSource("asyncio-client-benchmark"))
#: Cheap hashes and no rate limit in the way: the messages are what is measured.
CONFIG = ServerConfig(
    scrypt=ScryptParams(n=16),
    message_rate=RateLimit(burst=1_000_000, interval=1e-6),
    request_rate=RateLimit(burst=1_000_000, interval=1e-6),
)


async def one_run(messages: int) -> tuple[float, float]:
    """CPU and wall seconds per message, over ``messages`` sends."""
    service = await serve(store=MemoryStore(), key=KEY, port=0, config=CONFIG)
    alice = await connect(
        service.address, server_key=KEY.public_bytes, crypto_store=MemoryCryptoStore()
    )
    bob = await connect(
        service.address, server_key=KEY.public_bytes, crypto_store=MemoryCryptoStore()
    )
    try:
        for client, name in ((alice, "alice"), (bob, "bob")):
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
        await alice.invite("bob")
        async for push in bob:
            if isinstance(push, m.InvitationReceived):
                break
        await bob.accept("alice")
        await alice.send("bob", "warm up")  # (the first share: not measured)
        async for push in bob:
            if isinstance(push, m.MessageDelivered):
                break
        received = 0

        async def read() -> None:
            nonlocal received
            async for push in bob:
                if isinstance(push, m.MessageDelivered):
                    received += 1
                    if received == messages:
                        return

        wall, cpu = time.perf_counter(), time.process_time()
        reader = asyncio.ensure_future(read())
        for n in range(messages):
            await alice.send("bob", f"message {n} of the benchmark")
        await asyncio.wait_for(reader, 60)
        return (time.process_time() - cpu) / messages, (time.perf_counter() - wall) / messages
    finally:
        alice.close()
        bob.close()
        await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--quick", action="store_true", help="20 messages, one run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.runs = 20, 1
    runs = [asyncio.run(one_run(args.messages)) for _ in range(args.runs)]
    cpu_ms = [round(cpu * 1000, 2) for cpu, _wall in runs]
    wall_ms = [round(wall * 1000, 2) for _cpu, wall in runs]
    if args.json:
        print(json.dumps({"messages": args.messages, "cpu_ms": cpu_ms, "wall_ms": wall_ms}))
        return
    for cpu, wall in zip(cpu_ms, wall_ms, strict=True):
        print(f"{args.messages} messages: {cpu} ms CPU, {wall} ms wall per message")


if __name__ == "__main__":
    main()
