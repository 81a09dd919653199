"""The real server and CLI over a bad network: 30% loss each way, duplicates, reordering.

Every CLI command goes through a :class:`~tests.e2e.udp_proxy.LossyProxy` and must
succeed the first time (no retries: the transport's retransmissions are what is under
test) within a generous ``--timeout``; every message must arrive exactly once and in
order. The proxy's counters prove that the weather really was bad.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from .conftest import PASSWORD, Result, ServerProcess, run_cli
from .udp_proxy import Faults, LossyProxy

pytestmark = pytest.mark.e2e

#: A message as sent: (id, from, to, text).
Message = tuple[str, str, str, str]
#: The seed of this test's weather: a failure message repeats it.
SEED = 20261202
#: Each way: 30% of datagrams lost, 10% of the rest duplicated, 20% of copies held
#: back up to 150 ms (so that later ones overtake them).
WEATHER = Faults(drop=0.30, duplicate=0.10, delay=0.20, max_delay=0.15)
#: ``--timeout`` of every command: generous, so that only a real failure fails.
TIMEOUT = 30.0
#: The longest one CLI process may run (its handshake and its request each have
#: ``TIMEOUT``), after which the test fails rather than hangs.
PROCESS_DEADLINE = 2 * TIMEOUT + 10.0
#: The big message: 4,000 bytes, four datagrams or more.
BIG_TEXT = "".join(f"{i:04d} big message line\n" for i in range(190))[:4000]


@attrs.define
class Log:
    """Every command run, for the figures and the failure messages."""

    runs: list[tuple[str, tuple[str, ...], float]] = attrs.Factory(list)

    def summary(self) -> str:
        total = sum(d for _, _, d in self.runs)
        slowest = max(self.runs, key=lambda run: run[2], default=("", (), 0.0))
        return (
            f"{len(self.runs)} commands in {total:.1f} s, slowest {slowest[2]:.1f} s "
            f"({slowest[0]} {' '.join(slowest[1])[:40]})"
        )


@attrs.define
class LossyUser:
    """A person with their own CLI home, talking to the server through the proxy."""

    name: str
    home: Path
    proxy: LossyProxy
    log: Log

    def ok(self, *args: str, stdin: str | None = None) -> Any:
        """Run ``udpchat-cli --json ARGS`` once; it must succeed. Returns its JSON object."""
        started = time.monotonic()
        clients_before = self.proxy.clients_seen
        result: Result = run_cli(
            *args,
            "--json",
            home=self.home,
            server=self.proxy.address_text,
            stdin=stdin,
            timeout=TIMEOUT,
            deadline=PROCESS_DEADLINE,
        )
        took = time.monotonic() - started
        self.log.runs.append((self.name, args, took))
        assert result.code == 0 and result.err == "", (
            f"seed {SEED}: {self.name} {' '.join(args)[:60]!r} failed after {took:.1f} s: "
            f"exit {result.code}, stdout {result.out!r}, stderr {result.err!r}; "
            f"proxy {self.proxy.snapshot()}; {self._datagrams(clients_before)}"
        )
        return result.json

    def _datagrams(self, clients_before: int) -> str:
        """The newest client's datagrams: this command's, unless others ran meanwhile."""
        if self.proxy.clients_seen == clients_before:
            return "no datagram reached the proxy"
        return "the newest client's datagrams:\n" + "\n".join(map(str, self.proxy.trace()))

    def signup(self) -> None:
        expected = {"ok": True, "user": self.name}
        assert self.ok("register", self.name, "--password-stdin", stdin=PASSWORD + "\n") == (
            expected
        )
        assert self.ok("login", self.name, "--password-stdin", stdin=PASSWORD + "\n") == expected


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[LossyProxy]:
    """The lossy proxy in front of the test's server."""
    with LossyProxy(
        ("127.0.0.1", server.port), seed=SEED, upstream=WEATHER, downstream=WEATHER
    ) as running:
        yield running


