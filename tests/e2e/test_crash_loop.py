"""The crash loop: the promise "a message the server acknowledged reaches every device
of every recipient exactly once, in order, across crashes", under SIGKILL.

One real ``udpchat-server`` (fixed database, key file and port) is killed with SIGKILL
at seeded random moments (some just after a client resumed its session, i.e. with a
request in flight) and restarted, over and over, while one thread per person
keeps running real ``udpchat-cli`` processes: direct and room messages, invitations
and acceptances, new registrations and logins, room joins, ``inbox``. Every outcome is
recorded: exit 0 is what the server acknowledged; exit 3 (timeout, disconnected) is
unknown (the request may or may not have been stored); a refusal (exit 1) was not
stored. Some people have two profiles of the CLI, i.e. two devices, two login
sessions.

Then, with the server left up, every profile's inbox is drained and checked:

* every acknowledged message reached every profile of every recipient exactly once
  (direct: the friend; room: every member, including one who joined during the crash
  loop if the send began after the join was acknowledged), and every other profile
  of its sender logged in before it was sent (never the profile that sent it);
* a message whose send failed with exit 3 arrived at most once, a refused one never,
  and nothing arrived where it was not addressed;
* each profile received each sender's messages of one conversation in the order they
  were sent (each person sends from one thread, one process at a time);
* no profile received a message id twice;
* every acknowledged registration can log in, every friendship shows in ``friends``,
  every room membership in ``rooms``.

``CRASH_LOOP_SEED`` (environment) replays another seed; the figures are printed
(``pytest -s``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest

from .conftest import PASSWORD, Result, ServerProcess, run_cli

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CRASH_LOOP_SEED", "20260501"))
#: SIGKILLs, each followed by a restart on the same database, key file and port.
KILLS = 24
#: Seconds the server runs between a restart and the next SIGKILL.
KILL_GAP = (0.3, 1.5)
#: ``--timeout`` of every CLI process during the crash loop (a request caught by a
#: kill fails this fast, with exit 3), and once the server stays up.
CHAOS_TIMEOUT = 1.5
CALM_TIMEOUT = 10.0
#: More kills (beyond KILLS, up to CHAOS_BUDGET seconds of crash loop) while fewer
#: sends than this were acknowledged (a loaded machine runs fewer commands).
WANTED_ACKS = 60
CHAOS_BUDGET = 60.0
#: A share of the kills (seeded) come instead 0 to 60 ms after the server's log shows a
#: login session resumed, i.e. while a request is on its way, being committed or
#: answered (most processes otherwise meet the server in the burst after a restart).
IN_FLIGHT_SHARE = 0.4
IN_FLIGHT_DELAY = (0.0, 0.06)
_RESUMED = " resumed their session"
#: Longest a restart may wait for the port (a CLI's ephemeral socket may hold it).
RESTART_DEADLINE = 20.0
#: Longest the threads may take to finish their last command once told to stop.
JOIN_DEADLINE = 60.0

# --- the cast ------------------------------------------------------------------------------

#: Everyone's profiles (devices). The first one does their one-off commands.
DEVICES: dict[str, tuple[str, ...]] = {
    "alice": ("laptop", "phone"),
    "bob": ("laptop", "phone"),
    "carol": ("laptop",),
    "dave": ("laptop",),
    "erin": ("laptop", "tablet"),
    "frank": ("laptop", "phone"),  # registers during the crash loop
    "grace": ("laptop",),  # registers during the crash loop
}
FOUNDERS = ("alice", "bob", "carol", "dave", "erin")
FOUNDING_FRIENDS = (
    ("alice", "bob"),
    ("alice", "carol"),
    ("bob", "carol"),
    ("alice", "dave"),
    ("bob", "erin"),
    ("carol", "erin"),
)
FOUNDING_ROOMS = {"#ops": ("alice", "bob", "carol", "dave"), "#dev": ("bob", "carol", "erin")}


# --- the server that keeps crashing ---------------------------------------------------------


class CrashingServer:
    """``udpchat-server`` on one database, key file and port, across SIGKILLs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.db = directory / "chat.sqlite3"
        self.key_file = directory / "server.key"
        self.port = 0
        self.fingerprint = ""
        self.current: ServerProcess | None = None
        self.processes: list[ServerProcess] = []
        self.kill_times: list[float] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again), on the port of the first start; bounded."""
        deadline = time.monotonic() + RESTART_DEADLINE
        while True:
            process = ServerProcess(
                self.directory, db=self.db, key_file=self.key_file, port=self.port
            )
            self.processes.append(process)
            try:
                process.start()
                break
            except AssertionError:
                with contextlib.suppress(Exception):
                    process.wait(5.0)
                # While the server is down, a CLI process may be given its port as
                # an ephemeral one; wait until that process is gone.
                if "cannot listen" not in process.log_text() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if self.port == 0:
            self.port, self.fingerprint = process.port, process.fingerprint
        assert (process.port, process.fingerprint) == (self.port, self.fingerprint)
        self.current = process

    def crash(self) -> None:
        """SIGKILL: no last commit, no reply, no close."""
        assert self.current is not None and self.current.alive(), self.log_tail()
        self.current.kill()
        self.kill_times.append(time.monotonic())

    def await_request(self, deadline: float) -> bool:
        """Wait (bounded) until a client resumes its login session on the current
        server: its request follows within milliseconds."""
        assert self.current is not None
        baseline = self.current.log_text().count(_RESUMED)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.current.log_text().count(_RESUMED) > baseline:
                return True
            time.sleep(0.005)
        return False

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current.kill()

    def log_tail(self) -> str:
        return self.processes[-1].log_text()[-4000:] if self.processes else ""


# --- the record of what happened -------------------------------------------------------------


@attrs.frozen
class Device:
    """One profile of one person: a device with its own login session."""

    user: str
    profile: str
    home: Path
    server: str

    @property
    def label(self) -> str:
        return f"{self.user}/{self.profile}"

    def run(self, *args: str, timeout: float, stdin: str | None = None) -> Result:
        return run_cli(
            "--profile",
            self.profile,
            "--json",
            *args,
            home=self.home,
            server=self.server,
            stdin=stdin,
            timeout=timeout,
        )


@attrs.define
class Attempt:
    """One ``send`` process and what came of it."""

    sender: str
    device: str
    to: str
    index: int  # the sender's sends, counted in the order they were made
    text: str
    start: float
    end: float = 0.0
    outcome: str = ""  # "acked" (exit 0), "unknown" (exit 3), "refused" (exit 1)
    message_id: str | None = None

    def describe(self, origin: float) -> str:
        return (
            f"send #{self.index} {self.sender}->{self.to} from {self.device} "
            f"[{self.start - origin:.3f}s..{self.end - origin:.3f}s] {self.outcome} "
            f"id={self.message_id} text={self.text!r}"
        )


@attrs.define
class Membership:
    """A room membership: when the first join began, when one was acknowledged."""

    first_start: float
    acked_at: float | None = None


def error_code(result: Result) -> str:
    """The ``error`` of a JSON refusal, or a description of what was printed."""
    try:
        value = result.json
    except (AssertionError, ValueError):
        return f"<no JSON: {result.out!r} {result.err!r}>"
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return f"<no error code: {result.out!r}>"


class World:
    """Everything the threads did and learnt, shared under one lock."""

    def __init__(self, server: CrashingServer, tmp_path: Path) -> None:
        self.server = server
        self.origin = time.monotonic()
        self.lock = threading.Lock()
        self.devices = {
            user: [Device(user, name, tmp_path / f"home-{user}", server.address) for name in names]
            for user, names in DEVICES.items()
        }
        self.registered: set[str] = set()
        self.logged_in: set[str] = set()  # device labels
        self.logged_in_at: dict[str, float] = {}  # when each label's login was acknowledged
        self.invited: set[tuple[str, str]] = set()
        self.friends: set[frozenset[str]] = set()
        self.memberships: dict[tuple[str, str], Membership] = {}
        self.attempts: list[Attempt] = []
        self.deliveries: dict[str, list[dict[str, Any]]] = {
            device.label: [] for devices in self.devices.values() for device in devices
        }
        self.anomalies: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.sends: dict[str, itertools.count[int]] = {user: itertools.count() for user in DEVICES}

    def call(
        self, device: Device, *args: str, timeout: float, allowed: Iterable[str] = ()
    ) -> Result:
        """Run one command; note a refusal not in ``allowed`` or an odd exit status."""
        stdin = PASSWORD + "\n" if args[0] in ("register", "login") else None
        result = device.run(*args, timeout=timeout, stdin=stdin)
        with self.lock:
            self.outcomes[f"{args[0]} exit {result.code}"] += 1
        unexpected = result.code not in (0, 1, 3) or (
            result.code == 1 and error_code(result) not in allowed
        )
        if unexpected:
            self.anomaly(f"{device.label} {args}: exit {result.code} {result.out!r} {result.err!r}")
        return result

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(f"[{time.monotonic() - self.origin:.3f}s] {text}")

    def acknowledged(self) -> int:
        with self.lock:
            return sum(attempt.outcome == "acked" for attempt in self.attempts)

    def all_logged_in(self, user: str) -> bool:
        with self.lock:
            return all(device.label in self.logged_in for device in self.devices[user])

    def friends_of(self, user: str) -> list[str]:
        with self.lock:
            return sorted(other for pair in self.friends if user in pair for other in pair - {user})

    def rooms_of(self, user: str) -> list[str]:
        with self.lock:
            return sorted(
                room
                for (member, room), ship in self.memberships.items()
                if member == user and ship.acked_at is not None
            )

    # --- the commands --------------------------------------------------------------------

    def inbox(self, device: Device, timeout: float) -> list[dict[str, Any]] | None:
        """``inbox``: record and return what it printed (None: it failed)."""
        result = self.call(device, "inbox", timeout=timeout)
        if result.code != 0:
            return None
        messages: list[dict[str, Any]] = result.json["messages"]
        # Every one encrypted end to end and decrypted here, crashes and all.
        assert all(message["encrypted"] is True for message in messages), messages[:3]
        with self.lock:
            self.deliveries[device.label].extend(messages)
        return messages

    def send(self, device: Device, to: str) -> None:
        index = next(self.sends[device.user])
        text = f"{device.user} #{index} to {to} from {device.profile}"
        attempt = Attempt(device.user, device.label, to, index, text, time.monotonic())
        # rate_limited: refused, not stored. Anything else (not_friends, not_a_member)
        # means a friendship or membership the server acknowledged was lost.
        result = self.call(
            device, "send", to, text, timeout=CHAOS_TIMEOUT, allowed=["rate_limited"]
        )
        attempt.end = time.monotonic()
        if result.code == 0:
            answer = result.json
            assert answer["ok"] is True and answer["to"] == to, result
            attempt.outcome, attempt.message_id = "acked", str(answer["id"])
        elif result.code == 3:
            attempt.outcome = "unknown"
        else:
            attempt.outcome = "refused"
        with self.lock:
            self.attempts.append(attempt)


# --- one-off steps (retried until acknowledged) ------------------------------------------------


@attrs.define
class Step:
    """A command to repeat until it is done, once ``ready()``."""

    name: str
    ready: Callable[[], bool]
    act: Callable[[float, bool], bool]  # (timeout, retrying) -> done
    done: bool = False
    tries: int = 0

    def attempt(self, timeout: float) -> bool:
        self.done = self.act(timeout, self.tries > 0)
        self.tries += 1
        return self.done


def register_step(world: World, user: str) -> Step:
    device = world.devices[user][0]

    def act(timeout: float, retrying: bool) -> bool:
        # user_exists after an attempt that failed with exit 3: that attempt was stored
        # (the server says so); the login check at the end proves the password.
        allowed = ["rate_limited", *(["user_exists"] if retrying else [])]
        result = world.call(
            device, "register", user, "--password-stdin", timeout=timeout, allowed=allowed
        )
        if result.code == 0:
            assert result.json == {"ok": True, "user": user}, result
        done = result.code == 0 or (result.code == 1 and error_code(result) == "user_exists")
        if done:
            with world.lock:
                world.registered.add(user)
        return done

    return Step(f"register {user}", lambda: True, act)


def login_step(world: World, device: Device) -> Step:
    def act(timeout: float, _retrying: bool) -> bool:
        result = world.call(
            device,
            "login",
            device.user,
            "--password-stdin",
            timeout=timeout,
            allowed=["rate_limited"],
        )
        if result.code == 0:
            assert result.json == {"ok": True, "user": device.user}, result
            with world.lock:
                world.logged_in.add(device.label)
                world.logged_in_at.setdefault(device.label, time.monotonic())
        return result.code == 0

    def ready() -> bool:
        with world.lock:
            return device.user in world.registered

    return Step(f"login {device.label}", ready, act)


def invite_step(world: World, inviter: str, invitee: str) -> Step:
    device = world.devices[inviter][0]

    def act(timeout: float, retrying: bool) -> bool:
        allowed = ["already_invited"] if retrying else []
        result = world.call(device, "invite", invitee, timeout=timeout, allowed=allowed)
        done = result.code == 0 or (result.code == 1 and error_code(result) == "already_invited")
        if done:
            with world.lock:
                world.invited.add((inviter, invitee))
        return done

    def ready() -> bool:
        with world.lock:
            return invitee in world.registered

    return Step(
        f"{inviter} invites {invitee}", lambda: world.all_logged_in(inviter) and ready(), act
    )


def accept_step(world: World, invitee: str, inviter: str) -> Step:
    device = world.devices[invitee][0]

    def act(timeout: float, retrying: bool) -> bool:
        result = world.call(device, "accept", inviter, timeout=timeout, allowed=["no_invitation"])
        if result.code == 1:
            # No invitation any more: an earlier accept (exit 3) was stored, or the
            # acknowledged invitation was lost. The server's friend list tells.
            listed = world.call(device, "friends", timeout=timeout)
            if listed.code != 0:
                return False
            if inviter not in [friend["user"] for friend in listed.json["friends"]]:
                world.anomaly(
                    f"{invitee}: the acknowledged invitation from {inviter} is gone "
                    f"(retrying={retrying}) and they are not friends: {listed.out!r}"
                )
                return True
        elif result.code != 0:
            return False
        with world.lock:
            world.friends.add(frozenset((inviter, invitee)))
        return True

    def ready() -> bool:
        with world.lock:
            return (inviter, invitee) in world.invited

    return Step(
        f"{invitee} accepts {inviter}", lambda: world.all_logged_in(invitee) and ready(), act
    )


def join_step(world: World, user: str, room: str) -> Step:
    device = world.devices[user][0]

    def act(timeout: float, _retrying: bool) -> bool:
        start = time.monotonic()
        with world.lock:
            world.memberships.setdefault((user, room), Membership(first_start=start))
        # The room without its '#': the CLI adds it.
        result = world.call(device, "join", room.removeprefix("#"), timeout=timeout)
        if result.code != 0:
            return False
        assert result.json == {"ok": True, "room": room}, result
        with world.lock:
            world.memberships[(user, room)].acked_at = time.monotonic()
        return True

    return Step(f"{user} joins {room}", lambda: world.all_logged_in(user), act)


# --- the threads ---------------------------------------------------------------------------------


class Actor:
    """One thread: some people's one-off steps, in order, between random traffic."""

    def __init__(self, world: World, users: tuple[str, ...], steps: list[Step], seed: int) -> None:
        self.world = world
        self.users = users
        self.steps = steps
        self.rng = random.Random(seed)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="actor-" + "-".join(users))
        self.stop = threading.Event()

    def _main(self) -> None:
        try:
            while not self.stop.is_set():
                self.turn()
                time.sleep(self.rng.uniform(0.0, 0.05))
        except BaseException as exc:
            self.error = exc

    def turn(self) -> None:
        step = next((step for step in self.steps if not step.done), None)
        if step is not None and step.ready() and self.rng.random() < 0.6:
            step.attempt(CHAOS_TIMEOUT)
            return
        world, rng = self.world, self.rng
        users = [user for user in self.users if world.all_logged_in(user)]
        if not users:
            time.sleep(0.1)
            return
        user = rng.choice(users)
        device = rng.choice(world.devices[user])
        friends, rooms = world.friends_of(user), world.rooms_of(user)
        roll = rng.random()
        if roll < 0.45 and friends:
            world.send(device, rng.choice(friends))
        elif roll < 0.8 and rooms:
            world.send(device, rng.choice(rooms))
        else:
            world.inbox(device, CHAOS_TIMEOUT)


