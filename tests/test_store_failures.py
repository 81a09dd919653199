"""A store that cannot write: nothing rolled back is ever acknowledged or pushed.

SQLite answers a full disk (``SQLITE_FULL``; here ``PRAGMA max_page_count`` pinned
at the current page count, which fails exactly like a full disk) by rolling back
the statement, and sometimes the whole transaction. The store must notice a lost
transaction and refuse the rest of the batch, and the server must then answer
every request of that batch ``unavailable`` and push nothing of it; requests that
need no write keep working, and everything recovers once space returns.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.chat_helpers import PASSWORD, ChatUser, ChatWorld, StoreFactory
from udpchat_proto import messages as m
from udpchat_proto.chat.store import StoreUnavailableError
from udpchat_proto.errors import ErrorCode
from udpchat_server.stores.sqlite import SQLiteStore

BIG = "x" * 4000  # needs new pages: more than a page of text


def fill_disk(store: SQLiteStore) -> None:
    """Make every write that needs a new page fail with SQLITE_FULL: none free in
    the file either (a migration that drops a table leaves its pages free, and a
    write takes those before it grows the file)."""
    db = store.connection
    db.execute("VACUUM")
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(store: SQLiteStore) -> None:
    store.connection.execute("PRAGMA max_page_count = 1073741823")


def message_count(store: SQLiteStore) -> int:
    (count,) = store.connection.execute("SELECT COUNT(*) FROM messages").fetchone()
    return int(count)


@pytest.fixture
def world(tmp_path: Path) -> ChatWorld:
    return ChatWorld(StoreFactory("sqlite", tmp_path / "chat.sqlite3"))


def sqlite_of(world: ChatWorld) -> SQLiteStore:
    inner = world.store.inner
    assert isinstance(inner, SQLiteStore)
    return inner


def friends(world: ChatWorld) -> tuple[ChatUser, ChatUser, ChatUser]:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    world.befriend(carol, bob)
    return alice, bob, carol


# --- the store ------------------------------------------------------------------------------


def test_a_lost_transaction_fails_the_commit_and_the_rest_of_the_batch(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        store.join_room("#warmup", "alice", 1.0)
        store.commit()
        fill_disk(store)
        store.join_room("#a", "alice", 2.0)  # fits in the pages there are
        with pytest.raises(StoreUnavailableError) as failure:
            for i in range(200):  # until a new page is needed
                store.join_room(f"#room-{i}-{'y' * 40}", "alice", 3.0)
        assert failure.value.reason == "disk full"
        # SQLite rolled the whole transaction back: no later write may start a new
        # one that would commit without the earlier writes.
        assert not store.connection.in_transaction
        with pytest.raises(StoreUnavailableError):
            store.join_room("#b", "alice", 4.0)
        with pytest.raises(StoreUnavailableError):
            store.commit()
        assert not store.room_exists("#a") and not store.room_exists("#b")
        # The failure is over with its batch: the next one works once space returns.
        free_disk(store)
        assert store.join_room("#c", "alice", 5.0)
        store.commit()
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        assert [room for room, _ in store.rooms_of("alice")] == ["#c", "#warmup"]


def test_a_failed_statement_inside_atomic_keeps_the_rest_of_the_batch(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        store.join_room("#kept", "alice", 1.0)
        with pytest.raises(StoreUnavailableError), store.atomic():
            store.join_room("#undone", "alice", 2.0)
            raise StoreUnavailableError("disk full")
        store.commit()
        assert [room for room, _ in store.rooms_of("alice")] == ["#kept"]


def test_errors_that_are_bugs_are_not_disguised(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        store.connection.execute("DROP TABLE invitations")
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            store.has_invitation("alice", "bob")


# --- the server ------------------------------------------------------------------------------


def test_a_batch_rolled_back_by_sqlite_is_neither_acknowledged_nor_pushed(
    world: ChatWorld,
) -> None:
    alice, bob, carol = friends(world)
    store = sqlite_of(world)
    fill_disk(store)
    # Both sends land in one batch: the first fits, the second needs new pages and
    # SQLITE_FULL rolls the whole transaction back, the first send included.
    world.host.hold_commits = True
    handled = world.server.stats.requests
    first = alice.conn.send_message("bob", "hi bob")
    second = carol.conn.send_message("bob", BIG)
    world.run_until(lambda: world.server.stats.requests == handled + 2, what="both sends")
    assert world.server.stats.messages_accepted == 1  # the first; the second failed
    world.host.hold_commits = False
    refusal = alice.refused(first, ErrorCode.UNAVAILABLE)
    assert refusal.message == "the server cannot store anything now (disk full); try later"
    carol.refused(second, ErrorCode.UNAVAILABLE)
    world.settle(3.0)
    assert bob.received() == []
    assert message_count(store) == 0
    assert world.server.stats.batches_lost == 1
    world.check_server_health()  # refusals, not internal errors

    # Space returns: the same message (same id) is accepted and delivered once.
    free_disk(store)
    request = alice.conn.pending_request(first)
    assert request is None  # it was answered (unavailable)
    again = alice.send("bob", "hi bob")
    world.run_until(lambda: bob.texts() == ["hi bob"], what="bob gets it")
    world.settle(3.0)
    assert bob.texts() == ["hi bob"] and message_count(store) == 1
    assert again.message_id == bob.received()[0].id


def test_a_store_that_cannot_write_refuses_writes_and_serves_reads(world: ChatWorld) -> None:
    alice, bob, _carol = friends(world)
    alice.send("bob", "before")
    world.run_until(lambda: bob.texts() == ["before"])
    store = sqlite_of(world)
    # Every write fails now, even one that would fit in the pages there are.
    store.connection.execute("PRAGMA query_only = ON")

    dave = world.user("dave")
    dave.connect()
    refusal = dave.refused(dave.conn.register("dave", PASSWORD), ErrorCode.UNAVAILABLE)
    assert refusal.message == (
        "the server cannot store anything now (database is read-only); try later"
    )
    alice.refused(alice.conn.send_message("bob", "during"), ErrorCode.UNAVAILABLE)
    # What needs no write still works: lists, history, and resuming a session.
    assert [f.username for f in alice.ok(alice.conn.list_friends(), m.Friends).friends] == ["bob"]
    history = alice.ok(alice.conn.get_history("bob"), m.History)
    assert [message.text for message in history.messages] == ["before"]
    alice.close()
    alice.connect()
    assert alice.resume().username == "alice"

    # Writable again: it recovers by itself.
    store.connection.execute("PRAGMA query_only = OFF")
    dave.ok(dave.conn.register("dave", PASSWORD))
    alice.send("bob", BIG)
    world.run_until(lambda: bob.texts() == ["before", BIG])
    world.check_server_health()


def test_a_login_rolled_back_leaves_the_connection_anonymous(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    phone = world.user("alice", device="phone")
    phone.connect()
    world.host.hold_commits = True
    login = phone.conn.login("alice", PASSWORD)
    sent = alice.conn.send_message("bob", "in the same batch")
    world.run_until(lambda: world.server.stats.messages_accepted == 1, what="the batch")
    # COMMIT itself finds the disk full: the batch (session row, message) is lost.
    world.store.fail_commits = StoreUnavailableError("disk full")
    world.host.hold_commits = False
    phone.refused(login, ErrorCode.UNAVAILABLE)
    alice.refused(sent, ErrorCode.UNAVAILABLE)
    world.settle(2.0)
    assert bob.received() == []
    # The connection is anonymous again: its session does not exist.
    world.store.fail_commits = None
    phone.refused(phone.conn.list_friends(), ErrorCode.NOT_LOGGED_IN)
    phone.login()
    assert [f.username for f in phone.ok(phone.conn.list_friends(), m.Friends).friends] == ["bob"]
    world.check_server_health()


def test_pushes_dropped_with_a_lost_batch_come_again_from_the_store(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    alice.send("bob", "one")
    world.run_until(lambda: bob.texts() == ["one"])
    # Bob's acknowledgement of "one" and the push of "two" are lost with a batch.
    world.host.hold_commits = True
    alice.conn.send_message("bob", "two")
    world.run_until(lambda: world.server.stats.messages_accepted == 2, what="two stored")
    world.store.fail_commits = StoreUnavailableError("disk full")
    world.host.hold_commits = False
    world.settle(0.5)
    world.store.fail_commits = None
    alice.send("bob", "two again")
    world.settle(5.0)
    assert bob.texts() == ["one", "two again"]
    world.check_server_health()


class FailingRefill(SQLiteStore):
    """Fails the read that comes after a login's write, once."""

    fail_next: bool = False

    def pending_deliveries(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailableError("disk I/O error")
        return super().pending_deliveries(*args, **kwargs)


def test_a_login_that_fails_after_its_write_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    world = ChatWorld(StoreFactory("sqlite", path))
    (alice,) = world.signed_up("alice")
    world.restart_server()
    failing = FailingRefill(sqlite3.connect(path))
    world.host.store.inner.close()
    world.host.store.inner = failing
    sessions_before = failing.connection.execute("SELECT COUNT(*) FROM sessions").fetchone()
    failing.fail_next = True
    alice.connect()
    response = alice.wait(alice.conn.login("alice", PASSWORD))
    assert isinstance(response, m.ErrorResponse) and response.code is ErrorCode.UNAVAILABLE
    world.settle(1.0)
    # The session row the login wrote was undone with the rest of the request.
    sessions_after = failing.connection.execute("SELECT COUNT(*) FROM sessions").fetchone()
    assert sessions_after == sessions_before
    alice.login()


def test_a_lost_batch_neither_hides_caught_up_nor_logs_out_a_session_that_exists(
    world: ChatWorld,
) -> None:
    """Found in review: a retracted caught_up push was dropped for good (the window
    stayed live, and a scripted inbox waited for it until its timeout), and a
    retracted resume logged the connection out of a session that did exist."""
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, carol)
    token = bob.token
    assert token is not None
    bob.close()
    bob.connect()
    world.host.hold_commits = True
    handled = world.server.stats.requests
    alice.conn.send_message("carol", "a write in the same batch")
    resume = bob.conn.resume(token)  # writes nothing; pushes caught_up at once
    world.run_until(lambda: world.server.stats.requests == handled + 2, what="both")
    world.store.fail_commits = StoreUnavailableError("disk full")
    world.host.hold_commits = False
    bob.refused(resume, ErrorCode.UNAVAILABLE)
    world.store.fail_commits = None
    # The store is refilled a second later: caught_up comes after all.
    world.run_until(lambda: bob.conn.caught_up, max_time=5.0, what="caught_up again")
    # And the session, which exists, still serves the connection.
    bob.ok(bob.conn.list_friends(), m.Friends)


