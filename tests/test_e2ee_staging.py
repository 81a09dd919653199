"""Key shares staged ahead of their message (``share_keys``): taken by the send
with the same message id, all or nothing; a refused send leaves nothing behind;
what is held is bounded and expires."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat_helpers import GENEROUS, ChatWorld, StoreFactory, test_config
from tests.test_e2ee_wire import Device, signed_up_devices
from udpchat_proto import messages as m
from udpchat_proto.chat.requests import RefusedError
from udpchat_proto.chat.staging import ShareStaging, share_cost
from udpchat_proto.e2ee import DeviceKeys, KeyShare
from udpchat_proto.errors import ErrorCode
from udpchat_proto.ratelimit import RateLimit
from udpchat_proto.transport import ConnectionId

ROOM = "#many"
# More devices than one request carries shares for: a send must stage some.
DEVICES = m.MAX_SHARES_PER_REQUEST + 5


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatWorld]:
    chat = ChatWorld(
        StoreFactory(request.param, tmp_path / "db.sqlite3"),
        seed=27,
        config=test_config(max_sessions_per_user=DEVICES + 1, logins_per_user=GENEROUS),
    )
    yield chat
    chat.check_server_health()


def _room(world: ChatWorld) -> tuple[Device, list[Device]]:
    alice = signed_up_devices(world, "alice", 1)[0]
    bob = signed_up_devices(world, "bob", DEVICES)
    for first in (alice, bob[0]):
        first.user.ok(first.user.conn.join_room(ROOM))
    return alice, bob


def test_a_send_with_more_shares_than_a_request_carries_stages_them(world: ChatWorld) -> None:
    alice, bob = _room(world)
    before = sum(isinstance(e, m.Ok) for e in alice.user.events())
    _accepted, refusals = alice.send(ROOM, "to every device")
    assert refusals == 0
    # One share_keys answered ok: 5 of the 21 shares staged, 16 in the send.
    assert sum(isinstance(e, m.Ok) for e in alice.user.events()) == before + 1
    world.settle()
    for device in bob:
        assert device.read() == ["to every device"]
    assert world.server._staging.held_bytes == 0


def test_a_refused_send_leaves_nothing_staged_and_the_next_one_goes(world: ChatWorld) -> None:
    alice, bob = _room(world)
    stale = alice.device_set(ROOM)
    newcomer = Device(world, world.user("bob", device="new")).log_in()
    # Shares staged for the stale set, then the send refused devices_changed: the
    # client shares again (the newcomer too) and sends again, by itself.
    _accepted, refusals = alice.send(ROOM, "after a change", device_set=stale)
    assert refusals == 1
    assert world.server._staging.held_bytes == 0
    world.settle()
    for device in (*bob, newcomer):
        assert device.read() == ["after a change"]


def test_a_send_whose_staged_shares_are_not_all_here_is_refused_then_resent(
    world: ChatWorld,
) -> None:
    """Shares staged on a connection that closed (or expired) are not the send's:
    the server refuses it devices_changed, whose answer restages them."""
    alice, bob = _room(world)
    assert alice.state is not None
    device_set = alice.device_set(ROOM)
    message_id = b"\x42" * 16
    out = alice.encrypt(device_set, "lost shares", message_id)
    refused = alice.user.refused(
        alice.user.conn._request(
            lambda rid: m.SendMessage(
                request_id=rid,
                message_id=message_id,
                to=ROOM,
                encrypted=out.message,
                key_shares=out.key_shares[: m.MAX_SHARES_PER_REQUEST],
                staged=len(out.key_shares) - m.MAX_SHARES_PER_REQUEST,
            )
        ),
        ErrorCode.DEVICES_CHANGED,
    )
    assert refused.device_set == device_set
    assert world.store.get_message(message_id) is None
    # What a client does with devices_changed: plan on the set given, send again.
    _accepted, refusals = alice.send(ROOM, "shared again", device_set=refused.device_set)
    assert refusals == 0
    world.settle()
    for device in bob:
        assert device.read() == ["shared again"]


# --- ShareStaging's bounds ----------------------------------------------------------------

_KEYS = DeviceKeys(
    user="alice",
    device_id=b"\x01" * 16,
    curve25519=b"\x02" * 32,
    ed25519=b"\x03" * 32,
    signature=b"\x04" * 64,
)
_SESSION = b"\x05" * 32
_ONE: ConnectionId = b"\x06" * 8
_TWO: ConnectionId = b"\x07" * 8


def _shares(count: int, first: int = 0) -> tuple[KeyShare, ...]:
    return tuple(
        KeyShare(
            sender_keys=_KEYS,
            recipient="bob",
            recipient_device=(first + n).to_bytes(16, "big"),
            message_type=0,
            ciphertext=b"\x00" * 800,
        )
        for n in range(count)
    )


def test_staging_takes_once_for_the_same_connection_session_and_message() -> None:
    staging = ShareStaging(max_shares=100)
    staging.stage(_ONE, _SESSION, b"a" * 16, _shares(3), now=0.0)
    staging.stage(_ONE, _SESSION, b"a" * 16, _shares(3, first=2), now=1.0)  # one replaced
    assert staging.take(_TWO, _SESSION, b"a" * 16, now=2.0) == []
    assert staging.take(_ONE, b"\x00" * 32, b"a" * 16, now=2.0) == []  # another session
    assert staging.take(_ONE, _SESSION, b"b" * 16, now=2.0) == []  # another message
    assert len(staging.take(_ONE, _SESSION, b"a" * 16, now=2.0)) == 5
    assert staging.take(_ONE, _SESSION, b"a" * 16, now=2.0) == []
    assert staging.held_bytes == 0


def test_staging_holds_one_message_per_connection_and_drops_on_close() -> None:
    staging = ShareStaging(max_shares=100)
    staging.stage(_ONE, _SESSION, b"a" * 16, _shares(3), now=0.0)
    staging.stage(_ONE, _SESSION, b"b" * 16, _shares(2), now=0.0)  # "a" is dropped
    assert staging.held_bytes == 2 * share_cost(_shares(1)[0])
    staging.drop(_ONE)
    assert staging.held_bytes == 0 and len(staging) == 0


def test_staging_expires() -> None:
    staging = ShareStaging(max_shares=100, lifetime=60.0)
    staging.stage(_ONE, _SESSION, b"a" * 16, _shares(3), now=0.0)
    staging.stage(_TWO, _SESSION, b"a" * 16, _shares(3), now=30.0)
    assert staging.take(_ONE, _SESSION, b"a" * 16, now=60.0) == []  # too late
    staging.expire(now=89.0)
    assert len(staging) == 1
    staging.expire(now=90.0)
    assert len(staging) == 0 and staging.held_bytes == 0


def test_staging_refuses_past_its_bounds_and_so_does_the_send() -> None:
    cost = share_cost(_shares(1)[0])
    staging = ShareStaging(max_shares=4, budget=6 * cost)
    with pytest.raises(RefusedError) as info:
        staging.stage(_ONE, _SESSION, b"a" * 16, _shares(5), now=0.0)
    assert info.value.code is ErrorCode.TOO_LARGE
    staging.stage(_TWO, _SESSION, b"a" * 16, _shares(4), now=0.0)
    with pytest.raises(RefusedError) as info:
        staging.stage(_ONE, _SESSION, b"b" * 16, _shares(3), now=0.0)  # past the budget
    assert info.value.code is ErrorCode.RATE_LIMITED
    with pytest.raises(RefusedError) as info:  # the rest of the message: the same
        staging.stage(_ONE, _SESSION, b"b" * 16, _shares(1, first=9), now=0.0)
    with pytest.raises(RefusedError) as info:  # and its send
        staging.take(_ONE, _SESSION, b"b" * 16, now=0.0)
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert staging.held_bytes == 4 * cost
    # Expired shares make room before anything is refused.
    staging.stage(_ONE, _SESSION, b"c" * 16, _shares(3), now=61.0)
    assert staging.held_bytes == 3 * cost


def test_a_sends_staging_counts_as_one_request_against_the_connections_budget(
    tmp_path: Path,
) -> None:
    """A rotation staged in more ``share_keys`` than the connection's request budget
    holds goes through: its full batches of new devices give their request back."""
    many = 4 * m.MAX_SHARES_PER_REQUEST  # three staged batches, and the send's own
    world = ChatWorld(
        StoreFactory("memory", tmp_path / "db.sqlite3"),
        seed=26,
        config=test_config(
            max_sessions_per_user=many + 1,
            logins_per_user=GENEROUS,
            request_rate=RateLimit(burst=6, interval=60.0),
        ),
    )
    alice = signed_up_devices(world, "alice", 1)[0]
    bob = signed_up_devices(world, "bob", many)
    for first in (alice, bob[0]):
        first.user.ok(first.user.conn.join_room(ROOM))
    # A fresh connection, its budget full: resume, get_devices, claim_keys, three
    # share_keys and the send are 7 requests; the staging counts as one: 5.
    alice.user.connect()
    alice.user.resume()
    _accepted, refusals = alice.send(ROOM, "to sixty-four devices")
    assert refusals == 0
    world.settle()
    for device in bob:
        assert device.read() == ["to sixty-four devices"]
    # What a request buys stays bounded: the same batch again (no new device)
    # costs its request. A fresh connection: resume and get_devices, then 4 left.
    alice.user.connect()
    alice.user.resume()
    again = b"\x43" * 16
    batch = alice.encrypt(alice.device_set(ROOM), "again", again).key_shares[:16]
    answers = [
        alice.user.wait(
            alice.user.conn._request(
                lambda rid: m.ShareKeys(request_id=rid, message_id=again, key_shares=batch)
            )
        )
        for _ in range(5)
    ]
    assert [type(answer) for answer in answers] == [m.Ok] * 4 + [m.ErrorResponse]
    assert isinstance(answers[-1], m.ErrorResponse)
    assert answers[-1].code is ErrorCode.RATE_LIMITED
    world.check_server_health()
