"""Write docs/vectors/bus.json: the cluster bus's keys, messages and drops.

From a fixed shared key (the server key of ``session.json``), fixed node ids and a
fixed wall clock: the derived subject and keys; what two nodes send (news with
every list, a heartbeat in two parts, an empty heartbeat, a resync, a goodbye),
each with its counter, time, body and sealed bytes; and what one receiver, started
at a fixed time, makes of a sequence of arrivals: the genuine messages taken, and
a replay, edits, another cluster's message, a message from before its start, a
stale one, its own, an authentic but invalid body and a counter too far behind,
each dropped with its reason. The format is in ``docs/vectors/README.md``;
``tests/test_bus_vectors.py`` makes the file again and compares, and checks it
with ``cryptography`` alone, as a node written from ``docs/PROTOCOL.md`` would.

Run after a change to the bus's wire::

    .venv/bin/python tools/bus_vectors.py
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any, Final

from udpchat_proto import messages as m
from udpchat_proto.bus import (
    HEADER,
    REPLAY_WINDOW,
    BusDropError,
    BusKeys,
    Opener,
    Sealer,
    bye_body,
    news_body,
    parse,
    resync_body,
    snapshot_bodies,
)
from udpchat_proto.chat import ClusterNews, encode

ROOT: Final = Path(__file__).resolve().parent.parent
OUTPUT: Final = ROOT / "docs" / "vectors" / "bus.json"

SECRET: Final = bytes(range(32))
"""The shared key: the server's static private key of ``session.json``."""
ANOTHER_SECRET: Final = bytes(range(32, 64))
"""Another cluster's key (its messages are forgeries here)."""
NODES: Final = {
    "a": bytes(range(0x10, 0x20)),
    "b": bytes(range(0x20, 0x30)),
    "receiver": bytes(range(0x30, 0x40)),
    "c": bytes(range(0x40, 0x50)),
    "d": bytes(range(0x50, 0x60)),
}
"""Node ids: ``a`` and ``b`` send the messages; ``receiver`` takes them; ``c`` and
``d`` send what the receiver drops (and ``d`` a counter too far behind)."""
T: Final = 1_767_225_600.0
"""2026-01-01T00:00:00Z, POSIX seconds: every time below is T plus a multiple of
1/8 s, exact in binary floating point, so ms are exact too."""
STARTED: Final = T - 0.5
"""When the receiver started (what was sent before is ``before_start``)."""


class Clock:
    """A wall clock that reads what it is set to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _news() -> ClusterNews:
    return ClusterNews(
        users=("bob",),
        pushes=(("bob", encode(m.InvitationReceived(from_user="alice"))),),
        sessions=(
            (bytes(range(0x60, 0x80)), "this login session was ended from another device"),
            (bytes(range(0x80, 0xA0)), None),
        ),
        forget=("carol",),
        online=("alice",),
        offline=("dave",),
    )


def _forged_push() -> bytes:
    """An authentic body no node sends: a message pushed from another node's word."""
    message = m.ChatMessage(
        id=bytes(16),
        sender="alice",
        to="bob",
        text="FORGED",
        sent_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )
    return news_body(ClusterNews(pushes=(("bob", encode(m.MessageDelivered(message=message))),)))


def _sent(sealer: Sealer, clock: Clock, at: float, body: bytes) -> bytes:
    clock.now = at
    return sealer.seal(body)


