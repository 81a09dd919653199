"""Issue 26's end-to-end scenario, shared by the single server and the cluster: two
users with two devices each and a room of five whose devices come and go, over a
30% loss network and through a SIGKILL under load, every delivery checked.

The cast is fixed (:data:`CAST`): alice and bob, friends, two devices each (two CLI
profiles in one home); carol, dave and erin, one device each, carol a second one
later. The script (:func:`run_scenario`):

1. set up on the direct address (register, log in every device, befriend, join
   ``#five``: alice, bob, carol, dave);
2. **round 1**: six devices send at once, direct both ways and in the room;
3. **churn**: erin joins (a member arriving), carol logs in a tablet (a device
   added), bob's phone logs out (a device ended);
4. **round 2**: every device sends in a loop while the server (a node) is killed
   with SIGKILL and restarted; a send cut short (exit 3) is *unknown*;
5. **churn**: dave leaves (a member leaving), bob's phone logs in again (a new
   device, reading from then on), alice's phone logs out;
6. **round 3**: bob's new phone and erin in the room, alice to bob; then every
   device drains its inbox, and three histories are read (one device there all
   along, the new one's of the room and of the direct conversation).

Everything after the set-up goes through the caller's lossy proxies. Then
:meth:`Churn.check` asserts, for each *life* of each device (a logout ends one; a
later login of the profile is a new one):

* every acknowledged message sent while it was a device of a member (not the
  sender) reached it, exactly once; an unknown one at most once; nothing else
  (so a device ended or a member gone reads nothing sent after, and a new device
  nothing sent before);
* each one was encrypted and decrypted (``"encrypted": true``, its text intact);
* in order: each sending device's messages in the order sent, and any two
  devices see a conversation's messages in the same order;
* no command printed a warning (an undecryptable delivery is a ``warning: ...
  could not be read`` line on stderr, never silent).

Every text is unique and distinctive (:meth:`Churn.plaintexts`), for the callers
that grep the server's files for them.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from .conftest import PASSWORD, Result, ServerProcess, run_cli
from .udp_proxy import Faults

#: ``--timeout`` of a command that must succeed over the lossy network (generous:
#: only a real failure fails), and the longest its process may run.
CALM_TIMEOUT = 30.0
CALM_DEADLINE = 2 * CALM_TIMEOUT + 10.0
#: ``--timeout`` of a send in round 2, when a kill may cut it short (exit 3).
CHAOS_TIMEOUT = 6.0
#: Round 2: acknowledged sends before the kill, and after the restart, before it ends.
ACKS_BEFORE_KILL = 4
ACKS_AFTER_RESTART = 4
#: Round 2's bound in seconds (its sends stop then, whatever was acknowledged).
CHAOS_BUDGET = 90.0
#: At most this many sends per device in round 2.
CHAOS_SENDS = 8

#: The seed of the weather (a failure message repeats it); a second proxy takes the next.
SEED = 20261207
#: Each way: 30% lost, 10% of the rest duplicated, 20% held back (overtaken).
WEATHER = Faults(drop=0.30, duplicate=0.10, delay=0.20, max_delay=0.15)

ROOM = "#five"
#: Every user's profiles (devices), the first one doing their one-off commands.
CAST: dict[str, tuple[str, ...]] = {
    "alice": ("laptop", "phone"),
    "bob": ("laptop", "phone"),
    "carol": ("laptop", "tablet"),
    "dave": ("laptop",),
    "erin": ("laptop",),
}
#: Who talks directly: the one friendship.
FRIENDS = ("alice", "bob")


@attrs.frozen
class Device:
    """One CLI profile of one user."""

    user: str
    profile: str
    home: Path

    @property
    def name(self) -> str:
        return f"{self.user}/{self.profile}"


@attrs.frozen
class Sent:
    """One ``send`` and what came of it."""

    device: str  # the life that sent it
    user: str
    to: str
    text: str
    index: int  # its place among its device's sends
    recipients: frozenset[str]  # the lives it is for (every member's device, not the sender)
    outcome: str  # "acked" (exit 0), "unknown" (exit 3), "refused" (exit 1, typed)
    message_id: str | None  # the server's answer (acked only)


#: Refusals a send may meet while a node is killed and restarted: typed, nothing
#: stored. ``unavailable``: a node's batch waited past PostgreSQL's lock timeout on
#: rows the killed node's connection still held (until PostgreSQL drops it).
_REFUSED_IN_CHAOS = frozenset({"rate_limited", "unavailable"})


class Churn:
    """The record of the scenario: who is a device and a member when, every send,
    every delivery, every stderr line; and the checks.

    Args:
        tmp_path: where the homes are.
        address: the ``--server`` of a device for everything after the set-up
            (the lossy proxies, in the device's order of nodes).
        direct: the ``--server`` of the set-up (straight to the server).
    """

    def __init__(
        self, tmp_path: Path, address: Callable[[Device], str], direct: Callable[[Device], str]
    ) -> None:
        self.address = address
        self.direct = direct
        self.devices = {
            (user, profile): Device(user, profile, tmp_path / f"home-{user}")
            for user, profiles in CAST.items()
            for profile in profiles
        }
        self.lock = threading.Lock()
        self.lives: dict[str, int] = {}  # device name -> its current life
        self.live: set[str] = set()  # lives logged in now ("alice/phone#2")
        self.members: set[str] = set()
        self.sent: list[Sent] = []
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.histories: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.warnings: list[str] = []
        self.commands = 0
        self.counter = itertools.count()
        self.lossy = False
        self.phases: dict[str, float] = {}
        self._phase_began = time.monotonic()

    def phase(self, name: str) -> None:
        """Note how long the phase that ends now took (the figures)."""
        now = time.monotonic()
        self.phases[name] = round(now - self._phase_began, 1)
        self._phase_began = now

    def device(self, user: str, profile: str = "laptop") -> Device:
        return self.devices[(user, profile)]

    def life(self, device: Device) -> str:
        with self.lock:
            return f"{device.name}#{self.lives.get(device.name, 0)}"

    # --- running commands ---------------------------------------------------------------

    def run(self, device: Device, *args: str, timeout: float = CALM_TIMEOUT) -> Result:
        """One command, its stderr kept (a warning is a failure of the scenario)."""
        stdin = PASSWORD + "\n" if args[0] in ("register", "login") else None
        server = self.address(device) if self.lossy else self.direct(device)
        result = run_cli(
            "--profile",
            device.profile,
            "--json",
            *args,
            home=device.home,
            server=server,
            stdin=stdin,
            timeout=timeout,
            deadline=2 * timeout + 10.0,
        )
        with self.lock:
            self.commands += 1
            if result.code == 0 and result.err:
                self.warnings.append(f"{device.name} {args[0]}: {result.err}")
            elif "could not be read" in result.err or "warning" in result.err:
                self.warnings.append(f"{device.name} {args[0]} (exit {result.code}): {result.err}")
        return result

    def ok(self, device: Device, *args: str) -> Any:
        result = self.run(device, *args)
        assert result.code == 0, f"{device.name} {args}: {result}"
        return result.json

    def login(self, device: Device, *, register: bool = False) -> None:
        if register:
            self.ok(device, "register", device.user, "--password-stdin")
        self.ok(device, "login", device.user, "--password-stdin")
        with self.lock:
            self.lives[device.name] = self.lives.get(device.name, 0) + 1
            life = f"{device.name}#{self.lives[device.name]}"
            self.live.add(life)
            self.received[life] = []

    def logout(self, device: Device) -> None:
        """Drain its inbox, then end the device (the profile stays, logged out)."""
        self.drain(device)
        self.ok(device, "logout")
        with self.lock:
            self.live.discard(f"{device.name}#{self.lives[device.name]}")

    def join(self, user: str) -> None:
        self.ok(self.device(user), "join", ROOM)
        with self.lock:
            self.members.add(user)

    def leave(self, user: str) -> None:
        """Drain the user's devices (what was sent before is theirs), then leave."""
        for device in self.senders():
            if device.user == user:
                self.drain(device)
        self.ok(self.device(user), "leave", ROOM)
        with self.lock:
            self.members.discard(user)

    def drain(self, device: Device) -> None:
        """``inbox``: everything the server holds for the device (it reads until the
        server says it caught up), and what its other commands kept."""
        life = self.life(device)
        messages: list[dict[str, Any]] = self.ok(device, "inbox")["messages"]
        with self.lock:
            self.received[life].extend(messages)

    def history(self, device: Device, conversation: str) -> None:
        """``history`` of a conversation, kept for :meth:`check`."""
        peer = conversation if conversation == ROOM else FRIENDS[device.user == FRIENDS[0]]
        messages: list[dict[str, Any]] = self.ok(device, "history", peer, "--limit", "100")[
            "messages"
        ]
        life = self.life(device)
        with self.lock:
            self.histories[(life, conversation)] = messages

    def recipients(self, sender: str, to: str) -> frozenset[str]:
        """The lives a message to ``to`` is for now: every device of its members."""
        users = self.members if to == ROOM else set(FRIENDS)
        with self.lock:
            return frozenset(
                life for life in self.live if life.split("/")[0] in users and life != sender
            )

    def send(self, device: Device, to: str, *, chaos: bool = False) -> Sent:
        """One ``send``; exit 3 is allowed (unknown) only in round 2."""
        life = self.life(device)
        number = next(self.counter)
        text = f"hush {number:03d} {device.name} to {to} {number * 7919 % 10007:05d}"
        with self.lock:
            index = sum(s.device == life for s in self.sent)
        recipients = self.recipients(life, to)  # (nobody comes or goes during a send)
        result = self.run(
            device, "send", to, text, timeout=CHAOS_TIMEOUT if chaos else CALM_TIMEOUT
        )
        message_id = None
        if result.code == 0:
            answer = result.json
            assert answer["ok"] is True and answer["to"] == to, result
            outcome, message_id = "acked", str(answer["id"])
        elif chaos and result.code == 3:
            outcome = "unknown"
        elif chaos and result.code == 1 and result.json.get("error") in _REFUSED_IN_CHAOS:
            outcome = "refused"  # (typed, nothing stored: checked never to arrive)
        else:
            raise AssertionError(f"{life} send {to}: {result}")
        sent = Sent(life, device.user, to, text, index, recipients, outcome, message_id)
        with self.lock:
            self.sent.append(sent)
        return sent

    def acked(self) -> int:
        with self.lock:
            return sum(s.outcome == "acked" for s in self.sent)

    def senders(self) -> list[Device]:
        """The logged-in devices now."""
        with self.lock:
            names = {life.split("#")[0] for life in self.live}
        return [device for device in self.devices.values() if device.name in names]

    def targets(self, device: Device) -> list[str]:
        """Where a device sends: its friend (alice and bob), the room if a member."""
        with self.lock:
            room = [ROOM] if device.user in self.members else []
        friend = [u for u in FRIENDS if u != device.user] if device.user in FRIENDS else []
        return friend + room

    @staticmethod
    def _to(sent: Sent) -> str:
        """The conversation of a send: the room, or the friends' direct one."""
        return ROOM if sent.to == ROOM else "direct"

    @property
    def plaintexts(self) -> list[str]:
        """Every text any device sent (each one unique and distinctive)."""
        return [s.text for s in self.sent]

    # --- the checks ---------------------------------------------------------------------

    def check(self) -> dict[str, int]:
        """Assert every promise above; the figures."""
        assert not self.warnings, self.warnings
        by_text = {s.text: s for s in self.sent}
        orders: dict[str, list[list[str]]] = {}  # conversation -> each life's order of texts
        delivered = 0
        for life, got in self.received.items():
            texts = [m["text"] for m in got]
            assert len(texts) == len(set(texts)), f"{life}: a message twice: {texts}"
            ids = [m["id"] for m in got]
            assert len(ids) == len(set(ids)), f"{life}: an id twice"
            for message in got:
                sent = by_text.get(message["text"])
                assert sent is not None, f"{life}: a text nobody sent: {message}"
                assert life in sent.recipients, f"{life} read what was not for it: {sent}"
                assert sent.outcome in ("acked", "unknown"), f"{life}: a refused send: {sent}"
                assert message["encrypted"] is True, f"{life}: not end to end: {message}"
                assert (message["from"], message["to"]) == (sent.user, sent.to), message
                if sent.message_id is not None:
                    assert message["id"] == sent.message_id, (message, sent)
            missing = [
                s.text
                for s in self.sent
                if s.outcome == "acked" and life in s.recipients and s.text not in texts
            ]
            assert not missing, f"{life} never received {missing}"
            for device in {s.device for s in self.sent}:
                mine = [by_text[t].index for t in texts if by_text[t].device == device]
                assert mine == sorted(mine), f"{life} got {device}'s messages out of order"
            for conversation in {self._to(s) for s in self.sent}:
                order = [t for t in texts if self._to(by_text[t]) == conversation]
                orders.setdefault(conversation, []).append(order)
            delivered += len(got)
        for conversation, seen in orders.items():
            for one, other in itertools.combinations(seen, 2):
                common = set(one) & set(other)
                assert [t for t in one if t in common] == [t for t in other if t in common], (
                    f"two devices saw {conversation} in different orders"
                )
        for (life, conversation), history in self.histories.items():
            # Its own sends and what was for it, from the start or its login: no more.
            readable = [
                s.text
                for s in self.sent
                if self._to(s) == conversation and life in (s.device, *s.recipients)
            ]
            texts = [m["text"] for m in history]
            assert all(m["encrypted"] is True for m in history), f"{life}: {history}"
            assert set(texts) <= set(readable), f"{life}'s history of {conversation}: {texts}"
            assert {t for t in readable if by_text[t].outcome == "acked"} <= set(texts), (
                f"{life}'s history of {conversation} lacks some of {readable}"
            )
            for order in orders.get(conversation, []):
                common = set(order) & set(texts)
                assert [t for t in texts if t in common] == [t for t in order if t in common]
        outcomes = [s.outcome for s in self.sent]
        return {
            "lives": len(self.received),
            "sends": len(self.sent),
            "acked": outcomes.count("acked"),
            "unknown": outcomes.count("unknown"),
            "refused": outcomes.count("refused"),
            "delivered": delivered,
            "commands": self.commands,
        }


def in_parallel(calls: Iterable[Callable[[], Any]]) -> list[Any]:
    """Run independent calls at once (each bounded by its processes' deadlines)."""
    jobs = list(calls)
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def restart(make: Callable[[], ServerProcess], deadline: float = 20.0) -> ServerProcess:
    """Start a server (a node) again on its port, bounded: while it was down, a
    process may have been given that port as an ephemeral one; wait until it is gone."""
    end = time.monotonic() + deadline
    while True:
        process = make()
        try:
            return process.start()
        except AssertionError:
            process.kill()
            if "cannot listen" not in process.log_text() or time.monotonic() > end:
                raise
            time.sleep(0.2)


def sends_at_once(churn: Churn, plan: Iterable[tuple[Device, str]]) -> None:
    """Each ``(device, to)`` of the plan sent, every device at once (one send each)."""
    in_parallel(functools.partial(churn.send, device, to) for device, to in plan)


def chaos_round(churn: Churn, crash: Callable[[], None]) -> None:
    """Every device sends in a loop while ``crash`` (a SIGKILL, a restart) happens."""
    stop = threading.Event()

    def loop(device: Device) -> None:
        targets = churn.targets(device)
        for n in range(CHAOS_SENDS):
            if stop.is_set():
                return
            churn.send(device, targets[n % len(targets)], chaos=True)

    def wait_for(count: int, deadline: float) -> None:
        while churn.acked() < count and time.monotonic() < deadline:
            time.sleep(0.02)

    deadline = time.monotonic() + CHAOS_BUDGET
    with ThreadPoolExecutor(max_workers=len(churn.devices)) as pool:
        futures = [pool.submit(loop, device) for device in churn.senders()]
        try:
            before = churn.acked()
            wait_for(before + ACKS_BEFORE_KILL, deadline)
            assert churn.acked() >= before + ACKS_BEFORE_KILL, "no sends before the kill"
            crash()
            after = churn.acked()
            wait_for(after + ACKS_AFTER_RESTART, deadline)
            assert churn.acked() >= after + ACKS_AFTER_RESTART, "no sends after the restart"
        finally:
            stop.set()
            for future in futures:
                future.result()


def run_scenario(churn: Churn, crash: Callable[[], None]) -> dict[str, int]:
    """The script above; returns :meth:`Churn.check`'s figures."""
    # Set-up, straight to the server.
    in_parallel(functools.partial(churn.login, churn.device(u), register=True) for u in CAST)

    def befriend() -> None:
        churn.ok(churn.device("alice"), "invite", "bob")
        churn.ok(churn.device("bob"), "accept", "alice")

    in_parallel(
        [
            functools.partial(churn.login, churn.device("alice", "phone")),
            functools.partial(churn.login, churn.device("bob", "phone")),
            befriend,
            *(functools.partial(churn.join, user) for user in ("alice", "bob", "carol", "dave")),
        ]
    )

    churn.phase("set-up")
    churn.lossy = True
    # Round 1: the friends' four devices both ways and in the room, the room's others.
    sends_at_once(
        churn,
        [
            (churn.device("alice"), "bob"),
            (churn.device("alice", "phone"), ROOM),
            (churn.device("bob"), "alice"),
            (churn.device("bob", "phone"), ROOM),
            (churn.device("carol"), ROOM),
            (churn.device("dave"), ROOM),
        ],
    )
    churn.phase("round 1")

    in_parallel(
        [
            lambda: churn.join("erin"),
            lambda: churn.login(churn.device("carol", "tablet")),
            lambda: churn.logout(churn.device("bob", "phone")),
        ]
    )

    churn.phase("churn 1")
    chaos_round(churn, crash)
    churn.phase("round 2 (SIGKILL)")

    in_parallel(
        [
            lambda: churn.leave("dave"),
            lambda: churn.login(churn.device("bob", "phone")),  # a new device: reads from now
            lambda: churn.logout(churn.device("alice", "phone")),
        ]
    )

    churn.phase("churn 2")
    # Round 3: the new device, a friend to it, the room's newest member.
    sends_at_once(
        churn,
        [
            (churn.device("bob", "phone"), ROOM),
            (churn.device("alice"), "bob"),
            (churn.device("erin"), ROOM),
        ],
    )
    churn.phase("round 3")
    in_parallel(
        [
            *(functools.partial(churn.drain, device) for device in churn.senders()),
            lambda: churn.history(churn.device("alice"), ROOM),  # there all along
            lambda: churn.history(churn.device("bob", "phone"), ROOM),  # from its new login
            lambda: churn.history(churn.device("bob", "phone"), "direct"),
        ]
    )
    churn.phase("drains, histories")
    return churn.check()
