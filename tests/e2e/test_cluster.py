"""Two real nodes on one PostgreSQL database and the real NATS: a message sent on
one node is pushed at once to a listener on the other, once, in order."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.services import postgres_database, require_nats

from .cluster_helpers import Nats, nodes, read_events, texts
from .conftest import ServerProcess, User, befriend, wait_until_online

pytestmark = pytest.mark.e2e


def test_a_message_sent_on_one_node_is_pushed_at_once_on_the_other(tmp_path: Path) -> None:
    bus = require_nats()
    with postgres_database() as url:
        key = tmp_path / "cluster.key"
        nodes = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            nodes.append(
                ServerProcess(
                    tmp_path / name, database_url=url, key_file=key, options=("--bus", bus)
                ).start()
            )
        node_a, node_b = nodes
        try:
            alice = User("alice", tmp_path / "home-alice", node_a)
            bob = User("bob", tmp_path / "home-bob", node_b)
            alice.signup()
            bob.signup()
            befriend(alice, bob)
            listener = bob.listen("--for", "15")
            try:
                # bob's listen is on node B once he shows online there.
                deadline = time.monotonic() + 10
                while "bob" not in User("bob", bob.home, node_b).ok("online")["online"]:
                    assert time.monotonic() < deadline, "bob's listener never connected"
                    time.sleep(0.1)
                sent_at = time.monotonic()
                for n in range(3):
                    alice.ok("send", "bob", f"across {n}")
                assert listener.stdout is not None
                got: list[str] = []
                while len(got) < 3:
                    line = listener.stdout.readline()
                    assert line, f"the listener ended with {got}"
                    event = json.loads(line)
                    if event["event"] == "message":
                        got.append(event["text"])
                arrived = time.monotonic() - sent_at
            finally:
                listener.kill()
                listener.communicate(timeout=10)
            assert got == ["across 0", "across 1", "across 2"]
            assert arrived < 10  # pushed, not found at the next reconnect
        finally:
            for node in nodes:
                node.stop()
                node.kill()
        assert "joined the bus" in node_a.log_text()


def test_a_room_spans_the_nodes(tmp_path: Path) -> None:
    bus = Nats().start()
    try:
        with postgres_database() as url, nodes(tmp_path, url, bus.url, count=3) as started:
            people = [
                User(name, tmp_path / f"home-{name}", node)
                for name, node in zip(("ann", "ben", "cat"), started, strict=True)
            ]
            for person in people:
                person.signup()
            ann, ben, cat = people
            ann.ok("join", "#trio")
            ben.ok("join", "#trio")  # on node 1
            listener = ann.listen("--for", "30")  # on node 0
            try:
                wait_until_online(ben, "ann")  # node 1 knows she listens on node 0
                cat.ok("join", "#trio")  # on node 2
                joined = {"event": "joined", "room": "#trio", "user": "cat"}
                read_events(listener, lambda ev: joined in ev, 10)
                ben.ok("send", "#trio", "from node 1")
                cat.ok("send", "#trio", "from node 2")
                events = read_events(listener, lambda ev: "from node 2" in texts(ev), 10)
            finally:
                listener.kill()
                listener.communicate(timeout=10)
            assert texts(events) == ["from node 1", "from node 2"]
            members = cat.ok("members", "#trio")["members"]
            assert [m["user"] for m in members] == ["ann", "ben", "cat"]
            history = ann.ok("history", "#trio")["messages"]
            assert [m["text"] for m in history] == ["from node 1", "from node 2"]
    finally:
        bus.stop()
