"""The server's limits, rate limits and handling of abuse; its configuration, hash
jobs and token buckets in isolation."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat_helpers import (
    PASSWORD,
    SERVER_ADDRESS,
    ChatWorld,
    StoreFactory,
    test_config,
)
from udpchat_proto import CloseCode, TransportConfig
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.codec import CODEC_VERSION, decode, encode
from udpchat_proto.chat.config import SERVER_RECEIVE_LIMIT
from udpchat_proto.chat.events import Disconnected
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams, hash_password
from udpchat_proto.chat.server import ChatServer, HashJob, ServerConfig
from udpchat_proto.chat.store import Store
from udpchat_proto.chat.validation import LIST_MAX
from udpchat_proto.errors import DecodeError, ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.ratelimit import KEYED_LIMITER_MIN_PRUNE, KeyedLimiter, RateLimit, TokenBucket
from udpchat_proto.transport import ClientTransport, ConnectionTerminated, PayloadReceived
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.stores.sqlite import SQLiteStore


class RawClient:
    """A bare transport speaking raw payloads, to do what the client library refuses to."""

    def __init__(self, world: ChatWorld, name: str, host: str = "127.9.0.1") -> None:
        self.world = world
        self.name = name
        self.transport = ClientTransport(
            server_address=SERVER_ADDRESS, random=SeededRandomSource(name)
        )
        world.net.add(name, self.transport, (host, 40000 + len(world.net.nodes)))
        self.transport.connect(world.net.now)

    def send(self, message: m.Message) -> None:
        self.transport.send(encode(message))

    def answers(self) -> list[m.Message]:
        return [decode(e.payload) for e in self.world.net.events_of(self.name, PayloadReceived)]

    def closed(self) -> bool:
        return bool(self.world.net.events_of(self.name, ConnectionTerminated))


# --- rate limits over the network ------------------------------------------------------------


def test_failed_logins_are_throttled_per_user(stores: StoreFactory) -> None:
    config = test_config(
        login_failures_per_user=RateLimit(burst=3, interval=60.0),
        login_failures_beyond_ceiling=RateLimit(burst=1, interval=3600.0),
    )
    world = ChatWorld(stores, config=config)
    (alice,) = world.signed_up("alice")
    mallory = world.user("mallory")
    mallory.connect()
    for _ in range(4):  # the ceiling's 3, then the address's own allowance beyond it
        mallory.refused(mallory.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
    jobs = world.server.stats.hash_jobs
    # Even the right password is refused now from where the guesses came, unhashed.
    mallory.refused(mallory.conn.login("alice", PASSWORD), ErrorCode.RATE_LIMITED)
    assert world.server.stats.hash_jobs == jobs
    # The owner, from an address that has not failed, gets in all the same.
    other = world.user("alice", device="tablet")
    other.connect()
    assert other.ok(other.conn.login("alice", PASSWORD), m.LoggedIn).username == "alice"
    # Other users are not affected; the budget comes back with time.
    world.signed_up("bob")
    world.net.run_for(61.0)
    assert mallory.ok(mallory.conn.login("alice", PASSWORD), m.LoggedIn).username == "alice"
    assert alice.conn.username == "alice"


# --- the connection cap -----------------------------------------------------------------------


def capped(max_connections: int) -> ServerConfig:
    transport = TransportConfig(
        max_connections=max_connections, max_receive_message_size=SERVER_RECEIVE_LIMIT
    )
    return test_config(transport=transport)


def open_flood_connection(world: ChatWorld, name: str, host: str) -> ClientTransport:
    """An anonymous connection that never logs in and PINGs every 2 s (so that it
    is never the one silent the longest)."""
    client = ClientTransport(
        server_address=SERVER_ADDRESS,
        config=TransportConfig(keepalive_interval=2.0),
        random=SeededRandomSource(name),
    )
    world.net.add(name, client, (host, 30000 + len(world.net.nodes)))
    client.connect(world.net.now)
    return client


def test_a_connection_flood_from_17_addresses_never_ends_a_logged_in_user(
    stores: StoreFactory,
) -> None:
    """The attack of the issue, scaled down: 17 addresses filled ``max_connections``
    with anonymous connections that PING every 2 s, and the 5 idle logged-in users,
    being the longest silent, were all closed with "server busy"."""
    world = ChatWorld(stores, config=capped(40))
    users = world.signed_up("u0", "u1", "u2", "u3", "u4")
    world.befriend(users[0], users[1])
    flood: list[ClientTransport] = []
    for wave in range(4):  # 68 connections for the 35 places left
        for p in range(17):
            flood.append(open_flood_connection(world, f"flood-{p}-{wave}", f"198.51.100.{p + 1}"))
        world.settle(3.0)
    world.settle(30.0)  # the users idle (a PING every 10 s); the flood keeps talking
    for user in users:
        assert not [e for e in user.events() if isinstance(e, Disconnected)], user.name
    # They are still logged in, and still talk.
    users[0].send("u1", "still here")
    world.run_until(lambda: users[1].texts() == ["still here"], what="the message")
    # The flood churned among its own addresses, each keeping a fair share.
    info = world.server.connection_info()
    assert len(info) == 40 and sum(c.username is not None for c in info) == 5
    per_address: dict[str, int] = {}
    for connection in info:
        if connection.username is None:
            per_address[connection.address[0]] = per_address.get(connection.address[0], 0) + 1
    assert len(per_address) == 17 and max(per_address.values()) - min(per_address.values()) <= 1
    assert world.server.transport_dropped["connection_limit"] == 68 - 35
    world.check_server_health()


def test_a_newcomer_is_refused_with_the_reason_when_only_users_remain(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores, config=capped(3))
    users = world.signed_up("u0", "u1", "u2")
    stranger = world.user("stranger")
    stranger.connect(wait=False)
    world.run_until(
        lambda: any(isinstance(e, Disconnected) for e in stranger.events()), what="refusal"
    )
    (refused,) = [e for e in stranger.events() if isinstance(e, Disconnected)]
    assert refused.code is CloseCode.SERVER_BUSY
    assert refused.reason == "server busy: all 3 connections in use; try later"
    assert world.server.transport_dropped["connection_refused"] == 1
    for user in users:
        user.ok(user.conn.list_friends(), m.Friends)
    # A user who logs out is anonymous again: the next newcomer takes their place.
    users[2].ok(users[2].conn.logout())
    late = world.user("late")
    late.connect()
    world.run_until(
        lambda: any(isinstance(e, Disconnected) for e in users[2].events()), what="eviction"
    )
    late.ok(late.conn.register("late", PASSWORD))
    for user in users[:2]:
        user.ok(user.conn.list_friends(), m.Friends)


def test_one_account_on_many_connections_cannot_hold_the_table(stores: StoreFactory) -> None:
    """Only a user's first ``protected_connections_per_user`` connections are kept at
    the cap: one session resumed on many connections does not lock newcomers out."""
    world = ChatWorld(stores, config=capped(12))
    users = world.signed_up("u0", "u1")
    (mallory,) = world.signed_up("mallory")
    assert mallory.token is not None and world.config.protected_connections_per_user == 8
    for i in range(12):  # her session on 12 more connections: 15 for 12 places
        conn = ClientConnection(
            server_address=SERVER_ADDRESS,
            expected_server_key=world.key.public_bytes,
            random=SeededRandomSource(f"mallory-{i}"),
        )
        world.net.add(f"mallory-{i}", conn, ("198.51.100.7", 31000 + i))
        conn.connect(world.net.now)
        world.settle(0.5)
        if conn.is_connected:
            conn.resume(mallory.token)
            world.settle(0.5)
    # A newcomer still gets in, in place of one of hers beyond the eight.
    newcomer = world.user("newcomer")
    newcomer.connect()
    newcomer.ok(newcomer.conn.register("newcomer", PASSWORD))
    newcomer.login()
    for user in [*users, mallory]:
        user.ok(user.conn.list_friends(), m.Friends)
    hers = [c for c in world.server.connection_info() if c.username == "mallory"]
    assert len(hers) == 12 - 2 - 1 and world.server.transport_dropped["connection_limit"] == 4
    world.check_server_health()


def test_failed_logins_are_throttled_per_address(stores: StoreFactory) -> None:
    limit = RateLimit(burst=2, interval=30.0)
    world = ChatWorld(stores, config=test_config(login_failures_per_address=limit))
    world.signed_up("alice", "bob", "carol")
    mallory = world.user("mallory")
    mallory.connect()
    mallory.refused(mallory.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
    mallory.refused(mallory.conn.login("nobody", "guess guess"), ErrorCode.BAD_CREDENTIALS)
    mallory.refused(mallory.conn.login("carol", PASSWORD), ErrorCode.RATE_LIMITED)
    # Another address may still log in as carol.
    carol = world.user("carol", device="laptop")
    carol.connect()
    carol.login()
    world.net.run_for(31.0)
    mallory.refused(mallory.conn.login("bob", "guess guess"), ErrorCode.BAD_CREDENTIALS)


def test_registrations_are_throttled_per_address(stores: StoreFactory) -> None:
    limit = RateLimit(burst=2, interval=60.0)
    world = ChatWorld(stores, config=test_config(registrations_per_address=limit))
    spammer = world.user("spammer")
    spammer.connect()
    spammer.ok(spammer.conn.register("one", PASSWORD))
    spammer.ok(spammer.conn.register("two", PASSWORD))
    spammer.refused(spammer.conn.register("three", PASSWORD), ErrorCode.RATE_LIMITED)
    world.net.run_for(60.0)
    spammer.ok(spammer.conn.register("three", PASSWORD))


def test_message_rate_is_per_user_whatever_the_sessions(stores: StoreFactory) -> None:
    """Four sessions used to send four budgets' worth in a burst."""
    limit = RateLimit(burst=30, interval=1.0)
    world = ChatWorld(stores, config=test_config(message_rate=limit))
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    devices = [alice]
    for n in range(3):
        device = world.user("alice", device=str(n))
        device.connect()
        device.login()  # a session of its own
        devices.append(device)
    requests = [(d, d.conn.send_message("bob", f"{n}")) for d in devices for n in range(30)]
    world.settle(0.5)
    answers = [device.wait(rid) for device, rid in requests]
    accepted = [a for a in answers if isinstance(a, m.MessageAccepted)]
    assert len(accepted) == 30  # one budget for the user, not one per session
    assert all(
        isinstance(a, m.ErrorResponse) and a.code is ErrorCode.RATE_LIMITED
        for a in answers
        if not isinstance(a, m.MessageAccepted)
    )


