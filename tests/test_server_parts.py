"""The server's parts on their own: the delivery window with literal inputs, the
timers table, the connection table, the batch's steps, the registry of routes and
the codec registry derived from the catalogue; and the rules of the server's
layout (one class, parts that read only their own private attributes, no method
found by its name)."""

from __future__ import annotations

import ast
import datetime
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from udpchat_proto import ServerKey, TransportConfig
from udpchat_proto import messages as m
from udpchat_proto.chat import handlers
from udpchat_proto.chat.batch import Batch, Held
from udpchat_proto.chat.codec import MESSAGE_TYPES
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.connection import ChatConnectionState
from udpchat_proto.chat.connections import ConnectionTable
from udpchat_proto.chat.deliveries import Deliveries
from udpchat_proto.chat.delivery import DeliveryState, DeliveryWindow
from udpchat_proto.chat.dispatch import Routes
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.remote import RemoteSession
from udpchat_proto.chat.requests import route
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.chat.store import WriteTrackingStore
from udpchat_proto.chat.timers import ServerTimer, ServerTimers
from udpchat_proto.errors import LocalProtocolError
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.ratelimit import RateLimit

CHAT = Path(__file__).resolve().parent.parent / "src" / "udpchat_proto" / "chat"

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


# --- the registry ------------------------------------------------------------------------


def a_server() -> ChatServer:
    return ChatServer(
        store=MemoryStore(),
        static_key=ServerKey.generate(SeededRandomSource("parts")),
        clock=lambda: 0.0,
    )


def test_every_request_of_the_catalogue_has_exactly_one_route() -> None:
    routes = a_server()._dispatcher.routes
    assert set(routes) == set(m.REQUEST_TYPES)  # AcknowledgeDelivery too
    assert all(route.request_type is cls for cls, route in routes.items())
    # Answered or not, each goes to a method of its own (go-to-definition follows):
    # of a handler unit, or (ack_delivery) of the deliveries.
    # (Bound methods of Python classes, or of native ones in the compiled build,
    # where they are builtin methods with no __func__: named by class and name.)
    methods: list[Any] = [route.handler for route in routes.values()]
    assert all(inspect.ismethod(method) or inspect.isbuiltin(method) for method in methods)
    assert len({(type(method.__self__), method.__name__) for method in methods}) == len(methods)
    owners = {type(method.__self__) for method in methods}
    assert owners == {getattr(handlers, name) for name in handlers.__all__} | {Deliveries}
    assert not routes[m.AcknowledgeDelivery].answered
    assert [cls for cls, route in routes.items() if route.before_login] == [
        m.Register,
        m.Login,
        m.Resume,
    ]


def test_the_registry_refuses_two_routes_for_one_request_or_a_wrong_kind() -> None:
    def handler(connection: Any, request: m.Logout, now: float) -> None: ...

    def acknowledge(connection: Any, request: m.AcknowledgeDelivery, now: float) -> None: ...

    with pytest.raises(TypeError, match="two routes for Logout"):
        Routes([route(m.Logout, handler), route(m.Logout, handler)])
    with pytest.raises(TypeError, match="AcknowledgeDelivery: answered"):
        Routes([route(m.AcknowledgeDelivery, acknowledge)])
    with pytest.raises(TypeError, match="Logout: answered"):
        Routes([route(m.Logout, handler, answered=False)])


# --- the layout's rules ---------------------------------------------------------------------


def chat_modules() -> list[Path]:
    return sorted(CHAT.rglob("*.py"))


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_chat_server_is_one_class_holding_its_public_methods() -> None:
    assert ChatServer.__mro__ == (ChatServer, object)
    public = [name for name in dir(ChatServer) if not name.startswith("_")]
    assert {"receive_datagram", "end_batch", "commit", "receive_news", "kick"} <= set(public)
    assert all(name in vars(ChatServer) for name in public)


@pytest.mark.parametrize("path", chat_modules(), ids=lambda p: str(p.relative_to(CHAT)))
def test_no_module_reads_another_objects_private_attribute(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                f"{path.name}:{node.lineno} {ast.unparse(node)}"
            )


def own_names(cls: ast.ClassDef) -> set[str]:
    """What a class defines itself: its methods and class attributes, and what its
    methods assign to ``self``."""
    names = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for item in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(item, ast.Assign):
            targets = [t for target in item.targets for t in _unpacked(target)]
        elif isinstance(item, ast.AnnAssign | ast.AugAssign):
            targets = [item.target]
        names.update(
            t.attr
            for t in targets
            if isinstance(t, ast.Attribute)
            and isinstance(t.value, ast.Name)
            and t.value.id == "self"
        )
    return names


def _unpacked(target: ast.expr) -> Iterator[ast.expr]:
    if isinstance(target, ast.Tuple):
        for element in target.elts:
            yield from _unpacked(element)
    else:
        yield target


@pytest.mark.parametrize("path", chat_modules(), ids=lambda p: str(p.relative_to(CHAT)))
def test_every_private_attribute_a_class_reads_is_its_own(path: Path) -> None:
    # A class that reads ``self._x`` set by a base in another file (a mixin over a
    # core) hides where its state lives: every part builds what it reads.
    for cls in ast.walk(ast.parse(path.read_text())):
        if not isinstance(cls, ast.ClassDef):
            continue
        own = own_names(cls)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and private(node.attr)
            ):
                assert node.attr in own, f"{path.name}:{node.lineno} {cls.name} reads {node.attr}"


