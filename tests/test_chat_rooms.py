"""Rooms over the simulated network: join, leave, membership pushes, members and
presence, messages to every member exactly once and in order, limits."""

from __future__ import annotations

from tests.chat_helpers import ChatWorld, StoreFactory, test_config
from tests.simnet import Link
from udpchat_proto import messages as m
from udpchat_proto.errors import ErrorCode

DAY = 86400.0


def test_join_leave_members_and_pushes(world: ChatWorld) -> None:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    alice.ok(alice.conn.join_room("#Tea"))  # names are case-insensitive
    bob.ok(bob.conn.join_room("#tea"))
    world.settle()
    assert alice.pushes() == [m.RoomMembershipChanged(room="#tea", username="bob", joined=True)]
    assert bob.pushes() == []  # no push about oneself
    # Joining again is harmless and silent.
    bob.ok(bob.conn.join_room("#tea"))
    rooms = carol.ok(carol.conn.list_rooms(), m.Rooms)
    assert rooms.rooms == ()
    assert bob.ok(bob.conn.list_rooms(), m.Rooms).rooms == (m.RoomInfo(room="#tea", members=2),)
    # Members list a room's members, with presence; nobody else may.
    bob.close()
    members = alice.ok(alice.conn.list_members("#tea"), m.RoomMembers)
    assert members.members == (
        m.UserPresence(username="alice", online=True),
        m.UserPresence(username="bob", online=False),
    )
    carol.refused(carol.conn.list_members("#tea"), ErrorCode.NOT_A_MEMBER)
    carol.refused(carol.conn.list_members("#nowhere"), ErrorCode.UNKNOWN_ROOM)
    # Leaving: the others are told; leaving again is refused.
    alice.ok(alice.conn.leave_room("#tea"))
    alice.refused(alice.conn.leave_room("#tea"), ErrorCode.NOT_A_MEMBER)
    alice.refused(alice.conn.leave_room("#nowhere"), ErrorCode.UNKNOWN_ROOM)
    bob.connect()
    bob.resume()
    assert bob.ok(bob.conn.list_rooms(), m.Rooms).rooms == (m.RoomInfo(room="#tea", members=1),)
    carol.ok(carol.conn.join_room("#tea"))
    alice.ok(alice.conn.join_room("#tea"))
    world.settle()
    assert bob.pushes() == [
        m.RoomMembershipChanged(room="#tea", username="carol", joined=True),
        m.RoomMembershipChanged(room="#tea", username="alice", joined=True),
    ]
    assert carol.pushes() == [m.RoomMembershipChanged(room="#tea", username="alice", joined=True)]
    world.check_server_health()