def test_acknowledgements_count_against_the_request_rate(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(request_rate=RateLimit(burst=5, interval=60.0)))
    world.signed_up("alice")
    raw = RawClient(world, "raw")
    raw.send(m.Login(request_id=1, username="alice", password=PASSWORD))  # one request
    world.run_until(lambda: bool(raw.answers()), what="the login")
    ids = tuple(bytes([n]) * 16 for n in range(3))
    for _ in range(6):
        raw.send(m.AcknowledgeDelivery(message_ids=ids))
    world.settle(0.5)
    assert world.server.stats.acknowledgements_ignored == 2  # 6 - the 4 left


def test_joining_and_leaving_rooms_is_rate_limited(stores: StoreFactory) -> None:
    limit = RateLimit(burst=4, interval=60.0)
    world = ChatWorld(stores, config=test_config(membership_changes_per_user=limit))
    alice, bob = world.signed_up("alice", "bob")
    bob.ok(bob.conn.join_room("#busy"))
    pushes_before = len(bob.pushes(m.RoomMembershipChanged))
    for _ in range(2):
        alice.ok(alice.conn.join_room("#busy"))
        alice.ok(alice.conn.leave_room("#busy"))
    alice.refused(alice.conn.join_room("#busy"), ErrorCode.RATE_LIMITED)
    world.settle(0.5)
    assert len(bob.pushes(m.RoomMembershipChanged)) - pushes_before == 4
    # Joining a room one is in, or leaving one one is not in, costs nothing.
    bob.ok(bob.conn.join_room("#busy"))