def generate() -> dict[str, Any]:
    """The document (see ``docs/vectors/README.md``)."""
    keys = BusKeys.derive(SECRET)
    clocks = {name: Clock(T) for name in NODES}
    sealers = {name: Sealer(keys, node, clocks[name]) for name, node in NODES.items()}

    # What the nodes send, in order.
    heartbeat = [f"u{n}" for n in range(2003)]
    sends: list[tuple[str, float, str, bytes]] = [
        ("a", T, "news: every list", news_body(_news())),
        *(
            ("a", T + 0.25, f"heartbeat of 2,003 names, part {i} of 2", body)
            for i, body in enumerate(snapshot_bodies(heartbeat))
        ),
        ("b", T + 0.5, "resync", resync_body()),
        ("b", T + 0.75, "heartbeat naming nobody: one part", snapshot_bodies([])[0]),
        ("b", T + 1.0, "bye", bye_body()),
    ]
    messages = []
    sealed: list[bytes] = []
    for name, at, description, body in sends:
        data = _sent(sealers[name], clocks[name], at, body)
        sealed.append(data)
        _version, _node, counter, sent = HEADER.unpack_from(data)
        messages.append(
            {
                "description": description,
                "node": name,
                "counter": counter,
                "sent_ms": sent,
                "body": body.decode(),
                "message": data.hex(),
            }
        )

    # What one receiver makes of a sequence of arrivals.
    news = sealed[0]
    counter_edit = bytearray(news)
    counter_edit[24] ^= 0x01  # (the counter's last byte: the associated data)
    tag_edit = bytearray(news)
    tag_edit[-1] ^= 0x01
    other = Sealer(BusKeys.derive(ANOTHER_SECRET), NODES["c"], Clock(T + 1.25))
    later = T + 31.625
    window = [_sent(sealers["d"], clocks["d"], later, bye_body()) for _ in range(REPLAY_WINDOW + 1)]
    arrivals: list[tuple[float, str, bytes, str]] = [
        *(
            (sends[i][1] + 0.125, "125 ms after it was sent", data, "accepted")
            for i, data in enumerate(sealed)
        ),
        (T + 1.25, "again", news, "replayed"),
        (T + 1.25, "message 0, its counter edited", bytes(counter_edit), "forged"),
        (T + 1.25, "message 0, its tag edited", bytes(tag_edit), "forged"),
        (T + 1.25, "message 0, version 2", b"\x02" + news[1:], "malformed"),
        (T + 1.25, "a header and 15 bytes: no room for a tag", news[:48], "malformed"),
        (T + 1.25, "sealed under another cluster's key", other.seal(bye_body()), "forged"),
        (
            T + 1.25,
            "c's message sent 125 ms before the receiver started",
            _sent(sealers["c"], clocks["c"], STARTED - 0.125, bye_body()),
            "before_start",
        ),
        (
            later,
            "c's message sent 30.125 s before it arrives",
            _sent(sealers["c"], clocks["c"], T + 1.5, bye_body()),
            "stale",
        ),
        (
            later,
            "a message bearing the receiver's own id",
            _sent(sealers["receiver"], clocks["receiver"], later, bye_body()),
            "replayed",
        ),
        (
            later,
            "authentic news pushing a message_delivered",
            _sent(sealers["c"], clocks["c"], later, _forged_push()),
            "invalid",
        ),
        (later, f"d's counter {REPLAY_WINDOW}", window[-1], "accepted"),
        (later, f"d's counter 0: {REPLAY_WINDOW} behind the highest", window[0], "replayed"),
        (later, f"d's counter 1: {REPLAY_WINDOW - 1} behind the highest", window[1], "accepted"),
    ]
    clock = Clock(STARTED)
    opener = Opener(keys, NODES["receiver"], clock)
    received: list[dict[str, Any]] = []
    for at, description, data, expected in arrivals:
        clock.now = at
        verdict = _verdict(opener, data)
        assert verdict == expected, f"{description}: {verdict}, not {expected}"
        # (One of the messages above is named by its index, not repeated.)
        what = {"sent": sealed.index(data)} if data in sealed else {"message": data.hex()}
        received.append(
            {"description": description, "at_ms": round(at * 1000), **what, "verdict": verdict}
        )

    return {
        "description": (
            "udpchat cluster bus version 1: keys derived from a shared key, sealed "
            "messages, and one receiver's verdicts (docs/vectors/README.md)"
        ),
        "secret": SECRET.hex(),
        "subject_token": keys.subject_token,
        "subject": keys.subject,
        "message_key": keys.message_key.hex(),
        "nodes": {
            name: {"id": node.hex(), "key": keys.node_key(node).hex()}
            for name, node in NODES.items()
        },
        "another_cluster_secret": ANOTHER_SECRET.hex(),
        "messages": messages,
        "receiver": {"node": "receiver", "started_ms": round(STARTED * 1000)},
        "received": received,
    }


def _verdict(opener: Opener, data: bytes) -> str:
    try:
        node, body = opener.open(data)
        parse(node.hex(), body)
    except BusDropError as drop:
        return drop.reason
    return "accepted"


def render(document: dict[str, Any]) -> str:
    """The file's text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write the file."""
    document = generate()
    OUTPUT.write_text(render(document), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(document['messages'])} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
