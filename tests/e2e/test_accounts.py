"""Accounts and delivery status end to end: ``passwd``, ``delete-account``,
``status``, ``send --wait delivered``, the ``delivered`` event, and one's own
messages on every device."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PASSWORD, User, befriend, run_cli, wait_until_online
from .test_sessions import second_device

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
NEW = "a better secret"


def test_passwd_checks_the_current_password_and_ends_the_other_sessions(
    make_user: MakeUser, tmp_path: Path
) -> None:
    alice = make_user("alice")
    laptop = second_device(alice, tmp_path, "laptop")
    alice.refused("bad_credentials", "passwd", "--password-stdin", stdin=f"wrong one\n{NEW}\n")
    laptop.ok("friends")  # a wrong password changed nothing
    alice.refused("invalid_password", "passwd", "--password-stdin", stdin=f"{PASSWORD}\nshort\n")
    assert alice.ok("passwd", "--password-stdin", stdin=f"{PASSWORD}\n{NEW}\n") == {"ok": True}
    laptop.refused("not_logged_in", "friends")
    alice.ok("friends")  # this session goes on
    assert [s["current"] for s in alice.ok("sessions")["sessions"]] == [True]
    phone = User("alice", tmp_path / "home-phone", alice.server)
    phone.refused("bad_credentials", "login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    phone.ok("login", "alice", "--password-stdin", stdin=NEW + "\n")
    # One line where two are expected: a usage error, nothing sent.
    assert alice.run("passwd", "--password-stdin", stdin=f"{NEW}\n").code == 2
    nobody = User("nobody", tmp_path / "home-nobody", alice.server)
    nobody.refused("not_logged_in", "passwd", "--password-stdin", stdin=f"{PASSWORD}\n{NEW}\n")


def test_delete_account_retires_the_name_and_keeps_what_was_sent(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    alice.ok("join", "tea")
    bob.ok("join", "tea")
    alice.ok("send", "bob", "goodbye, bob")
    alice.refused("bad_credentials", "delete-account", "--password-stdin", stdin="wrong one\n")
    assert alice.ok("delete-account", "--password-stdin", stdin=PASSWORD + "\n") == {"ok": True}
    alice.refused("not_logged_in", "friends")
    assert bob.ok("friends") == {"friends": []}
    assert bob.ok("members", "tea")["members"] == [{"user": "bob", "online": True}]
    history = bob.ok("history", "alice")["messages"]
    assert [(x["from"], x["text"]) for x in history] == [("alice", "goodbye, bob")]
    bob.refused("not_friends", "send", "alice", "are you there?")
    alice.refused("user_exists", "register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    alice.refused("bad_credentials", "login", "alice", "--password-stdin", stdin=PASSWORD + "\n")


@pytest.mark.slow(seconds=14)
def test_status_and_send_wait_delivered(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    befriend(alice, bob)
    sent = alice.ok("send", "bob", "are you there?")
    status = alice.ok("status", sent["id"])
    assert status == {"id": sent["id"], "to": "bob", "state": "stored", "delivered_at": None}
    # Only its sender may ask.
    carol.refused("unknown_message", "status", sent["id"])
    bob.refused("unknown_message", "status", sent["id"])
    alice.refused("unknown_message", "status", "00" * 16)
    alice.refused("bad_request", "status", "not-hex")
    # bob is offline: --wait runs out, exit 3, and the message is still stored.
    waited = alice.run("send", "bob", "still there?", "--wait", "delivered", "--for", "1")
    assert waited.code == 3, waited
    late = waited.json
    assert late == {"ok": True, "id": late["id"], "to": "bob", "delivered": False}
    assert waited.err.startswith("error: ")
    # bob reads them: both are delivered, with a time.
    assert [x["text"] for x in bob.ok("inbox")["messages"]] == ["are you there?", "still there?"]
    deadline = time.monotonic() + 10
    while (status := alice.ok("status", late["id"]))["state"] != "delivered":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert ISO.match(status["delivered_at"])
    # With bob listening, --wait delivered returns once his device has it.
    listener = bob.listen("--for", "20")
    try:
        wait_until_online(alice, "bob")
        done = alice.run("send", "bob", "now?", "--wait", "delivered", "--for", "15")
        assert done.code == 0, done
        assert done.json == {"ok": True, "id": done.json["id"], "to": "bob", "delivered": True}
    finally:
        listener.kill()
        listener.communicate(timeout=10)
    # Rooms have no receipts; --for goes with --wait.
    assert alice.run("send", "#tea", "hi", "--wait", "delivered").code == 2
    assert alice.run("send", "bob", "hi", "--for", "5").code == 2


@pytest.mark.slow(seconds=23)
def test_listen_prints_a_delivered_event_for_each_receipt(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    # (long enough for a loaded machine: the listener starts, the receipt comes back)
    listener = alice.listen("--for", "20")
    try:
        wait_until_online(bob, "alice")  # friends see each other online
        sent = alice.ok("send", "bob", "tell me when")
        bob.ok("inbox")
        out, _err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    events = [json.loads(line) for line in out.splitlines()]
    (event,) = [e for e in events if e["event"] == "delivered"]
    assert event == {"event": "delivered", "id": sent["id"], "to": "bob", "at": event["at"]}
    assert ISO.match(event["at"])
    assert listener.returncode == 0


@pytest.mark.slow(seconds=9)
def test_my_messages_reach_my_other_devices_once_in_order(
    make_user: MakeUser, tmp_path: Path
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    laptop = second_device(alice, tmp_path, "laptop")
    bob.ok("send", "alice", "hi alice")
    sent = alice.ok("send", "bob", "hi bob")
    bob.ok("send", "alice", "how are you?")
    got = laptop.ok("inbox")["messages"]
    assert [(x["from"], x["to"], x["text"]) for x in got] == [
        ("bob", "alice", "hi alice"),
        ("alice", "bob", "hi bob"),
        ("bob", "alice", "how are you?"),
    ]
    assert got[1]["id"] == sent["id"]
    assert laptop.ok("inbox") == {"messages": []}  # exactly once
    # The device it was sent from does not get it back.
    assert [x["text"] for x in alice.ok("inbox")["messages"]] == ["hi alice", "how are you?"]
    # And in human form, the sender's message reads "alice -> bob".
    alice.ok("send", "bob", "one more")
    human = run_cli("inbox", home=laptop.home, server=laptop.server.address)
    assert human.code == 0 and human.out.rstrip().endswith("alice -> bob: one more"), human
