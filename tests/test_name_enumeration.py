"""What a stranger learns of a name: nothing but what registering it must tell.

For a live name (an account's), a retired one (a deleted account's, which can never
be registered again) and a free one, every request a stranger can make answers the
same, and does the same work: the same store calls in the same order, and the same
password hashes. Only ``register`` of a free name necessarily differs (it
succeeds), and a taken and a retired name are refused alike, at the same cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from tests.chat_helpers import PASSWORD, ChatWorld, StoreFactory, test_config
from udpchat_proto import HashJob
from udpchat_proto import messages as m
from udpchat_proto.errors import ErrorCode
from udpchat_proto.ratelimit import RateLimit

LIVE, RETIRED, FREE = "alice", "gone", "nobody"


class CountingStore:
    """Forwards to a store and records the name of every method called."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


class Observed:
    """A world whose store calls and hash jobs a test can watch, with a live, a
    retired and a free name, and a stranger to ask about them."""

    def __init__(self, stores: StoreFactory, monkeypatch: pytest.MonkeyPatch, **config: Any):
        self.world = ChatWorld(stores, config=test_config(**config))
        (self.alice,) = self.world.signed_up(LIVE)
        (gone,) = self.world.signed_up(RETIRED)
        gone.ok(gone.conn.delete_account(PASSWORD))
        self.eve = self.world.user("eve")
        self.eve.connect()
        self.counting = CountingStore(self.world.store.inner)
        self.world.store.inner = self.counting
        self.jobs: list[HashJob] = []
        server = self.world.server
        take = server.take_hash_jobs

        def recording(limit: int | None = None) -> list[HashJob]:
            taken = take(limit)
            self.jobs.extend(taken)
            return taken

        monkeypatch.setattr(server, "take_hash_jobs", recording)

    def ask(self, request: Callable[[str], int], name: str) -> tuple[Any, list[str], list[Any]]:
        """The answer to ``request(name)`` (its text with the name blanked out),
        the store calls it made and the hash jobs it ran (salt and password aside)."""
        self.world.settle(0.5)
        self.counting.calls.clear()
        self.jobs.clear()
        answer = self.eve.wait(request(name))
        self.world.settle(0.5)  # the batch's commit, and anything that follows
        fields = {
            key: value.replace(name, "<name>") if type(value) is str else value
            for key, value in attrs.asdict(answer, recurse=False).items()
            # (an error's device_set is only ever devices_changed's)
            if key != "request_id" and not (key == "device_set" and value is None)
        }
        return (
            (type(answer).__name__, fields),
            list(self.counting.calls),
            [job.params for job in self.jobs],
        )

    def alike(self, request: Callable[[str], int], names: tuple[str, ...]) -> Any:
        """Ask about each name; check every answer, call list and job list is the same."""
        seen = [self.ask(request, name) for name in names]
        for name, observed in zip(names[1:], seen[1:], strict=True):
            assert observed == seen[0], f"{name} differs from {names[0]}"
        return seen[0]