def test_a_friendship_lost_with_its_batch_is_not_remembered(world: ChatWorld) -> None:
    """The server keeps online users' friends in memory: what a lost batch wrote
    must not stay there."""
    alice, bob = world.signed_up("alice", "bob")
    bob.ok(bob.conn.invite("alice"))
    world.host.hold_commits = True
    handled = world.server.stats.requests
    accept = alice.conn.accept_invitation("bob")
    send = alice.conn.send_message("bob", "friends at last?")  # reads the new friendship
    world.run_until(lambda: world.server.stats.requests == handled + 2, what="both")
    world.store.fail_commits = StoreUnavailableError("disk full")
    world.host.hold_commits = False
    alice.refused(accept, ErrorCode.UNAVAILABLE)
    alice.refused(send, ErrorCode.UNAVAILABLE)
    world.store.fail_commits = None
    alice.refused(alice.conn.send_message("bob", "and now?"), ErrorCode.NOT_FRIENDS)
    alice.ok(alice.conn.accept_invitation("bob"))
    alice.send("bob", "now we are")


def test_a_revoke_in_a_lost_batch_disconnects_nobody(tmp_path: Path) -> None:
    # Found by review: the revoked device was closed at once, although the batch
    # that deleted its session could still be lost (and was: the session stayed).
    world = ChatWorld(StoreFactory("sqlite", tmp_path / "db.sqlite3"))
    (alice,) = world.signed_up("alice")
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    laptop.login()
    (laptop_id,) = (
        s.session_id
        for s in laptop.ok(laptop.conn.list_sessions(), m.Sessions).sessions
        if s.current
    )
    world.store.fail_commits = StoreUnavailableError("disk full")
    alice.refused(alice.conn.revoke_session(laptop_id), ErrorCode.UNAVAILABLE)
    world.store.fail_commits = None
    world.settle()
    assert laptop_id in [
        s.session_id for s in alice.ok(alice.conn.list_sessions(), m.Sessions).sessions
    ]
    assert laptop.conn.is_connected
    assert laptop.ok(laptop.conn.list_friends(), m.Friends).friends == ()
    # Once it can be stored, the revoke closes the laptop as it should.
    alice.ok(alice.conn.revoke_session(laptop_id))
    world.settle()
    assert not laptop.conn.is_connected


