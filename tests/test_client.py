"""ClientConnection: its state machine, misuse, key pinning, and de-duplication of
deliveries across connections."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tests.chat_helpers import SERVER_ADDRESS, ChatWorld, StoreFactory
from tests.simnet import Link
from udpchat_proto import CloseCode
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection, ClientState
from udpchat_proto.chat.events import Connected, Disconnected
from udpchat_proto.errors import LocalProtocolError
from udpchat_proto.randomness import SeededRandomSource


@pytest.fixture
def world(tmp_path: Path) -> ChatWorld:
    return ChatWorld(StoreFactory("memory", tmp_path / "unused"))


def test_states_and_misuse() -> None:
    client = ClientConnection(server_address=SERVER_ADDRESS, random=SeededRandomSource(1))
    assert client.state is ClientState.IDLE and not client.is_connected
    # Requests may be queued before connect(); ids count up from 1.
    assert client.list_online() == 1
    assert client.list_friends() == 2
    assert client.pending_requests == 2
    assert isinstance(client.pending_request(1), m.ListOnline)
    client.connect(1000.0)
    assert client.state.value == "connecting"  # (mypy narrowed .state above)
    with pytest.raises(LocalProtocolError):
        client.connect(1000.0)
    client.close(1000.0)
    assert client.state in (ClientState.CLOSING, ClientState.CLOSED)
    with pytest.raises(LocalProtocolError):
        client.list_online()
    client.close(1000.0)  # twice is harmless
    assert client.username is None and client.token is None and client.server_key is None


def test_close_before_connect() -> None:
    client = ClientConnection(server_address=SERVER_ADDRESS, random=SeededRandomSource(1))
    client.close(1000.0)
    assert client.state is ClientState.CLOSED
    assert client.datagrams_to_send(1000.0) == []
    with pytest.raises(LocalProtocolError):
        client.connect(1000.0)


def test_connected_and_disconnected_events(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    events = alice.events()
    assert events[0] == Connected(server_key=world.key.public_bytes)
    assert alice.conn.server_key == world.key.public_bytes
    connection = alice.conn
    alice.close()
    assert connection.state is ClientState.CLOSED
    assert isinstance(events[-1], Disconnected) and events[-1].code is CloseCode.NORMAL_CLOSE


def test_a_changed_server_key_is_refused(world: ChatWorld) -> None:
    client = ClientConnection(
        server_address=SERVER_ADDRESS,
        expected_server_key=b"\x01" * 32,
        random=SeededRandomSource(9),
    )
    world.net.add("pinned", client, ("127.7.0.1", 5000))
    client.connect(world.net.now)
    request_id = client.list_online()
    world.run_until(lambda: client.state is ClientState.CLOSED, max_time=30.0)
    (disconnected,) = world.net.events_of("pinned", Disconnected)
    assert disconnected.code is CloseCode.SERVER_KEY_MISMATCH
    assert client.pending_request(request_id) is not None  # never answered


def test_redelivery_after_a_lost_acknowledgement_is_not_shown_twice(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    # Everything bob sends from now on is lost, his acknowledgements included.
    assert bob.node is not None
    world.net.set_link(bob.node, "server#0", Link(loss=1.0))
    alice.send("bob", "one")
    alice.send("bob", "two")
    world.run_until(lambda: len(bob.received()) == 2)
    assert bob.conn.delivered_ids == {message.id for message in bob.received()}
    bob.crash()
    # A new process, given the persisted delivered ids: the server pushes both again
    # (never acknowledged); the client acknowledges them without showing them.
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["one", "two"]
    assert bob.conn.stats.duplicate_deliveries == 2
    # Now acknowledged: the next connection gets nothing.
    bob.close()
    bob.connect()
    bob.resume()
    world.settle()
    assert not any(isinstance(e, m.MessageDelivered) for e in bob.events())
    assert bob.conn.stats.duplicate_deliveries == 0


class Untaken:
    """A client on the network whose application never takes its events."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.client.receive_datagram(data, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        return self.client.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.client.get_timer()

    def handle_timer(self, now: float) -> None:
        self.client.handle_timer(now)

    def next_event(self) -> None:
        return None


def test_acknowledgement_waits_until_the_application_takes_the_message(
    world: ChatWorld,
) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    bob.close()
    client = ClientConnection(server_address=SERVER_ADDRESS, random=SeededRandomSource("idle"))
    world.net.add("idle", Untaken(client), ("127.8.0.1", 7))
    assert bob.token is not None
    client.resume(bob.token)
    client.connect(world.net.now)
    alice.send("bob", "untaken")
    world.settle(5.0)
    # Received, not taken: not acknowledged, so a later connection gets it again.
    assert client.delivered_ids == frozenset()
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["untaken"]
    # Taking it acknowledges it (with the next datagrams).
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    (delivered,) = [e for e in events if isinstance(e, m.MessageDelivered)]
    assert client.delivered_ids == {delivered.message.id}


def test_remembered_delivered_ids_are_capped_at_the_newest() -> None:
    from udpchat_proto.chat.client import DELIVERED_IDS_MAX, ClientConnection

    ids = [i.to_bytes(16, "big") for i in range(DELIVERED_IDS_MAX + 10)]
    client = ClientConnection(server_address=("127.0.0.1", 9999), delivered_ids=ids)
    remembered = client.delivered_ids
    assert len(remembered) == DELIVERED_IDS_MAX
    assert remembered == frozenset(ids[10:])


def test_explicit_acknowledgements_wait_for_the_application(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    bob.close()
    assert bob.token is not None
    client = ClientConnection(
        server_address=SERVER_ADDRESS, random=SeededRandomSource("explicit"), explicit_acks=True
    )
    world.net.add("explicit", client, ("127.8.0.2", 7))  # (the net takes every event)
    client.resume(bob.token)
    client.connect(world.net.now)
    alice.send("bob", "kept later")
    world.run_until(lambda: bool(world.net.events_of("explicit", m.MessageDelivered)))
    (first,) = world.net.events_of("explicit", m.MessageDelivered)
    # Taken, not acknowledged: not among the delivered ids, and pushed again to the
    # next connection of the session.
    assert client.delivered_ids == frozenset()
    world.settle(5.0)
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["kept later"]
    bob.close()
    # Acknowledged (as a runtime does once its application handled it): it leaves,
    # and the session's next connection gets nothing.
    client.acknowledge([first.message.id])
    assert client.delivered_ids == {first.message.id}
    world.settle(5.0)
    bob.connect()
    bob.resume()
    world.settle()
    assert not any(isinstance(e, m.MessageDelivered) for e in bob.events())


def test_an_explicit_client_drops_a_repush_of_a_taken_message_silently() -> None:
    client = ClientConnection(server_address=SERVER_ADDRESS, explicit_acks=True)
    sent_at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    message = m.ChatMessage(id=b"\x07" * 16, sender="alice", to="bob", text="hi", sent_at=sent_at)
    client._on_delivery(m.MessageDelivered(message=message))
    assert isinstance(client.next_event(), m.MessageDelivered)
    client._on_delivery(m.MessageDelivered(message=message))  # the ack was never sent
    assert client.next_event() is None
    assert client.stats.duplicate_deliveries == 1 and client._acks == []
    client.acknowledge([message.id])
    assert client._acks == [message.id]
    client._on_delivery(m.MessageDelivered(message=message))  # the ack was lost
    assert client.next_event() is None and client._acks == [message.id, message.id]
