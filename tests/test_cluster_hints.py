"""Two server nodes on one store, in-process, exchanging their news as the bus would:
a message stored on one node reaches a connection on the other at once and never
twice; pushes, ended sessions, stale caches and presence cross nodes too; a silent
node's users go offline."""

from __future__ import annotations

from typing import Any, TypeVar

from tests.chat_helpers import test_config
from udpchat_proto import (
    Address,
    ChatServer,
    ClientConnection,
    Disconnected,
    MemoryStore,
    ServerKey,
)
from udpchat_proto import messages as m
from udpchat_proto.chat import NODE_TIMEOUT, ClientState, ClusterNews
from udpchat_proto.chat.store import StoreUnavailableError
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource

T = TypeVar("T")
PASSWORD = "correct horse battery"
NODE_A: Address = ("127.0.0.1", 1001)
NODE_B: Address = ("127.0.0.1", 1002)


class Cluster:
    """Two nodes (one key, one store) and clients that talk to either."""

    def __init__(self, *, hints: bool = True, public_presence: bool = False) -> None:
        self.now = 100.0
        self.store = MemoryStore()
        key = ServerKey.generate(SeededRandomSource("cluster-key"))
        self.key = key
        config = test_config(cluster=True, public_presence=public_presence)
        self.nodes = {
            NODE_A: ChatServer(
                store=self.store, static_key=key, clock=self.wall, config=config,
                random=SeededRandomSource("node-a"),
            ),
            NODE_B: ChatServer(
                store=self.store, static_key=key, clock=self.wall, config=config,
                random=SeededRandomSource("node-b"),
            ),
        }  # fmt: skip
        self.hints = hints
        self.clients: dict[Address, tuple[ClientConnection, Address]] = {}
        self.events: dict[Address, list[object]] = {}
        self.published: list[tuple[Address, ClusterNews]] = []

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def client(self, name: str, node: Address, port: int) -> ClientConnection:
        conn = ClientConnection(
            server_address=node,
            expected_server_key=self.key.public_bytes,
            random=SeededRandomSource(f"client-{name}-{port}"),
        )
        address = ("127.0.0.2", port)
        self.clients[address] = (conn, node)
        self.events[address] = []
        conn.connect(self.now)
        return conn

    def run(self, seconds: float = 1.0) -> None:
        end = self.now + seconds
        while self.now < end:
            for _ in range(20):
                # Between batches, as the loop does: the news the nodes published.
                moved = self.deliver_news()
                for address, (conn, target) in self.clients.items():
                    for data, _to in conn.datagrams_to_send(self.now):
                        self.nodes[target].receive_datagram(data, address, self.now)
                        moved = True
                for node_address, server in self.nodes.items():
                    batch_end = server.end_batch(self.now, run_hashes=True)
                    if self.hints and batch_end.news:
                        self.published.append((node_address, batch_end.news))
                    for data, to in batch_end.datagrams:
                        conn, _node = self.clients[to]
                        conn.receive_datagram(data, node_address, self.now)
                        moved = True
                for address, (conn, _node) in self.clients.items():
                    while (event := conn.next_event()) is not None:
                        self.events[address].append(event)
                if not moved:
                    break
            self.now += 0.05
            for server in self.nodes.values():
                timer = server.get_timer()
                if timer is not None and timer <= self.now:
                    server.handle_timer(self.now)
            for conn, _node in self.clients.values():
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)

    def deliver_news(self) -> bool:
        """Hand each node's news to the others, as the bus does (a node pushed its
        own messages when its batch committed); True if there was any."""
        published, self.published = self.published, []
        for node_address, news in published:
            for other_address, other in self.nodes.items():
                if other_address != node_address:
                    other.receive_news(str(node_address), news, self.now)
        return bool(published)

    def heartbeat(self, *, only: Address | None = None) -> None:
        """Every node (or ``only`` one) tells the others who is online on it."""
        for node_address, server in self.nodes.items():
            if only is not None and node_address != only:
                continue
            for other in self.nodes.values():
                if other is not server:
                    other.receive_snapshot(str(node_address), server.online_here(), self.now)
                    other.commit()

    def received(self, port: int, kind: type[T]) -> list[T]:
        return [e for e in self.events[("127.0.0.2", port)] if isinstance(e, kind)]

    def delivered(self, port: int) -> list[str]:
        return [
            e.message.text
            for e in self.events[("127.0.0.2", port)]
            if isinstance(e, m.MessageDelivered)
        ]


