"""Fuzz the cluster bus's parser: ``udpchat_proto.bus``'s :class:`Opener`,
:func:`parse` and :class:`Heartbeats`, as a node runs them on what comes off NATS.

The cluster's key, the nodes' ids and the clock are fixed. The first input byte
chooses what the rest is, modulo 2:

* 0: a message as it comes off NATS (from anyone: mostly forgeries);
* 1: a body, sealed first by a genuine node of the cluster, so that the parser
  behind the seal is reached (what a node holding the key could say).

Invariants: ``Opener.open`` returns or raises ``BusDropError`` with one of
``DROP_REASONS``, nothing else; a message that opened once is ``replayed`` the
second time; a genuine node's sealed body opens unless it is too large; ``parse``
returns a message within its bounds (names that are usernames, pushes that
decode, a heartbeat part of at most ``SNAPSHOT_PART`` names of at most
``HEARTBEAT_PARTS_MAX`` parts) or raises ``BusDropError("invalid")``; a heartbeat
put together from such parts holds at most ``HEARTBEAT_PARTS_MAX * SNAPSHOT_PART``
names.

Seed corpus: ``fuzz/corpus/bus`` (every kind of message a node sends, in both
modes; ``python fuzz/make_bus_corpus.py`` writes it).
Run: ``python fuzz/fuzz_bus.py fuzz/corpus/bus`` (libFuzzer flags follow).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(
    include=["udpchat_proto.bus", "udpchat_proto.chat.codec", "udpchat_proto.chat.validation"]
):
    import attrs

    from udpchat_proto.bus import (
        DROP_REASONS,
        HEARTBEAT_PARTS_MAX,
        MAX_RECEIVED,
        SNAPSHOT_PART,
        BusDropError,
        BusKeys,
        Heartbeats,
        News,
        Opener,
        Sealer,
        Snapshot,
        SnapshotPart,
        parse,
    )
    from udpchat_proto.chat import check_username, decode

RAW, SEALED = 0, 1
KEYS = BusKeys.derive(bytes(range(32)))
"""The cluster's keys (from a fixed private key)."""
SENDER = bytes(16)
"""The genuine node whose messages the seeds are."""
RECEIVER = b"\x01" * 16
NOW = 1_800_000_000.0
"""The wall clock of every node here (the seeds are sealed at it)."""


def clock() -> float:
    return NOW


def fuzz_one_input(data: bytes) -> None:
    """Open, parse and assemble one input from a fresh receiver (see above)."""
    if not data:
        return
    mode, rest = data[0] % 2, data[1:]
    message = rest if mode == RAW else Sealer(KEYS, SENDER, clock).seal(rest)
    opener = Opener(KEYS, RECEIVER, clock)
    try:
        node, body = opener.open(message)
    except BusDropError as drop:
        assert drop.reason in DROP_REASONS, drop.reason
        assert mode == RAW or drop.reason == "too_large", f"a genuine message dropped: {drop}"
        return
    assert len(message) <= MAX_RECEIVED
    try:
        opener.open(message)
    except BusDropError as again:
        assert again.reason == "replayed", again.reason
    else:
        raise AssertionError("a message opened twice")
    try:
        said = parse(node.hex(), body)
    except BusDropError as refused:
        assert refused.reason == "invalid", refused.reason
        return
    if isinstance(said, News):
        news = said.news
        for name in (*news.users, *news.forget, *news.online, *news.offline):
            check_username(name)
        for username, payload in news.pushes:
            check_username(username)
            decode(payload)
        assert all(len(token_hash) == 32 for token_hash, _reason in news.sessions)
    elif isinstance(said, SnapshotPart):
        assert len(said.users) <= SNAPSHOT_PART
        assert 0 <= said.part < said.parts <= HEARTBEAT_PARTS_MAX
        heartbeats = Heartbeats()
        whole = None
        for index in range(said.parts):  # every part of it, the same names in each
            whole = heartbeats.add(attrs.evolve(said, part=index))
        assert isinstance(whole, Snapshot)
        assert len(whole.users) == said.parts * len(said.users)
        assert len(whole.users) <= HEARTBEAT_PARTS_MAX * SNAPSHOT_PART
        assert heartbeats.pending == 0


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
