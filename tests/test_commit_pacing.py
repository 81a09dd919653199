"""Commits paced by load (issue 28): a small batch with writes, while commits are
frequent, waits a little for more work, so that requests at low load share
commits; nothing is answered before its commit, a quiet server does not wait, and
a batch big enough to share its commit already (a saturated server) never waits.

The rule (``CommitPacer``) with a fake clock; the core and a host that waits as the
loop does on the simulated network; the real loop over loopback, every wait bounded.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, test_config
from tests.simnet import Link
from udpchat_cli.session import Session
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.deliveries import CURSOR_WRITE_DELAY
from udpchat_proto.chat.pacing import (
    BACKOFF,
    BUSY_GAP,
    MOST_WAIT,
    OVERSLEEP_SLACK,
    SMALL_BATCH,
    CommitPacer,
    CommitPacing,
)
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.chat.store import Store
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.loop import ServerLoop

# --- the rule, with a fake clock ------------------------------------------------------------


def busy_pacer(pacing: CommitPacing | None = None, gap: float = 0.001) -> tuple[CommitPacer, float]:
    """A pacer that has seen ten commits ``gap`` apart; and the time of the last."""
    pacer = CommitPacer(pacing if pacing is not None else CommitPacing())
    now = 100.0
    for _ in range(10):
        pacer.committed(now)
        now += gap
    return pacer, now - gap


def test_frequent_commits_make_a_small_batch_wait_at_most_most_wait() -> None:
    pacer, last = busy_pacer()
    assert pacer.gap == pytest.approx(0.001)
    assert pacer.wait(last + 0.0005, datagrams=1) == MOST_WAIT
    assert pacer.wait(last + 0.0005, datagrams=SMALL_BATCH - 1) == MOST_WAIT


def test_a_batch_that_shares_its_commit_already_commits_at_once() -> None:
    """A saturated server's batches hold tens of datagrams: they never wait."""
    pacer, last = busy_pacer()
    assert pacer.wait(last + 0.0005, datagrams=SMALL_BATCH) == 0.0
    assert pacer.wait(last + 0.0005, datagrams=256) == 0.0


def test_a_quiet_server_commits_at_once() -> None:
    # Never committed, or once: nothing says that others will join.
    pacer = CommitPacer(CommitPacing())
    assert pacer.wait(1.0, datagrams=1) == 0.0
    pacer.committed(1.0)
    assert pacer.wait(1.0005, datagrams=1) == 0.0
    # Commits a message now and then (10 a second): under one in four a wait's worth.
    pacer, last = busy_pacer(gap=0.1)
    assert pacer.wait(last + 0.001, datagrams=1) == 0.0
    # Just under the busy gap, smoothed, still waits; at it, not.
    pacer, last = busy_pacer(gap=BUSY_GAP * 0.9)
    assert pacer.wait(last + 0.001, datagrams=1) == MOST_WAIT
    pacer, last = busy_pacer(gap=BUSY_GAP)
    assert pacer.wait(last + 0.001, datagrams=1) == 0.0


def test_the_first_request_after_a_pause_does_not_wait_for_company_that_left() -> None:
    pacer, last = busy_pacer()
    assert pacer.wait(last + BUSY_GAP, datagrams=1) == 0.0
    # One commit after the pause does not make it busy again ...
    pacer.committed(last + 1.0)
    assert pacer.wait(last + 1.0005, datagrams=1) == 0.0
    # ... a run of frequent ones does, as the smoothed gap comes down.
    now = last + 1.0
    waits = []
    for _ in range(12):
        now += 0.001
        waits.append(pacer.wait(now, datagrams=1))
        pacer.committed(now)
    assert waits[0] == 0.0 and waits[-1] == MOST_WAIT


