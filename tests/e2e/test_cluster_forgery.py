"""Two real nodes on one PostgreSQL and a private NATS, and a process that can
publish on that NATS but has no key: the issue's attack. Its forged message, its
forged presence, its forged error answer and node departure, and its replays and
edits of the nodes' real messages reach nobody; each is counted; genuine messages
still flow."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from tests.services import postgres_database
from udpchat_proto import ErrorCode, ServerKey
from udpchat_proto import messages as m
from udpchat_proto.bus import HEADER, BusKeys, Sealer, bye_body, news_body
from udpchat_proto.chat import ClusterNews, encode

from .cluster_helpers import Nats, read_events, texts
from .conftest import ServerProcess, User, befriend, server_command

pytestmark = pytest.mark.e2e

FORGED_TEXT = "FORGED: wire 500 EUR to the account below"


def _pushes() -> list[bytes]:
    """What the forger would have bob's connections receive."""
    message = m.ChatMessage(
        id=os.urandom(16),
        sender="alice",
        to="bob",
        text=FORGED_TEXT,
        sent_at=datetime.datetime.now(datetime.UTC),
    )
    error = m.ErrorResponse(
        request_id=1, code=ErrorCode.INTERNAL, message="\x1b[2J\x1b]0;pwned\x07"
    )
    return [
        encode(m.MessageDelivered(message=message)),
        encode(m.PresenceChanged(username="alice", online=True)),
        encode(error),
    ]


def _old_style(node: str) -> list[bytes]:
    """The previous release's bus messages, as the issue forged them: plain JSON."""
    pushes = [["bob", base64.b64encode(p).decode()] for p in _pushes()]
    news = {"users": [], "pushes": pushes, "sessions": [], "forget": []}
    return [
        orjson.dumps({"node": node, "news": {**news, "online": ["alice"], "offline": []}}),
        orjson.dumps({"node": node, "snapshot": ["alice"], "part": 0, "parts": 1}),
        orjson.dumps({"node": node, "bye": True}),
    ]


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x20]) + data[index + 1 :]


async def _attack(url: str, key: ServerKey, carol: User) -> dict[str, int]:
    """Listen on the cluster's subject (a test may compute it: it has the key file),
    capture real messages, then publish what someone without the key could. Returns
    how many of each drop reason every node should count."""
    subject = "udpchat.cluster." + BusKeys.derive(key.private_bytes).subject_token
    public_subject = "udpchat.cluster." + hashlib.sha256(key.public_bytes).hexdigest()[:16]
    client = await nats.connect(url)
    captured: list[bytes] = []

    async def capture(msg: Any) -> None:
        captured.append(msg.data)

    listening = await client.subscribe(subject, cb=capture)
    await client.flush()
    carol.ok("send", "bob", "genuine before")  # node A's news (and heartbeats meanwhile)
    deadline = time.monotonic() + 15
    while len({data[1:17] for data in captured}) < 2:  # something from both nodes
        assert time.monotonic() < deadline, f"captured only {len(captured)}"
        await asyncio.sleep(0.05)
    await listening.unsubscribe()
    genuine = list(captured)
    node_a = genuine[0][1:17].hex()
    wrong_key = BusKeys.derive(os.urandom(32))
    impostor = Sealer(wrong_key, bytes.fromhex(node_a), time.time)
    sealed_lie = news_body(ClusterNews(pushes=tuple(("bob", p) for p in _pushes())))
    forgeries = {
        "malformed": [*_old_style(node_a), os.urandom(64), genuine[0][: HEADER.size]],
        "forged": [
            impostor.seal(sealed_lie),  # the right node id, the wrong key
            impostor.seal(bye_body()),
            genuine[0][: HEADER.size] + sealed_lie + bytes(16),  # no seal at all
            *(_flip(data, len(data) - 1) for data in genuine[:2]),  # a garbled tag
            *(_flip(data, HEADER.size + 1) for data in genuine[:2]),  # an edited body
            *(_flip(data, 20) for data in genuine[:2]),  # an edited counter
        ],
        "replayed": genuine,
    }
    for datas in forgeries.values():
        for data in datas:
            await client.publish(subject, data)
    for data in _old_style(node_a):  # where the previous release listened
        await client.publish(public_subject, data)
    await client.flush()
    await client.close()
    return {reason: len(datas) for reason, datas in forgeries.items()}


def _status(control: Path) -> Any:
    done = server_command("ctl", "--control", str(control), "--json", "status")
    assert done.returncode == 0, done
    return json.loads(done.stdout)


@pytest.mark.slow(seconds=16)
def test_a_process_without_the_key_cannot_speak_for_a_node(tmp_path: Path) -> None:
    bus = Nats().start()
    try:
        with postgres_database() as url:
            key_file = tmp_path / "cluster.key"
            nodes: list[ServerProcess] = []
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                options = ("--bus", bus.url, "--control", str(tmp_path / f"{name}.ctl"))
                nodes.append(
                    ServerProcess(
                        tmp_path / name, database_url=url, key_file=key_file, options=options
                    ).start()
                )
            node_a, node_b = nodes
            try:
                # alice is offline throughout; carol, on node A too, writes to bob.
                alice = User("alice", tmp_path / "home-alice", node_a)
                bob = User("bob", tmp_path / "home-bob", node_b)
                carol = User("carol", tmp_path / "home-carol", node_a)
                for user in (alice, bob, carol):
                    user.signup()
                befriend(alice, bob)
                befriend(carol, bob)
                listener = bob.listen("--for", "30")
                try:
                    deadline = time.monotonic() + 10
                    while "bob" not in User("bob", bob.home, node_b).ok("online")["online"]:
                        assert time.monotonic() < deadline, "bob's listener never connected"
                        time.sleep(0.1)
                    key = ServerKey.from_bytes(key_file.read_bytes())
                    expected = asyncio.run(_attack(bus.url, key, carol))
                    time.sleep(1.0)  # (whatever got through would be pushed by now)
                    carol.ok("send", "bob", "genuine after")
                    events = read_events(listener, lambda ev: "genuine after" in texts(ev), 15)
                finally:
                    listener.kill()
                    _out, errors = listener.communicate(timeout=10)
                assert texts(events) == ["genuine before", "genuine after"]
                assert not any(e.get("user") == "alice" for e in events), events
                assert not any(e["event"] == "error" for e in events), events
                assert "\x1b" not in errors and "FORGED" not in errors
                friends = User("bob", bob.home, node_b).ok("friends")["friends"]
                assert {"user": "alice", "online": False} in friends
                for node, control in ((node_a, "a.ctl"), (node_b, "b.ctl")):
                    deadline = time.monotonic() + 10
                    while (dropped := _status(tmp_path / control)["counters"]["bus_dropped"]) != (
                        expected
                    ):
                        assert time.monotonic() < deadline, (dropped, expected)
                        time.sleep(0.2)
                    assert "message(s) on the bus since the last report" in node.log_text()
                    assert node.alive()
            finally:
                for node in nodes:
                    node.stop()
                    node.kill()
    finally:
        bus.stop()