def test_a_list_over_the_limit_is_refused_before_it_is_converted() -> None:
    ids = [f"{n:032x}" for n in range(LIST_MAX + 1)]
    data = (
        bytes([CODEC_VERSION]) + json.dumps({"type": "ack_delivery", "message_ids": ids}).encode()
    )
    with pytest.raises(DecodeError) as refused:
        decode(data)
    assert refused.value.reason == "invalid_field" and "at most" in refused.value.detail


def test_message_rate_per_login_session(stores: StoreFactory) -> None:
    limit = RateLimit(burst=3, interval=1.0)
    world = ChatWorld(stores, config=test_config(message_rate=limit))
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    ids = [alice.conn.send_message("bob", f"m{i}") for i in range(4)]
    for rid in ids[:3]:
        alice.ok(rid, m.MessageAccepted)
    alice.refused(ids[3], ErrorCode.RATE_LIMITED)
    # The budget is the user's: every connection and session shares it.
    laptop = world.user("alice", device="laptop")
    laptop.token = alice.token
    laptop.connect()
    laptop.resume()
    laptop.refused(laptop.conn.send_message("bob", "from the laptop"), ErrorCode.RATE_LIMITED)
    # The refused message was not stored; it may be sent again, with its id, later.
    refused = alice.conn.pending_request(ids[3])
    assert refused is None  # answered
    world.net.run_for(1.5)
    alice.send("bob", "m3")
    world.settle()
    assert bob.texts() == ["m0", "m1", "m2", "m3"]


