"""Races of a cluster's node that a review found: a step done again after a
deadlock must find memory as it left it (log-outs, room joins pending, rate
budgets), and news from other nodes must neither ride on nor be lost with this
node's batch. Sans-IO: no sockets, no sleeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, test_config
from tests.test_cluster_hints import NODE_A, NODE_B, Cluster, signed_up
from udpchat_proto import Disconnected
from udpchat_proto import messages as m
from udpchat_proto.chat import ClusterNews
from udpchat_proto.chat.store import StoreUnavailableError
from udpchat_proto.errors import ErrorCode
from udpchat_proto.ratelimit import RateLimit

DEADLOCK = StoreUnavailableError("database conflict", "deadlock detected", conflict=True)


@pytest.fixture
def node(tmp_path: Path) -> ChatWorld:
    """One cluster node (every step has a savepoint) on SQLite, whose savepoints
    really undo a step's writes, as PostgreSQL's do."""
    stores = StoreFactory("sqlite", tmp_path / "chat.sqlite3")
    return ChatWorld(stores, config=test_config(cluster=True))


def two_devices(world: ChatWorld) -> tuple[ChatUser, ChatUser]:
    (phone,) = world.signed_up("alice")
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    laptop.login()  # the newest session: sessions_of lists it first
    return phone, laptop


# --- 51041f1: a step done again after a deadlock --------------------------------------------


def test_logout_all_that_deadlocks_half_way_is_done_again_correctly(node: ChatWorld) -> None:
    phone, laptop = two_devices(node)
    store = node.store
    original = store.delete_session
    calls: list[bytes] = []

    def racing(token_hash: bytes) -> None:
        calls.append(token_hash)
        if len(calls) == 2:  # the second session's row: another node holds its lock
            raise DEADLOCK
        original(token_hash)

    store.delete_session = racing  # type: ignore[attr-defined]
    answer = laptop.wait(laptop.conn.logout_all())
    node.settle()
    assert node.server.stats.steps_retried == 1
    # Done again, the step must do what it would have done the first time.
    assert answer == m.LoggedOutAll(request_id=answer.request_id, ended=2)
    assert not phone.conn.is_connected


def test_delete_account_that_deadlocks_half_way_still_closes_the_other_device(
    node: ChatWorld,
) -> None:
    phone, laptop = two_devices(node)
    store = node.store
    original = store.delete_session
    calls: list[bytes] = []

    def racing(token_hash: bytes) -> None:
        calls.append(token_hash)
        if len(calls) == 2:  # the phone's own row, after the laptop's
            raise DEADLOCK
        original(token_hash)

    store.delete_session = racing  # type: ignore[attr-defined]
    phone.ok(phone.conn.delete_account(phone.password))
    node.settle()
    assert node.server.stats.steps_retried == 1
    # The first attempt logged the laptop out in memory; the second found it gone
    # from _by_session and never closed it: it lingers, anonymous, never told.
    closed = [e.reason for e in laptop.events() if isinstance(e, Disconnected)]
    assert closed == ["the account was deleted"]


def test_a_room_leave_is_not_pushed_when_the_account_deletion_fails(node: ChatWorld) -> None:
    alice, bob = node.signed_up("alice", "bob")
    alice.ok(alice.conn.join_room("#r"))
    bob.ok(bob.conn.join_room("#r"))
    node.settle()
    store = node.store
    original = store.delete_account
    races = [DEADLOCK, DEADLOCK, DEADLOCK]  # it keeps losing: answered unavailable

    def racing(username: str, now: float) -> Any:
        if races:
            raise races.pop()
        return original(username, now)

    store.delete_account = racing  # type: ignore[attr-defined]
    alice.refused(alice.conn.delete_account(alice.password), ErrorCode.UNAVAILABLE)
    node.settle()
    members = bob.ok(bob.conn.list_members("#r"), m.RoomMembers)
    assert [p.username for p in members.members] == ["alice", "bob"]  # she is still in
    # ... yet bob must not be told she left (the failed step's _membership_pending
    # outlives it, and the batch's end pushes it).
    assert m.RoomMembershipChanged(room="#r", username="alice", joined=False) not in bob.pushes(
        m.RoomMembershipChanged
    )


def test_a_send_stored_again_after_a_deadlock_costs_one_message_of_the_budget(
    tmp_path: Path,
) -> None:
    # A node stages its sends and stores them with the batch (add_messages): a
    # deadlock there stores the batch's messages again, and spends nothing twice.
    config = test_config(cluster=True, message_rate=RateLimit(burst=2, interval=3600.0))
    world = ChatWorld(StoreFactory("sqlite", tmp_path / "chat.sqlite3"), config=config)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    store = world.store
    original = store.add_messages
    races = [DEADLOCK]

    def racing(messages: Any) -> Any:
        if races:
            raise races.pop()
        return original(messages)

    store.add_messages = racing  # type: ignore[method-assign]
    alice.send("bob", "one (lost a race, stored again)")
    assert world.server.stats.stores_retried == 1
    # Two messages sent, a burst of two allowed: the retry spent no token again.
    alice.send("bob", "two")
    alice.refused(alice.conn.send_message("bob", "three"), ErrorCode.RATE_LIMITED)


def test_a_join_done_again_after_a_deadlock_costs_one_change_of_the_budget(
    tmp_path: Path,
) -> None:
    config = test_config(
        cluster=True, membership_changes_per_user=RateLimit(burst=2, interval=3600.0)
    )
    world = ChatWorld(StoreFactory("sqlite", tmp_path / "chat.sqlite3"), config=config)
    (alice,) = world.signed_up("alice")
    store = world.store
    original = store.join_room
    races = [DEADLOCK]

    def racing(room: str, username: str, now: float) -> Any:
        if races:
            raise races.pop()
        return original(room, username, now)

    store.join_room = racing  # type: ignore[attr-defined]
    alice.ok(alice.conn.join_room("#one"))
    assert world.server.stats.steps_retried == 1
    alice.ok(alice.conn.join_room("#two"))  # the second change of a burst of two


# --- 1e96f87: news from other nodes -----------------------------------------------------------


def feed_without_commit(cluster: Cluster, port: int) -> None:
    """Hand a client's datagrams to its node, which runs them in its open batch."""
    address = ("127.0.0.2", port)
    conn, target = cluster.clients[address]
    for data, _to in conn.datagrams_to_send(cluster.now):
        cluster.nodes[target].receive_datagram(data, address, cluster.now)


