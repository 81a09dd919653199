"""End-to-end encryption through the real server and the real ``udpchat-cli``
(issue 26 phase 2b): every send is encrypted, every device decrypts everything it
receives, once; several processes of one profile share its crypto state under its
lock; ``devices``, ``verify``, ``device_added``, ``no_device`` and ``logout`` ending
the device behave as the contract says."""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    PASSWORD,
    ServerProcess,
    User,
    befriend,
    server_command,
    wait_until_online,
)
from udpchat_cli.profiles import Home
from udpchat_cli.session import Session
from udpchat_proto import messages as m

pytestmark = pytest.mark.e2e


def device(tmp_path: Path, server: ServerProcess, name: str, label: str) -> User:
    """Another device of ``name``: its own home, logged in."""
    user = User(name, tmp_path / f"home-{name}-{label}", server)
    user.ok("login", name, "--password-stdin", stdin=PASSWORD + "\n")
    return user


def inbox(user: User) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = user.ok("inbox")["messages"]
    assert all(message["encrypted"] is True for message in messages), messages
    return messages


def stop(proc: Any) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "could not be read" not in err, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.slow(seconds=16)
def test_sends_beside_listen_on_one_profile_never_fork_the_state(
    make_user: Any, server: ServerProcess
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    texts = [f"concurrent {n}" for n in range(6)]
    replies = [f"reply {n}" for n in range(3)]
    listener = alice.listen("--for", "8")
    try:
        # Six sends of alice's profile at once, beside its listen, while bob answers.
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            sent = [pool.submit(alice.run, "send", "bob", text, timeout=10) for text in texts]
            answered = [pool.submit(bob.run, "send", "alice", text, timeout=10) for text in replies]
            for future in (*sent, *answered):
                result = future.result()
                assert result.code == 0 and result.err == "", result
        events = stop(listener)
    finally:
        listener.kill()
    got = [(e["from"], e["text"], e["encrypted"]) for e in events if e["event"] == "message"]
    # Any process of the profile may be the one the server delivers to (one login
    # session): what listen did not print, the sends kept for inbox. Once each.
    got += [(m["from"], m["text"], m["encrypted"]) for m in inbox(alice)]
    assert sorted(got) == sorted(("bob", text, True) for text in replies)
    received = inbox(bob)
    assert sorted(message["text"] for message in received) == sorted(texts)  # once each
    # The history reads them back on both sides.
    history = alice.ok("history", "bob", "--limit", "20")["messages"]
    assert sorted(m["text"] for m in history) == sorted(texts + replies)
    assert all(m["encrypted"] for m in history)


def test_two_users_with_two_devices_each(
    tmp_path: Path, make_user: Any, server: ServerProcess
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    alice2 = device(tmp_path, server, "alice", "2")
    bob2 = device(tmp_path, server, "bob", "2")
    order = [(alice, "bob"), (bob2, "alice"), (alice2, "bob"), (bob, "alice")] * 2
    for n, (sender, to) in enumerate(order):
        sender.ok("send", to, f"message {n}")
    every = {f"message {n}" for n in range(len(order))}
    for reader in (alice, alice2, bob, bob2):
        own = {f"message {n}" for n, (sender, _to) in enumerate(order) if sender is reader}
        texts = [message["text"] for message in inbox(reader)]
        # Everything but its own sends, once, in order.
        assert texts == sorted(every - own, key=lambda text: int(text.split()[1]))


@pytest.mark.slow(seconds=20)
def test_a_room_of_five_with_devices_coming_and_going(
    tmp_path: Path, make_user: Any, server: ServerProcess
) -> None:
    users = [make_user(f"u{n}") for n in range(5)]
    for user in users:
        user.ok("join", "#five")
    users[0].ok("send", "#five", "first")
    for user in users[1:]:
        assert [message["text"] for message in inbox(user)] == ["first"], user.name
    # u1 gains a device, u2 logs out (its device ends), u3 leaves the room.
    u1b = device(tmp_path, server, "u1", "b")
    users[2].ok("logout")
    users[3].ok("leave", "#five")
    users[4].ok("send", "#five", "second")
    # u2 comes back: a new device, reading from now on.
    users[2].ok("login", "u2", "--password-stdin", stdin=PASSWORD + "\n")
    u1b.ok("send", "#five", "third")
    expected = {
        "u0": ["second", "third"],
        "u1": ["second", "third"],
        "u2": ["third"],
        "u3": [],
        "u4": ["third"],
    }
    for user in users:
        assert [message["text"] for message in inbox(user)] == expected[user.name], user.name
    assert [message["text"] for message in inbox(u1b)] == ["second"]
    # The new device's history starts at its join; an older member's holds it all.
    assert [m["text"] for m in users[2].ok("history", "#five")["messages"]] == ["third"]
    assert [m["text"] for m in users[1].ok("history", "#five")["messages"]] == [
        "first",
        "second",
        "third",
    ]


@pytest.mark.slow(seconds=18)
def test_devices_verify_device_added_and_no_device(
    tmp_path: Path, make_user: Any, server: ServerProcess
) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    befriend(alice, bob)
    mine = alice.ok("devices")["devices"]
    assert len(mine) == 1 and mine[0]["current"] is True and mine[0]["verified"] is False
    assert set(mine[0]) == {"id", "created_at", "fingerprint", "verified", "current"}
    alice.refused("not_friends", "devices", "carol")
    listener = alice.listen("--for", "6")
    try:
        wait_until_online(bob, "alice")  # (the listen is connected)
        bob2 = device(tmp_path, server, "bob", "2")
        events = stop(listener)
    finally:
        listener.kill()
    (added,) = [event for event in events if event["event"] == "device_added"]
    theirs = {item["id"]: item for item in alice.ok("devices", "bob")["devices"]}
    assert added["event"] == "device_added" and added["user"] == "bob"
    assert added["fingerprint"] == theirs[added["device"]]["fingerprint"]
    assert set(added) == {"event", "user", "device", "fingerprint"}
    bad = "00000 " * 5 + "00000"
    alice.refused("fingerprint_mismatch", "verify", "bob", added["device"], bad)
    assert alice.ok("verify", "bob", added["device"], added["fingerprint"])["verified"] is True
    assert {i["id"]: i["verified"] for i in alice.ok("devices", "bob")["devices"]}[
        added["device"]
    ] is True
    # Logged out everywhere: nobody can read it, so it is refused, never stored.
    bob.ok("logout")
    bob2.ok("logout")
    alice.refused("no_device", "send", "bob", "anyone there?")
    del carol


def test_the_server_stores_no_plaintext(
    make_user: Any, server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    secret = "the eagle lands at dawn 7f3a"
    in_room = "the room's own secret 91c2"
    alice.ok("send", "bob", secret)
    alice.ok("join", "#den")
    bob.ok("join", "#den")
    alice.ok("send", "#den", in_room)
    assert [m["text"] for m in inbox(bob)] == [secret, in_room]
    with sqlite3.connect(server.db) as connection:
        dump = "\n".join(connection.iterdump())
    backup = tmp_path / "backup.sqlite3"
    done = server_command("ctl", "--db", str(server.db), "--json", "backup", str(backup))
    assert done.returncode == 0, done
    for text in (secret, in_room):
        assert text not in dump
        assert text not in server.log_text()
        # The bytes on disk too (the database, its WAL, the backup an operator keeps):
        # nothing that was ever written in clear and then freed.
        for path in (server.db, Path(f"{server.db}-wal"), backup):
            if path.exists():
                assert text.encode() not in path.read_bytes(), path


def logged_in_before_the_upgrade(home: Path, server: ServerProcess, name: str) -> None:
    """A profile as a CLI before end-to-end encryption left it: a login session
    (its token in the profile, the server's key pinned) that never uploaded keys,
    and no crypto state file."""
    profiles = Home(home)
    session = Session(server=server.address, pinned=None, timeout=5.0)
    with session:
        key = session.open()
        answer = session.request(lambda conn: conn.login(name, PASSWORD))
    assert isinstance(answer, m.LoggedIn), answer
    profiles.known_servers.pin(server.address, key)
    profiles.update(
        "default", lambda profile: profile.login(answer.username, answer.token, server.address)
    )
    assert not profiles.crypto("default").path.exists()


def test_a_profile_logged_in_before_the_upgrade_gets_its_device_at_its_next_command(
    tmp_path: Path, make_user: Any, server: ServerProcess
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(alice, bob)
    old = User("alice", tmp_path / "home-alice-old", server)
    logged_in_before_the_upgrade(old.home, server, "alice")
    assert len(alice.ok("devices")["devices"]) == 1  # the old session is no device yet
    # Its next command, whichever (one that needs no key at all here), makes the
    # device and uploads it: no new step for the user, nothing on stderr.
    assert old.ok("friends")["friends"][0]["user"] == "bob"
    assert Home(old.home).crypto("default").path.exists()
    devices = old.ok("devices")["devices"]
    assert len(devices) == 2 and sum(device["current"] for device in devices) == 1
    # A device like any other: it reads what is sent to alice from now on, and sends.
    bob.ok("send", "alice", "to both of alice's devices")
    assert [(m["text"], m["encrypted"]) for m in inbox(old)] == [
        ("to both of alice's devices", True)
    ]
    old.ok("send", "bob", "from the upgraded profile")
    assert [m["text"] for m in inbox(bob)] == ["from the upgraded profile"]
    # (and alice's first device reads what her other one sent, as always)
    assert [m["text"] for m in inbox(alice)] == [
        "to both of alice's devices",
        "from the upgraded profile",
    ]
