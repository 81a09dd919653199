"""Every state machine of the core: the tables, their diagrams, and the real objects.

The tables are data; what is tested here is that the objects built on them move
only along the tables' edges whatever is done to them (hypothesis drives each one
with arbitrary sequences of operations through its public API, with a simulated
network where there is one), that what a table forbids is refused, and that
``docs/STATES.md`` is drawn from the tables as they are.
"""

from __future__ import annotations

import enum
import importlib.util
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.chat_helpers import ChatWorld, StoreFactory
from tests.simnet import Link, Network
from tests.test_server_parts import WHEN, msg
from udpchat_proto import ServerKey
from udpchat_proto import messages as m
from udpchat_proto.chat.client import MACHINE as CLIENT
from udpchat_proto.chat.client import ClientConnection, ClientState
from udpchat_proto.chat.connection import MACHINE as SERVER_CONNECTION
from udpchat_proto.chat.connection import ChatConnectionState
from udpchat_proto.chat.delivery import MACHINE as DELIVERY
from udpchat_proto.chat.delivery import DeliveryState, DeliveryWindow
from udpchat_proto.errors import LocalProtocolError
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.statemachine import StateMachine
from udpchat_proto.transport import ServerTransport
from udpchat_proto.transport.states import MACHINE as TRANSPORT

ROOT = Path(__file__).resolve().parent.parent
MACHINES: list[StateMachine[Any, Any]] = [TRANSPORT, CLIENT, SERVER_CONNECTION, DELIVERY]


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "state_diagrams", ROOT / "tools" / "state_diagrams.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["state_diagrams"] = module
    spec.loader.exec_module(module)
    return module


def test_docs_states_is_drawn_from_the_tables() -> None:
    expected = _tool().render()
    actual = (ROOT / "docs" / "STATES.md").read_text()
    assert actual == expected, "docs/STATES.md is stale: run python tools/state_diagrams.py"


def test_no_docstring_draws_its_own_copy_of_a_table() -> None:
    # A drawing by hand goes stale (two did): the code points to docs/STATES.md,
    # which is drawn from the tables.
    arrow = re.compile(r"--[A-Z_ |]+-->")
    for path in sorted((ROOT / "src" / "udpchat_proto").rglob("*.py")):
        drawn = [line.strip() for line in path.read_text().splitlines() if arrow.search(line)]
        assert not drawn, f"{path.name}: {drawn}"


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_every_pair_the_table_does_not_allow_is_refused(machine: StateMachine[Any, Any]) -> None:
    input_type: type[enum.Enum] = type(next(iter(machine.transitions))[1])
    for state in machine.states:
        for event in input_type:
            if (state, event) not in machine.transitions:
                with pytest.raises(LocalProtocolError, match=f"{event.value}.*{state.value}"):
                    machine.next(state, event)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_every_state_can_be_reached_from_a_start(machine: StateMachine[Any, Any]) -> None:
    reachable = set(machine.initial)
    while True:
        more = {after for (state, _), after in machine.transitions.items() if state in reachable}
        if more <= reachable:
            break
        reachable |= more
    assert reachable == set(machine.states)


def edges(machine: StateMachine[Any, Any]) -> set[tuple[Any, Any]]:
    return {(state, after) for (state, _event), after in machine.transitions.items()}


# --- the delivery window: a model beside the real object --------------------------------------