@pytest.mark.parametrize("path", chat_modules(), ids=lambda p: str(p.relative_to(CHAT)))
def test_no_method_is_found_by_its_name_in_a_string(path: Path) -> None:
    if path.name == "store.py":
        return  # WriteTrackingStore: a proxy, derived from the declared reads and writes
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
        ):
            name = node.args[1]
            assert isinstance(name, ast.Constant) and str(name.value).startswith("__"), (
                f"{path.name}:{node.lineno} {ast.unparse(node)}"
            )


# --- the timers table ------------------------------------------------------------------------


def test_the_timers_fire_in_their_order_and_the_first_deadline_stays() -> None:
    timers = ServerTimers()
    assert timers.earliest() is None and timers.pop_due(1e9) is None
    timers.arm(ServerTimer.STORE_RETRY, 5.0)
    timers.arm(ServerTimer.STORE_RETRY, 9.0)  # armed already: 5.0 stays
    timers.now = 2.0
    timers.arm_after(ServerTimer.CURSOR_WRITE, 1.0)
    timers.set(ServerTimer.SWEEP, 7.0)
    assert timers.get(ServerTimer.STORE_RETRY) == 5.0 and timers.earliest() == 3.0
    assert not timers.due(ServerTimer.SWEEP, 6.9) and timers.due(ServerTimer.SWEEP, 7.0)
    # Due together: in ServerTimer's order, each disarmed as it is taken.
    assert [timers.pop_due(8.0) for _ in range(4)] == [
        ServerTimer.SWEEP,
        ServerTimer.CURSOR_WRITE,
        ServerTimer.STORE_RETRY,
        None,
    ]
    timers.set_after(ServerTimer.SESSION_TOUCH, 60.0)
    timers.set_after(ServerTimer.SESSION_TOUCH, 30.0)  # set: replaced
    assert timers.earliest() == 32.0
    timers.cancel(ServerTimer.SESSION_TOUCH)
    assert timers.earliest() is None


# --- the connection table --------------------------------------------------------------------


def test_the_table_says_when_a_user_comes_and_goes_and_protects_the_first_few() -> None:
    protected: dict[bytes, bool] = {}
    table = ConnectionTable(
        ServerConfig(protected_connections_per_user=2),
        protected.__setitem__,
    )
    a, b, c = (table.open(bytes([n]) * 8, ("127.0.0.1", n), 0.0) for n in (1, 2, 3))
    assert table.attach(a, "alice", b"s1")  # her first: she came online
    assert not table.attach(b, "alice", b"s2")
    assert not table.attach(c, "alice", b"s2")
    assert protected == {a.connection_id: True, b.connection_id: True}  # the third is not
    assert table.of_user("alice") == (a.connection_id, b.connection_id, c.connection_id)
    assert table.of_session(b"s2") == (b.connection_id, c.connection_id)
    assert (table.user_count, table.session_count, len(table)) == (1, 2, 3)
    assert not table.detach(b) and b.state is ChatConnectionState.ANONYMOUS
    assert protected[b.connection_id] is False and b.username is None
    assert not table.detach(a)
    assert table.detach(c)  # her last: she went offline
    assert table.users() == [] and table.sessions() == [] and len(table) == 3


# --- the batch's steps -----------------------------------------------------------------------


def test_a_failed_step_gives_back_what_it_held_and_a_clean_one_goes_out_at_once() -> None:
    tracker = WriteTrackingStore(MemoryStore())
    batch = Batch(tracker)
    push = m.Unfriended(by_user="bob")
    batch.membership_changed("#a", "bob", joined=True, members=["carol"])
    mark = batch.begin_step()
    assert batch.holding
    batch.hold_close(RemoteSession(b"s"), "gone")
    batch.membership_changed("#a", "bob", joined=False, members=["carol"])  # cancels out
    batch.hold(Held(b"c" * 8, push, b"payload"))
    assert [held.message for held in batch.undo_step(mark)] == [push]
    assert not batch.holding
    # The room change the step undid is back; nothing of the step is left.
    assert [(p.joined, ms) for p, ms in batch.take_membership()] == [(True, ["carol"])]
    assert batch.release() == ([], [], [], set())
    # A step in a batch that wrote nothing goes out when it ends ...
    mark = batch.begin_step()
    batch.hold(Held(b"c" * 8, push, b"payload"))
    done, closes = batch.end_step(mark)
    assert [held.payload for held in done] == [b"payload"] and closes == []
    # ... and waits for the commit once the batch has written.
    tracker.dirty = True
    mark = batch.begin_step()
    batch.hold(Held(b"c" * 8, push, b"later"))
    assert batch.end_step(mark) == ([], []) and batch.holding
    held, _closes, _hints, _quiet = batch.release()
    assert [item.payload for item in held] == [b"later"]


def test_a_batchs_hints_spare_only_the_connections_that_sent_their_own_messages() -> None:
    batch = Batch(WriteTrackingStore(MemoryStore()))
    alice_phone, alice_laptop, bob_phone = b"a" * 8, b"l" * 8, b"b" * 8
    batch.hint(["bob"], "alice", alice_phone)
    batch.hint(["carol"], "alice", alice_laptop)
    _held, _closes, hints, quiet = batch.release()
    # Every user is told (alice's other devices have news too) ...
    assert hints == ["bob", "alice", "carol"]
    # ... but the connections that sent look for nothing new here.
    assert quiet == {alice_phone, alice_laptop}
    # A sender who is also a recipient in the batch: all of their connections look.
    batch.hint(["alice"], "bob", bob_phone)
    batch.hint(["bob"], "alice", alice_phone)
    assert batch.release()[2:] == (["alice", "bob"], set())
    # A lost batch forgets them all.
    batch.hint(["bob"], "alice", alice_phone)
    batch.lose()
    assert batch.release()[2:] == ([], set())
    # The other nodes hear of every user of the committed batches, once.
    assert batch.take_news().users == ("bob", "alice", "carol")


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