def test_request_rate_per_connection(stores: StoreFactory) -> None:
    limit = RateLimit(burst=5, interval=1.0)
    world = ChatWorld(stores, config=test_config(request_rate=limit))
    (alice,) = world.signed_up("alice")  # register + login: 2 of the 5
    ids = [alice.conn.list_online() for _ in range(5)]
    for rid in ids[:3]:
        alice.ok(rid, m.OnlineUsers)
    for rid in ids[3:]:
        alice.refused(rid, ErrorCode.RATE_LIMITED)
    world.net.run_for(2.0)
    alice.ok(alice.conn.list_online(), m.OnlineUsers)


def test_too_many_pending_hash_jobs(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(max_pending_hash_jobs=2))
    users = world.signed_up("u1", "u2", "u3")
    for user in users:
        user.ok(user.conn.logout())
    world.host.hash_delay = 5.0
    first = users[0].conn.login("u1", PASSWORD)
    second = users[1].conn.login("u2", PASSWORD)
    world.net.run_for(1.0)
    users[2].refused(users[2].conn.login("u3", PASSWORD), ErrorCode.RATE_LIMITED)
    users[0].ok(first, m.LoggedIn)
    users[1].ok(second, m.LoggedIn)
    users[2].ok(users[2].conn.login("u3", PASSWORD), m.LoggedIn)


# --- abuse --------------------------------------------------------------------------------------