def test_room_message_and_history_errors(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    alice.refused(alice.conn.send_message("#nowhere", "hi"), ErrorCode.UNKNOWN_ROOM)
    alice.refused(alice.conn.get_history("#nowhere"), ErrorCode.UNKNOWN_ROOM)
    bob.ok(bob.conn.join_room("#club"))
    alice.refused(alice.conn.send_message("#club", "hi"), ErrorCode.NOT_A_MEMBER)
    alice.refused(alice.conn.get_history("#club"), ErrorCode.NOT_A_MEMBER)
    bob.send("#club", "first")
    alice.ok(alice.conn.join_room("#club"))
    alice.send("#club", "second")
    # A member's history starts where its deliveries do: at its join.
    history = alice.ok(alice.conn.get_history("#club"), m.History)
    assert [(msg.sender, msg.text) for msg in history.messages] == [("alice", "second")]
    history = bob.ok(bob.conn.get_history("#club"), m.History)
    assert [(msg.sender, msg.text) for msg in history.messages] == [
        ("bob", "first"),
        ("alice", "second"),
    ]
    world.settle()
    # A member receives what was sent after joining, never their own messages.
    assert alice.texts() == []
    assert bob.texts() == ["second"]


def test_five_members_one_offline_for_a_day_with_loss(stores: StoreFactory) -> None:
    world = ChatWorld(stores, seed=5, link=Link(loss=0.1, reorder=0.05, jitter=0.01))
    members = world.signed_up("ann", "ben", "cat", "dan", "eve")
    for member in members:
        member.ok(member.conn.join_room("#five"))
    ann, ben, cat, dan, eve = members
    world.settle()
    eve.close()
    sent: dict[str, list[str]] = {member.name: [] for member in members}
    for round_ in range(8):
        for member in (ann, ben, cat, dan):
            text = f"{member.name} {round_}"
            member.conn.send_message("#five", text)
            sent[member.name].append(text)
    world.run_until(
        lambda: all(len(member.received()) == 24 for member in (ann, ben, cat, dan)),
        max_time=120.0,
        what="room messages to the online members",
    )
    # The others go home too (keepalives of idle connections would only slow the
    # simulation of the day), and eve comes back the next day.
    for member in (ann, ben, cat, dan):
        member.close()
    world.net.run_for(DAY)
    eve.connect()
    eve.resume()
    world.run_until(lambda: len(eve.received()) == 32, max_time=120.0, what="eve's backlog")
    world.settle(5.0)
    for member in members:
        received = member.received()
        assert len({message.id for message in received}) == len(received)
        for sender in (ann, ben, cat, dan):
            theirs = [message.text for message in received if message.sender == sender.name]
            expected = [] if sender is member else sent[sender.name]
            assert theirs == expected
    # Everyone saw the room in the same (store) order.
    orders = [[message.id for message in member.received()] for member in (ann, ben, cat, dan, eve)]
    reference = orders[4]
    for order in orders[:4]:
        assert order == [message_id for message_id in reference if message_id in order]
    world.check_server_health()


def test_a_member_who_left_gets_nothing_more(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    alice.ok(alice.conn.join_room("#room"))
    bob.ok(bob.conn.join_room("#room"))
    alice.send("#room", "while you are here")
    world.settle()
    bob.ok(bob.conn.leave_room("#room"))
    alice.send("#room", "after you left")
    world.settle()
    assert bob.texts() == ["while you are here"]
    # Nor on a later connection.
    bob.close()
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["while you are here"]
    bob.refused(bob.conn.get_history("#room"), ErrorCode.NOT_A_MEMBER)


def test_room_limits(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(max_room_members=2, max_rooms_per_user=2))
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    alice.ok(alice.conn.join_room("#one"))
    bob.ok(bob.conn.join_room("#one"))
    carol.refused(carol.conn.join_room("#one"), ErrorCode.ROOM_FULL)
    alice.ok(alice.conn.join_room("#two"))
    alice.refused(alice.conn.join_room("#three"), ErrorCode.TOO_MANY_ROOMS)
    # Already a member: still fine at the limit.
    alice.ok(alice.conn.join_room("#two"))
    bob.ok(bob.conn.leave_room("#one"))
    carol.ok(carol.conn.join_room("#one"))


def test_leave_and_rejoin_delivers_exactly_what_was_sent_while_a_member(
    world: ChatWorld,
) -> None:
    alice, bob = world.signed_up("alice", "bob")
    alice.ok(alice.conn.join_room("#room"))
    bob.ok(bob.conn.join_room("#room"))
    alice.send("#room", "one")
    world.settle()
    bob.close()
    alice.send("#room", "two, bob offline but a member")
    bob.connect()
    bob.resume()
    world.settle()
    bob.ok(bob.conn.leave_room("#room"))
    alice.send("#room", "three, bob not a member")
    bob.ok(bob.conn.join_room("#room"))
    alice.send("#room", "four, bob back")
    world.settle()
    # Once more across a new connection: nothing comes again, nothing is made up.
    bob.close()
    alice.send("#room", "five")
    bob.connect()
    bob.resume()
    world.settle()
    assert bob.texts() == ["one", "two, bob offline but a member", "four, bob back", "five"]
    world.check_server_health()


# --- blocking in rooms (issue 23, item 7) --------------------------------------------------


def test_in_a_room_the_blocker_gets_nothing_from_the_blocked_who_sees_no_sign_of_it(
    world: ChatWorld,
) -> None:
    """Room messages flowed both ways, and room_members showed the blocker offline to
    the blocked user while she talked in the room: the block was detectable."""
    alice, bob, mallory = world.signed_up("alice", "bob", "mallory")
    laptop = world.user("alice", device="laptop")  # a second device of alice's
    laptop.connect()
    laptop.login()
    for user in (alice, bob, mallory):
        user.ok(user.conn.join_room("#tea"))
    laptop.close()  # away while the room talks
    alice.ok(alice.conn.block("mallory"))
    world.settle()
    mallory_pushes = mallory.pushes()
    for user, text in ((mallory, "m1"), (bob, "b1"), (mallory, "m2"), (alice, "a1")):
        user.send("#tea", text)
    mallory.send("#tea", "m3")
    world.run_until(lambda: bob.texts() == ["m1", "m2", "a1", "m3"], what="bob gets everything")
    world.run_until(lambda: mallory.texts() == ["b1", "a1"], what="mallory gets alice's")
    world.settle()
    # alice: no push from mallory, and nothing of hers in the history.
    assert alice.texts() == ["b1"]
    history = alice.ok(alice.conn.get_history("#tea"), m.History).messages
    assert [message.text for message in history] == ["b1", "a1"]
    # mallory sees the room as any member does: alice online, as she is.
    members = mallory.ok(mallory.conn.list_members("#tea"), m.RoomMembers).members
    assert m.UserPresence(username="alice", online=True) in members
    assert "alice" in mallory.ok(mallory.conn.list_online(), m.OnlineUsers).usernames
    history = mallory.ok(mallory.conn.get_history("#tea"), m.History).messages
    assert [message.text for message in history] == ["m1", "b1", "m2", "a1", "m3"]
    # The away device's backlog leaves mallory's out, exactly once and in order; a
    # reconnected one gets nothing again.
    laptop.connect()
    laptop.resume()
    world.run_until(lambda: laptop.texts() == ["b1", "a1"], what="the laptop's backlog")
    alice.crash()
    alice.connect()
    alice.resume()
    world.settle()
    assert alice.texts() == ["b1"]
    assert laptop.texts() == ["b1", "a1"]
    # Unblocking tells mallory nothing either.
    alice.ok(alice.conn.unblock("mallory"))
    world.settle()
    assert mallory.pushes() == mallory_pushes
    world.check_server_health()


def test_a_public_online_list_hides_a_blocker_only_outside_a_shared_room(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores, config=test_config(public_presence=True))
    alice, _bob, mallory = world.signed_up("alice", "bob", "mallory")
    alice.ok(alice.conn.block("mallory"))
    assert mallory.ok(mallory.conn.list_online(), m.OnlineUsers).usernames == ("bob", "mallory")
    # Sharing a room, mallory would see alice there: the list says the same.
    alice.ok(alice.conn.join_room("#tea"))
    mallory.ok(mallory.conn.join_room("#tea"))
    assert mallory.ok(mallory.conn.list_online(), m.OnlineUsers).usernames == (
        "alice",
        "bob",
        "mallory",
    )


def test_a_blocker_is_not_told_when_the_blocked_user_joins_or_leaves(world: ChatWorld) -> None:
    # "The blocker sees nothing from the blocked user": room joins and leaves were
    # still pushed to her.
    alice, bob, mallory = world.signed_up("alice", "bob", "mallory")
    alice.ok(alice.conn.join_room("#tea"))
    bob.ok(bob.conn.join_room("#tea"))
    alice.ok(alice.conn.block("mallory"))
    world.settle()
    before = len(alice.pushes())
    mallory.ok(mallory.conn.join_room("#tea"))
    mallory.ok(mallory.conn.leave_room("#tea"))
    world.settle(2.0)  # in separate batches: not coalesced away
    mallory.ok(mallory.conn.join_room("#tea"))
    world.settle()
    changes = [p for p in bob.pushes() if isinstance(p, m.RoomMembershipChanged)]
    assert [(p.username, p.joined) for p in changes][-2:] == [("mallory", False), ("mallory", True)]
    assert not [p for p in alice.pushes()[before:] if isinstance(p, m.RoomMembershipChanged)]
    # And mallory, for her part, sees alice as any member (the block does not show).
    alice.ok(alice.conn.leave_room("#tea"))
    world.settle()
    left = [p for p in mallory.pushes() if isinstance(p, m.RoomMembershipChanged)]
    assert ("alice", False) in [(p.username, p.joined) for p in left]
