"""Blocking end to end: ``block``, ``unblock``, ``blocked`` and what a blocked user sees."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from .conftest import User, wait_until_online

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


def test_block_unblock_and_what_the_blocked_user_sees(make_user: MakeUser) -> None:
    alice, mallory, bob = make_user("alice"), make_user("mallory"), make_user("bob")
    alice.ok("invite", "mallory")
    mallory.ok("accept", "alice")
    alice.ok("join", "#tea")
    mallory.ok("join", "#tea")
    bob.ok("join", "#tea")
    assert alice.ok("block", "mallory") == {"ok": True, "user": "mallory"}
    assert alice.ok("blocked") == {"blocked": ["mallory"]}
    assert alice.ok("friends") == {"friends": []}
    assert alice.ok("block", "nobody") == {"ok": True, "user": "nobody"}  # any name
    alice.ok("unblock", "nobody")
    # mallory: messages refused as to any non-friend; an invitation answered as
    # usual and never shown to alice.
    mallory.refused("not_friends", "send", "alice", "hello?")
    assert mallory.ok("invite", "alice") == {"ok": True, "user": "alice"}
    assert alice.ok("invitations")["incoming"] == []
    # alice looks offline to mallory, even while connected and sharing a room.
    listener: subprocess.Popen[str] = alice.listen("--for", "20")
    try:
        wait_until_online(bob, "alice")  # bob, not blocked, sees her online
        assert "alice" not in mallory.ok("online")["online"]
        members = mallory.ok("members", "#tea")["members"]
        assert {"user": "alice", "online": False} in members
    finally:
        listener.kill()
        listener.communicate(timeout=10)
    assert alice.ok("unblock", "mallory") == {"ok": True, "user": "mallory"}
    assert alice.ok("blocked") == {"blocked": []}
