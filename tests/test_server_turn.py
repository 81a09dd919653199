"""One turn: ``ChatServer.end_batch`` ends a batch as the loop used to by hand
(hash results in, due timers, new hash jobs out, one commit, the news, the
datagrams), and says what became of it. Sans-IO: no sockets, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.chat_helpers import PASSWORD, RecordingStore, test_config
from udpchat_proto import (
    Address,
    BatchEnd,
    ChatServer,
    ClientConnection,
    MemoryStore,
    ServerKey,
    Store,
)
from udpchat_proto import messages as m
from udpchat_proto.chat.store import StoreUnavailableError
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_server.stores.sqlite import SQLiteStore

SERVER: Address = ("127.0.0.1", 4433)
NOW = 1000.0


class Turns:
    """A server and its clients, one turn of the loop at a time."""

    def __init__(self, store: Store | None = None, **config: Any) -> None:
        self.store = RecordingStore(store if store is not None else MemoryStore())
        key = ServerKey.generate(SeededRandomSource("turn-key"))
        self.server = ChatServer(
            store=cast(Store, self.store),
            static_key=key,
            clock=lambda: 1_700_000_000.0,
            config=test_config(**config),
            random=SeededRandomSource("turn-server"),
        )
        self.key = key
        self.clients: dict[Address, ClientConnection] = {}
        self.answers: dict[Address, list[Any]] = {}

    def client(self, port: int) -> ClientConnection:
        address = ("127.0.0.2", port)
        client = ClientConnection(
            server_address=SERVER,
            expected_server_key=self.key.public_bytes,
            random=SeededRandomSource(f"turn-client-{port}"),
        )
        self.clients[address] = client
        self.answers[address] = []
        client.connect(NOW)
        return client

    def turn(self, now: float = NOW, **end: Any) -> BatchEnd:
        """Feed what the clients send, end the batch, hand its datagrams over."""
        for address, client in self.clients.items():
            for data, _to in client.datagrams_to_send(now):
                self.server.receive_datagram(data, address, now)
        ended = self.server.end_batch(now, **end)
        for data, address in ended.datagrams:
            self.clients[address].receive_datagram(data, SERVER, now)
        for address, client in self.clients.items():
            while (event := client.next_event()) is not None:
                self.answers[address].append(event)
        return ended

    def answer(self, port: int, request_id: int) -> Any:
        found = [
            a
            for a in self.answers[("127.0.0.2", port)]
            if getattr(a, "request_id", None) == request_id
        ]
        return found[0] if found else None


@pytest.fixture
def turns() -> Iterator[Turns]:
    yield Turns()


def connected(turns: Turns, *ports: int) -> list[ClientConnection]:
    clients = [turns.client(port) for port in ports]
    for _ in range(3):
        turns.turn()
    assert all(client.is_connected for client in clients)
    return clients


def test_hash_jobs_go_out_within_the_slots_and_come_back_in_a_later_turn(turns: Turns) -> None:
    alice, bob, carol = connected(turns, 5001, 5002, 5003)
    requests = [
        c.register(name, PASSWORD) for c, name in ((alice, "alice"), (bob, "bob"), (carol, "carol"))
    ]
    first = turns.turn(hash_slots=2)
    assert len(first.hash_jobs) == 2 and turns.server.pending_hash_jobs == 3
    assert not first.committed  # nothing written yet: the hashes run meanwhile
    done, failed = first.hash_jobs
    second = turns.turn(
        hash_results=[(done.job_id, done.run()), (failed.job_id, None)], hash_slots=1
    )
    assert second.committed and len(second.hash_jobs) == 1  # the third one, now
    answers = [
        turns.answer(port, rid) for port, rid in zip((5001, 5002, 5003), requests, strict=True)
    ]
    assert sum(isinstance(a, m.Ok) for a in answers) == 1
    assert [a.code for a in answers if isinstance(a, m.ErrorResponse)] == [ErrorCode.INTERNAL]
    (last,) = second.hash_jobs
    turns.turn(hash_results=[(last.job_id, last.run())])
    assert (
        sum(
            isinstance(turns.answer(p, r), m.Ok)
            for p, r in zip((5001, 5002, 5003), requests, strict=True)
        )
        == 2
    )
    assert turns.server.pending_hash_jobs == 0


def test_inline_hashes_answer_a_pipelined_register_and_login_in_one_turn(turns: Turns) -> None:
    (alice,) = connected(turns, 5001)
    register, login = alice.register("alice", PASSWORD), alice.login("alice", PASSWORD)
    commits = turns.store.commits
    ended = turns.turn(run_hashes=True)
    assert ended.hash_jobs == () and ended.committed and turns.store.commits == commits + 1
    assert isinstance(turns.answer(5001, register), m.Ok)
    assert isinstance(turns.answer(5001, login), m.LoggedIn)


def test_a_turn_times_its_commit_and_reports_a_lost_batch(tmp_path: Path) -> None:
    turns = Turns(SQLiteStore.open(tmp_path / "chat.sqlite3"))  # (its commits can fail)
    (alice,) = connected(turns, 5001)
    alice.register("alice", PASSWORD)
    turns.turn(run_hashes=True)
    alice.login("alice", PASSWORD)
    turns.turn(run_hashes=True)
    ticks = iter([10.0, 10.25])
    join = alice.join_room("#one")
    ended = turns.turn(stopwatch=lambda: next(ticks))
    assert ended.committed and ended.failure is None and ended.commit_seconds == 0.25
    quiet = turns.turn(stopwatch=lambda: pytest.fail("nothing to commit: no timing"))
    assert not quiet.committed and quiet.commit_seconds is None and quiet.datagrams == ()
    assert isinstance(turns.answer(5001, join), m.Ok)
    turns.store.fail_commits = StoreUnavailableError("disk full")
    second = alice.join_room("#two")
    lost = turns.turn()
    assert not lost.committed and lost.failure is turns.store.fail_commits
    assert turns.answer(5001, second).code is ErrorCode.UNAVAILABLE


def test_a_turn_fires_the_due_timers_before_its_commit(turns: Turns) -> None:
    # An acknowledgement's cursor waits in memory (CURSOR_WRITE_DELAY); the turn
    # after its deadline writes and commits it, with no handle_timer of its own.
    alice, bob = connected(turns, 5001, 5002)
    for client, name in ((alice, "alice"), (bob, "bob")):
        client.register(name, PASSWORD)
        turns.turn(run_hashes=True)
        client.login(name, PASSWORD)
        turns.turn(run_hashes=True)
    alice.invite("bob")
    turns.turn()
    bob.accept_invitation("alice")
    turns.turn()
    alice.send_message("bob", "hi")
    turns.turn()
    assert [
        e.message.text
        for e in turns.answers[("127.0.0.2", 5002)]
        if isinstance(e, m.MessageDelivered)
    ] == ["hi"]
    assert not turns.turn().committed  # the acknowledgement: no write of its own yet
    later = turns.turn(NOW + 2.0)
    assert later.committed
    receipts = [e for e in turns.answers[("127.0.0.2", 5001)] if isinstance(e, m.DeliveryReceipts)]
    assert [r.to for push in receipts for r in push.receipts] == ["bob"]


def test_a_nodes_turn_returns_its_news() -> None:
    turns = Turns(cluster=True)
    (alice,) = connected(turns, 5001)
    alice.register("alice", PASSWORD)
    turns.turn(run_hashes=True)
    alice.login("alice", PASSWORD)
    ended = turns.turn(run_hashes=True)
    assert ended.news.online == ("alice",)
    assert not turns.turn().news  # told once
    assert not Turns().turn().news  # a single server has none
