"""The chat roles end to end over the simulated network: accounts, sessions,
friends, messages and presence. Every test runs on MemoryStore and on SQLiteStore."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chat_helpers import PASSWORD, SERVER_ADDRESS, ChatWorld, StoreFactory, test_config
from udpchat_proto import messages as m
from udpchat_proto.chat.codec import decode, encode
from udpchat_proto.chat.events import (
    ClientConnected,
    ClientDisconnected,
    Disconnected,
    UserLoggedIn,
    UserLoggedOut,
)
from udpchat_proto.chat.validation import ValidationError
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport import ClientTransport, PayloadReceived


def test_three_users_register_login_invite_accept_chat_unfriend(world: ChatWorld) -> None:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    assert world.server.online_users == ["alice", "bob", "carol"]

    # alice invites bob and carol; bob accepts, carol declines.
    alice.ok(alice.conn.invite("bob"))
    alice.ok(alice.conn.invite("carol"))
    world.settle()
    assert bob.pushes() == [m.InvitationReceived(from_user="alice")]
    assert carol.pushes() == [m.InvitationReceived(from_user="alice")]
    invitations = alice.ok(alice.conn.list_invitations(), m.Invitations)
    assert (invitations.incoming, invitations.outgoing) == ((), ("bob", "carol"))
    invitations = bob.ok(bob.conn.list_invitations(), m.Invitations)
    assert (invitations.incoming, invitations.outgoing) == (("alice",), ())

    bob.ok(bob.conn.accept_invitation("alice"))
    carol.ok(carol.conn.decline_invitation("alice"))
    world.settle()
    assert alice.pushes() == [
        m.InvitationAnswered(by_user="bob", accepted=True),
        m.InvitationAnswered(by_user="carol", accepted=False),
    ]
    friends = alice.ok(alice.conn.list_friends(), m.Friends)
    assert friends.friends == (m.UserPresence(username="bob", online=True),)
    assert alice.ok(alice.conn.list_invitations(), m.Invitations).outgoing == ()

    # They chat; each message is accepted then delivered, in order.
    sent = [alice.send("bob", f"hello {i}") for i in range(3)]
    reply = bob.send("alice", "hi alice")
    world.settle()
    assert bob.texts() == ["hello 0", "hello 1", "hello 2"]
    assert alice.texts() == ["hi alice"]
    assert [msg.id for msg in bob.received()] == [a.message_id for a in sent]
    delivered = bob.received()[0]
    assert (delivered.sender, delivered.to, delivered.sent_at) == ("alice", "bob", sent[0].sent_at)
    assert alice.received()[0].id == reply.message_id

    # Carol is no friend: refused.
    carol.refused(carol.conn.send_message("alice", "hey"), ErrorCode.NOT_FRIENDS)

    # History, oldest first, the last N.
    history = alice.ok(alice.conn.get_history("bob", limit=2), m.History)
    assert [msg.text for msg in history.messages] == ["hello 2", "hi alice"]

    # Unfriend: bob learns it, messages are refused both ways.
    bob.ok(bob.conn.unfriend("alice"))
    world.settle()
    assert alice.pushes(m.Unfriended) == [m.Unfriended(by_user="bob")]
    alice.refused(alice.conn.send_message("bob", "still there?"), ErrorCode.NOT_FRIENDS)
    bob.refused(bob.conn.unfriend("alice"), ErrorCode.NOT_FRIENDS)
    assert alice.ok(alice.conn.list_friends(), m.Friends).friends == ()
    world.check_server_health()


def test_register_and_login_errors(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    eve = world.user("eve")
    eve.connect()
    eve.refused(eve.conn.register("alice", PASSWORD), ErrorCode.USER_EXISTS)
    eve.refused(eve.conn.login("alice", "wrong password"), ErrorCode.BAD_CREDENTIALS)
    unknown = eve.refused(eve.conn.login("nobody", PASSWORD), ErrorCode.BAD_CREDENTIALS)
    wrong = eve.refused(eve.conn.login("alice", "wrong password"), ErrorCode.BAD_CREDENTIALS)
    # The same answer for an unknown user and a wrong password.
    assert unknown.message == wrong.message
    # Both cost a hash job (the same work, so timing tells nothing either), and
    # so did the register of a taken name (see tests/test_name_enumeration.py).
    assert world.server.stats.hash_jobs == 2 + 1 + 3
    # Usernames are case-insensitive.
    eve.refused(eve.conn.register("ALICE", PASSWORD), ErrorCode.USER_EXISTS)
    assert eve.ok(eve.conn.login("Alice", PASSWORD), m.LoggedIn).username == "alice"
    assert alice.conn.username == "alice"


def test_invalid_fields_from_the_network_get_their_error_code(world: ChatWorld) -> None:
    """A raw request with an invalid field is answered with the rule's code, in order."""
    (_alice,) = world.signed_up("alice")
    raw = ClientTransport(
        server_address=SERVER_ADDRESS, random=SeededRandomSource("raw"), config=None
    )
    world.net.add("raw", raw, ("127.9.9.9", 999))
    raw.connect(world.net.now)
    raw.send(encode(m.Login(request_id=900, username="alice", password=PASSWORD)))
    zero_id = '"message_id":"00000000000000000000000000000000"'
    cases = [
        (
            '{"type":"register","request_id":901,"username":"Bad Name!","password":"xxxxxxxx"}',
            ErrorCode.INVALID_USERNAME,
        ),
        (
            '{"type":"register","request_id":902,"username":"okname","password":"short"}',
            ErrorCode.INVALID_PASSWORD,
        ),
        ('{"type":"join_room","request_id":903,"room":"noprefix"}', ErrorCode.INVALID_ROOM),
        (
            '{"type":"send_message","request_id":904,' + zero_id + ',"to":"bob","text":""}',
            ErrorCode.INVALID_TEXT,
        ),
        (
            '{"type":"send_message","request_id":905,'
            + zero_id
            + ',"to":"bob","text":"'
            + "x" * 4097
            + '"}',
            ErrorCode.TOO_LARGE,
        ),
        (
            '{"type":"get_history","request_id":906,"peer":"bob","limit":1000}',
            ErrorCode.BAD_REQUEST,
        ),
        ('{"type":"list_friends","request_id":"907"}', None),  # no readable id: dropped
    ]
    for body, _code in cases:
        raw.send(b"\x01" + body.encode())
    raw.send(encode(m.ListOnline(request_id=908)))

    def answers() -> list[m.Message]:
        return [decode(e.payload) for e in world.net.events_of("raw", PayloadReceived)]

    world.run_until(lambda: any(isinstance(a, m.OnlineUsers) for a in answers()))
    got = answers()
    assert isinstance(got[0], m.LoggedIn)
    assert [(a.request_id, a.code) for a in got[1:-1] if isinstance(a, m.ErrorResponse)] == [
        (901 + i, code) for i, (_body, code) in enumerate(cases) if code is not None
    ]
    assert got[-1] == m.OnlineUsers(request_id=908, usernames=("alice",))
    assert world.server.stats.violations == 1
    assert sum(world.server.stats.decode_errors.values()) == 7