window_ops = st.lists(
    st.one_of(
        st.tuples(st.just("start")),
        st.tuples(st.just("stop")),
        st.tuples(st.just("refill"), st.integers(0, 6)),
        st.tuples(st.just("offer")),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("take_back")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(window_ops)
def test_the_delivery_window_moves_only_along_its_table(ops: list[tuple[Any, ...]]) -> None:
    window = DeliveryWindow(4)
    next_id = 0
    for op in ops:
        before = window.state
        in_flight = len(window)
        try:
            if op[0] == "start":
                window.start()
            elif op[0] == "stop":
                window.stop()
            elif op[0] == "refill":
                pending = [msg(next_id + i) for i in range(op[1])]
                pushed, caught_up = window.refill(pending)
                assert caught_up == (window.state is DeliveryState.LIVE)
                assert len(window) <= window.size and len(pushed) <= len(pending)
                next_id += op[1]
            elif op[0] == "offer":
                now = window.offer(msg(next_id))
                next_id += 1
                # Pushed at once only when live with room, and it is then in flight.
                assert now == (before is DeliveryState.LIVE and in_flight < window.size)
            elif op[0] == "ack":
                window.acknowledge([msg(op[1]).id])
            else:
                window.take_back(msg(max(next_id - 1, 0)).id)
        except LocalProtocolError:
            # Refused: a refill when the window is not behind. Nothing moved.
            assert window.state is before and len(window) == in_flight
            assert op[0] == "refill" and before is not DeliveryState.BACKLOG
            continue
        assert window.state is before or (before, window.state) in edges(DELIVERY)
        assert window.state is not DeliveryState.IDLE or len(window) == 0


class DeliveryWindowModel(RuleBasedStateMachine):
    """The delivery window's promises as a reference model, with a store of
    messages (oldest first) and a client that acknowledges; the real window is
    driven alike and compared after every rule.

    The model says what the window must do, not how: at most ``size`` messages in
    flight; a refill pushes the oldest pending ones not in flight, as many as fit,
    and says caught_up exactly when the store's answer was short and all of it is
    in flight; a new message goes out at once only when the window is live with
    room; anything taken back or acknowledged is out of flight.
    """

    SIZE = 2

    def __init__(self) -> None:
        super().__init__()
        self.real = DeliveryWindow(self.SIZE)
        self.state = DeliveryState.IDLE
        self.in_flight: list[bytes] = []  # oldest first
        self.stored: list[m.ChatMessage] = []
        self.acknowledged: set[bytes] = set()

    def _pending(self) -> list[m.ChatMessage]:
        """What the store answers ``pending_deliveries(limit=size)``."""
        unacked = [msg for msg in self.stored if msg.id not in self.acknowledged]
        return unacked[: self.SIZE]

    @rule()
    def start(self) -> None:
        self.real.start()
        self.state, self.in_flight = DeliveryState.BACKLOG, []

    @rule()
    def stop(self) -> None:
        self.real.stop()
        self.state, self.in_flight = DeliveryState.IDLE, []

    @rule()
    def refill(self) -> None:
        pending = self._pending()
        if self.state is not DeliveryState.BACKLOG:
            with pytest.raises(LocalProtocolError):
                self.real.refill(pending)
            return
        pushed, caught_up = self.real.refill(pending)
        fresh = [msg for msg in pending if msg.id not in self.in_flight]
        room = self.SIZE - len(self.in_flight)
        assert pushed == fresh[:room]
        self.in_flight += [msg.id for msg in pushed]
        expected = len(pending) < self.SIZE and all(msg.id in self.in_flight for msg in pending)
        assert caught_up == expected
        if caught_up:
            self.state = DeliveryState.LIVE

    @rule()
    def new_message(self) -> None:
        n = len(self.stored)
        message = m.ChatMessage(
            id=n.to_bytes(16, "big"), sender="alice", to="bob", text=f"{n}", sent_at=WHEN
        )
        self.stored.append(message)
        now = self.real.offer(message)
        live_with_room = self.state is DeliveryState.LIVE and len(self.in_flight) < self.SIZE
        assert now == live_with_room
        if now:
            self.in_flight.append(message.id)
        elif self.state is DeliveryState.LIVE:
            self.state = DeliveryState.BACKLOG

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        # Mostly what is in flight, as a client does; now and then an id that is
        # not (a repeat, or one acknowledged on another connection).
        if not self.stored:
            return
        known = [*self.in_flight, self.stored[-1].id, self.stored[0].id]
        ids = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=self.SIZE))
        self._acknowledge(ids)

    @rule()
    def acknowledge_everything_in_flight(self) -> None:
        self._acknowledge(list(self.in_flight))

    def _acknowledge(self, ids: list[bytes]) -> None:
        self.real.acknowledge(ids)
        self.acknowledged.update(ids)
        self.in_flight = [i for i in self.in_flight if i not in ids]

    @rule(data=st.data())
    def take_back(self, data: st.DataObject) -> None:
        if not self.in_flight:
            return
        taken = data.draw(st.sampled_from(self.in_flight))
        self.real.take_back(taken)
        self.in_flight.remove(taken)
        if self.state is not DeliveryState.IDLE:
            self.state = DeliveryState.BACKLOG

    @rule()
    def fall_behind(self) -> None:
        self.real.fall_behind()
        if self.state is not DeliveryState.IDLE:
            self.state = DeliveryState.BACKLOG

    @invariant()
    def the_window_is_the_model(self) -> None:
        assert self.real.state is self.state
        assert len(self.real) == len(self.in_flight) <= self.SIZE
        assert all(
            message.id in self.real for message in self.stored if message.id in self.in_flight
        )
        assert not any(
            message.id in self.real for message in self.stored if message.id not in self.in_flight
        )
        half = len(self.in_flight) <= self.SIZE // 2
        assert self.real.wants_refill == (self.state is DeliveryState.BACKLOG and half)


DeliveryWindowModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
test_the_delivery_window_keeps_the_models_promises = DeliveryWindowModel.TestCase


# --- the client and the transport, over a simulated network ---------------------------------

SERVER = ("127.0.0.1", 4433)

client_ops = st.lists(
    st.sampled_from(["connect", "close", "request", "wait", "server_gone", "lossy"]),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(client_ops, st.integers(0, 1000))
def test_client_and_transport_move_only_along_their_tables(ops: list[str], seed: int) -> None:
    net = Network(seed=seed)
    key = ServerKey.generate(SeededRandomSource("key"))
    server = ServerTransport(static_key=key, random=SeededRandomSource(f"s{seed}"))
    client = ClientConnection(server_address=SERVER, random=SeededRandomSource(f"c{seed}"))
    net.add("server", server, SERVER)
    net.add("client", client, ("127.0.0.2", 5000))
    seen_client, seen_transport = [client.state], [client.transport_state]

    def observe() -> None:
        seen_client.append(client.state)
        seen_transport.append(client.transport_state)

    for op in ops:
        before = client.state
        try:
            if op == "connect":
                client.connect(net.now)
            elif op == "close":
                client.close(net.now)
            elif op == "request":
                client.list_friends()
            elif op == "wait":
                net.run_for(1.0)
            elif op == "server_gone":
                net.vanish("server")
                net.run_for(45.0)
            else:
                net.set_links("client", "server", up=Link(loss=0.5), down=Link(loss=0.5))
                net.run_for(3.0)
        except LocalProtocolError:
            # Refused: connect twice, or a request once closing. Nothing moved.
            assert client.state is before
            assert (op == "connect" and before is not ClientState.IDLE) or (
                op == "request" and before in (ClientState.CLOSING, ClientState.CLOSED)
            )
        observe()
    net.run_for(45.0)
    observe()
    histories: list[tuple[list[Any], StateMachine[Any, Any]]] = [
        (seen_client, CLIENT),
        (seen_transport, TRANSPORT),
    ]
    for history, machine in histories:
        for before, after in itertools.pairwise(history):
            assert (
                before is after
                or (before, after) in edges(machine)
                or _path(machine, before, after)
            ), f"{machine.name}: {before} -> {after}"


def _path(machine: StateMachine[Any, Any], start: Any, goal: Any) -> bool:
    """Whether the table leads from ``start`` to ``goal`` (several inputs in one step)."""
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (source, _), after in machine.transitions.items():
            if source is state and after not in seen:
                if after is goal:
                    return True
                seen.add(after)
                frontier.append(after)
    return False


# --- the server's connections, under arbitrary request sequences -----------------------------

server_ops = st.lists(
    st.sampled_from(["register", "login", "bad_login", "resume", "logout", "list", "wait"]),
    min_size=1,
    max_size=10,
)


@settings(max_examples=40, deadline=None)
@given(server_ops)
def test_server_connections_stay_consistent_with_their_table(ops: list[str]) -> None:
    world = ChatWorld(StoreFactory("memory", Path("unused")))
    world.host.hash_delay = 0.3  # requests queue behind a hash meanwhile
    user = world.user("alice")
    user.connect()
    token: bytes | None = None
    for op in ops:
        conn = user.conn
        if op == "register":
            conn.register("alice", user.password)
        elif op == "login":
            conn.login("alice", user.password)
        elif op == "bad_login":
            conn.login("alice", "not the password")
        elif op == "resume" and token is not None:
            conn.resume(token)
        elif op == "logout":
            conn.logout()
        elif op == "list":
            conn.list_friends()
        world.net.run_for(0.1 if op != "wait" else 1.0)
        token = conn.token or token
        for info in world.server.connection_info():
            assert info.state in SERVER_CONNECTION.states
            logged_in = (ChatConnectionState.LOGGED_IN, ChatConnectionState.LOGGED_IN_HASHING)
            assert (info.username is not None) == (info.state in logged_in)
    world.net.run_for(5.0)
    # Every hash came back: nobody waits any more.
    for info in world.server.connection_info():
        assert info.state in (ChatConnectionState.ANONYMOUS, ChatConnectionState.LOGGED_IN)
    world.check_server_health()