def signed_up(cluster: Cluster) -> tuple[ClientConnection, ClientConnection]:
    alice = cluster.client("alice", NODE_A, 5001)
    bob = cluster.client("bob", NODE_B, 5002)
    cluster.run()
    for conn, name in ((alice, "alice"), (bob, "bob")):
        conn.register(name, PASSWORD)
        conn.login(name, PASSWORD)
    cluster.run()
    alice.invite("bob")
    cluster.run()
    bob.accept_invitation("alice")
    cluster.run()
    return alice, bob


def test_a_message_stored_on_one_node_reaches_the_other_at_once() -> None:
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    for n in range(5):
        alice.send_message("bob", f"across {n}")
    cluster.run(0.5)  # well under any timer: only a hint can have done it
    assert cluster.delivered(5002) == [f"across {n}" for n in range(5)]
    # Her own other device, on node B, gets them too; none arrives twice.
    laptop = cluster.client("alice", NODE_B, 5003)
    cluster.run()
    laptop.login("alice", PASSWORD)
    cluster.run()
    alice.send_message("bob", "one more")
    cluster.run(0.5)
    assert cluster.delivered(5002)[-1] == "one more"
    assert cluster.delivered(5003)[-1] == "one more"
    assert len(cluster.delivered(5002)) == len(set(cluster.delivered(5002))) == 6


def test_the_sending_connection_is_not_looked_for_but_the_senders_other_devices_are() -> None:
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    asked: list[str] = []
    read = cluster.store.pending_deliveries_many

    def counted(sessions: Any) -> Any:
        asked.extend(username for username, _session, _limit in sessions)
        return read(sessions)

    cluster.store.pending_deliveries_many = counted  # type: ignore[method-assign]
    alice.send_message("bob", "to bob")
    cluster.run(0.5)
    assert cluster.delivered(5002) == ["to bob"]
    # Her own message is never pushed to the connection that sent it: no read for
    # it on node A (a read for bob's window on node B, for his acknowledgement too).
    assert "alice" not in asked
    # A second device of hers on the same node is looked for, and gets it.
    tablet = cluster.client("alice", NODE_A, 5004)
    cluster.run()
    tablet.login("alice", PASSWORD)
    cluster.run()
    alice.send_message("bob", "seen by the tablet")
    cluster.run(0.5)
    assert cluster.delivered(5004)[-1] == "seen by the tablet"
    assert "seen by the tablet" not in cluster.delivered(5001)


def test_news_is_delivered_at_once_when_the_loop_asks_not_after_the_next_batch() -> None:
    cluster = Cluster()
    alice, bob = signed_up(cluster)
    node_a, node_b = cluster.nodes[NODE_A], cluster.nodes[NODE_B]
    now = cluster.now
    alice.send_message("bob", "at once")
    for data, _to in alice.datagrams_to_send(now):
        node_a.receive_datagram(data, ("127.0.0.2", 5001), now)
    news = node_a.end_batch(now).news
    assert "bob" in news.users
    # Node B is told between its batches, and reads what the news names at once:
    # the delivery is among the datagrams before any batch of B's ends.
    node_b.receive_news("a", news, now)
    node_b.deliver_news(now)
    for data, _to in node_b.datagrams_to_send(now):
        bob.receive_datagram(data, NODE_B, now)
    events = []
    while (event := bob.next_event()) is not None:
        events.append(event)
    assert [e.message.text for e in events if isinstance(e, m.MessageDelivered)] == ["at once"]
    # Nothing is pushed twice when B's batch ends (the events above were taken by hand).
    cluster.run()
    assert cluster.delivered(5002) == []