def test_a_step_that_loses_a_race_with_another_node_is_done_again(world: ChatWorld) -> None:
    # On PostgreSQL, two nodes' batches can deadlock: one step is rolled back to its
    # savepoint (the rest of the batch stands) and done again at once.
    alice, _bob, _carol = friends(world)
    store = world.store
    original = store.join_room
    races: list[StoreUnavailableError] = []

    def racing(room: str, username: str, now: float) -> bool:
        if races:
            raise races.pop()
        return bool(original(room, username, now))

    store.join_room = racing  # type: ignore[attr-defined]
    lost = StoreUnavailableError("database conflict", "deadlock detected", conflict=True)
    races.extend([lost, lost])
    alice.ok(alice.conn.join_room("#after-two-races"))
    assert world.server.stats.steps_retried == 2
    # One that keeps losing is answered unavailable (the client may try again) ...
    races.extend([lost, lost, lost])
    alice.refused(alice.conn.join_room("#lost-thrice"), ErrorCode.UNAVAILABLE)
    # ... and a failure that is no race is not done again.
    races.append(StoreUnavailableError("disk full"))
    alice.refused(alice.conn.join_room("#disk-full"), ErrorCode.UNAVAILABLE)
    assert world.server.stats.steps_retried == 4
    assert not races
    rooms = alice.ok(alice.conn.list_rooms(), m.Rooms).rooms
    assert [r.room for r in rooms] == ["#after-two-races"]