def check_messages(got: list[dict[str, Any]], sent: list[Message], what: str) -> None:
    """``got`` holds exactly the ``sent`` (id, from, to, text) messages, in that order."""
    ids = [message["id"] for message in got]
    assert len(ids) == len(set(ids)), f"seed {SEED}: {what}: duplicates in {ids}"
    assert ids == [id_ for id_, _, _, _ in sent], f"seed {SEED}: {what}: ids or order differ"
    assert [(m["id"], m["from"], m["to"], m["text"]) for m in got] == sent, (
        f"seed {SEED}: {what}: contents differ"
    )
    # Each was encrypted end to end, and decrypted on this device (issue 26).
    assert all(m["encrypted"] is True for m in got), f"seed {SEED}: {what}: not encrypted"


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent commands at the same time (one per user); their results.

    No timeout of its own: each call runs CLI processes one after another, each
    bounded by ``PROCESS_DEADLINE``.
    """
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def send_direct(sender: LossyUser, to: str, count: int) -> list[Message]:
    """``sender`` sends ``count`` messages to ``to``, one command each; the third is big."""
    sent = []
    for i in range(count):
        text = BIG_TEXT if i == 2 else f"message {i:02d} from {sender.name}"
        answer = sender.ok("send", to, text)
        assert answer["ok"] is True and answer["to"] == to, answer
        sent.append((answer["id"], sender.name, to, text))
    return sent


@pytest.mark.slow(seconds=72)
def test_everything_works_over_a_lossy_network(proxy: LossyProxy, tmp_path: Path) -> None:
    started = time.monotonic()
    log = Log()
    alice, bob, carol = (
        LossyUser(name, tmp_path / f"home-{name}", proxy, log) for name in ("alice", "bob", "carol")
    )
    in_parallel(alice.signup, bob.signup, carol.signup)

    # Invitations.
    assert alice.ok("invite", "bob") == {"ok": True, "user": "bob"}
    assert bob.ok("invitations") == {"incoming": ["alice"], "outgoing": []}
    assert bob.ok("accept", "alice") == {"ok": True, "user": "alice"}

    # Twenty direct messages, ten each way at the same time (so that each also
    # receives while sending), one of 4,000 bytes each way.
    to_bob, to_alice = in_parallel(
        lambda: send_direct(alice, "bob", 10), lambda: send_direct(bob, "alice", 10)
    )
    bob_inbox, alice_inbox = in_parallel(lambda: bob.ok("inbox"), lambda: alice.ok("inbox"))
    check_messages(bob_inbox["messages"], to_bob, "bob's inbox")
    check_messages(alice_inbox["messages"], to_alice, "alice's inbox")
    again, history = in_parallel(lambda: bob.ok("inbox"), lambda: alice.ok("history", "bob"))
    assert again == {"messages": []}, f"seed {SEED}: shown twice: {again}"
    # The history interleaves the two conversations; each in its order.
    for sent, what in ((to_bob, "to bob"), (to_alice, "to alice")):
        got = [m for m in history["messages"] if m["to"] == sent[0][2]]
        check_messages(got, sent, f"the history's messages {what}")

    # A room: its messages reach every other member exactly once, in order.
    joined = in_parallel(
        *(lambda user=user: user.ok("join", "general") for user in (alice, bob, carol))
    )
    assert joined == [{"ok": True, "room": "#general"}] * 3
    room: list[Message] = []
    for user, text in ((alice, "welcome, both"), (bob, "thanks alice"), (alice, "and carol?")):
        answer = user.ok("send", "#general", text)
        room.append((answer["id"], user.name, "#general", text))
    carol_inbox, bob_inbox, alice_inbox = in_parallel(
        lambda: carol.ok("inbox"), lambda: bob.ok("inbox"), lambda: alice.ok("inbox")
    )
    check_messages(carol_inbox["messages"], room, "carol's inbox")
    for user, inbox in ((bob, bob_inbox), (alice, alice_inbox)):
        others = [m for m in room if m[1] != user.name]
        check_messages(inbox["messages"], others, f"{user.name}'s room inbox")
    check_messages(carol.ok("history", "#general")["messages"], room, "the room's history")

    took = time.monotonic() - started
    stats = proxy.snapshot()
    print(f"seed {SEED}: {log.summary()}; {took:.1f} s in all; proxy {stats}")
    # The weather really was bad, both ways.
    for direction in ("up", "down"):
        counts = stats[direction]
        assert counts.overflow == 0, counts
        assert counts.received >= 100, counts
        assert counts.dropped >= 0.15 * counts.received, counts
        assert counts.duplicated >= 5, counts
        assert counts.reordered >= 3, counts
