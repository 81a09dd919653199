"""The server role of ``e2ee.py --relay`` on a fixed load, for instruction counts:
record its inputs once (plain or encrypted), then feed them to a fresh server
with no clients, under callgrind.

Run::

    .venv/bin/python benchmarks/relay_replay.py record TRACE [--encrypted] [--messages 80] \\
        [--text-length 60]
    PYTHONHASHSEED=0 valgrind --tool=callgrind --dump-before=getppid \\
        --callgrind-out-file=OUT .venv/bin/python benchmarks/relay_replay.py replay TRACE [--steps]
    .venv/bin/python benchmarks/relay_replay.py report OUT.2 --deliveries N

``record`` runs ``e2ee.relay_cost`` (16 pairs of friends, bursts of 8 direct
messages a pair; encrypted: keys uploaded, one-time keys claimed and every
message encrypted before the message phase; ``--text-length 490`` makes a plain
message as long on the wire as an encrypted one, so that the bytes' cost and
encryption's own can be told apart) and writes down each datagram the
server is given, with its address and time, and each batch's end. The server's
world is seeded and its clock a counter, so a fresh server fed the same inputs
does exactly what the recorded one did (the replay prints what it counted: the
deliveries must match the recording's); the ciphertexts were made once, at the
recording. As in ``replay.py``, ``os.getppid()`` marks where the message phase
begins and ends: with ``--dump-before=getppid`` callgrind's second part (``.2``)
is the message phase alone.

``--steps`` runs each step of a message through a C function of its own that
nothing else in the server calls (``operator.call``, ``functools.reduce`` ...),
so that callgrind's inclusive cost of that function is the step's instructions
(with a thousand or two of the trampoline's a call: the totals with ``--steps`` are
40,000 to 60,000 a message higher); ``report`` prints them per delivery. The steps
nest (a request's handler holds its store call), and each is inclusive.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import itertools
import operator
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2ee  # (a sibling script, found through the path above)
from replay import Input, exchange  # (another sibling: its recording turn)

from udpchat_proto import MemoryStore, Store
from udpchat_server.stores.sqlite import SQLiteStore


class Recorder(e2ee.World):
    """``e2ee.World`` that writes down what the server is given, and where the
    message phase starts and ends (``relay_cost`` reads ``server_cpu`` there)."""

    def __init__(self, store: Store, members: int) -> None:
        self.inputs: list[Input] = []
        self.markers: list[int] = []
        super().__init__(store, members)

    @property
    def server_cpu(self) -> float:
        self.markers.append(len(self.inputs))
        return 0.0

    @server_cpu.setter
    def server_cpu(self, _value: float) -> None:
        pass

    def step(self) -> bool:
        moved = exchange(self.inputs, self.clients, self.server, e2ee.SERVER, self.now)
        for address, client in self.clients.items():
            while (event := client.next_event()) is not None:
                self.events[address].append(event)
        return moved


def _store(kind: str, directory: str) -> Store:
    return MemoryStore() if kind == "memory" else SQLiteStore.open(Path(directory) / "r.sqlite3")


def record(path: Path, *, encrypted: bool, messages: int, store: str, text_length: int) -> None:
    recorders: list[Recorder] = []

    def world(store: Store, members: int) -> Recorder:
        recorder = Recorder(store, members)
        recorders.append(recorder)
        return recorder

    e2ee.World = world  # type: ignore[misc,assignment]  # (relay_cost builds one)
    with tempfile.TemporaryDirectory() as tmp:
        text = e2ee.RELAY_TEXT.ljust(text_length, "x")
        e2ee.relay_cost(_store(store, tmp), encrypted=encrypted, messages=messages, text=text)
    recorder = recorders[0]
    start, end = recorder.markers[0], recorder.markers[1]
    delivered = e2ee.RELAY_PAIRS * messages
    with path.open("wb") as file:
        pickle.dump((start, end, recorder.inputs, delivered, store), file)
    phase = [data for kind, data, _a, _n in recorder.inputs[start:end] if kind == "r"]
    print(
        f"recorded {len(recorder.inputs)} inputs, the messages from {start} to {end} "
        f"({sum(map(len, phase))} bytes in {len(phase)} datagrams received); "
        f"{delivered} deliveries"
    )


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _trampolines() -> list[tuple[str, Wrap]]:
    """Ways to call a function through a C function of CPython's that the server
    never calls otherwise (checked: ``report`` of a replay without ``--steps``
    finds none of them), each with that C function's name."""

    def operator_call(func: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: operator.call(func, *args, **kwargs)

    def reduce(func: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: functools.reduce(
            lambda _a, _b: func(*args, **kwargs), (0, 0)
        )

    def context(func: Callable[..., Any]) -> Callable[..., Any]:
        ctx = contextvars.copy_context()
        return lambda *args, **kwargs: ctx.run(func, *args, **kwargs)

    def starmap(func: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: next(itertools.starmap(lambda: func(*args, **kwargs), [()]))

    def call_tracing(func: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: sys.call_tracing(lambda: func(*args, **kwargs), ())

    def calliter(func: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: next(iter(lambda: (func(*args, **kwargs),), None))[0]

    def with_predicate(make: Callable[[Callable[[object], bool]], Any]) -> Wrap:
        """Through an iterator that calls a predicate (``takewhile`` ...) on one item."""

        def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
            def step(*args: Any, **kwargs: Any) -> Any:
                out: list[Any] = []

                def call(_item: object) -> bool:
                    out.append(func(*args, **kwargs))
                    return True

                next(make(call), None)
                return out[0]

            return step

        return wrap

    def cmp_to_key(func: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            out: list[Any] = []

            def compare(_a: object, _b: object) -> int:
                out.append(func(*args, **kwargs))
                return 0

            key = functools.cmp_to_key(compare)
            _ = key(0) < key(1)
            return out[0]

        return step

    return [
        ("_operator_call", operator_call),
        ("functools_reduce", reduce),
        ("context_run", context),
        ("starmap_next", starmap),
        ("takewhile_next", with_predicate(lambda p: itertools.takewhile(p, [0]))),
        ("dropwhile_next", with_predicate(lambda p: itertools.dropwhile(lambda x: not p(x), [0]))),
        (
            "filterfalse_next",
            with_predicate(lambda p: itertools.filterfalse(lambda x: not p(x), [0])),
        ),
        ("groupby_next", with_predicate(lambda p: itertools.groupby([0], key=p))),
        (
            "accumulate_next",  # (its first item is given as it is: the second calls)
            with_predicate(
                lambda p: itertools.islice(
                    itertools.accumulate([0, 0], lambda _a, b: p(b)), 1, None
                )
            ),
        ),
        ("sys_call_tracing", call_tracing),
        ("calliter_iternext", calliter),
        ("keyobject_richcompare", cmp_to_key),
    ]


#: The steps ``--steps`` counts: (name, module, class or "" for a module's
#: function, attribute). Each gets a trampoline of its own, in order.
STEPS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("transport in", "udpchat_proto.transport.server", "ServerTransport", ("receive_datagram",)),
    ("packet open", "udpchat_proto.transport.handshake", "CipherState", ("open",)),
    ("packet seal", "udpchat_proto.transport.handshake", "CipherState", ("seal",)),
    ("decode", "udpchat_proto.chat.requests", "", ("decode",)),
    ("send_message", "udpchat_proto.chat.handlers.messages", "MessageHandlers", ("send_message",)),
    ("  _seal", "udpchat_proto.chat.handlers.messages", "MessageHandlers", ("_seal",)),
    (
        "  store add",
        "udpchat_server.stores.sqlite",
        "SQLiteStore",
        ("add_message", "add_encrypted_message"),
    ),
    ("    pack", "udpchat_server.stores.sqlite", "", ("pack",)),
    ("  deliver_new", "udpchat_proto.chat.deliveries", "Deliveries", ("deliver_new",)),
    ("encode", "udpchat_proto.chat.outbox", "", ("encode",)),
    ("acknowledge", "udpchat_proto.chat.deliveries", "Deliveries", ("acknowledge",)),
    ("end_batch", "udpchat_proto.chat.server", "ChatServer", ("end_batch",)),
]


def _install_steps() -> None:
    import importlib

    for (_name, module_name, owner_name, attributes), (_c, wrap) in zip(
        STEPS, _trampolines(), strict=False
    ):
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        for attribute in attributes:
            setattr(owner, attribute, wrap(getattr(owner, attribute)))


def replay(path: Path, *, steps: bool) -> None:
    with path.open("rb") as file:
        start, end, inputs, delivered, store_kind = pickle.load(file)  # (this script's)
    if steps:
        _install_steps()
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(store_kind, tmp)
        world = e2ee.World(store, 2)
        server = world.server
        for index, (kind, data, address, now) in enumerate(inputs):
            if index == start:
                os.getppid()  # callgrind --dump-before=getppid: the messages start
            if index == end:
                os.getppid()  # and end
            world.now = now
            if kind == "r":
                server.receive_datagram(data, address, now)
            else:
                server.end_batch(now, run_hashes=True)
        if end == len(inputs):
            os.getppid()  # (the recording ended with the message phase)
        stats = server.stats
        store.close()
    print(
        f"replayed {len(inputs)} inputs: {stats.deliveries_pushed} pushed, "
        f"{stats.messages_accepted} accepted, {stats.requests} requests; "
        f"{delivered} deliveries recorded"
    )


def report(path: Path, deliveries: int) -> None:
    """The total and each step's inclusive instructions of a callgrind part, per delivery."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.MULTILINE)
    assert total is not None, text[:2000]
    print(f"total: {int(total.group(1).replace(',', '')) / deliveries:12,.0f} a delivery")
    for (name, *_), (function, _wrap) in zip(STEPS, _trampolines(), strict=False):
        found = re.search(rf"^\s*([\d,]+) \([ \d.]+%\)\s+\S*:{function}\b", text, re.MULTILINE)
        count = 0 if found is None else int(found.group(1).replace(",", ""))
        print(f"{name:<16} {count / deliveries:12,.0f} a delivery  ({function})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "replay", "report"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--encrypted", action="store_true")
    parser.add_argument("--messages", type=int, default=80, help="a sender's, in bursts of 8")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument(
        "--text-length",
        type=int,
        default=len(e2ee.RELAY_TEXT),
        help="characters a message (padded with x): a plain trace as long on the wire "
        "as an encrypted one's (about 470) tells the bytes' cost from encryption's",
    )
    parser.add_argument("--steps", action="store_true", help="count each step apart")
    parser.add_argument("--deliveries", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "record":
        record(
            args.path,
            encrypted=args.encrypted,
            messages=args.messages,
            store=args.store,
            text_length=args.text_length,
        )
    elif args.mode == "replay":
        replay(args.path, steps=args.steps)
    else:
        report(args.path, args.deliveries or e2ee.RELAY_PAIRS * args.messages)


if __name__ == "__main__":
    main()