@pytest.fixture
def observed(stores: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> Observed:
    return Observed(stores, monkeypatch)


def test_register_of_a_taken_or_a_retired_name_is_refused_alike_at_the_same_cost(
    observed: Observed,
) -> None:
    eve = observed.eve

    def register(name: str) -> int:
        return eve.conn.register(name, PASSWORD)

    answer, calls, jobs = observed.alike(register, (LIVE, RETIRED))
    taken = {"code": ErrorCode.USER_EXISTS, "message": "<name> is taken"}
    assert answer == ("ErrorResponse", taken)
    assert jobs == [observed.world.config.scrypt]  # one hash each: no early answer
    # A free name costs the same: the same hash and the same store calls.
    free_answer, free_calls, free_jobs = observed.ask(register, FREE)
    assert free_answer[0] == "Ok"
    assert (free_calls, free_jobs) == (calls, jobs)


def test_register_spends_the_address_budget_for_any_name(
    stores: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registering is the one oracle a stranger has; it stays as slow as registering."""
    observed = Observed(
        stores, monkeypatch, registrations_per_address=RateLimit(burst=2, interval=60.0)
    )
    eve = observed.eve
    eve.refused(eve.conn.register(LIVE, PASSWORD), ErrorCode.USER_EXISTS)
    eve.refused(eve.conn.register(RETIRED, PASSWORD), ErrorCode.USER_EXISTS)
    eve.refused(eve.conn.register("bob", PASSWORD), ErrorCode.RATE_LIMITED)


def test_login_to_a_live_retired_or_free_name_answers_and_hashes_alike(
    observed: Observed,
) -> None:
    eve = observed.eve
    answer, _calls, jobs = observed.alike(
        lambda n: eve.conn.login(n, "not the password"), (LIVE, RETIRED, FREE)
    )
    assert answer == (
        "ErrorResponse",
        {"code": ErrorCode.BAD_CREDENTIALS, "message": "unknown user or wrong password"},
    )
    assert jobs == [observed.world.config.scrypt]


def test_a_stranger_learns_nothing_of_a_name_from_messages_history_invitations_or_blocks(
    observed: Observed,
) -> None:
    eve, names = observed.eve, (LIVE, RETIRED, FREE)
    eve.ok(eve.conn.register("eve", PASSWORD))  # a stranger with an account
    eve.login()
    conn = eve.conn
    answer, _, _ = observed.alike(lambda n: conn.send_message(n, "hello?"), names)
    assert answer == (
        "ErrorResponse",
        {"code": ErrorCode.NOT_FRIENDS, "message": "you are not friends with <name>"},
    )
    answer, _, _ = observed.alike(conn.get_history, names)
    assert answer == ("History", {"messages": ()})
    # An invitation to a name with no account waits as one to a stranger who
    # never answers: kept, listed, refused a second time, cancelled.
    assert observed.alike(conn.invite, names)[0] == ("Ok", {})
    answer, _, _ = observed.alike(conn.invite, names)
    assert answer[1]["code"] is ErrorCode.ALREADY_INVITED
    outgoing = eve.ok(conn.list_invitations(), m.Invitations).outgoing
    assert sorted(outgoing) == sorted(names)
    assert observed.alike(conn.cancel_invitation, names)[0] == ("Ok", {})
    # A block, likewise.
    assert observed.alike(conn.block, names)[0] == ("Ok", {})
    assert sorted(eve.ok(conn.list_blocked(), m.Blocked).usernames) == sorted(names)
    assert observed.alike(conn.unblock, names)[0] == ("Ok", {})
    observed.world.check_server_health()


def test_invitations_waiting_and_blocks_are_capped(stores: StoreFactory) -> None:
    config = test_config(max_outgoing_invitations=2, max_blocked_per_user=2)
    world = ChatWorld(stores, config=config)
    alice, bob = world.signed_up("alice", "bob")
    alice.ok(alice.conn.invite("nobody"))
    alice.ok(alice.conn.invite("somebody"))
    refused = alice.refused(alice.conn.invite("bob"), ErrorCode.TOO_MANY_INVITATIONS)
    assert refused.message == "you have 2 invitations waiting for an answer: cancel some first"
    # One that accepts an invitation to her is no new one: it goes through.
    bob.ok(bob.conn.invite("alice"))
    alice.ok(alice.conn.invite("bob"))
    alice.send("bob", "friends")
    alice.ok(alice.conn.cancel_invitation("nobody"))
    alice.ok(alice.conn.invite("someone"))
    for name in ("x1", "x2"):
        alice.ok(alice.conn.block(name))
    alice.ok(alice.conn.block("x2"))  # again: harmless, even at the cap
    alice.refused(alice.conn.block("x3"), ErrorCode.TOO_MANY_BLOCKED)
    alice.ok(alice.conn.unblock("x1"))
    alice.ok(alice.conn.block("x3"))


def test_an_invitation_to_a_free_name_reaches_whoever_registers_it(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    (alice,) = world.signed_up("alice")
    alice.ok(alice.conn.invite("newcomer"))
    (newcomer,) = world.signed_up("newcomer")
    assert newcomer.ok(newcomer.conn.list_invitations(), m.Invitations).incoming == ("alice",)
    newcomer.ok(newcomer.conn.accept_invitation("alice"))
    newcomer.send("alice", "hello")
