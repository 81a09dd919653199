"""A simulated network and a fake clock for sans-IO endpoints (no sockets, no sleeps).

Anything with the five methods of the roles (``receive_datagram``,
``datagrams_to_send``, ``get_timer``, ``handle_timer``, ``next_event``) can be
attached as a node at an address: a ``ServerTransport``, ``ClientTransport``, or the
chat roles built on them. The :class:`Network` moves datagrams between nodes
through per-direction :class:`Link` conditions (loss, duplication, reordering,
delay and jitter) drawn from one seeded ``random.Random``, and jumps its clock to
the next arrival or timer (quinn's ``Pair.step``, KCP's ``test.h``). The same seed
gives the same run, datagram for datagram.

Typical use::

    net = Network(seed=1)
    net.add("server", server, ("127.0.0.1", 4433))
    net.add("alice", client, ("127.0.0.2", 50000))
    client.connect(net.now)
    net.run_until(lambda: client.is_established, max_time=10)
    net.events["server"]   # every event the server emitted, in order

``run_until`` is bounded in simulated time and in steps, and raises
:class:`SimulationError` (an ``AssertionError``) with a summary when the bound is
reached or nothing is left to happen.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import attrs

__all__ = ["Endpoint", "Link", "Network", "Node", "SimulationError"]

Address = tuple[str, int]

#: Where the simulated clock starts: a plausible POSIX time, so that the chat worlds can
#: use it as their wall clock too (the roles only need it to be monotonic).
DEFAULT_START = 1_700_000_000.0


class Endpoint(Protocol):
    """The sans-IO shape every role has (aioquic's five methods)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> Any: ...


class SimulationError(AssertionError):
    """A bounded run did not reach its goal."""


@attrs.frozen(kw_only=True)
class Link:
    """Conditions of one direction between two nodes."""

    loss: float = 0.0
    """Probability that a datagram is lost."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice (with independent delays)."""
    reorder: float = 0.0
    """Probability that a datagram is held back by up to ``reorder_delay`` more."""
    delay: float = 0.010
    """One-way delay, seconds."""
    jitter: float = 0.0
    """Uniform extra delay in ``[0, jitter)``, seconds (reorders close datagrams too)."""
    reorder_delay: float = 0.050
    """The most a reordered datagram is held back, seconds."""


@attrs.define(eq=False)
class Node:
    """One endpoint attached to the network."""

    name: str
    endpoint: Endpoint
    address: Address
    online: bool = True
    events: list[Any] = attrs.Factory(list)


@attrs.frozen
class _InFlight:
    arrival: float
    data: bytes
    source: Address
    destination: Address


#: A datagram in flight as the queue holds it: (arrival, sequence, datagram). Plain
#: tuples, so that the heap compares two floats and two ints in C, not an attrs
#: ``__lt__`` building tuples of fields (a tenth of a large room's run).
_Entry = tuple[float, int, _InFlight]


class Network:
    """Seeded datagram delivery between nodes, with a clock that jumps.

    Attributes:
        now: the simulated time (POSIX seconds).
        steps: how many steps have run.
        events: every event each node emitted, by node name, in order.
        bytes_sent: datagram bytes handed to the network, by ``(source, destination)``
            address pair (counted before loss: what the sender sent).
        datagrams_sent: datagrams handed to the network, same keys.
        lost: datagrams the links dropped.
        undeliverable: datagrams that reached an address with no online node.
    """

    def __init__(
        self,
        seed: int | str = 0,
        *,
        default_link: Link | None = None,
        start: float = DEFAULT_START,
        max_datagram_size: int = 1200,
    ) -> None:
        self.random = random.Random(seed)
        self.now = start
        self.steps = 0
        self.default_link = default_link if default_link is not None else Link()
        self.max_datagram_size = max_datagram_size
        self.nodes: dict[str, Node] = {}
        self.events: dict[str, list[Any]] = {}
        self.bytes_sent: dict[tuple[Address, Address], int] = {}
        self.datagrams_sent: dict[tuple[Address, Address], int] = {}
        self.lost = 0
        self.undeliverable = 0
        self._by_address: dict[Address, Node] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self._queue: list[_Entry] = []
        self._sequence = 0

    # ------------------------------------------------------------------ set-up

    def add(self, name: str, endpoint: Endpoint, address: Address) -> Node:
        """Attach ``endpoint`` as ``name`` at ``address``."""
        if name in self.nodes or address in self._by_address:
            raise ValueError(f"duplicate node {name} or address {address}")
        node = Node(name, endpoint, address)
        self.nodes[name] = node
        self.events[name] = node.events
        self._by_address[address] = node
        return node

    def set_link(self, source: str, destination: str, link: Link) -> None:
        """Set the conditions of the direction ``source -> destination``."""
        self._links[source, destination] = link

    def set_links(self, a: str, b: str, *, up: Link, down: Link | None = None) -> None:
        """Set ``a -> b`` to ``up`` and ``b -> a`` to ``down`` (default: ``up``)."""
        self.set_link(a, b, up)
        self.set_link(b, a, down if down is not None else up)

    def move(self, name: str, address: Address) -> None:
        """Give a node a new source address (NAT rebinding, a new network).

        Datagrams still travelling to the old address are lost with it.
        """
        node = self.nodes[name]
        del self._by_address[node.address]
        node.address = address
        self._by_address[address] = node

    def vanish(self, name: str) -> None:
        """Take a node offline for good: it is no longer driven, and nothing reaches it."""
        node = self.nodes[name]
        node.online = False
        self._by_address.pop(node.address, None)

    def inject(
        self, data: bytes, source: Address, destination: Address, *, delay: float = 0.0
    ) -> None:
        """Put a raw datagram on the wire, from any (even spoofed) address."""
        self._count(source, destination, data)
        self._schedule(self.now + delay, data, source, destination)

    # ------------------------------------------------------------------- queries

    def link(self, source: str, destination: str) -> Link:
        """The conditions of ``source -> destination``."""
        return self._links.get((source, destination), self.default_link)

    def events_of(self, name: str, kind: type[Any]) -> list[Any]:
        """The events of ``name`` that are instances of ``kind``."""
        return [event for event in self.events[name] if isinstance(event, kind)]

    def bytes_between(self, source: Address, destination: Address) -> int:
        """Bytes sent from ``source`` to ``destination`` so far."""
        return self.bytes_sent.get((source, destination), 0)

    # -------------------------------------------------------------------- running

    def step(self) -> bool:
        """Advance to the next arrival or timer and process everything due then.

        Returns:
            False if nothing is left to happen (no datagram in flight, no timer).
        """
        self.flush()
        deadline = self._next_time()
        if deadline is None:
            return False
        self.now = max(self.now, deadline)
        self.steps += 1
        queue = self._queue
        while queue and queue[0][0] <= self.now:
            item = heapq.heappop(queue)[2]
            node = self._by_address.get(item.destination)
            if node is None or not node.online:
                self.undeliverable += 1
                continue
            node.endpoint.receive_datagram(item.data, item.source, self.now)
        for node in self._online():
            timer = node.endpoint.get_timer()
            if timer is not None and timer <= self.now:
                node.endpoint.handle_timer(self.now)
                # A timer still due after handle_timer would spin a real loop at
                # 100% CPU (get_timer in the past, handle_timer clearing nothing).
                after = node.endpoint.get_timer()
                if after is not None and after <= self.now:
                    raise SimulationError(
                        f"{node.name}: get_timer() is {after} after handle_timer({self.now})"
                    )
        self.flush()
        return True

    def flush(self) -> None:
        """Collect every online node's events and datagrams (at the current time)."""
        for node in self._online():
            while (event := node.endpoint.next_event()) is not None:
                node.events.append(event)
            for data, destination in node.endpoint.datagrams_to_send(self.now):
                self._send(node, data, destination)
            while (event := node.endpoint.next_event()) is not None:
                node.events.append(event)

    def run_until(
        self,
        predicate: Callable[[], bool],
        *,
        max_time: float = 60.0,
        max_steps: int = 1_000_000,
        what: str = "",
    ) -> None:
        """Step until ``predicate()`` holds.

        Args:
            predicate: checked before the first step and after each one.
            max_time: the most simulated seconds to run from now.
            max_steps: the most steps to run.
            what: a description for the error message.

        Raises:
            SimulationError: the bound was reached, or nothing was left to happen,
                before ``predicate()`` held.
        """
        limit = self.now + max_time
        first_step = self.steps
        self.flush()
        while not predicate():
            if self.steps - first_step >= max_steps:
                self._fail(what, f"{max_steps} steps")
            next_time = self._next_time()
            if next_time is None:
                self._fail(what, "nothing left to happen")
            if next_time > limit:
                self.now = limit
                self._fail(what, f"{max_time} simulated seconds")
            self.step()

    def next_time(self) -> float | None:
        """When the next datagram arrives or the next timer fires (None: nothing is
        left to happen): a caller that interleaves its own actions steps up to it."""
        return self._next_time()

    def run_for(self, duration: float, *, max_steps: int = 1_000_000) -> None:
        """Run everything due within ``duration`` seconds, then set the clock to its end."""
        end = self.now + duration
        first_step = self.steps
        self.flush()
        while (next_time := self._next_time()) is not None and next_time <= end:
            if self.steps - first_step >= max_steps:
                self._fail(f"run_for({duration})", f"{max_steps} steps")
            self.step()
        self.now = max(self.now, end)

    # ------------------------------------------------------------------ internals

    def _online(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.online]

    def _next_time(self) -> float | None:
        times = [node.endpoint.get_timer() for node in self._online()]
        candidates = [t for t in times if t is not None]
        if self._queue:
            candidates.append(self._queue[0][0])
        return min(candidates) if candidates else None

    def _fail(self, what: str, bound: str) -> NoReturn:
        pending = {node.name: node.endpoint.get_timer() for node in self._online()}
        raise SimulationError(
            f"{what or 'predicate'} not reached after {bound}: now={self.now:.3f}, "
            f"steps={self.steps}, in flight={len(self._queue)}, timers={pending}"
        )

    def _count(self, source: Address, destination: Address, data: bytes) -> None:
        key = (source, destination)
        self.bytes_sent[key] = self.bytes_sent.get(key, 0) + len(data)
        self.datagrams_sent[key] = self.datagrams_sent.get(key, 0) + 1

    def _send(self, node: Node, data: bytes, destination: Address) -> None:
        if len(data) > self.max_datagram_size:
            raise SimulationError(
                f"{node.name} sent a {len(data)}-byte datagram (> {self.max_datagram_size})"
            )
        self._count(node.address, destination, data)
        peer = self._by_address.get(destination)
        link = self.link(node.name, peer.name) if peer is not None else self.default_link
        rng = self.random
        copies = 2 if rng.random() < link.duplicate else 1
        for _ in range(copies):
            if rng.random() < link.loss:
                self.lost += 1
                continue
            delay = link.delay + rng.random() * link.jitter
            if rng.random() < link.reorder:
                delay += rng.random() * link.reorder_delay
            self._schedule(self.now + delay, data, node.address, destination)

    def _schedule(self, arrival: float, data: bytes, source: Address, dest: Address) -> None:
        self._sequence += 1
        item = _InFlight(arrival, data, source, dest)
        heapq.heappush(self._queue, (arrival, self._sequence, item))
