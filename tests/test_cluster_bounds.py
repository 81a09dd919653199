"""What another node's news and heartbeats may cost a node: no store read per name
(a heartbeat naming 60,000 made-up users froze a node's answers for seconds, one
query per name), and bounded memory per node and for all of them."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from tests.test_cluster_hints import NODE_A, NODE_B, Cluster, signed_up
from udpchat_proto import MemoryStore
from udpchat_proto import messages as m
from udpchat_proto.chat import MAX_NODE_USERS, MAX_NODES, STORE_READS, STORE_WRITES, ClusterNews

MADE_UP = [f"nobody{n:05d}" for n in range(60_000)]


def count_store_calls(store: MemoryStore) -> collections.Counter[str]:
    """Count every call the nodes make on ``store`` from now on, by method."""
    calls: collections.Counter[str] = collections.Counter()

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(*args, **kwargs)

        return call

    for name in STORE_READS | STORE_WRITES:
        setattr(store, name, counted(name, getattr(store, name)))
    return calls


def with_carol(cluster: Cluster) -> None:
    """carol is alice's friend too, and connected nowhere."""
    cluster.store.add_friendship("alice", "carol", 0.0)
    cluster.store.commit()


def test_a_heartbeat_of_60000_made_up_names_costs_at_most_one_read() -> None:
    cluster = Cluster()
    signed_up(cluster)  # alice on node A, bob on node B: friends
    with_carol(cluster)
    node_a = cluster.nodes[NODE_A]
    calls = count_store_calls(cluster.store)
    node_a.receive_snapshot("node-x", [*MADE_UP, "carol"], cluster.now)
    node_a.commit()
    # One read at most, for the friends of the users connected here; none per name.
    assert sum(calls.values()) <= 1, calls
    assert calls["friends_of"] == 0
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged) == [
        m.PresenceChanged(username="carol", online=True)
    ]
    # Their friends are known now: the next heartbeat (all gone but carol) reads nothing.
    calls.clear()
    node_a.receive_snapshot("node-x", ["carol"], cluster.now)
    node_a.receive_news("node-x", ClusterNews(offline=("carol",)), cluster.now)
    node_a.commit()
    assert sum(calls.values()) == 0, calls
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged)[-1] == m.PresenceChanged(
        username="carol", online=False
    )
    assert len(cluster.received(5001, m.PresenceChanged)) == 2
    assert node_a.online_count == 2  # alice here, bob on node B


def test_a_forgotten_friend_set_is_read_again_in_one_read() -> None:
    cluster = Cluster()
    signed_up(cluster)
    with_carol(cluster)
    node_a = cluster.nodes[NODE_A]
    node_a.receive_snapshot("node-x", ["someone"], cluster.now)  # (friend sets read)
    calls = count_store_calls(cluster.store)
    # Another node says alice's friendships changed: her set is read again, once.
    node_a.receive_news("node-y", ClusterNews(forget=("alice",), online=("carol",)), cluster.now)
    node_a.receive_news("node-y", ClusterNews(online=tuple(MADE_UP[:5000])), cluster.now)
    assert calls == {"friends_of_many": 1}
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged) == [
        m.PresenceChanged(username="carol", online=True)
    ]


def test_a_node_keeps_at_most_max_node_users_names_for_another() -> None:
    cluster = Cluster()
    signed_up(cluster)
    node_a = cluster.nodes[NODE_A]
    names = [f"u{n:06d}" for n in range(MAX_NODE_USERS + 10)]
    node_a.receive_snapshot("node-x", names, cluster.now)
    assert node_a.stats.remote_names_ignored == 10
    assert node_a.online_count == 2 + MAX_NODE_USERS  # alice, bob, and the kept
    node_a.receive_news("node-x", ClusterNews(online=("one-more", "and-another")), cluster.now)
    assert node_a.stats.remote_names_ignored == 12
    assert node_a.online_count == 2 + MAX_NODE_USERS
    # Room is made as names go offline.
    node_a.receive_news("node-x", ClusterNews(offline=("u000000",), online=("new",)), cluster.now)
    assert node_a.stats.remote_names_ignored == 12
    assert "new" in node_a.online_users and "u000000" not in node_a.online_users


def test_a_node_tracks_at_most_max_nodes_others_and_still_acts_on_their_news() -> None:
    cluster = Cluster()
    _alice, bob = signed_up(cluster)
    node_a = cluster.nodes[NODE_A]
    cluster.heartbeat()  # node A tracks node B
    for n in range(MAX_NODES - 1):
        node_a.receive_snapshot(f"node-{n}", [f"user-of-{n}"], cluster.now)
    online = node_a.online_count
    node_a.receive_snapshot("one-too-many", ["ghost", "another"], cluster.now)
    assert node_a.online_count == online and "ghost" not in node_a.online_users
    assert node_a.stats.remote_names_ignored == 2
    # Its news is still acted on: the hints are looked up, sessions closed.
    bob.send_message("alice", "hinted by an untracked node")
    cluster.hints = False
    cluster.run(0.3)
    assert cluster.delivered(5001) == []
    node_a.receive_news("one-too-many", ClusterNews(users=("alice",)), cluster.now)
    node_a.commit()
    cluster.hints = True
    cluster.run(0.3)
    assert cluster.delivered(5001) == ["hinted by an untracked node"]
    # Once the silent ones expire, there is room again.
    cluster.now += 20
    cluster.heartbeat(only=NODE_B)
    assert len(node_a.expire_nodes(cluster.now)) == MAX_NODES - 1
    node_a.receive_snapshot("one-too-many", ["ghost"], cluster.now)
    assert "ghost" in node_a.online_users


def test_a_name_that_goes_and_comes_back_within_one_news_tells_nobody() -> None:
    cluster = Cluster()
    signed_up(cluster)
    with_carol(cluster)
    node_a = cluster.nodes[NODE_A]
    node_a.receive_snapshot("node-x", ["carol"], cluster.now)
    node_a.receive_news("node-x", ClusterNews(online=("carol",), offline=("carol",)), cluster.now)
    node_a.commit()
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged) == [
        m.PresenceChanged(username="carol", online=True)
    ]
    assert "carol" in node_a.online_users