def test_without_hints_the_other_node_waits_and_refill_all_heals() -> None:
    cluster = Cluster(hints=False)
    alice, _bob = signed_up(cluster)
    alice.send_message("bob", "waits for a look")
    cluster.run(0.5)
    assert cluster.delivered(5002) == []
    node_b = cluster.nodes[NODE_B]
    node_b.refill_all(cluster.now)  # as after the bus came back
    node_b.commit()
    cluster.run(0.5)
    assert cluster.delivered(5002) == ["waits for a look"]


def test_a_single_server_has_no_news() -> None:
    server = ChatServer(
        store=MemoryStore(),
        static_key=ServerKey.generate(SeededRandomSource("k")),
        clock=lambda: 0.0,
        config=test_config(),
    )
    assert not server.take_news()


def test_two_nodes_writing_one_room_lose_nothing() -> None:
    # Found by review: a node pushed its own new message from memory, past an
    # earlier seq another node had committed and not yet hinted; the
    # acknowledgement of the later one then moved the cursor past the earlier.
    cluster = Cluster()
    bob = cluster.client("bob", NODE_A, 6001)
    dave = cluster.client("dave", NODE_A, 6002)
    carol = cluster.client("carol", NODE_B, 6003)
    cluster.run()
    for conn, name in ((bob, "bob"), (dave, "dave"), (carol, "carol")):
        conn.register(name, PASSWORD)
        conn.login(name, PASSWORD)
    cluster.run()
    for conn in (bob, dave, carol):
        conn.join_room("#r")
    cluster.run()
    cluster.hints = False  # carol's hint is late
    carol.send_message("#r", "from carol on B")
    cluster.run(0.3)
    dave.send_message("#r", "from dave on A")
    cluster.run(0.3)
    cluster.hints = True
    cluster.run(1.0)
    assert cluster.delivered(6001) == ["from carol on B", "from dave on A"]


def test_pushes_reach_a_user_on_the_other_node() -> None:
    cluster = Cluster()
    signed_up(cluster)  # alice on A invited bob on B, who accepted
    assert [p.from_user for p in cluster.received(5002, m.InvitationReceived)] == ["alice"]
    answers = cluster.received(5001, m.InvitationAnswered)
    assert [(a.by_user, a.accepted) for a in answers] == [("bob", True)]


def test_presence_spans_the_nodes() -> None:
    cluster = Cluster()
    alice, bob = signed_up(cluster)
    alice.list_online()
    bob.list_friends()
    cluster.run()
    assert cluster.received(5001, m.OnlineUsers)[-1].usernames == ("alice", "bob")
    assert cluster.received(5002, m.Friends)[-1].friends == (
        m.UserPresence(username="alice", online=True),
    )
    # A second device on the other node changes nothing for her friends ...
    laptop = cluster.client("bob", NODE_A, 5003)
    cluster.run()
    laptop.login("bob", PASSWORD)
    cluster.run()
    laptop.close(cluster.now)
    cluster.run()
    assert cluster.received(5001, m.PresenceChanged) == []
    # ... and the last one going is news, once.
    bob.close(cluster.now)
    cluster.run()
    changes = cluster.received(5001, m.PresenceChanged)
    assert changes == [m.PresenceChanged(username="bob", online=False)]
    alice.list_online()
    cluster.run()
    assert cluster.received(5001, m.OnlineUsers)[-1].usernames == ("alice",)


def test_a_silent_node_s_users_go_offline_and_a_heartbeat_brings_them_back() -> None:
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    node_a = cluster.nodes[NODE_A]
    cluster.heartbeat()
    assert node_a.expire_nodes(cluster.now + NODE_TIMEOUT - 1) == []
    assert node_a.expire_nodes(cluster.now + NODE_TIMEOUT + 1) == [str(NODE_B)]
    node_a.commit()
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged) == [
        m.PresenceChanged(username="bob", online=False)
    ]
    # Node B was only cut off: its next heartbeat says bob is there.
    cluster.heartbeat(only=NODE_B)
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged)[-1] == m.PresenceChanged(
        username="bob", online=True
    )
    alice.list_online()
    cluster.run()
    assert cluster.received(5001, m.OnlineUsers)[-1].usernames == ("alice", "bob")


