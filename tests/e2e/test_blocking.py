"""Blocking end to end: ``block``, ``unblock``, ``blocked`` and what a blocked user sees."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from .conftest import User, wait_until_online

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


@pytest.mark.slow(seconds=16)
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
    # In the room they share, alice gets nothing from mallory (no message, no
    # history), while mallory sees the room as any member does.
    mallory.ok("send", "#tea", "from mallory")
    bob.ok("send", "#tea", "from bob")
    alice.ok("send", "#tea", "from alice")
    assert [m["text"] for m in alice.ok("inbox")["messages"]] == ["from bob"]
    assert [m["text"] for m in alice.ok("history", "#tea")["messages"]] == [
        "from bob",
        "from alice",
    ]
    assert [m["text"] for m in bob.ok("inbox")["messages"]] == ["from mallory", "from alice"]
    assert [m["text"] for m in mallory.ok("inbox")["messages"]] == ["from bob", "from alice"]
    # alice's presence, to mallory, is what it is: online while she is connected.
    listener: subprocess.Popen[str] = alice.listen("--for", "20")
    try:
        wait_until_online(bob, "alice")
        wait_until_online(mallory, "alice")
        members = mallory.ok("members", "#tea")["members"]
        assert {"user": "alice", "online": True} in members
    finally:
        listener.kill()
        listener.communicate(timeout=10)
    # Unblocking tells mallory nothing: her listen shows no event.
    watcher: subprocess.Popen[str] = mallory.listen("--for", "5")
    try:
        wait_until_online(bob, "mallory")
        assert alice.ok("unblock", "mallory") == {"ok": True, "user": "mallory"}
        assert alice.ok("blocked") == {"blocked": []}
        out, err = watcher.communicate(timeout=15)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert out == "", out
