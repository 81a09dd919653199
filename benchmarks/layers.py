"""A server CPU profile split by layer, from py-spy's raw (collapsed stack) output.

``relay.py --py-spy FILE`` records the server with ``py-spy record --format raw``
(the ``bench`` extra) and prints this split; or run it on a saved file:
``python benchmarks/layers.py FILE``.

Each sample is put in the first layer (top to bottom of this list) that one of
its frames belongs to, so that, say, the codec's time inside a request handler
counts as codec, and SQLite's inside a handler as the store:

* **SQLite commit (fsync)**: ``SQLiteStore.commit``, mostly the wait for the disk;
* **PostgreSQL store (psycopg)** and **bus (NATS thread)**: a cluster node's
  (``cluster.py --py-spy``);
* **SQLite statements**: the rest of the store (``udpchat_server/stores/``, or
  ``sqlite_store.py`` in a profile taken before it moved there);
* **codec**: ``chat/codec.py``, cattrs, JSON;
* **crypto**: ChaCha20-Poly1305 seal and open (``transport/handshake.py``);
* **transport**: the rest of ``udpchat_proto/transport``;
* **chat logic**: the rest of ``udpchat_proto/chat``;
* **loop and sockets**: ``udpchat_server/loop.py`` itself (``select``, ``recvfrom``,
  ``sendto``);
* **password hashing**: the worker threads;
* **other**.

py-spy samples threads that are running or in a system call, so the fsync wait
shows, while the loop's idle ``select`` does not (py-spy leaves idle threads out).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

__all__ = ["LAYERS", "split"]

#: (layer, what a frame of it contains), in the order a sample is matched.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("SQLite commit (fsync)", ("SQLiteStore.commit ",)),
    # A cluster node's (benchmarks/cluster.py): its store, and the bus's thread.
    ("PostgreSQL store (psycopg)", ("stores/postgres.py", "psycopg/")),
    ("bus (NATS thread)", ("udpchat_server/bus.py", "nats/")),
    ("SQLite statements", ("udpchat_server/stores/", "sqlite_store.py")),
    ("codec (JSON, cattrs)", ("chat/codec.py", "cattrs", "orjson", "structure_", "unstructure_")),
    ("crypto (ChaCha20-Poly1305)", ("CipherState.",)),
    ("transport", ("udpchat_proto/transport/",)),
    ("chat logic", ("udpchat_proto/chat/", "udpchat_proto/ratelimit", "udpchat_proto/state")),
    ("loop and sockets", ("udpchat_server/loop.py",)),
    ("password hashing (worker threads)", ("concurrent/futures/thread.py",)),
]

_FUNCTION = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _layer(frames: list[str]) -> str:
    for layer, marks in LAYERS:
        if any(mark in frame for frame in frames for mark in marks):
            return layer
    return "other"


def split(path: Path, top: int = 12) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Shares of the samples by layer, and the ``top`` functions by own samples."""
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += samples
        layers[_layer(frames)] += samples
        match = _FUNCTION.match(frames[-1])
        leaf = f"{match['name']} ({match['file']})" if match else frames[-1]
        own[leaf] += samples
    if not total:
        return {}, []
    shares = {layer: count / total for layer, count in layers.most_common()}
    return shares, [(name, count / total) for name, count in own.most_common(top)]


def print_split(path: Path) -> None:
    shares, functions = split(path)
    print(f"\nserver CPU by layer (py-spy samples, {path}):")
    for layer, share in shares.items():
        print(f"  {layer:40} {share:6.1%}")
    print("  functions with the most own samples:")
    for name, share in functions:
        print(f"    {share:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    print_split(parser.parse_args().raw)


if __name__ == "__main__":
    main()