def test_a_heartbeat_heals_presence_news_that_was_lost() -> None:
    cluster = Cluster(public_presence=True)
    alice, _bob = signed_up(cluster)
    carol = cluster.client("carol", NODE_B, 5004)
    cluster.run()
    carol.register("carol", PASSWORD)
    cluster.hints = False  # the news of her login is lost ...
    carol.login("carol", PASSWORD)
    cluster.run()
    cluster.nodes[NODE_B].take_news()
    cluster.hints = True
    alice.list_online()
    cluster.run()
    assert "carol" not in cluster.received(5001, m.OnlineUsers)[-1].usernames
    cluster.heartbeat()  # ... and the next heartbeat says she is there
    alice.list_online()
    cluster.run()
    assert cluster.received(5001, m.OnlineUsers)[-1].usernames == ("alice", "bob", "carol")


def test_a_revoked_session_is_closed_on_the_other_node() -> None:
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    laptop = cluster.client("alice", NODE_B, 5003)
    cluster.run()
    laptop.login("alice", PASSWORD)
    cluster.run()
    alice.logout_all()
    cluster.run()
    closed = cluster.received(5003, Disconnected)
    assert [c.reason for c in closed] == ["this login session was ended from another device"]
    assert laptop.state is ClientState.CLOSED


def test_a_friendship_ended_on_one_node_is_known_on_the_other() -> None:
    cluster = Cluster()
    alice, bob = signed_up(cluster)
    bob.send_message("alice", "we are friends")  # node B caches bob's friends
    cluster.run()
    alice.unfriend("bob")
    cluster.run()
    bob.send_message("alice", "are we?")
    cluster.run()
    refusals = cluster.received(5002, m.ErrorResponse)
    assert [r.code for r in refusals] == [ErrorCode.NOT_FRIENDS]
    assert cluster.received(5002, m.Unfriended) == [m.Unfriended(by_user="alice")]


def test_a_node_that_says_goodbye_takes_its_users_offline_at_once() -> None:
    cluster = Cluster()
    signed_up(cluster)
    cluster.nodes[NODE_A].forget_node(str(NODE_B), cluster.now)
    cluster.nodes[NODE_A].commit()
    cluster.run(0.2)
    assert cluster.received(5001, m.PresenceChanged) == [
        m.PresenceChanged(username="bob", online=False)
    ]


def test_a_send_that_lost_a_race_with_another_node_is_done_again() -> None:
    # A node stores its batch's sends together (add_messages): when that deadlocks
    # with another node's batch, it is done again, and the rest of the batch stands.
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    original = cluster.store.add_message
    lost = [StoreUnavailableError("database conflict", "deadlock detected", conflict=True)]

    def racing(message: m.ChatMessage, origin: bytes | None = None) -> Any:
        if lost:
            raise lost.pop()
        return original(message, origin)

    cluster.store.add_message = racing  # type: ignore[method-assign]
    alice.send_message("bob", "after a lost race")
    cluster.run(0.5)
    assert cluster.delivered(5002) == ["after a lost race"]
    assert cluster.nodes[NODE_A].stats.stores_retried == 1


def test_a_session_whose_end_was_not_told_is_closed_at_the_next_check() -> None:
    cluster = Cluster()
    alice, _bob = signed_up(cluster)
    laptop = cluster.client("alice", NODE_B, 5003)
    cluster.run()
    laptop.login("alice", PASSWORD)
    cluster.run()
    cluster.hints = False
    alice.logout_all()  # the news of it is lost
    cluster.run()
    cluster.nodes[NODE_A].take_news()
    cluster.hints = True
    assert laptop.state is not ClientState.CLOSED
    assert cluster.nodes[NODE_B].check_sessions(cluster.now) == 1
    cluster.run()
    assert [c.reason for c in cluster.received(5003, Disconnected)] == [
        "this login session has ended"
    ]
    assert cluster.nodes[NODE_B].check_sessions(cluster.now) == 0  # bob's is fine