def test_violations_are_dropped_counted_then_close_the_connection(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(max_violations=3))
    raw = RawClient(world, "raw")
    raw.send(m.ListOnline(request_id=1))
    world.run_until(lambda: len(raw.answers()) == 1)
    # Messages only a server sends, and garbage: dropped, not answered.
    raw.send(m.Ok(request_id=2))
    raw.send(m.PresenceChanged(username="alice", online=True))
    raw.transport.send(b"\x01{not json")
    raw.send(m.ListOnline(request_id=3))
    world.run_until(lambda: len(raw.answers()) == 2)
    assert [type(a) for a in raw.answers()] == [m.ErrorResponse, m.ErrorResponse]
    assert world.server.stats.violations == 3
    assert world.server.stats.decode_errors["malformed"] == 1
    assert not raw.closed()
    raw.transport.send(b"\x07garbage")
    world.run_until(raw.closed, what="the abusive connection is closed")
    # PROTOCOL.md: a peer that broke the protocol is closed with PROTOCOL_VIOLATION,
    # not NORMAL_CLOSE (a close the client asked for).
    (terminated,) = world.net.events_of("raw", ConnectionTerminated)
    assert terminated.code is CloseCode.PROTOCOL_VIOLATION and terminated.by_peer
    assert terminated.reason == "too many bad messages; the last: undecodable payload (bad_version)"
    assert world.server.stats.closed_for_abuse == 1
    assert world.server.connection_count == 0


def test_too_many_requests_queued_behind_a_hash_job_close_the_connection(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores, config=test_config(max_queued_requests=3))
    world.signed_up("alice")
    world.host.hash_delay = 5.0
    raw = RawClient(world, "raw")
    raw.send(m.Login(request_id=1, username="alice", password=PASSWORD))
    for request_id in range(2, 5):
        raw.send(m.ListOnline(request_id=request_id))
    world.net.run_for(1.0)
    assert not raw.closed()
    raw.send(m.ListOnline(request_id=5))
    world.run_until(raw.closed)
    assert raw.answers() == []
    assert world.server.stats.closed_for_abuse == 1
    (terminated,) = world.net.events_of("raw", ConnectionTerminated)
    assert terminated.code is CloseCode.PROTOCOL_VIOLATION


