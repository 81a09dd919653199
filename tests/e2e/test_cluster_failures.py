"""A cluster of real nodes when its parts fail: a node killed with SIGKILL while
messages flow, the bus restarted, PostgreSQL restarted. Each test runs its own
NATS (and, for the restart, its own PostgreSQL), so that stopping them disturbs
nothing else."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.services import postgres_database, require_nats

from .cluster_helpers import Nats, Postgres, free_port, nodes, read_events, texts
from .conftest import CLI_DEADLINE, User, befriend, run_cli, wait_until_online

pytestmark = pytest.mark.e2e


def test_presence_and_pushes_cross_the_nodes(tmp_path: Path) -> None:
    bus = Nats().start()
    try:
        with postgres_database() as url, nodes(tmp_path, url, bus.url) as (node_a, node_b):
            alice = User("alice", tmp_path / "home-alice", node_a)
            bob = User("bob", tmp_path / "home-bob", node_b)
            carol = User("carol", tmp_path / "home-carol", node_a)
            for user in (alice, bob, carol):
                user.signup()
            befriend(carol, bob)
            # His listener must outlive the steps below, so it lives for the sum of
            # their bounds (five CLI runs of at most CLI_DEADLINE, three waits of
            # 10 s): a shorter life is a hidden, tighter bound on them. It had 30 s,
            # and on a loaded machine these steps took 37 s: he went offline by
            # himself before alice's "friends" looked. (SIGINT ends it sooner.)
            listener = bob.listen("--for", f"{5 * CLI_DEADLINE + 3 * 10:g}")
            try:
                wait_until_online(carol, "bob")  # node A knows he is on node B
                alice.ok("invite", "bob")  # on node A, to bob listening on node B
                read_events(listener, lambda ev: {"event": "invitation", "from": "alice"} in ev, 10)
                bob.ok("accept", "alice")
                wait_until_online(alice, "bob")  # bob is on node B only
                assert alice.ok("friends")["friends"] == [{"user": "bob", "online": True}]
            finally:
                listener.send_signal(signal.SIGINT)  # it says goodbye to node B
                listener.communicate(timeout=10)
            # His listener gone, he is offline on node A too.
            deadline = time.monotonic() + 10
            while "bob" in alice.ok("online")["online"]:
                assert time.monotonic() < deadline, "bob stayed online"
                time.sleep(0.1)
    finally:
        bus.stop()


@pytest.mark.slow(seconds=34)
def test_a_node_killed_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    bus = Nats().start()
    try:
        with postgres_database() as url, nodes(tmp_path, url, bus.url) as (node_a, node_b):
            both = f"{node_a.address},{node_b.address}"
            alice = User("alice", tmp_path / "home-alice", node_a)
            bob = User("bob", tmp_path / "home-bob", node_b)
            carol = User("carol", tmp_path / "home-carol", node_a)
            for user in (alice, bob, carol):
                user.signup()
            befriend(alice, bob)
            befriend(carol, alice)
            # carol is connected to node A only: she goes offline with it.
            carol_listens = carol.listen("--for", "60")
            wait_until_online(alice, "carol")
            acknowledged: list[str] = []
            attempted: list[str] = []
            stop = threading.Event()

            def send_forever() -> None:
                n = 0
                while not stop.is_set() and n < 200:
                    text = f"m{n:03d}"
                    attempted.append(text)
                    sent = run_cli(
                        "send", "bob", text, "--json", home=alice.home, server=both, timeout=2
                    )
                    if sent.code == 0:
                        acknowledged.append(text)
                    n += 1

            sender = threading.Thread(target=send_forever)
            sender.start()
            try:
                deadline = time.monotonic() + 30
                while len(acknowledged) < 5:
                    assert time.monotonic() < deadline, "the sends did not start"
                    time.sleep(0.05)
                node_a.kill()  # SIGKILL, mid-stream
                killed_at = time.monotonic()
                deadline = time.monotonic() + 60
                count = len(acknowledged)
                while len(acknowledged) < count + 5:  # node B took over
                    assert time.monotonic() < deadline, "nothing acknowledged after the kill"
                    time.sleep(0.05)
            finally:
                stop.set()
                sender.join(60)
                carol_listens.kill()
                carol_listens.communicate(timeout=10)
            # carol was only on the dead node: offline for the others within 30 s.
            observer = User("alice", alice.home, node_b)
            while "carol" in observer.ok("online")["online"]:
                assert time.monotonic() - killed_at < 30, "carol stayed online"
                time.sleep(0.5)
            # Every acknowledged message reaches bob once, in order; an unacknowledged
            # one may have been stored too (then once, in its place).
            listener = bob.listen("--for", "20")
            try:
                events = read_events(
                    listener, lambda ev: acknowledged[-1] in texts(ev), deadline=20
                )
            finally:
                listener.kill()
                listener.communicate(timeout=10)
            got = texts(events)
            assert got == sorted(got) and len(got) == len(set(got))
            assert set(acknowledged) <= set(got) <= set(attempted)
            # Encrypted end to end across the nodes, each decrypted by bob's device.
            messages = [e for e in events if e["event"] == "message"]
            assert all(e["encrypted"] is True for e in messages), messages[:3]
    finally:
        bus.stop()


@pytest.mark.slow(seconds=16)
def test_the_bus_restarted_loses_nothing_and_pushes_resume(tmp_path: Path) -> None:
    bus = Nats().start()
    try:
        with postgres_database() as url, nodes(tmp_path, url, bus.url) as (node_a, node_b):
            alice = User("alice", tmp_path / "home-alice", node_a)
            bob = User("bob", tmp_path / "home-bob", node_b)
            alice.signup()
            bob.signup()
            befriend(alice, bob)
            listener = bob.listen("--for", "60")
            try:
                wait_until_online(alice, "bob")
                alice.ok("send", "bob", "before")
                read_events(listener, lambda ev: "before" in texts(ev), 10)
                bus.stop()
                alice.ok("send", "bob", "while the bus is down")  # found in the database
                read_events(listener, lambda ev: "while the bus is down" in texts(ev), 15)
                bus.start()
                deadline = time.monotonic() + 20
                while not all(
                    "the bus is up" in node.log_text().split("lost the bus")[-1]
                    for node in (node_a, node_b)
                ):
                    assert time.monotonic() < deadline, "the nodes never got the bus back"
                    time.sleep(0.2)
                time.sleep(0.5)  # (their subscriptions are in place)
                sent_at = time.monotonic()
                alice.ok("send", "bob", "after")
                events = read_events(listener, lambda ev: "after" in texts(ev), 10)
                # Pushed: with the bus up, a node looks in the database only every 30 s.
                assert time.monotonic() - sent_at < 8
            finally:
                listener.kill()
                listener.communicate(timeout=10)
            assert texts(events) == ["after"]
    finally:
        bus.stop()


@pytest.mark.slow(seconds=22)
def test_postgresql_restarted_refuses_typed_then_recovers(tmp_path: Path) -> None:
    require_nats()
    database = Postgres().start()
    try:
        with nodes(tmp_path, database.url, f"nats://127.0.0.1:{free_port()}") as (node_a, _b):
            alice = User("alice", tmp_path / "home-alice", node_a)
            bob = User("bob", tmp_path / "home-bob", node_a)
            alice.signup()
            bob.signup()
            befriend(alice, bob)
            alice.ok("send", "bob", "before")
            database.stop()
            alice.refused("unavailable", "send", "bob", "while the database is down")
            database.start()
            deadline = time.monotonic() + 30
            while (sent := alice.run("send", "bob", "after")).code != 0:
                assert sent.json["error"] == "unavailable", sent
                assert time.monotonic() < deadline, "the node never recovered"
                time.sleep(0.5)
            history = bob.ok("history", "alice")["messages"]
            assert [m["text"] for m in history] == ["before", "after"]
            assert node_a.alive()
    finally:
        database.remove()
