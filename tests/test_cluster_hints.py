"""Two server nodes on one store, in-process: a message stored on one node reaches a
connection on the other at once through the delivery hints, and never twice."""

from __future__ import annotations

from tests.chat_helpers import test_config
from udpchat_proto.chat import ChatServer, ClientConnection, MemoryStore
from udpchat_proto.chat import messages as m
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport import Address, ServerKey

PASSWORD = "correct horse battery"
NODE_A: Address = ("127.0.0.1", 1001)
NODE_B: Address = ("127.0.0.1", 1002)


class Cluster:
    """Two nodes (one key, one store) and clients that talk to either."""

    def __init__(self, *, hints: bool = True) -> None:
        self.now = 100.0
        self.store = MemoryStore()
        key = ServerKey.generate(SeededRandomSource("cluster-key"))
        self.key = key
        config = test_config(cluster=True)
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
                moved = False
                for address, (conn, target) in self.clients.items():
                    for data, _to in conn.datagrams_to_send(self.now):
                        self.nodes[target].receive_datagram(data, address, self.now)
                        moved = True
                for node_address, server in self.nodes.items():
                    server.run_hash_jobs(self.now)
                    server.commit()
                    if self.hints:
                        hinted = server.take_delivery_hints()
                        for other in self.nodes.values():  # (itself too, as the loop)
                            if hinted:
                                other.deliver_hints(hinted, self.now)
                                other.commit()
                    for data, to in server.datagrams_to_send(self.now):
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


def test_a_single_server_names_no_hints() -> None:
    server = ChatServer(
        store=MemoryStore(),
        static_key=ServerKey.generate(SeededRandomSource("k")),
        clock=lambda: 0.0,
        config=test_config(),
    )
    assert server.take_delivery_hints() == []


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