def test_acknowledgements_before_login_are_ignored(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    raw = RawClient(world, "raw")
    raw.send(m.AcknowledgeDelivery(message_ids=(b"\x00" * 16,)))
    raw.send(m.ListOnline(request_id=1))
    world.run_until(lambda: len(raw.answers()) == 1)
    assert world.server.stats.violations == 0


class FailingStore(MemoryStore):
    """A store some of whose reads break (a disk error, say)."""

    def friends_of(self, username: str) -> list[str]:
        raise OSError("disk on fire")

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[m.ChatMessage]:
        raise OSError("disk on fire")


def test_a_failing_store_is_answered_internal_and_counted(tmp_path: Path) -> None:
    stores = StoreFactory("memory", tmp_path / "x", memory=FailingStore())
    # The open online list reads no store: the request that shows the connection
    # goes on after the failures.
    world = ChatWorld(stores, config=test_config(public_presence=True))
    alice, bob = world.signed_up("alice", "bob")
    # Logging in announces presence to friends: that lookup failed, and was counted,
    # but the login itself stands.
    assert world.server.stats.internal_errors == 2
    alice.refused(alice.conn.get_history("bob"), ErrorCode.INTERNAL)
    alice.refused(alice.conn.list_friends(), ErrorCode.INTERNAL)
    alice.ok(alice.conn.list_online(), m.OnlineUsers)  # the connection goes on
    assert world.server.stats.internal_errors == 4
    assert isinstance(world.server.stats.last_internal_error, OSError)
    bob.close()  # presence on the way out fails too, and is only counted
    assert world.server.online_users == ["alice"]


class FailingFriendshipStore(SQLiteStore):
    """A SQLite store whose disk fills up just as a friendship is written."""

    def add_friendship(self, a: str, b: str, now: float) -> None:
        raise sqlite3.OperationalError("database or disk is full")


class FailingFriendshipStores(StoreFactory):
    def open(self) -> Store:
        return FailingFriendshipStore.open(self.path)


def test_a_request_failing_half_way_leaves_none_of_its_writes(tmp_path: Path) -> None:
    world = ChatWorld(FailingFriendshipStores("sqlite", tmp_path / "db.sqlite3"))
    alice, bob = world.signed_up("alice", "bob")
    alice.ok(alice.conn.invite("bob"))
    # Accepting deletes the invitation, then fails to add the friendship: the
    # deletion must not be committed with the batch, or the invitation is lost.
    bob.refused(bob.conn.accept_invitation("alice"), ErrorCode.INTERNAL)
    invitations = bob.ok(bob.conn.list_invitations(), m.Invitations)
    assert invitations.incoming == ("alice",)
    world.restart_server()  # what was committed is all there is
    bob.connect()
    bob.resume()
    invitations = bob.ok(bob.conn.list_invitations(), m.Invitations)
    assert invitations.incoming == ("alice",)
    assert world.server.stats.internal_errors == 0


# --- jobs and timers, driven directly -------------------------------------------------------


@pytest.fixture
def bare_server() -> Iterator[ChatServer]:
    yield ChatServer(
        store=MemoryStore(),
        static_key=ServerKey.generate(SeededRandomSource(1)),
        clock=lambda: 1_700_000_000.0,
        config=test_config(session_sweep_interval=100.0),
        random=SeededRandomSource(2),
    )


def test_hash_job_runs_scrypt_and_hides_the_password() -> None:
    params = ScryptParams(n=16, r=1, p=1)
    job = HashJob(job_id=1, password="secret password", salt=b"s" * 16, params=params)
    assert job.run() == hash_password("secret password", b"s" * 16, params)
    assert "secret" not in repr(job)


def test_unknown_hash_job_is_ignored(bare_server: ChatServer) -> None:
    bare_server.complete_hash_job(12345, b"x" * 32, 1000.0)
    assert bare_server.take_hash_jobs() == []
    assert not bare_server.writes_pending


def test_a_login_whose_connection_died_is_dropped(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    world.signed_up("alice")
    world.host.hash_delay = 100.0
    quitter = world.user("alice", device="quitter")
    quitter.connect()
    quitter.conn.login("alice", PASSWORD)
    world.net.run_for(1.0)
    assert world.server.pending_hash_jobs == 1
    quitter.close()
    world.net.run_for(200.0)
    assert world.server.pending_hash_jobs == 0
    assert world.server.online_users == ["alice"]
    world.check_server_health()


def test_timer_includes_the_session_sweep(bare_server: ChatServer) -> None:
    assert bare_server.get_timer() is None
    bare_server.handle_timer(1000.0)  # the first call sweeps at once
    assert bare_server.writes_pending  # the sweep writes (expiry)
    assert bare_server.get_timer() == 1100.0
    assert bare_server.commit() is None
    bare_server.handle_timer(1050.0)  # early: nothing to do
    assert not bare_server.writes_pending
    bare_server.handle_timer(1100.0)
    assert bare_server.get_timer() == 1200.0
    assert bare_server.next_event() is None
    assert bare_server.connection_count == 0 and bare_server.online_users == []


def test_undecodable_datagrams_never_raise(bare_server: ChatServer) -> None:
    for data in [b"", b"\x00", b"\xff" * 2000, bytes(range(256))]:
        bare_server.receive_datagram(data, ("127.0.0.9", 1), 1000.0)
    bare_server.datagrams_to_send(1000.0)
    assert bare_server.connection_count == 0


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"session_lifetime": 0},
        {"session_sweep_interval": -1.0},
        {"max_room_members": 0},
        {"max_rooms_per_user": 1.5},
        {"max_pending_hash_jobs": 0},
        {"max_queued_requests": 0},
        {"delivery_window": 1},
        {"max_violations": 0},
        {"message_rate": (3, 1.0)},
        {"scrypt": "fast"},
        {"transport": None},
    ],
)
def test_server_config_checks_its_fields(changes: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        ServerConfig(**changes)


def test_server_config_defaults() -> None:
    config = ServerConfig()
    assert config.session_lifetime == 30 * 86400.0
    assert config.max_room_members == 256 and config.max_rooms_per_user == 64
    assert config.scrypt == ScryptParams()
    assert config.login_failures_per_user_address == RateLimit(burst=5, interval=60.0)
    assert config.login_failures_per_user == RateLimit(burst=100, interval=6.0)
    assert config.logins_per_user == RateLimit(burst=10, interval=6.0)
    assert (config.max_hash_jobs_per_address, config.max_hash_jobs_per_user) == (8, 2)
    assert config.max_sessions_per_user == 32


# --- token buckets ------------------------------------------------------------------------------


def test_token_bucket_spends_and_refills() -> None:
    bucket = TokenBucket(RateLimit(burst=2, interval=10.0), now=0.0)
    assert bucket.spend(now=0.0) and bucket.spend(now=0.0)
    assert not bucket.spend(now=0.0)
    assert not bucket.available(now=9.9)
    assert bucket.available(now=10.0)
    assert bucket.spend(now=10.0)
    assert not bucket.is_full(now=15.0)
    assert bucket.is_full(now=30.0)
    # A clock stepping back spends normally and refills nothing.
    assert bucket.spend(now=5.0) and bucket.spend(now=5.0)
    assert not bucket.spend(now=5.0)
    assert not bucket.available(now=29.0)  # still 30 + 10 for the next token
    assert bucket.available(now=40.0)


def test_a_spend_of_many_overdraws_and_the_next_waits_until_it_is_paid() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(burst=4, interval=1.0))
    assert limiter.spend_overdrawn("a", 10, now=0.0)  # more than a burst: whole
    assert not limiter.spend_overdrawn("a", 1, now=0.0)
    assert not limiter.available("a", now=6.9)  # -6, back to 1 after 7 s
    assert limiter.spend_overdrawn("a", 2, now=7.0)
    assert not limiter.spend_overdrawn("a", 1, now=7.5)
    assert limiter.spend_overdrawn("b", 3, now=0.0) and limiter.spend_overdrawn("b", 1, now=0.0)
    assert not limiter.available("b", now=0.0)


