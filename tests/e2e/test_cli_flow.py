"""The real ``udpchat-cli`` against the real ``udpchat-server``: the conversations."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import PASSWORD, User, wait_until_online

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [message["text"] for message in messages]


@pytest.mark.slow(seconds=17)
def test_three_users(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    assert alice.ok("whoami") == {"user": "alice", "server": alice.server.address}

    # Invitations: bob accepts, carol declines, then alice invites and cancels.
    assert alice.ok("invite", "bob") == {"ok": True, "user": "bob"}
    assert alice.ok("invite", "carol") == {"ok": True, "user": "carol"}
    assert alice.ok("invitations") == {"incoming": [], "outgoing": ["bob", "carol"]}
    assert bob.ok("invitations") == {"incoming": ["alice"], "outgoing": []}
    assert bob.ok("accept", "alice") == {"ok": True, "user": "alice"}
    assert carol.ok("decline", "alice") == {"ok": True, "user": "alice"}
    assert alice.ok("invite", "carol") == {"ok": True, "user": "carol"}
    assert alice.ok("cancel", "carol") == {"ok": True, "user": "carol"}
    assert carol.ok("invitations") == {"incoming": [], "outgoing": []}
    # carol and bob become friends from both sides' invitations crossing.
    assert carol.ok("invite", "bob") == {"ok": True, "user": "bob"}
    assert bob.ok("accept", "carol") == {"ok": True, "user": "carol"}

    assert alice.ok("friends") == {"friends": [{"user": "bob", "online": False}]}
    assert bob.ok("friends") == {
        "friends": [{"user": "alice", "online": False}, {"user": "carol", "online": False}]
    }
    assert alice.ok("online") == {"online": ["alice"]}  # only this very command
    # Who is online is for friends and room co-members only, unless the server
    # runs with --public-presence (tests/e2e/test_privacy.py).

    # Messages, read with inbox (each once) and history.
    sent = alice.ok("send", "bob", "hi bob")
    assert sent["ok"] is True and sent["to"] == "bob" and len(sent["id"]) == 32
    alice.ok("send", "bob", "how are you?")
    carol.ok("send", "bob", "hello from carol")
    inbox = bob.ok("inbox")["messages"]
    assert [(m["from"], m["to"], m["text"]) for m in inbox] == [
        ("alice", "bob", "hi bob"),
        ("alice", "bob", "how are you?"),
        ("carol", "bob", "hello from carol"),
    ]
    assert inbox[0]["id"] == sent["id"]
    assert inbox[0]["sent_at"].endswith("Z")
    assert bob.ok("inbox") == {"messages": []}
    bob.ok("send", "alice", "fine, thanks")
    assert texts(alice.ok("inbox")["messages"]) == ["fine, thanks"]
    history = bob.ok("history", "alice")["messages"]
    assert texts(history) == ["hi bob", "how are you?", "fine, thanks"]
    assert texts(bob.ok("history", "alice", "--limit", "1")["messages"]) == ["fine, thanks"]

    # Unfriend ends the conversation; logout ends the login session.
    assert bob.ok("unfriend", "alice") == {"ok": True, "user": "alice"}
    alice.refused("not_friends", "send", "bob", "still there?")
    assert alice.ok("logout") == {"ok": True}
    alice.refused("not_logged_in", "whoami")
    alice.refused("not_logged_in", "friends")
    # Logging in again works, with the same account and nothing lost.
    alice.ok("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert alice.ok("friends") == {"friends": []}


def test_human_output_and_json_after_or_before_the_command(make_user: MakeUser) -> None:
    alice = make_user("alice")
    from .conftest import run_cli

    human = run_cli("whoami", home=alice.home, server=alice.server.address)
    assert (human.code, human.out, human.err) == (0, f"alice on {alice.server.address}\n", "")
    before = run_cli("--json", "whoami", home=alice.home, server=alice.server.address)
    assert json.loads(before.out) == {"user": "alice", "server": alice.server.address}
    refused = run_cli("send", "nobody", "x", home=alice.home, server=alice.server.address)
    assert refused.code == 1 and refused.out == ""
    assert refused.err.startswith("error: ") and refused.err.count("\n") == 1


def test_message_to_an_offline_user_is_delivered_at_its_next_inbox_once(
    make_user: MakeUser,
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    alice.ok("invite", "bob")
    bob.ok("accept", "alice")
    for n in range(3):
        alice.ok("send", "bob", f"message {n}")
    # Other commands of bob's receive the backlog too: it waits in the profile.
    assert bob.ok("friends") == {"friends": [{"user": "alice", "online": False}]}
    assert texts(bob.ok("inbox")["messages"]) == ["message 0", "message 1", "message 2"]
    assert bob.ok("inbox") == {"messages": []}
    alice.ok("send", "bob", "later")
    assert texts(bob.ok("inbox")["messages"]) == ["later"]
    assert bob.ok("inbox") == {"messages": []}


def test_inbox_wait(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    alice.ok("invite", "bob")
    bob.ok("accept", "alice")
    started = time.monotonic()
    assert bob.ok("inbox", "--wait", "0.5") == {"messages": []}
    assert 0.5 <= time.monotonic() - started < 5
    waiting = subprocess.Popen(
        [*_cli_args(bob), "inbox", "--wait", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_online(alice, "bob")  # bob is waiting
        alice.ok("send", "bob", "there you are")
        out, err = waiting.communicate(timeout=15)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert texts(json.loads(out)["messages"]) == ["there you are"]


def _cli_args(user: User) -> list[str]:
    from .conftest import CLI

    return [*CLI, "--home", str(user.home), "--server", user.server.address, "--json"]


def test_listen_receives_messages_and_presence(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    alice.ok("invite", "bob")
    bob.ok("accept", "alice")
    alice.ok("send", "bob", "pending")  # listen prints what is pending first
    # carol shares a room with bob, so she sees him online, but is no friend of
    # his: her polling makes no presence noise for his listener.
    bob.ok("join", "#lobby")
    carol.ok("join", "#lobby")
    listener = bob.listen("--count", "4", "--for", "20")
    try:
        wait_until_online(carol, "bob")
        alice.ok("send", "bob", "live")
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    messages = [e for e in events if e["event"] == "message"]
    assert texts(messages) == ["pending", "live"]
    assert {"event": "presence", "user": "alice", "online": True} in events
    assert {"event": "presence", "user": "alice", "online": False} in events
    assert len(events) == 4
    # What listen showed is not shown again by inbox.
    assert bob.ok("inbox") == {"messages": []}


def test_listen_invitation_events(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    # A room in common lets bob see when alice's listener is up.
    alice.ok("join", "#lobby")
    bob.ok("join", "#lobby")
    listener = alice.listen("--count", "4", "--for", "20")
    try:
        wait_until_online(bob, "alice")
        bob.ok("invite", "alice")
        bob.ok("cancel", "alice")
        # alice acts from another process of the same profile while listening.
        alice.ok("invite", "carol")
        carol.ok("decline", "alice")
        alice.ok("invite", "carol")
        carol.ok("accept", "alice")
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "invitation", "from": "bob"},
        {"event": "invitation_cancelled", "by": "bob"},
        {"event": "invitation_declined", "by": "carol"},
        {"event": "invitation_accepted", "by": "carol"},
    ]


def test_listen_for_stops_by_itself(make_user: MakeUser) -> None:
    alice = make_user("alice")
    started = time.monotonic()
    result = alice.run("listen", "--for", "0.5")
    assert (result.code, result.out) == (0, "")
    assert time.monotonic() - started < 5