def test_a_wait_that_overslept_stops_the_waits_for_a_while() -> None:
    """On a machine with more work than cores a sleeping loop gets its core back
    late: then pacing costs latency for nothing, and stops for BACKOFF."""
    pacer, now = busy_pacer()
    # Late by a wake-up's usual slack: nothing changes.
    assert not pacer.waited(MOST_WAIT, MOST_WAIT + OVERSLEEP_SLACK, now)
    assert pacer.wait(now, datagrams=1) == MOST_WAIT
    # Ten times as long as asked: no waits for BACKOFF, busy as the server stays.
    assert pacer.waited(MOST_WAIT, 10 * MOST_WAIT, now)
    end = now + BACKOFF
    while now < end - 0.001:
        assert pacer.wait(now, datagrams=1) == 0.0
        pacer.committed(now)
        now += 0.001
    now = end + 0.0001
    pacer.committed(now - 0.0005)
    assert pacer.wait(now, datagrams=1) == MOST_WAIT


def test_pacing_off_never_waits_and_bad_values_are_refused() -> None:
    pacer, last = busy_pacer(CommitPacing(most_wait=0.0))
    assert pacer.wait(last + 0.0001, datagrams=1) == 0.0
    with pytest.raises(ValueError):
        CommitPacing(smoothing=1.5)
    with pytest.raises(ValueError):
        CommitPacing(most_wait=-0.001)
    with pytest.raises(ValueError):
        CommitPacing(small_batch=0)


# --- the core on the simulated network ------------------------------------------------------


def paced_world(stores: StoreFactory, pacing: CommitPacing) -> tuple[ChatWorld, list[ChatUser]]:
    """alice, bob, carol and dave signed up; alice and carol each a friend of bob's;
    the host waits before its commits as the loop does."""
    world = ChatWorld(stores, config=test_config(commit_pacing=pacing))
    users = world.signed_up("alice", "bob", "carol")
    alice, bob, carol = users
    world.befriend(alice, bob)
    world.befriend(carol, bob)
    world.settle(3.0)  # the cursors' delayed write too
    world.host.paced = True
    return world, users


def test_requests_at_low_load_share_one_commit_and_none_is_answered_before_it(
    stores: StoreFactory,
) -> None:
    # Busy by construction (a long busy gap), so that the test needs no warm-up.
    pacing = CommitPacing(most_wait=0.002, busy_gap=60.0)
    world, (alice, bob, carol) = paced_world(stores, pacing)
    commits, waits = world.store.commits, world.host.commit_waits
    sent_at = world.net.now
    # Two requests from two connections, 0.5 ms apart: the first's batch waits, the
    # second joins it, and one commit makes both durable.
    first = alice.conn.send_message("bob", "from alice")
    world.net.run_for(0.0005)
    second = carol.conn.send_message("bob", "from carol")

    def answered(user: ChatUser, request: int) -> bool:
        return user.response(request) is not None

    world.run_until(lambda: answered(alice, first) and answered(carol, second))
    answered_at = world.net.now
    assert world.store.commits - commits == 1
    assert world.host.commit_waits - waits == 1
    for user, request in ((alice, first), (carol, second)):
        accepted = user.response(request)
        assert isinstance(accepted, m.MessageAccepted)
        assert accepted.message_id in world.store.committed_ids
    # Answered only once the wait was over (the commit after it), never before.
    assert answered_at >= sent_at + pacing.most_wait
    world.run_until(lambda: sorted(bob.texts()) == ["from alice", "from carol"])


def test_a_lone_request_on_a_quiet_server_is_answered_as_fast_as_without_pacing(
    stores: StoreFactory,
) -> None:
    def round_trip(pacing: CommitPacing, store: StoreFactory) -> tuple[float, int]:
        world, (alice, _bob, _carol) = paced_world(store, pacing)
        world.settle(5.0)  # a quiet server: the last commit long ago
        start = world.net.now
        alice.send("bob", "hello")
        return world.net.now - start, world.host.commit_waits

    paced, waits = round_trip(CommitPacing(), stores)
    # (A second server, on a store of its own.)
    unpaced, _ = round_trip(
        CommitPacing(most_wait=0.0), StoreFactory(stores.kind, stores.path.with_name("other"))
    )
    assert waits == 0
    assert paced == pytest.approx(unpaced)