def test_keyed_limiter_forgets_full_buckets() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(burst=1, interval=5.0))
    assert limiter.available("a", now=0.0)
    assert limiter.spend("a", now=0.0)
    assert not limiter.spend("a", now=1.0)
    assert limiter.spend("b", now=1.0)
    assert len(limiter) == 2
    assert limiter.prune(now=5.5) == 1  # a is full again, b is not
    assert limiter.prune(now=6.0) == 1
    assert len(limiter) == 0
    limiter.spend("c", now=7.0)
    limiter.forget("c")
    assert limiter.available("c", now=7.0)


def test_keyed_limiter_memory_is_bounded_without_an_explicit_prune() -> None:
    # Failed logins to ever-new usernames from ever-new addresses: each bucket
    # refills within burst * interval = 5 s, and at 1000 new keys a second at most
    # about 5,000 buckets are not full at any moment. The server prunes only at its
    # hourly sweep; the limiter must not hold an hour of keys (3.6 million) meanwhile.
    limiter: KeyedLimiter[str] = KeyedLimiter(RateLimit(burst=1, interval=5.0))
    peak = 0
    for i in range(200_000):
        assert limiter.spend(f"user{i}", now=i / 1000)
        peak = max(peak, len(limiter))
    assert peak <= 2 * 5_000 + KEYED_LIMITER_MIN_PRUNE
    # Pruning never forgets a bucket that still holds back a key.
    assert not limiter.spend("user199999", now=199.9995)


@pytest.mark.parametrize("burst, interval", [(0, 1.0), (1, 0.0), (1.5, 1.0), (1, -1.0)])
def test_rate_limit_checks_its_fields(burst: Any, interval: Any) -> None:
    with pytest.raises(ValueError):
        RateLimit(burst=burst, interval=interval)


