"""The examples, run as scripts against a real server process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PASSWORD, ServerProcess, User, clean_env, wait_until_online

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def example(name: str, server: ServerProcess, *args: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / name),
        "--server",
        server.address,
        "--password",
        PASSWORD,
        *args,
    ]


def test_asyncio_client(server: ServerProcess, tmp_path: Path) -> None:
    alice = User("alice", tmp_path / "alice", server)
    alice.signup()
    done = subprocess.run(
        example("asyncio_client.py", server, "--user", "bob", "--register"),
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "registered bob" in done.stdout and "logged in as bob" in done.stdout
    assert "online: bob" in done.stdout
    alice.ok("invite", "bob")
    # bob accepts from the CLI (logged in with the same account), then the example sends.
    bob = User("bob", tmp_path / "bob", server)
    bob.ok("login", "bob", "--password-stdin", stdin=PASSWORD)
    bob.ok("accept", "alice")
    done = subprocess.run(
        example("asyncio_client.py", server, "--user", "bob", "--send", "alice", "hi from asyncio"),
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [m["text"] for m in alice.ok("inbox")["messages"]] == ["hi from asyncio"]


def test_echo_bot_answers(server: ServerProcess, tmp_path: Path) -> None:
    alice = User("alice", tmp_path / "alice", server)
    alice.signup()
    # In the room first: once the bot joins it too, alice sees it online.
    alice.ok("join", "lobby")
    bot = subprocess.Popen(
        example(
            "echo_bot.py",
            server,
            "--user",
            "echo",
            "--register",
            "--count",
            "2",
            "--for",
            "20",
            "--join",
            "lobby",  # '#' optional, as the README's example writes it
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        wait_until_online(alice, "echo")
        alice.ok("invite", "echo")
        deadline_ok = False
        for _ in range(100):  # bounded: the bot accepts within a moment
            if alice.ok("friends")["friends"]:
                deadline_ok = True
                break
        assert deadline_ok
        alice.ok("send", "echo", "ping")
        alice.ok("send", "#lobby", "room ping")
        _out, err = bot.communicate(timeout=30)
    finally:
        bot.kill()
    assert bot.returncode == 0, err
    inbox = alice.ok("inbox", "--wait", "5")["messages"]
    assert sorted((m["to"], m["text"]) for m in inbox) == [
        ("#lobby", "echo: room ping"),
        ("alice", "echo: ping"),
    ]
