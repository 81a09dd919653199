"""The delivery promise over the simulated network: nothing acknowledged is lost,
every message arrives exactly once and in order, through loss, long absences,
backlogs and a server restart; and group commit holds every acknowledgement until
the store has committed what it acknowledges."""

from __future__ import annotations

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, test_config
from tests.simnet import Link
from udpchat_proto import messages as m
from udpchat_proto.chat.events import Disconnected

DAY = 86400.0


def accepted_ids(user: ChatUser) -> list[bytes]:
    return [e.message_id for e in user.all_events() if isinstance(e, m.MessageAccepted)]


def assert_exactly_once_in_order(received: list[m.ChatMessage], sent: list[str]) -> None:
    texts = [message.text for message in received]
    assert len(set(message.id for message in received)) == len(received), "duplicates"
    assert texts == sent


def test_recipient_offline_for_a_week_gets_everything_in_order(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    bob.close()
    away_since = world.net.now
    sent: list[str] = []
    # alice drops in once a day (a scripted command each time) and writes to bob.
    for day in range(7):
        alice.close()
        world.net.run_for(DAY)
        alice.connect()
        alice.resume()
        for i in range(3):
            text = f"day {day} message {i}"
            alice.send("bob", text)
            sent.append(text)
    alice.close()
    world.net.run_for(DAY)
    assert world.net.now - away_since > 7 * DAY
    bob.connect()
    bob.resume()
    world.run_until(lambda: len(bob.received()) == len(sent), what="the week's messages")
    world.settle()
    assert_exactly_once_in_order(bob.received(), sent)
    # sent_at is the server's clock at acceptance: a week apart, in order.
    stamps = [message.sent_at for message in bob.received()]
    assert stamps == sorted(stamps)
    assert (stamps[-1] - stamps[0]).total_seconds() > 6 * DAY
    world.check_server_health()


def test_ten_percent_loss_loses_duplicates_and_reorders_nothing(stores: StoreFactory) -> None:
    link = Link(loss=0.1, duplicate=0.05, reorder=0.1, jitter=0.02)
    world = ChatWorld(stores, seed=7, link=link)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    # Pipelined: 60 requests in flight at once, both ways.
    from_alice = [f"a{i}" for i in range(60)]
    from_bob = [f"b{i}" for i in range(60)]
    ids = [alice.conn.send_message("bob", text) for text in from_alice]
    ids_bob = [bob.conn.send_message("alice", text) for text in from_bob]
    world.run_until(
        lambda: len(bob.received()) == 60 and len(alice.received()) == 60,
        max_time=120.0,
        what="every message through 10% loss",
    )
    world.settle(5.0)
    assert_exactly_once_in_order(bob.received(), from_alice)
    assert_exactly_once_in_order(alice.received(), from_bob)
    assert all(isinstance(alice.response(rid), m.MessageAccepted) for rid in ids)
    assert all(isinstance(bob.response(rid), m.MessageAccepted) for rid in ids_bob)
    assert world.net.lost > 0
    world.check_server_health()


def test_a_backlog_larger_than_the_window_keeps_its_order_with_new_messages(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores, config=test_config(delivery_window=8))
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    world.befriend(carol, bob)
    bob.close()
    sent = []
    for i in range(50):
        sender = alice if i % 2 else carol
        text = f"old {i} from {sender.name}"  # ends with the sender's name
        sender.conn.send_message("bob", text)
        sent.append(text)
    world.run_until(lambda: world.server.stats.messages_accepted == 50)
    bob.connect()
    bob.resume()
    # New messages arrive while the backlog is still being pushed.
    world.run_until(lambda: len(bob.received()) >= 5)
    assert len(bob.received()) < 50
    for i in range(10):
        text = f"new {i}"
        alice.conn.send_message("bob", text)
        sent.append(text)
    world.run_until(lambda: len(bob.received()) == 60, what="backlog and new messages")
    world.settle()
    received = bob.received()
    # Each conversation in order; across conversations, store order: every old message
    # (stored first) before every new one.
    for name in ("alice", "carol"):
        assert_exactly_once_in_order(
            [message for message in received if message.sender == name],
            [text for text in sent if text.endswith(name)]
            + ([f"new {i}" for i in range(10)] if name == "alice" else []),
        )
    assert [message.text.startswith("new") for message in received] == [False] * 50 + [True] * 10


def test_server_rebuilt_mid_conversation_loses_nothing_acknowledged(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores, seed=3, link=Link(loss=0.05))
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    for i in range(5):
        alice.send("bob", f"before {i}")
    world.run_until(lambda: len(bob.received()) == 5)
    # bob goes away; alice keeps writing; then the server stops committing (its disk
    # stalls) while more requests arrive, and the process dies.
    bob.close()
    for i in range(5):
        alice.send("bob", f"while away {i}")
    world.host.hold_commits = True
    doomed = [alice.conn.send_message("bob", f"in the crash {i}") for i in range(3)]
    world.net.run_for(2.0)
    assert not any(isinstance(alice.response(rid), m.MessageAccepted) for rid in doomed)
    acknowledged = set(accepted_ids(alice))
    world.restart_server()

    # alice's connection times out against the new process; she reconnects, resumes
    # and sends again (same ids) what was never acknowledged.
    connection = alice.conn
    world.run_until(
        lambda: any(isinstance(e, Disconnected) for e in alice.events()), max_time=120.0
    )
    unanswered = [r for r in connection.unanswered() if isinstance(r, m.SendMessage)]
    assert [r.text for r in unanswered] == [f"in the crash {i}" for i in range(3)]
    alice.crash()
    alice.connect()
    alice.resume()
    for request in unanswered:
        alice.ok(
            alice.conn.send_message(request.to, request.text, message_id=request.message_id),
            m.MessageAccepted,
        )
    alice.send("bob", "after")
    bob.connect()
    bob.resume()
    expected = (
        [f"before {i}" for i in range(5)]
        + [f"while away {i}" for i in range(5)]
        + [f"in the crash {i}" for i in range(3)]
        + ["after"]
    )
    world.run_until(lambda: len(bob.received()) == len(expected), max_time=60.0)
    world.settle(5.0)
    assert_exactly_once_in_order(bob.received(), expected)
    assert acknowledged <= {message.id for message in bob.received()}
    world.check_server_health()


def test_a_crash_before_acknowledging_redelivers_without_showing_twice(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    bob.close()
    alice.send("bob", "one")
    alice.send("bob", "two")
    bob.connect()
    # bob's client takes the messages (they are in delivered_ids, persisted) and dies
    # before its acknowledgement arrives: everything bob sends from now on is lost.
    assert bob.node is not None
    world.net.set_link(bob.node, f"server#{world.generation}", Link(loss=1.0))
    bob.conn.resume(bob.token or b"")
    world.net.set_link(bob.node, f"server#{world.generation}", Link())
    world.net.flush()  # the resume leaves
    world.net.set_link(bob.node, f"server#{world.generation}", Link(loss=1.0))
    world.run_until(lambda: len(bob.received()) == 2)
    world.settle(0.5)
    bob.crash()
    # The server still has them unacknowledged for the session: it pushes again on the
    # next connection, and the client acknowledges silently.
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["one", "two"]
    assert bob.conn.stats.duplicate_deliveries == 2  # pushed again, acknowledged silently
    # Acknowledged now: a third connection gets nothing.
    bob.close()
    bob.connect()
    bob.resume()
    world.settle()
    assert [e for e in bob.events() if isinstance(e, m.MessageDelivered)] == []


def test_group_commit_holds_every_acknowledgement_until_the_store_commits(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    commits = world.store.commits
    world.host.hold_commits = True
    # A read before any write is answered at once ...
    friends = alice.ok(alice.conn.list_friends(), m.Friends)
    assert friends.friends == (m.UserPresence(username="bob", online=True),)
    # ... but once a message is written, its acceptance, the push to bob, and every
    # later answer on any connection wait for the commit.
    send_id = alice.conn.send_message("bob", "durable first")
    later = bob.conn.list_online()
    world.net.run_for(3.0)
    assert alice.response(send_id) is None
    assert bob.response(later) is None
    assert bob.received() == []
    assert world.server.writes_pending
    world.host.hold_commits = False
    accepted = alice.ok(send_id, m.MessageAccepted)
    bob.ok(later, m.OnlineUsers)
    assert world.store.commits > commits
    assert accepted.message_id in world.store.committed_ids
    world.settle()
    assert bob.texts() == ["durable first"]


def test_no_acceptance_is_ever_seen_before_its_commit(stores: StoreFactory) -> None:
    """Checked after every step of a busy lossy run: each MessageAccepted and each
    MessageDelivered a client holds names a message the store has committed."""
    world = ChatWorld(stores, seed=11, link=Link(loss=0.05, jitter=0.01))
    users = world.signed_up("alice", "bob", "carol")
    alice, bob, carol = users
    world.befriend(alice, bob)
    world.befriend(bob, carol)
    for i in range(20):
        alice.conn.send_message("bob", f"a{i}")
        carol.conn.send_message("bob", f"c{i}")
        bob.conn.send_message("alice" if i % 2 else "carol", f"b{i}")
    violations: list[bytes] = []

    def check() -> bool:
        committed = world.store.committed_ids
        for user in users:
            for event in user.events():
                if isinstance(event, m.MessageAccepted) and event.message_id not in committed:
                    violations.append(event.message_id)
                if isinstance(event, m.MessageDelivered) and event.message.id not in committed:
                    violations.append(event.message.id)
        return len(bob.received()) == 40 and len(alice.received()) + len(carol.received()) == 20

    world.run_until(check, max_time=60.0)
    assert violations == []
    assert world.store.commits > 1


def test_caught_up_follows_the_whole_backlog_and_only_it(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    # Nothing waiting: caught_up at once after the login.
    world.run_until(lambda: bob.conn.caught_up, what="caught up")
    bob.close()
    sent = [f"while away {i}" for i in range(150)]  # more than two delivery windows
    for text in sent:
        alice.send("bob", text)
    bob.connect()
    assert not bob.conn.caught_up
    bob.resume()
    world.run_until(lambda: bob.conn.caught_up, what="the backlog")
    events = [e for e in bob.events() if isinstance(e, m.MessageDelivered | m.CaughtUp)]
    # Every waiting message comes before caught_up, and caught_up comes once.
    assert [type(e) for e in events] == [m.MessageDelivered] * 150 + [m.CaughtUp]
    assert_exactly_once_in_order(bob.received(), sent)
    # What arrives afterwards is new, and the connection stays caught up.
    alice.send("bob", "live")
    world.run_until(lambda: bob.texts()[-1:] == ["live"])
    assert sum(isinstance(e, m.CaughtUp) for e in bob.events()) == 1
    world.check_server_health()
