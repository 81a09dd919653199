"""Rooms end to end: join, send '#room', members, rooms, history, listen joined/left."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .conftest import User, wait_until_online

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


def test_a_room_conversation(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    assert alice.ok("join", "#general") == {"ok": True, "room": "#general"}
    assert bob.ok("join", "general") == {"ok": True, "room": "#general"}
    assert carol.ok("join", "General") == {"ok": True, "room": "#general"}
    assert alice.ok("rooms") == {"rooms": [{"room": "#general", "members": 3}]}
    assert bob.ok("members", "general") == {
        "room": "#general",
        "members": [
            {"user": "alice", "online": False},
            {"user": "bob", "online": True},
            {"user": "carol", "online": False},
        ],
    }
    sent = alice.ok("send", "#general", "hello room")
    assert sent["to"] == "#general"
    bob.ok("send", "#general", "hi alice")
    for user, expected in ((bob, ["hello room"]), (carol, ["hello room", "hi alice"])):
        inbox = user.ok("inbox")["messages"]
        assert [m["text"] for m in inbox] == expected
        assert {m["to"] for m in inbox} == {"#general"}
        assert user.ok("inbox") == {"messages": []}
    history = carol.ok("history", "#general")["messages"]
    assert [(m["from"], m["text"]) for m in history] == [
        ("alice", "hello room"),
        ("bob", "hi alice"),
    ]

    # A member who left gets nothing more.
    assert carol.ok("leave", "#general") == {"ok": True, "room": "#general"}
    assert carol.ok("rooms") == {"rooms": []}
    alice.ok("send", "#general", "carol is gone")
    assert carol.ok("inbox") == {"messages": []}
    assert [m["text"] for m in bob.ok("inbox")["messages"]] == ["carol is gone"]


def test_listen_sees_joins_leaves_and_room_messages(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    alice.ok("join", "#general")
    # Co-members see each other online: bob can tell when alice listens.
    alice.ok("join", "#lobby")
    bob.ok("join", "#lobby")
    listener = alice.listen("--count", "3", "--for", "20")
    try:
        wait_until_online(bob, "alice")
        bob.ok("join", "#general")
        bob.ok("send", "#general", "hi all")
        bob.ok("leave", "#general")
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "joined", "room": "#general", "user": "bob"}
    assert events[1]["event"] == "message"
    assert (events[1]["from"], events[1]["to"], events[1]["text"]) == ("bob", "#general", "hi all")
    assert events[2] == {"event": "left", "room": "#general", "user": "bob"}