def test_the_client_library_refuses_invalid_arguments(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    # The client library does not even send such requests: it raises at once with the
    # code the server would use.
    calls: list[tuple[Callable[[], int], ErrorCode]] = [
        (lambda: alice.conn.register("Bad Name!", PASSWORD), ErrorCode.INVALID_USERNAME),
        (lambda: alice.conn.login("alice", "short"), ErrorCode.INVALID_PASSWORD),
        (lambda: alice.conn.join_room("noprefix"), ErrorCode.INVALID_ROOM),
        (lambda: alice.conn.send_message("bob", ""), ErrorCode.INVALID_TEXT),
        # (No database keeps a NUL as text; on PostgreSQL it cost a whole batch.)
        (lambda: alice.conn.send_message("bob", "a\x00b"), ErrorCode.INVALID_TEXT),
        (lambda: alice.conn.send_message("bob", "x" * 4097), ErrorCode.TOO_LARGE),
        (lambda: alice.conn.get_history("bob", limit=0), ErrorCode.BAD_REQUEST),
        (lambda: alice.conn.resume(b"short"), ErrorCode.BAD_REQUEST),
    ]
    for call, code in calls:
        with pytest.raises(ValidationError) as raised:
            call()
        assert raised.value.code is code


def test_requests_before_login_are_refused(world: ChatWorld) -> None:
    (_alice,) = world.signed_up("alice")
    stranger = world.user("stranger")
    stranger.connect()
    conn = stranger.conn
    for request_id in [
        conn.logout(),
        conn.send_message("alice", "hi"),
        conn.invite("alice"),
        conn.accept_invitation("alice"),
        conn.decline_invitation("alice"),
        conn.cancel_invitation("alice"),
        conn.unfriend("alice"),
        conn.list_invitations(),
        conn.list_friends(),
        conn.list_online(),
        conn.get_history("alice"),
        conn.join_room("#room"),
        conn.leave_room("#room"),
        conn.list_rooms(),
        conn.list_members("#room"),
    ]:
        stranger.refused(request_id, ErrorCode.NOT_LOGGED_IN)
    world.check_server_health()


def test_resume_logout_and_session_expiry(stores: StoreFactory) -> None:
    world = ChatWorld(
        stores, config=test_config(session_lifetime=3600.0, session_sweep_interval=60.0)
    )
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    token = alice.token
    assert token is not None and alice.conn.token == token
    alice.close()
    assert world.server.online_users == ["bob"]

    # A new connection resumes the session: same user, same token.
    alice.connect()
    assert alice.resume().token == token
    assert alice.conn.username == "alice"
    assert world.server.online_users == ["alice", "bob"]

    # Logout ends the session: requests are refused, the token is dead.
    alice.ok(alice.conn.logout())
    assert alice.conn.username is None and alice.conn.token is None
    alice.refused(alice.conn.list_friends(), ErrorCode.NOT_LOGGED_IN)
    alice.refused(alice.conn.resume(token), ErrorCode.BAD_CREDENTIALS)
    assert world.server.online_users == ["bob"]

    # A session unused for longer than its lifetime expires.
    alice.login()
    token = alice.token
    alice.close()
    world.net.run_for(3600.0 + 120.0)
    alice.connect()
    assert token is not None
    alice.refused(alice.conn.resume(token), ErrorCode.BAD_CREDENTIALS)
    assert world.server.stats.sessions_expired >= 1

    # ... but a session in use does not (live sessions are touched at each sweep).
    bob_token = bob.token
    world.net.run_for(2 * 3600.0, max_steps=10_000_000)
    bob.connect()
    assert bob_token is not None
    assert bob.ok(bob.conn.resume(bob_token), m.LoggedIn).username == "bob"
    world.check_server_health()


@pytest.mark.parametrize("step", [3600.0, -3600.0])
def test_a_wall_clock_step_moves_no_timer(world: ChatWorld, step: float) -> None:
    """Timers run on the monotonic ``now``; the wall clock only stamps what is stored."""
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    before = alice.send("bob", "before the step").sent_at
    world.step_wall_clock(step)
    # Idle longer than the keepalive, well short of the idle timeout: nothing ends.
    world.settle(20.0)
    after = alice.send("bob", "after the step").sent_at
    world.settle(20.0)
    assert alice.conn.is_connected and bob.conn.is_connected
    assert world.server.online_users == ["alice", "bob"]
    assert not [e for e in world.server_events() if isinstance(e, ClientDisconnected)]
    # Stored times follow the wall clock, step included.
    assert (after - before).total_seconds() == pytest.approx(step + 20.0, abs=1.0)
    assert bob.texts() == ["before the step", "after the step"]


def test_logout_logs_out_every_connection_of_the_session(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    phone = world.user("alice", device="phone")  # another process, same session
    phone.token = alice.token
    phone.connect()
    phone.resume()
    alice.ok(alice.conn.logout())
    phone.refused(phone.conn.list_friends(), ErrorCode.NOT_LOGGED_IN)
    assert world.server.online_users == []


def test_server_events_for_logging(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    alice.ok(alice.conn.logout())
    alice.close()
    kinds = [type(e) for e in world.server_events()]
    assert kinds == [ClientConnected, UserLoggedIn, UserLoggedOut, ClientDisconnected]


def test_pipelined_requests_after_login_are_answered_in_order(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    token = bob.token
    bob.close()
    # A scripted command: connect, resume and ask at once, without waiting.
    bob.connect(wait=False)
    conn = bob.conn
    assert token is not None
    ids = [
        conn.resume(token),
        conn.list_friends(),
        conn.send_message("alice", "one"),
        conn.list_online(),
        conn.send_message("alice", "two"),
        conn.get_history("alice"),
    ]
    bob.wait(ids[-1])
    answers = [e for e in bob.events() if isinstance(e, m.Response)]
    assert [a.request_id for a in answers] == ids
    assert [type(a) for a in answers] == [
        m.LoggedIn,
        m.Friends,
        m.MessageAccepted,
        m.OnlineUsers,
        m.MessageAccepted,
        m.History,
    ]
    history = answers[-1]
    assert isinstance(history, m.History)
    assert [msg.text for msg in history.messages] == ["one", "two"]

    # The same behind a password login (a hash job in the way) and a register.
    carol = world.user("carol")
    carol.connect(wait=False)
    conn = carol.conn
    ids = [conn.register("carol", PASSWORD), conn.login("carol", PASSWORD), conn.list_friends()]
    carol.wait(ids[-1])
    answers = [e for e in carol.events() if isinstance(e, m.Response)]
    assert [type(a) for a in answers] == [m.Ok, m.LoggedIn, m.Friends]


def test_a_burst_of_logins_does_not_delay_other_users(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    crowd = world.signed_up(*[f"user{i}" for i in range(20)])
    for user in crowd:
        user.ok(user.conn.logout())
    # The worker pool is slow: every hash takes 5 simulated seconds.
    world.host.hash_delay = 5.0
    logins = [user.conn.login(user.name, PASSWORD) for user in crowd]
    pipelined = [user.conn.list_online() for user in crowd]
    world.net.run_for(0.2)
    started = world.net.now
    accepted = alice.send("bob", "not delayed")
    world.run_until(lambda: bob.texts() == ["not delayed"], max_time=2.0)
    assert world.net.now - started < 1.0
    assert world.server.pending_hash_jobs == 20
    assert all(user.response(rid) is None for user, rid in zip(crowd, logins, strict=True))
    assert accepted.message_id == bob.received()[0].id
    # The logins complete later, and each connection's queued request after them.
    for user, login, listing in zip(crowd, logins, pipelined, strict=True):
        user.ok(login, m.LoggedIn)
        user.ok(listing, m.OnlineUsers)


def test_presence_goes_to_friends(world: ChatWorld) -> None:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    bob.close()
    world.settle()
    assert alice.pushes(m.PresenceChanged) == [m.PresenceChanged(username="bob", online=False)]
    bob.connect()
    bob.resume()
    # A second connection of an online user changes nothing.
    second = world.user("bob", device="tablet")
    second.token = bob.token
    second.connect()
    second.resume()
    second.close()
    world.settle()
    assert alice.pushes(m.PresenceChanged) == [
        m.PresenceChanged(username="bob", online=False),
        m.PresenceChanged(username="bob", online=True),
    ]
    friends = alice.ok(alice.conn.list_friends(), m.Friends).friends
    assert friends == (m.UserPresence(username="bob", online=True),)
    # A crashed client goes offline when its connection times out.
    bob.crash()
    world.run_until(
        lambda: m.PresenceChanged(username="bob", online=False) in alice.pushes()[2:],
        max_time=60.0,
    )
    assert carol.pushes(m.PresenceChanged) == []  # not a friend: told nothing
    online = carol.ok(carol.conn.list_online(), m.OnlineUsers)
    assert online.usernames == ("carol",)  # nor shown who is online


def test_the_online_list_shows_friends_and_room_co_members_only(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    alice, bob, carol, dave, _erin = world.signed_up("alice", "bob", "carol", "dave", "erin")
    world.befriend(alice, bob)
    carol.ok(carol.conn.join_room("#tea"))
    alice.ok(alice.conn.join_room("#tea"))
    dave.ok(dave.conn.join_room("#other"))
    assert alice.ok(alice.conn.list_online(), m.OnlineUsers).usernames == (
        "alice",
        "bob",
        "carol",
    )
    assert carol.ok(carol.conn.list_online(), m.OnlineUsers).usernames == ("alice", "carol")
    assert dave.ok(dave.conn.list_online(), m.OnlineUsers).usernames == ("dave",)
    bob.close()
    assert alice.ok(alice.conn.list_online(), m.OnlineUsers).usernames == ("alice", "carol")
    # The open list of the original design, for a server that wants it.
    elsewhere = StoreFactory(stores.kind, stores.path.with_name("public.sqlite3"))
    public = ChatWorld(elsewhere, config=test_config(public_presence=True), seed=1)
    frank, _grace = public.signed_up("frank", "grace")
    assert frank.ok(frank.conn.list_online(), m.OnlineUsers).usernames == ("frank", "grace")


def test_a_session_lives_at_most_its_max_age_used_or_not(stores: StoreFactory) -> None:
    world = ChatWorld(
        stores,
        config=test_config(
            session_max_age=3 * 3600.0, session_lifetime=3600.0, session_sweep_interval=60.0
        ),
    )
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    old = alice.token
    assert old is not None
    # alice keeps her session in use (resumed every 40 minutes: never idle) ...
    for _ in range(4):
        alice.close()
        world.net.run_for(40 * 60.0)
        alice.connect()
        alice.resume()
    # ... bob stays connected throughout; both sessions reach the max age.
    world.net.run_for(3 * 3600.0 - 4 * 40 * 60.0 + 120.0)
    # The sweep ended bob's live session: his connection is logged out.
    bob.refused(bob.conn.list_friends(), ErrorCode.NOT_LOGGED_IN)
    assert "bob" not in world.server.online_users
    alice.close()
    alice.connect()
    alice.refused(alice.conn.resume(old), ErrorCode.BAD_CREDENTIALS)
    assert world.server.stats.sessions_expired >= 2
    alice.login()  # a new session, a new max age
    assert alice.token != old


def test_sessions_are_listed_revoked_and_all_logged_out(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    laptop.login()
    tablet = world.user("alice", device="tablet")
    tablet.connect()
    tablet.login()
    listed = alice.ok(alice.conn.list_sessions(), m.Sessions).sessions
    assert [s.current for s in listed] == [False, False, True]  # newest first
    assert len({s.session_id for s in listed}) == 3
    assert all(s.session_id not in (alice.token, laptop.token) for s in listed)
    (laptop_id,) = (
        s.session_id
        for s in laptop.ok(laptop.conn.list_sessions(), m.Sessions).sessions
        if s.current
    )
    # Revoking the laptop's session closes its connection, with a reason it shows.
    alice.ok(alice.conn.revoke_session(laptop_id))
    world.settle()
    (closed,) = [e for e in laptop.events() if isinstance(e, Disconnected)]
    assert "ended from another device" in closed.reason
    laptop.connect()
    assert laptop.token is not None
    laptop.refused(laptop.conn.resume(laptop.token), ErrorCode.BAD_CREDENTIALS)
    alice.refused(alice.conn.revoke_session(laptop_id), ErrorCode.UNKNOWN_SESSION)
    assert len(alice.ok(alice.conn.list_sessions(), m.Sessions).sessions) == 2
    # Logging out everywhere: the tablet is closed, this connection logged out.
    ended = alice.ok(alice.conn.logout_all(), m.LoggedOutAll)
    assert ended.ended == 2
    world.settle()
    assert [e for e in tablet.events() if isinstance(e, Disconnected)]
    alice.refused(alice.conn.list_sessions(), ErrorCode.NOT_LOGGED_IN)
    assert world.server.online_users == []


def test_a_blocked_user_learns_nothing_they_could_not_learn_anyway(world: ChatWorld) -> None:
    alice, mallory, bob = world.signed_up("alice", "mallory", "bob")
    world.befriend(alice, mallory)
    alice.ok(alice.conn.invite("bob"))
    alice.ok(alice.conn.join_room("#tea"))
    mallory.ok(mallory.conn.join_room("#tea"))
    alice.ok(alice.conn.block("mallory"))
    alice.ok(alice.conn.block("mallory"))  # again: harmless
    alice.refused(alice.conn.block("alice"), ErrorCode.BAD_REQUEST)
    # Any name may be blocked: the answer does not tell whether it has an account.
    alice.ok(alice.conn.block("nobody"))
    alice.ok(alice.conn.unblock("nobody"))
    world.settle()
    # What an unfriend tells them, no more; the friendship is over.
    assert m.Unfriended(by_user="alice") in mallory.pushes()
    assert alice.ok(alice.conn.list_friends(), m.Friends).friends == ()
    assert alice.ok(alice.conn.list_blocked(), m.Blocked).usernames == ("mallory",)
    # Their messages are refused as any non-friend's; their invitation gets the
    # ordinary answer but is never shown.
    mallory.refused(mallory.conn.send_message("alice", "hi"), ErrorCode.NOT_FRIENDS)
    pushes_before = len(alice.pushes())
    mallory.ok(mallory.conn.invite("alice"))
    mallory.refused(mallory.conn.invite("alice"), ErrorCode.ALREADY_INVITED)
    world.settle()
    assert len(alice.pushes()) == pushes_before
    assert alice.ok(alice.conn.list_invitations(), m.Invitations).incoming == ()
    alice.refused(alice.conn.accept_invitation("mallory"), ErrorCode.NO_INVITATION)
    alice.refused(alice.conn.invite("mallory"), ErrorCode.BAD_REQUEST)  # unblock first
    # In the room they share, mallory sees alice as any member does (she reads
    # alice's messages there: showing her offline would tell the block).
    assert "alice" in mallory.ok(mallory.conn.list_online(), m.OnlineUsers).usernames
    members = mallory.ok(mallory.conn.list_members("#tea"), m.RoomMembers).members
    assert m.UserPresence(username="alice", online=True) in members
    # Others are not affected.
    assert bob.ok(bob.conn.list_invitations(), m.Invitations).incoming == ("alice",)
    # Unblocking: nothing that ended comes back, and what was hidden stays unseen;
    # they may become friends again.
    alice.ok(alice.conn.unblock("mallory"))
    assert alice.ok(alice.conn.list_blocked(), m.Blocked).usernames == ()
    assert alice.ok(alice.conn.list_invitations(), m.Invitations).incoming == ()
    alice.ok(alice.conn.invite("mallory"))
    mallory.ok(mallory.conn.accept_invitation("alice"))
    alice.send("mallory", "friends again")


def test_invitation_errors_and_mutual_invitation(world: ChatWorld) -> None:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    alice.refused(alice.conn.invite("alice"), ErrorCode.CANNOT_INVITE_SELF)
    # Any name may be invited: the answer does not tell whether it has an account.
    alice.ok(alice.conn.invite("nobody"))
    alice.ok(alice.conn.cancel_invitation("nobody"))
    alice.ok(alice.conn.invite("bob"))
    alice.refused(alice.conn.invite("bob"), ErrorCode.ALREADY_INVITED)
    alice.refused(alice.conn.accept_invitation("bob"), ErrorCode.NO_INVITATION)
    alice.refused(alice.conn.decline_invitation("carol"), ErrorCode.NO_INVITATION)
    alice.refused(alice.conn.cancel_invitation("carol"), ErrorCode.NO_INVITATION)
    alice.refused(alice.conn.unfriend("bob"), ErrorCode.NOT_FRIENDS)
    # bob invites back: that accepts alice's invitation.
    bob.ok(bob.conn.invite("alice"))
    world.settle()
    assert alice.pushes() == [m.InvitationAnswered(by_user="bob", accepted=True)]
    alice.refused(alice.conn.invite("bob"), ErrorCode.ALREADY_FRIENDS)
    assert bob.ok(bob.conn.list_invitations(), m.Invitations).incoming == ()
    # Cancel: carol is told, and the invitation is gone from both lists.
    alice.ok(alice.conn.invite("carol"))
    alice.ok(alice.conn.cancel_invitation("carol"))
    world.settle()
    assert carol.pushes() == [
        m.InvitationReceived(from_user="alice"),
        m.InvitationCancelled(by_user="alice"),
    ]
    assert carol.ok(carol.conn.list_invitations(), m.Invitations).incoming == ()
    carol.refused(carol.conn.accept_invitation("alice"), ErrorCode.NO_INVITATION)


def test_offline_invitee_finds_the_invitation_in_the_list(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    bob.close()
    alice.ok(alice.conn.invite("bob"))
    bob.connect()
    bob.resume()
    assert bob.ok(bob.conn.list_invitations(), m.Invitations).incoming == ("alice",)
    assert bob.pushes() == []


def test_message_errors_and_idempotent_resend(world: ChatWorld) -> None:
    alice, bob, _carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    alice.refused(alice.conn.send_message("nobody", "hi"), ErrorCode.NOT_FRIENDS)
    alice.refused(alice.conn.send_message("carol", "hi"), ErrorCode.NOT_FRIENDS)
    alice.refused(alice.conn.send_message("alice", "hi"), ErrorCode.NOT_FRIENDS)
    assert alice.ok(alice.conn.get_history("nobody"), m.History).messages == ()
    assert alice.ok(alice.conn.get_history("carol"), m.History).messages == ()

    first = alice.send("bob", "once")
    rid = alice.conn.send_message("bob", "once", message_id=first.message_id)
    again = alice.ok(rid, m.MessageAccepted)
    assert (again.message_id, again.sent_at) == (first.message_id, first.sent_at)
    # Another sender may not reuse the id.
    bob.refused(
        bob.conn.send_message("alice", "mine", message_id=first.message_id), ErrorCode.BAD_REQUEST
    )
    world.settle()
    assert bob.texts() == ["once"]
    assert world.server.stats.messages_accepted == 1
    # A retry is answered as the first send was even when the checks would now
    # refuse it (they are no longer friends) ...
    alice.ok(alice.conn.unfriend("bob"))
    late = alice.ok(
        alice.conn.send_message("bob", "once", message_id=first.message_id), m.MessageAccepted
    )
    assert (late.message_id, late.sent_at) == (first.message_id, first.sent_at)
    # ... and an id already used in another conversation is refused by the insert.
    world.befriend(alice, _carol)
    _carol.refused(
        _carol.conn.send_message("alice", "mine", message_id=first.message_id),
        ErrorCode.BAD_REQUEST,
    )
    world.settle()
    assert alice.texts() == [] and world.server.stats.messages_accepted == 1


def test_two_login_sessions_of_one_user_both_receive_every_message(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    laptop = world.user("bob", device="laptop")
    laptop.connect()
    laptop.login()
    assert laptop.token != bob.token
    for i in range(5):
        alice.send("bob", f"m{i}")
    world.settle()
    expected = [f"m{i}" for i in range(5)]
    assert bob.texts() == expected and laptop.texts() == expected
    # The phone goes away; the laptop acknowledges; the phone still gets the rest.
    bob.close()
    for i in range(5, 8):
        alice.send("bob", f"m{i}")
    world.settle()
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == [f"m{i}" for i in range(8)]
    assert laptop.texts() == [f"m{i}" for i in range(8)]


def test_two_connections_of_one_login_session(world: ChatWorld) -> None:
    # Two processes resume the same session (the CLI's scripted commands do this):
    # each connection gets every live message once; the session's cursor is shared,
    # so what one acknowledged is not pushed to a later connection of the session.
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    second = world.user("bob", device="second")
    second.token = bob.token
    second.connect()
    assert second.resume().token == bob.token
    for i in range(5):
        alice.send("bob", f"m{i}")
    world.settle()
    expected = [f"m{i}" for i in range(5)]
    assert bob.texts() == expected and second.texts() == expected
    second.close()
    for i in range(5, 8):
        alice.send("bob", f"m{i}")
    world.settle()
    assert bob.texts() == [f"m{i}" for i in range(8)]
    second.connect()
    second.resume()
    alice.send("bob", "m8")
    world.settle()
    assert second.texts() == [*expected, "m8"]
    assert bob.texts() == [f"m{i}" for i in range(9)]
    world.check_server_health()