def test_a_recipient_with_too_much_waiting_refuses_more(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(max_waiting_per_recipient=3))
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    alice.ok(alice.conn.join_room("#r"))
    bob.ok(bob.conn.join_room("#r"))
    bob.close()
    for n in range(3):
        alice.send("bob", f"{n}")
    refusal = alice.refused(alice.conn.send_message("bob", "3"), ErrorCode.RECIPIENT_FULL)
    assert refusal.message == "bob has 3 messages waiting already; try again later"
    # Room messages are not counted: the room's log is one for all its members.
    alice.send("#r", "to the room")
    # Once bob's device has them, there is room again.
    bob.connect()
    bob.resume()
    world.run_until(lambda: bob.texts() == ["0", "1", "2", "to the room"])
    world.settle(1.0)
    alice.send("bob", "3")


def test_the_server_receives_no_message_larger_than_its_requests(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config())
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    # The largest legitimate request: 4096 bytes of text that JSON escapes 6 to 1.
    worst = "\x01" * 4096
    assert len(encode(m.SendMessage(request_id=1, message_id=bytes(16), to="bob", text=worst))) > (
        24_000
    )
    alice.send("bob", worst)
    # Anything past the server's limit (64 KiB) is a violation: the connection ends.
    raw = RawClient(world, "raw")
    world.run_until(lambda: raw.transport.is_established, what="raw handshake")
    raw.transport.send(b"\x01" + b"x" * (SERVER_RECEIVE_LIMIT + 1))
    world.run_until(raw.closed, what="the oversized message refused")
    assert world.server.transport_dropped.get("protocol_violation", 0) >= 1


def test_retention_deletes_old_messages_every_device_has(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(retain_days=1.0, session_sweep_interval=3600.0))
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    alice.send("bob", "read")
    world.run_until(lambda: bob.texts() == ["read"])
    world.settle(1.0)
    bob.close()
    alice.send("bob", "unread")
    alice.close()
    world.net.run_for(2 * 86400.0, max_steps=10_000_000)
    assert world.server.stats.messages_deleted == 1
    history = world.store.history("alice", "bob", 10)
    assert [message.text for message in history] == ["unread"]
    # Nothing acknowledged is lost: the unread one still comes.
    bob.connect()
    bob.resume()
    world.run_until(lambda: bob.texts() == ["read", "unread"])


def test_a_join_and_a_leave_in_one_batch_push_nothing(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    bob.ok(bob.conn.join_room("#quiet"))
    world.settle(0.5)
    before = len(bob.pushes(m.RoomMembershipChanged))
    world.host.hold_commits = True  # both requests land in one batch
    handled = world.server.stats.requests
    join, leave = alice.conn.join_room("#quiet"), alice.conn.leave_room("#quiet")
    world.run_until(lambda: world.server.stats.requests == handled + 2, what="both")
    world.host.hold_commits = False
    alice.ok(join)
    alice.ok(leave)
    world.settle(1.0)
    assert len(bob.pushes(m.RoomMembershipChanged)) == before  # coalesced away
    # In separate batches, each change is pushed.
    alice.ok(alice.conn.join_room("#quiet"))
    world.settle(0.5)
    assert bob.pushes(m.RoomMembershipChanged)[-1] == m.RoomMembershipChanged(
        room="#quiet", username="alice", joined=True
    )


def test_room_messages_do_not_fill_a_recipient(stores: StoreFactory) -> None:
    """Found in review: a busy room (or an attacker in it) counted against a member's
    direct messages."""
    world = ChatWorld(stores, config=test_config(max_waiting_per_recipient=3))
    alice, bob, mallory = world.signed_up("alice", "bob", "mallory")
    world.befriend(alice, bob)
    for user in (bob, mallory):
        user.ok(user.conn.join_room("#busy"))
    bob.close()
    for n in range(5):
        mallory.send("#busy", f"noise {n}")
    alice.send("bob", "still gets through")