def run_calm(steps: list[Step]) -> None:
    """Set-up, server up: each step must succeed at once (a few in parallel)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda step: step.attempt(CALM_TIMEOUT), steps))
    failed = [step.name for step, ok in zip(steps, done, strict=True) if not ok]
    assert not failed, f"set-up steps failed: {failed}"


# --- the checker ----------------------------------------------------------------------------------


@attrs.define
class Figures:
    required: int = 0  # (acknowledged message, recipient profile) pairs checked
    unacked_delivered: int = 0  # deliveries of sends that failed with exit 3
    deliveries: int = 0  # messages printed by inbox, all profiles


def check_deliveries(world: World, origin: float) -> tuple[list[str], Figures]:
    """Every rule of the promise, against the record; returns the violations."""
    violations: list[str] = []
    figures = Figures()
    by_text = {attempt.text: attempt for attempt in world.attempts}

    def rule(attempt: Attempt, device: Device) -> str:
        """'required', 'optional' or 'forbidden' for one profile."""
        user = device.user
        if attempt.outcome == "refused" or device.label == attempt.device:
            return "forbidden"  # (the sending device never receives its own)
        if user == attempt.sender:
            # The sender's other devices: each that was logged in before the send.
            logged_in = world.logged_in_at.get(device.label)
            if attempt.outcome == "acked" and logged_in is not None and logged_in < attempt.start:
                return "required"
            return "optional"
        if not attempt.to.startswith("#"):
            if user != attempt.to:
                return "forbidden"
            return "required" if attempt.outcome == "acked" else "optional"
        ship = world.memberships.get((user, attempt.to))
        if ship is None or attempt.end < ship.first_start:
            return "forbidden"  # stored (if at all) before the first join began
        if (
            attempt.outcome == "acked"
            and ship.acked_at is not None
            and attempt.start > ship.acked_at
        ):
            return "required"
        return "optional"

    for devices in world.devices.values():
        for device in devices:
            if device.label not in world.logged_in:
                continue
            got = world.deliveries[device.label]
            figures.deliveries += len(got)
            where = f"{device.label} (seed {SEED})"
            for item, count in Counter(message["id"] for message in got).items():
                if count > 1:
                    violations.append(f"{where}: message id {item} delivered {count} times")
            seen: Counter[str] = Counter()
            last: dict[tuple[str, str], Attempt] = {}
            for message in got:
                attempt = by_text.get(message["text"])
                if attempt is None:
                    violations.append(f"{where}: a message nobody sent: {message}")
                    continue
                seen[attempt.text] += 1
                shown = attempt.describe(origin)
                if rule(attempt, device) == "forbidden":
                    violations.append(f"{where}: received what was not for it: {shown}")
                if (message["from"], message["to"]) != (attempt.sender, attempt.to):
                    violations.append(f"{where}: wrong sender or recipient {message} for {shown}")
                if attempt.message_id is not None and message["id"] != attempt.message_id:
                    violations.append(f"{where}: id {message['id']} instead of {shown}")
                if attempt.outcome != "acked":
                    figures.unacked_delivered += 1
                key = (attempt.sender, attempt.to)
                before = last.get(key)
                if before is not None and before.index > attempt.index:
                    violations.append(
                        f"{where}: out of order: {shown} arrived after {before.describe(origin)}"
                    )
                last[key] = attempt
            for attempt in world.attempts:
                if rule(attempt, device) == "required":
                    figures.required += 1
                    if seen[attempt.text] == 0:
                        violations.append(f"{where}: LOST acknowledged {attempt.describe(origin)}")
                if seen[attempt.text] > 1:
                    violations.append(
                        f"{where}: DUPLICATED ({seen[attempt.text]}x) {attempt.describe(origin)}"
                    )
    return violations, figures


def drain(world: World, device: Device) -> None:
    """``inbox`` until it prints nothing new (bounded), tolerating a slow answer."""
    for _ in range(20):
        messages = world.inbox(device, CALM_TIMEOUT)
        if messages == []:
            return
    raise AssertionError(f"the inbox of {device.label} never came up empty")


def retry_calm(device: Device, *args: str) -> Result:
    """A command once the server stays up: retried (bounded) only on exit 3."""
    stdin = PASSWORD + "\n" if args[0] == "login" else None
    for _ in range(3):
        result = device.run(*args, timeout=CALM_TIMEOUT, stdin=stdin)
        if result.code != 3:
            return result
    return result


def check_account(world: World, user: str) -> list[str]:
    """A registration can log in; friendships and memberships are all there."""
    violations: list[str] = []
    verify = attrs.evolve(world.devices[user][0], profile="verify")
    result = retry_calm(verify, "login", user, "--password-stdin")
    if result.code != 0:
        violations.append(f"registered {user} cannot log in: {result}")
    if not world.all_logged_in(user):
        return violations
    device = world.devices[user][0]
    listed = retry_calm(device, "friends")
    assert listed.code == 0, listed
    have = {friend["user"] for friend in listed.json["friends"]}
    for friend in world.friends_of(user):
        if friend not in have:
            violations.append(f"{user}: acknowledged friend {friend} missing: {have}")
    listed = retry_calm(device, "rooms")
    assert listed.code == 0, listed
    joined = {room["room"] for room in listed.json["rooms"]}
    for room in world.rooms_of(user):
        if room not in joined:
            violations.append(f"{user}: acknowledged membership {room} missing: {joined}")
    return violations


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.slow(seconds=66)
def test_acknowledged_messages_survive_a_crash_loop(tmp_path: Path) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    server = CrashingServer(tmp_path)
    actors: list[Actor] = []
    try:
        server.start()
        world = World(server, tmp_path)
        origin = world.origin

        # Before the first kill: the founders, their friendships and rooms, logged in on
        # every device (a login session starts where the user's others have got to, so
        # every device must exist before the first message).
        run_calm([register_step(world, user) for user in FOUNDERS])
        run_calm([login_step(world, dev) for user in FOUNDERS for dev in world.devices[user]])
        run_calm([invite_step(world, a, b) for a, b in FOUNDING_FRIENDS])
        run_calm(
            [accept_step(world, b, a) for a, b in FOUNDING_FRIENDS]
            + [
                join_step(world, user, room)
                for room, users in FOUNDING_ROOMS.items()
                for user in users
            ]
        )
        assert not world.anomalies, world.anomalies

        # During the crash loop: new friendships, a late join, two newcomers (each
        # logged in on all their devices before their first friendship or room).
        plans: dict[tuple[str, ...], list[Step]] = {
            ("alice",): [accept_step(world, "alice", "frank")],
            ("bob",): [invite_step(world, "bob", "grace")],
            ("carol",): [invite_step(world, "carol", "dave")],
            ("dave",): [invite_step(world, "dave", "erin"), accept_step(world, "dave", "carol")],
            ("erin",): [join_step(world, "erin", "#ops"), accept_step(world, "erin", "dave")],
            ("frank", "grace"): [
                register_step(world, "frank"),
                *(login_step(world, device) for device in world.devices["frank"]),
                invite_step(world, "frank", "alice"),
                join_step(world, "frank", "#dev"),
                register_step(world, "grace"),
                *(login_step(world, device) for device in world.devices["grace"]),
                join_step(world, "grace", "#ops"),
                accept_step(world, "grace", "bob"),
            ],
        }
        actors = [
            Actor(world, users, steps, SEED + number)
            for number, (users, steps) in enumerate(plans.items(), start=1)
        ]
        for actor in actors:
            actor.thread.start()
        chaos = time.monotonic()
        in_flight = 0
        while len(server.kill_times) < KILLS or (
            world.acknowledged() < WANTED_ACKS and time.monotonic() - chaos < CHAOS_BUDGET
        ):
            if rng.random() >= IN_FLIGHT_SHARE:
                time.sleep(rng.uniform(*KILL_GAP))
            elif server.await_request(KILL_GAP[1] * 2):
                time.sleep(rng.uniform(*IN_FLIGHT_DELAY))
                in_flight += 1
            if any(actor.error is not None for actor in actors):
                break
            server.crash()
            server.start()
        setup_seconds = chaos - began
        chaos_seconds = time.monotonic() - chaos
        for actor in actors:
            actor.stop.set()
        for actor in actors:
            actor.thread.join(JOIN_DEADLINE)
            assert not actor.thread.is_alive(), f"{actor.thread.name} did not stop"
            if actor.error is not None:
                raise actor.error
        assert len(server.kill_times) >= KILLS

        # The server stays up now: drain every device, then check.
        calm = time.monotonic()
        logged_in = [
            dev for devs in world.devices.values() for dev in devs if dev.label in world.logged_in
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda device: drain(world, device), logged_in))
            violations, figures = check_deliveries(world, origin)
            for found in pool.map(
                lambda user: check_account(world, user), sorted(world.registered)
            ):
                violations += found

        kills = ", ".join(f"{when - origin:.3f}" for when in server.kill_times)
        outcome = Counter(attempt.outcome for attempt in world.attempts)
        report = (
            f"crash loop seed {SEED}: {len(server.kill_times)} kills ({in_flight} just after a "
            f"resume) in {chaos_seconds:.1f}s "
            f"(at {kills}); sends {len(world.attempts)}: {outcome['acked']} acknowledged, "
            f"{outcome['unknown']} unknown (exit 3), {outcome['refused']} refused; "
            f"{figures.required} required deliveries checked, {figures.deliveries} deliveries "
            f"in all ({figures.unacked_delivered} of unacknowledged sends); "
            f"registered {len(world.registered)}, friendships {len(world.friends)}, "
            f"memberships {sum(1 for s in world.memberships.values() if s.acked_at)}, "
            f"devices {len(world.logged_in)}; commands {dict(sorted(world.outcomes.items()))}; "
            f"{time.monotonic() - began:.1f}s in all (set-up {setup_seconds:.1f}s, crash loop "
            f"{chaos_seconds:.1f}s, threads stopping {calm - chaos - chaos_seconds:.1f}s, "
            f"drain and checks {time.monotonic() - calm:.1f}s)"
        )
        print(report)
        assert not world.anomalies, "\n".join([report, *world.anomalies])
        assert not violations, "\n".join([report, *violations])
        # The loop did exercise what it claims to.
        assert outcome["acked"] >= 20 and outcome["unknown"] >= 1, report
        assert {"frank", "grace"} <= world.registered, report
        assert len(world.friends) > len(FOUNDING_FRIENDS), report
        for process in server.processes:
            assert "Traceback" not in process.log_text(), process.log_text()[-4000:]
    finally:
        for actor in actors:
            actor.stop.set()
        for actor in actors:
            if actor.thread.is_alive():
                actor.thread.join(JOIN_DEADLINE)
        server.stop()
