"""Every refusal a user can cause from the CLI, and the exit statuses 1 to 4."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from udpchat_cli.profiles import Home
from udpchat_proto.chat.config import ServerConfig

from .conftest import (
    CLI,
    PASSWORD,
    ServerProcess,
    User,
    clean_env,
    run_cli,
    wait_until_loading,
)

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]


@pytest.mark.slow(seconds=22)
def test_every_refusal_a_user_can_cause(make_user: MakeUser, tmp_path: Path) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    stranger = make_user("stranger", signup=False)

    # Refused before any I/O, exactly as the server would refuse them.
    stranger.refused(
        "invalid_username", "register", "Not A Name!", "--password-stdin", stdin=PASSWORD
    )
    stranger.refused("invalid_username", "login", "x" * 33, "--password-stdin", stdin=PASSWORD)
    stranger.refused("invalid_password", "register", "dave", "--password-stdin", stdin="short\n")
    stranger.refused("invalid_password", "register", "dave", "--password-stdin", stdin="")
    alice.refused("invalid_text", "send", "bob", "")
    alice.refused("too_large", "send", "bob", "x" * 4097)
    alice.refused("invalid_room", "join", "#no spaces")
    alice.refused("invalid_room", "send", "#", "hi")
    alice.refused("bad_request", "history", "bob", "--limit", "0")
    alice.refused("bad_request", "history", "bob", "--limit", "101")
    for command in (
        ["whoami"],
        ["logout"],
        ["friends"],
        ["online"],
        ["inbox"],
        ["listen"],
        ["send", "bob", "hi"],
        ["rooms"],
        ["join", "general"],
    ):
        stranger.refused("not_logged_in", *command)

    # Refused by the server.
    stranger.refused("user_exists", "register", "alice", "--password-stdin", stdin=PASSWORD)
    stranger.refused(
        "bad_credentials", "login", "alice", "--password-stdin", stdin="wrong password\n"
    )
    stranger.refused("bad_credentials", "login", "nobody", "--password-stdin", stdin=PASSWORD)
    alice.ok("invite", "nobody")  # any name: the answer tells nobody whether it exists
    alice.ok("cancel", "nobody")
    alice.refused("cannot_invite_self", "invite", "alice")
    alice.refused("no_invitation", "accept", "bob")
    alice.refused("no_invitation", "decline", "bob")
    alice.refused("no_invitation", "cancel", "bob")
    alice.refused("not_friends", "unfriend", "bob")
    alice.refused("not_friends", "send", "bob", "hi")
    alice.refused("not_friends", "send", "nobody", "hi")
    assert alice.ok("history", "nobody")["messages"] == []
    alice.ok("invite", "bob")
    alice.refused("already_invited", "invite", "bob")
    bob.ok("accept", "alice")
    alice.refused("already_friends", "invite", "bob")
    alice.refused("unknown_room", "send", "#nowhere", "hi")
    alice.refused("unknown_room", "members", "nowhere")
    alice.refused("unknown_room", "leave", "#nowhere")
    alice.refused("unknown_room", "history", "#nowhere")
    bob.ok("join", "lobby")
    alice.refused("not_a_member", "send", "#lobby", "hi")
    alice.refused("not_a_member", "leave", "lobby")
    alice.refused("not_a_member", "history", "#lobby")


def test_room_limits_and_rate_limits(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path, options=("--max-room-members", "2", "--max-rooms-per-user", "1")
    ).start()
    try:
        users = [User(name, tmp_path / name, server) for name in ("ann", "ben", "cat")]
        for user in users:
            user.signup()
        ann, ben, cat = users
        ann.ok("join", "one")
        ben.ok("join", "one")
        cat.refused("room_full", "join", "one")
        ann.refused("too_many_rooms", "join", "two")
        # Registrations per address: a burst (10 by default), then one a minute;
        # three were used above.
        left = ServerConfig().registrations_per_address.burst - 3
        codes = [
            cat.run("register", f"user{n}", "--password-stdin", stdin=PASSWORD).code
            for n in range(left + 1)
        ]
        assert codes == [0] * left + [1]
        cat.refused("rate_limited", "register", "user99", "--password-stdin", stdin=PASSWORD)
    finally:
        server.stop()


def test_usage_errors_exit_2_with_one_line(make_user: MakeUser) -> None:
    alice = make_user("alice")
    for args in (
        ["no-such-command"],
        ["send", "bob"],
        ["history", "bob", "--limit", "many"],
        ["--timeout", "0", "whoami"],
        ["--server", "nonsense", "whoami"],
        ["--profile", "../escape", "whoami"],
    ):
        result = alice.run(*args)
        assert result.code == 2, (args, result)
        assert result.err.startswith("error: ") and result.err.count("\n") == 1, result
        assert result.json["ok"] is False and result.json["error"] == "usage"
        assert "Traceback" not in result.err
    human = run_cli("frobnicate", home=alice.home)
    assert human.code == 2 and human.out == "" and human.err.startswith("error: ")
    assert run_cli("--help", home=alice.home).code == 0


def test_exit_3_when_nothing_answers(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is closed now: nothing will ever answer.
    started = time.monotonic()
    result = run_cli(
        "register",
        "alice",
        "--password-stdin",
        "--json",
        home=tmp_path / "home",
        server=f"127.0.0.1:{port}",
        stdin=PASSWORD,
        timeout=1,
    )
    elapsed = time.monotonic() - started
    assert result.code == 3, result
    assert result.json == {"ok": False, "error": "timeout", "message": result.json["message"]}
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert elapsed < 4


def test_exit_4_when_the_server_key_changes(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path, key_file=tmp_path / "first.key").start()
    alice = User("alice", tmp_path / "alice", first)
    try:
        alice.signup()
        known = (tmp_path / "alice" / "known_servers").read_text()
        assert known.startswith(f"{first.address} ")
    finally:
        first.stop()
    # Another key on the same address (the same database: only the key differs).
    second = ServerProcess(
        tmp_path, db=first.db, key_file=tmp_path / "second.key", port=first.port
    ).start()
    try:
        assert second.fingerprint != first.fingerprint
        alice.server = second
        result = alice.run("friends")
        assert result.code == 4, result
        assert result.json["error"] == "server_key_mismatch"
        assert result.err.count("\n") == 1
        assert "known_servers" in result.err and first.address in result.err
        assert second.fingerprint in result.err
        # Following the message's advice: remove the line, and the new key is pinned.
        (tmp_path / "alice" / "known_servers").write_text("")
        assert alice.ok("whoami")["user"] == "alice"
        assert alice.run("friends").code == 0
    finally:
        second.stop()


def test_ctrl_c_at_any_time_is_one_error_line(tmp_path: Path) -> None:
    # Still loading its modules, or already waiting for the (silent) server: either
    # way one line and the JSON refusal, exit 1. On a loaded machine the command may
    # take seconds to get its start-up's CPU: its --timeout is long enough that it
    # never gives up on the server first (exit 3), and the signal waits for the
    # interpreter's own start to be behind it however long that takes (before its
    # handler exists, SIGINT kills the process), which a waiting command is anyway.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        Home(tmp_path).update("default", lambda p: p.login("alice", b"t" * 32, server))
        command = [*CLI, "--home", str(tmp_path), "--server", server, "--timeout", "60"]
        proc = subprocess.Popen(
            [*command, "--json", "online"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_env(),
        )
        try:
            wait_until_loading(proc, deadline=30.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 1, err
    assert err == "error: interrupted\n"
    assert out == '{"ok": false, "error": "interrupted", "message": "interrupted"}\n'
