"""Privacy by default, end to end: who is online is shown to friends and room
co-members only (``--public-presence`` restores the open list), a room's members to
its members, and a room's history from the member's join."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import ServerProcess, User, wait_until_online

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


@contextlib.contextmanager
def online(*users: User) -> Iterator[None]:
    """Keep ``users`` connected (``listen``, bounded) while in the block."""
    listeners: list[subprocess.Popen[str]] = [u.listen("--for", "20") for u in users]
    try:
        yield
    finally:
        for listener in listeners:
            listener.kill()
            listener.communicate(timeout=10)


def test_online_members_and_history_are_for_friends_and_members(make_user: MakeUser) -> None:
    alice, bob, carol, dave = (make_user(n) for n in ("alice", "bob", "carol", "dave"))
    alice.ok("invite", "bob")
    bob.ok("accept", "alice")
    alice.ok("join", "#tea")
    alice.ok("send", "#tea", "before carol")
    carol.ok("join", "#tea")
    alice.ok("send", "#tea", "after carol")
    with online(alice, bob, carol, dave):
        wait_until_online(alice, "bob")
        wait_until_online(alice, "carol")
        wait_until_online(carol, "alice")
        # alice sees her friend and her co-member, not dave; dave sees only himself.
        assert alice.ok("online") == {"online": ["alice", "bob", "carol"]}
        assert dave.ok("online") == {"online": ["dave"]}
        assert carol.ok("online") == {"online": ["alice", "carol"]}
    # A room's members are for its members.
    dave.refused("not_a_member", "members", "#tea")
    assert [m["user"] for m in carol.ok("members", "#tea")["members"]] == ["alice", "carol"]
    # A member's history starts at its join, as its deliveries do.
    assert [m["text"] for m in carol.ok("history", "#tea")["messages"]] == ["after carol"]
    assert [m["text"] for m in alice.ok("history", "#tea")["messages"]] == [
        "before carol",
        "after carol",
    ]
    dave.refused("not_a_member", "history", "#tea")


def test_public_presence_lists_every_connected_user(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, options=("--public-presence",)).start()
    try:
        alice, bob = (User(n, tmp_path / f"home-{n}", server) for n in ("alice", "bob"))
        alice.signup()
        bob.signup()
        with online(bob):
            wait_until_online(alice, "bob")  # no friends, no rooms: the open list
            assert alice.ok("online") == {"online": ["alice", "bob"]}
    finally:
        server.stop()
        server.kill()