def test_presence_news_survives_a_local_batch_that_is_lost() -> None:
    cluster = Cluster()
    alice, bob = signed_up(cluster)  # alice on A, bob on B: friends
    alice.close(cluster.now)
    cluster.run()
    assert cluster.received(5002, m.PresenceChanged) == [
        m.PresenceChanged(username="alice", online=False)
    ]
    node_b = cluster.nodes[NODE_B]
    bob.join_room("#busy")  # node B's batch has a write in it ...
    feed_without_commit(cluster, 5002)
    assert node_b.writes_pending
    # ... when node A's news says alice is back (as the loop's _hear does, before
    # the batch's commit) ...
    node_b.receive_news(str(NODE_A), ClusterNews(online=("alice",)), cluster.now)
    original = cluster.store.commit

    def full_disk() -> None:
        raise StoreUnavailableError("disk full")

    cluster.store.commit = full_disk  # type: ignore[method-assign]
    assert node_b.commit() is not None  # ... and that batch is lost
    cluster.store.commit = original  # type: ignore[method-assign]
    cluster.run()
    assert node_b.online_users == ["alice", "bob"]  # B counts her online ...
    # ... but bob was never told: the push was held with B's own lost batch.
    assert cluster.received(5002, m.PresenceChanged)[-1] == m.PresenceChanged(
        username="alice", online=True
    )


# --- d1b4640: the check of sessions -------------------------------------------------------------


def test_the_session_check_does_not_close_before_the_batch_that_ended_it_is_durable(
    node: ChatWorld,
) -> None:
    phone, laptop = two_devices(node)
    sessions = phone.ok(phone.conn.list_sessions(), m.Sessions).sessions
    (laptop_id,) = [s.session_id for s in sessions if not s.current]
    node.host.hold_commits = True  # the loop's turn: datagrams fed, not committed yet
    request_id = phone.conn.revoke_session(laptop_id)
    node.settle(0.5)
    assert node.server.writes_pending
    # The loop's _hear runs here, before the commit: the check reads the batch's
    # own uncommitted delete and closes the laptop at once.
    node.server.check_sessions(node.net.now)
    node.store.fail_commits = StoreUnavailableError("disk full")  # the batch is lost
    node.host.hold_commits = False
    node.settle(0.5)
    node.store.fail_commits = None
    phone.refused(request_id, ErrorCode.UNAVAILABLE)
    node.settle()
    assert len(phone.ok(phone.conn.list_sessions(), m.Sessions).sessions) == 2  # it survived
    # "a lost batch disconnects nobody": yet the laptop was closed for it.
    assert [e.reason for e in laptop.events() if isinstance(e, Disconnected)] == []
