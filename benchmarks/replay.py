"""The server alone on a fixed load, for instruction counts: record the server's
inputs in ``fanout.py``'s direct run once, then feed them to a fresh server with no
clients.

Run: ``.venv/bin/python benchmarks/replay.py record TRACE [--pairs 16] [--messages 100]``,
then ``PYTHONHASHSEED=0 valgrind --tool=callgrind --dump-before=getppid
$PY benchmarks/replay.py replay TRACE``.

Everything in ``fanout.py``'s world is seeded and its clock is a counter, so the
server's inputs (each datagram, with its address and time, and each batch's end)
are the same in every run, and a fresh server fed them does exactly what the
recorded one did (the replay prints the pushes and requests it counted: they must
match the recorded deliveries). The replay calls ``os.getppid()`` where the message
phase begins and where it ends: with ``--dump-before=getppid`` callgrind writes
three parts, and the second (``.2``) is the message phase alone, from one process
(no subtraction of two runs, whose start-up differs by more than the effect
measured). Divide its total by the deliveries. ``record`` needs the checkout's
build; ``replay`` runs on any build of the same protocol (the trace is pickled
datagrams, not objects).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # (a sibling script, found through the path above)

from udpchat_proto import ChatServer, ClientConnection, MemoryStore, Store
from udpchat_proto import messages as m

Input = tuple[str, bytes, tuple[str, int], float]
"""``("r", datagram, address, now)`` for a datagram, ``("e", b"", ("", 0), now)``
for the end of a batch."""


def exchange(
    inputs: list[Input],
    clients: Mapping[tuple[str, int], ClientConnection],
    server: ChatServer,
    server_address: tuple[str, int],
    now: float,
) -> bool:
    """One turn of a recording world: every client's datagrams into the server,
    then the server's batch end back to the clients, each input written down in
    ``inputs`` as the replay gives it; whether anything moved."""
    moved = False
    for address, client in clients.items():
        for data, _ in client.datagrams_to_send(now):
            inputs.append(("r", data, address, now))
            server.receive_datagram(data, address, now)
            moved = True
    inputs.append(("e", b"", ("", 0), now))
    for data, address in server.end_batch(now, run_hashes=True).datagrams:
        clients[address].receive_datagram(data, server_address, now)
        moved = True
    return moved


class Recorder(fanout.World):
    """``fanout.World`` that writes down what the server is given."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.inputs: list[Input] = []

    def step(self) -> bool:
        moved = exchange(self.inputs, self.clients, self.server, fanout.SERVER, self.now)
        for address, client in self.clients.items():
            while (event := client.next_event()) is not None:
                if isinstance(event, m.MessageDelivered):
                    self.delivered += 1
                else:
                    self.answers[address].append(event)
        return moved


class _PhaseClock:
    """Stands in for ``fanout.time``: ``direct_run`` reads the CPU time when the
    messages start, which is where the message phase begins in the trace."""

    def __init__(self, recorders: list[Recorder]) -> None:
        self.recorders = recorders
        self.marker: int | None = None

    def process_time(self) -> float:
        if self.marker is None:
            self.marker = len(self.recorders[0].inputs)
        return 0.0


def record(path: Path, pairs: int, messages: int) -> None:
    recorders: list[Recorder] = []

    def world(store: Store) -> Recorder:
        recorder = Recorder(store)
        recorders.append(recorder)
        return recorder

    fanout.MEMBERS = pairs + 1
    fanout.MESSAGES = messages
    clock = _PhaseClock(recorders)
    fanout.World = world  # type: ignore[misc,assignment]  # (direct_run builds one)
    fanout.time = clock  # type: ignore[attr-defined,assignment]
    _seconds, delivered = fanout.direct_run(MemoryStore())
    assert clock.marker is not None
    with path.open("wb") as file:
        pickle.dump((clock.marker, recorders[0].inputs, delivered), file)
    print(
        f"recorded {len(recorders[0].inputs)} inputs, the messages from "
        f"{clock.marker}; {delivered} deliveries"
    )


def replay(path: Path) -> None:
    with path.open("rb") as file:
        marker, inputs, delivered = pickle.load(file)  # (a file this script wrote)
    with tempfile.TemporaryDirectory():
        world = fanout.World(MemoryStore())
        server = world.server
        for index, (kind, data, address, now) in enumerate(inputs):
            if index == marker:
                os.getppid()  # callgrind --dump-before=getppid: the messages start
            world.now = now
            if kind == "r":
                server.receive_datagram(data, address, now)
            else:
                server.end_batch(now, run_hashes=True)
        os.getppid()  # and end
        stats = server.stats
    print(
        f"replayed {len(inputs)} inputs: {stats.deliveries_pushed} pushed, "
        f"{stats.requests} requests; {delivered} deliveries recorded"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "replay"])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    if args.mode == "record":
        record(args.trace, args.pairs, args.messages)
    else:
        replay(args.trace)


if __name__ == "__main__":
    main()