@attrs.frozen
class Load:
    """What a simulated open-loop load cost the server, per message sent."""

    commits: float
    batches: float
    """Batches that read a datagram (the real loop's turns)."""
    waits: float
    p50: float
    p99: float
    """Seconds from a send to its acceptance."""


def offered_load(
    stores: StoreFactory, pacing: CommitPacing, rate: float, count: int, seed: int = 7
) -> Load:
    """``count`` messages sent at Poisson times, ``rate`` a second, by
    :data:`SENDERS` friends of bob's, to him, on a network of 0.1-0.3 ms one way
    (as over loopback): every cost is counted, and every latency measured, on the
    fake clock."""
    world = ChatWorld(stores, config=test_config(commit_pacing=pacing), link=LOOPBACK)
    bob, *senders = world.signed_up("bob", *(f"sender{i}" for i in range(SENDERS)))
    for sender in senders:
        world.befriend(sender, bob)
    world.settle(3.0)
    world.host.paced = True
    net, host, store = world.net, world.host, world.store
    commits, batches, waits = store.commits, host.batches, host.commit_waits
    rng = random.Random(seed)
    pending: dict[tuple[str, int], float] = {}
    latencies: list[float] = []

    def answered() -> None:
        for key, sent_at in list(pending.items()):
            if world.users[key[0]].response(key[1]) is not None:
                latencies.append(net.now - sent_at)
                del pending[key]

    due = net.now
    for n in range(count):
        due += rng.expovariate(rate)
        while (next_time := net.next_time()) is not None and next_time <= due:
            net.step()
            answered()
        net.now = due
        sender = senders[n % SENDERS]
        pending[sender.name, sender.conn.send_message("bob", f"m{n}")] = due
        net.flush()  # on its way now
    while pending:
        assert net.step(), "the answers stopped"
        answered()
    latencies.sort()
    return Load(
        commits=(store.commits - commits) / count,
        batches=(host.batches - batches) / count,
        waits=(host.commit_waits - waits) / count,
        p50=latencies[len(latencies) // 2],
        p99=latencies[int(len(latencies) * 0.99)],
    )


SENDERS = 8
"""Connections that send (in turn): each keeps a few requests in flight at most."""
LOOPBACK = Link(delay=0.0001, jitter=0.0002)
"""One way over loopback on a busy machine: 0.1-0.3 ms."""


def test_at_1000_a_second_pacing_halves_the_commits_and_turns_for_about_its_wait(
    stores: StoreFactory,
) -> None:
    paced = offered_load(stores, CommitPacing(), 1000.0, 400)
    unpaced = offered_load(
        StoreFactory(stores.kind, stores.path.with_name("unpaced")),
        CommitPacing(most_wait=0.0),
        1000.0,
        400,
    )
    assert unpaced.commits > 0.9  # one commit a message, as before
    assert paced.commits < 0.6 * unpaced.commits  # about two messages a commit
    assert paced.batches < 0.6 * unpaced.batches  # and half the turns
    assert paced.waits > 0.3
    # The price: about the wait, on the first request of each paced batch (and a
    # little queueing behind it).
    assert paced.p99 <= unpaced.p99 + 1.5 * MOST_WAIT


def test_at_100_a_second_nothing_changes(stores: StoreFactory) -> None:
    paced = offered_load(stores, CommitPacing(), 100.0, 200)
    unpaced = offered_load(
        StoreFactory(stores.kind, stores.path.with_name("unpaced")),
        CommitPacing(most_wait=0.0),
        100.0,
        200,
    )
    assert unpaced.commits > 0.9
    assert paced.waits < 0.05  # after a close pair of sends now and then
    assert paced.commits == pytest.approx(unpaced.commits, abs=0.05)
    assert paced.p50 == pytest.approx(unpaced.p50, abs=1e-4)


# --- the real loop over loopback --------------------------------------------------------------

PASSWORD = "correct horse battery"
LOOP_WAIT = 0.3
"""The loop test's wait: long enough that two requests sent together from two
threads meet in it on a loaded machine, short enough for the test's set-up."""


def test_the_loop_shares_a_commit_between_requests_and_answers_none_before_it() -> None:
    from tests.test_server_loop import CheckingSocket, TrackingStore

    store = TrackingStore()
    sock = CheckingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.store = store  # counts any send while the store holds uncommitted writes
    sock.bind(("127.0.0.1", 0))
    server = ChatServer(
        store=cast(Store, store),
        static_key=ServerKey.generate(SeededRandomSource(1)),
        clock=time.time,
        config=ServerConfig(
            scrypt=ScryptParams(n=16),
            commit_pacing=CommitPacing(most_wait=LOOP_WAIT, busy_gap=600.0),
        ),
    )
    loop = ServerLoop(server=server, store=cast(Store, store), sock=sock)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        with (
            Session(server=address, pinned=None, timeout=10) as alice,
            Session(server=address, pinned=None, timeout=10) as bob,
        ):
            alice.open()
            bob.open()
            for session, name in ((alice, "alice"), (bob, "bob")):
                register = functools.partial(
                    ClientConnection.register, username=name, password=PASSWORD
                )
                login = functools.partial(ClientConnection.login, username=name, password=PASSWORD)
                assert isinstance(session.request(register), m.Ok)
                assert isinstance(session.request(login), m.LoggedIn)
            assert isinstance(alice.request(lambda c: c.invite("bob")), m.Ok)
            assert isinstance(bob.request(lambda c: c.accept_invitation("alice")), m.Ok)
            # What the set-up left to write (acknowledged pushes' cursors) is written
            # by now, so that the sends' batch is the only one that writes.
            time.sleep(2 * CURSOR_WRITE_DELAY)
            commits, waits = store.commits, loop.commit_waits
            started = time.monotonic()
            together = threading.Barrier(2, timeout=10)
            answers: dict[str, m.Response] = {}

            def send(session: Session, sender: str, to: str) -> None:
                together.wait()
                answers[sender] = session.request(
                    functools.partial(ClientConnection.send_message, to=to, text=f"from {sender}")
                )

            other = threading.Thread(target=send, args=(bob, "bob", "alice"), daemon=True)
            other.start()
            send(alice, "alice", "bob")
            other.join(10)
            assert not other.is_alive()
            elapsed = time.monotonic() - started
            shared = store.commits - commits, loop.commit_waits - waits
    finally:
        loop.stop()
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
    assert all(isinstance(answer, m.MessageAccepted) for answer in answers.values())
    assert len(answers) == 2
    assert shared == (1, 1)  # the two sends shared one commit, made after one wait
    assert sock.violations == 0  # and nothing left while a write was uncommitted
    assert elapsed >= LOOP_WAIT  # (answered after the wait, bounded above by the timeouts)


# --- the asyncio runtime ----------------------------------------------------------------------


class PacingGate:
    """The service's event loop, but for the waits of commit pacing (the only timers
    ``ChatService`` starts with ``call_later``): each wait asked is noted, and ends
    when the test releases it, or at once while the gate does not hold. So what
    arrives during a wait is the test's to say, not the machine's load: no wait can
    end before the other request is in, nor look overslept (which would stop the
    waits for a second, ``BACKOFF``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.holding = False
        self.asked: list[float] = []
        """Every wait's length, as the service asked it."""
        self.held: list[tuple[asyncio.TimerHandle, Callable[..., object], tuple[object, ...]]] = []
        self._ending: list[asyncio.TimerHandle] = []
        """The waits asked while not holding (each ends at the loop's next turn)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    @property
    def waiting(self) -> bool:
        """Whether a batch waits still (one that began while not holding)."""
        self._ending = [handle for handle in self._ending if not handle.cancelled()]
        return bool(self._ending)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: object
    ) -> asyncio.TimerHandle:
        self.asked.append(delay)
        if not self.holding:

            def end() -> None:
                handle.cancel()  # (done: no longer waiting)
                callback(*args)

            handle = self._loop.call_later(0.0, end)
            self._ending.append(handle)
            return handle
        # (The handle the service keeps, to cancel the wait when it closes; the
        # test's run ends long before it would fire.)
        handle = self._loop.call_later(3600.0, callback, *args)
        self.held.append((handle, callback, args))
        return handle

    def release(self) -> None:
        """End the waits held: each batch turns now, as at the end of its wait."""
        held, self.held = self.held, []
        for handle, callback, args in held:
            if not handle.cancelled():
                handle.cancel()
                callback(*args)


PACED_WAIT = 60.0
"""The asyncio test's wait: the gate ends it, so it never elapses (and a wait that
took far less than asked never counts as overslept)."""


def test_the_asyncio_service_paces_its_commits_too() -> None:
    """Deterministic: the service's waits end when the test releases them (after the
    second request is in), and everything is counted, not timed."""
    from tests.test_asyncio_runtime import KEY, befriend, run, user
    from udpchat_proto import MemoryStore
    from udpchat_proto.asyncio import serve

    async def scenario() -> None:
        # Busy by construction, and every batch small: on a loaded machine the
        # batches gather retransmissions, and one of SMALL_BATCH datagrams would
        # commit at once (rightly: its commit is shared already), with no wait to see.
        pacing = CommitPacing(most_wait=PACED_WAIT, busy_gap=600.0, small_batch=10_000)
        store = MemoryStore()
        service = await serve(store=store, key=KEY, config=test_config(commit_pacing=pacing))
        gate = PacingGate(asyncio.get_running_loop())
        service._loop = gate  # type: ignore[assignment]
        async with service, user(service, "alice") as alice, user(service, "bob") as bob:
            await befriend(alice, bob, "bob", "alice")
            # The set-up's batches waited too (ended at once): busy by construction.
            assert service.commit_waits > 0
            # The clients' own writes after the set-up (their keys' uploads) may
            # still be in a batch: once none waits, the next waits held.
            async with asyncio.timeout(10):
                while gate.waiting:
                    await asyncio.sleep(0)
            gate.holding = True
            commits, waits, asked = service.commits, service.commit_waits, len(gate.asked)
            # Two requests from two connections, each one write: the first's batch
            # waits, the second joins it while it waits.
            joins = asyncio.gather(alice.join("#one"), bob.join("#two"))
            async with asyncio.timeout(10):
                while not (store.room_members("#one") and store.room_members("#two")):
                    await asyncio.sleep(0.001)  # (both read into the batch)
                # The batch ends once a round of the loop reads nothing more: then
                # it waits (or, were it not paced, commits).
                while not gate.held and service.commits == commits:
                    await asyncio.sleep(0)
            assert gate.asked[asked:] == [PACED_WAIT]  # one wait, of the pacing's length
            assert len(gate.held) == 1
            assert service.commits == commits  # nothing committed (so answered) meanwhile
            assert not joins.done()
            gate.release()
            # One commit made both durable, after the one wait.
            assert (service.commits - commits, service.commit_waits - waits) == (1, 1)
            assert all(isinstance(answer, m.Ok) for answer in await joins)
            assert store.room_members("#one") == ["alice"]
            assert store.room_members("#two") == ["bob"]
            # Encrypted sends too (each two writing steps: the e2ee client claims the
            # recipient's one-time key first), waits ending at once again: every
            # batch that wrote was committed after a wait.
            gate.holding = False
            gate.release()  # (a batch of the clients' own that waited meanwhile)
            commits, waits = service.commits, service.commit_waits
            sent = await asyncio.gather(alice.send("bob", "one"), bob.send("alice", "two"))
            assert all(isinstance(answer, m.MessageAccepted) for answer in sent)
            paced_commits, paced_waits = service.commits - commits, service.commit_waits - waits
            assert paced_commits >= 1
            assert paced_commits == paced_waits

    run(scenario)
