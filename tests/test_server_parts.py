"""The server's parts on their own: the delivery window with literal inputs, the
connection table, the handler registry and the codec registry derived from the
catalogue."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest

from udpchat_proto.chat import messages as m
from udpchat_proto.chat.codec import MESSAGE_TYPES
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.delivery import DeliveryState, DeliveryWindow
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import HANDLERS, ChatServer
from udpchat_proto.errors import LocalProtocolError
from udpchat_proto.ratelimit import RateLimit
from udpchat_proto.transport import TransportConfig

WHEN = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def msg(n: int) -> m.ChatMessage:
    return m.ChatMessage(id=bytes([n]) * 16, sender="alice", to="bob", text=f"{n}", sent_at=WHEN)


def state(window: DeliveryWindow) -> DeliveryState:
    """The window's state (a call, so that mypy does not narrow it across inputs)."""
    return window.state


def test_a_small_backlog_is_pushed_whole_and_the_window_goes_live() -> None:
    window = DeliveryWindow(4)
    assert state(window) is DeliveryState.IDLE and not window.wants_refill
    window.start()
    assert state(window) is DeliveryState.BACKLOG and window.wants_refill
    pushed, caught_up = window.refill([msg(1), msg(2)])
    assert pushed == [msg(1), msg(2)] and caught_up
    assert window.state is DeliveryState.LIVE and len(window) == 2
    # Live with room: a new message goes out at once.
    assert window.offer(msg(3))
    assert window.offer(msg(4))
    # Full: the next one waits in the store, and the window is behind again.
    assert not window.offer(msg(5))
    assert window.state is DeliveryState.BACKLOG
    assert not window.wants_refill  # 4 in flight: more than half
    window.acknowledge([bytes([1]) * 16, bytes([2]) * 16, bytes([9]) * 16])
    assert window.wants_refill and len(window) == 2
    # The store's answer starts with what is still in flight: skipped.
    pushed, caught_up = window.refill([msg(3), msg(4), msg(5)])
    assert pushed == [msg(5)] and caught_up and window.state is DeliveryState.LIVE


def test_a_large_backlog_comes_in_windows() -> None:
    window = DeliveryWindow(4)
    window.start()
    pushed, caught_up = window.refill([msg(1), msg(2), msg(3), msg(4)])
    assert len(pushed) == 4 and not caught_up  # a full answer: there may be more
    assert window.state is DeliveryState.BACKLOG and not window.wants_refill
    window.acknowledge([msg(1).id, msg(2).id])
    pushed, caught_up = window.refill([msg(3), msg(4), msg(5), msg(6)])
    assert pushed == [msg(5), msg(6)] and not caught_up and len(window) == 4
    window.acknowledge([msg(3).id, msg(4).id, msg(5).id, msg(6).id])
    pushed, caught_up = window.refill([msg(7)])
    assert pushed == [msg(7)] and caught_up


def test_a_push_taken_back_or_a_stop() -> None:
    window = DeliveryWindow(4)
    window.start()
    window.refill([msg(1)])
    window.take_back(msg(1).id)
    assert msg(1).id not in window and window.state is DeliveryState.BACKLOG
    window.refill([msg(1)])
    window.stop()
    assert state(window) is DeliveryState.IDLE and len(window) == 0
    assert not window.offer(msg(2)) and len(window) == 0


def test_the_window_refuses_inputs_its_table_does_not_allow() -> None:
    window = DeliveryWindow(4)
    with pytest.raises(LocalProtocolError, match="cannot refill in state idle"):
        window.refill([])
    window.start()
    window.refill([])
    with pytest.raises(LocalProtocolError, match="cannot refill in state live"):
        window.refill([msg(1)])
    assert len(window) == 0


def test_every_request_of_the_catalogue_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == set(m.ANSWERED_REQUEST_TYPES)
    assert len(set(HANDLERS.values())) == len(HANDLERS)
    for name in HANDLERS.values():
        assert callable(getattr(ChatServer, name))


def test_the_codec_knows_every_message_class_by_its_own_tag() -> None:
    assert set(MESSAGE_TYPES.values()) == set(m.MESSAGE_CLASSES)
    assert all(MESSAGE_TYPES[cls.TAG] is cls for cls in m.MESSAGE_CLASSES)
    assert len(MESSAGE_TYPES) == len(m.MESSAGE_CLASSES)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda value: TransportConfig(initial_rtt=value), "TransportConfig.initial_rtt"),
        (lambda value: ServerConfig(session_lifetime=value), "ServerConfig.session_lifetime"),
        (lambda value: RateLimit(burst=1, interval=value), "RateLimit.interval"),
    ],
)
def test_every_config_refuses_bools_and_non_finite_numbers_alike(
    build: Callable[[object], object], field: str
) -> None:
    for bad in (True, float("nan"), float("inf"), 0, -1.0, "1"):
        with pytest.raises(ValueError, match=f"{field} must be a positive number"):
            build(bad)
    build(0.5)


@pytest.mark.parametrize(
    "build",
    [
        lambda value: TransportConfig(max_in_flight_packets=value),
        lambda value: ServerConfig(max_room_members=value),
        lambda value: RateLimit(burst=value, interval=1.0),
        lambda value: ScryptParams(r=value),
    ],
)
def test_every_config_refuses_bools_and_floats_for_counts(
    build: Callable[[object], object],
) -> None:
    for bad in (True, 1.0, 0, -3, "2"):
        with pytest.raises(ValueError, match="must be a positive integer"):
            build(bad)
    build(2)
