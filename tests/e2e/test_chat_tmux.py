"""The real ``udpchat-cli chat`` in a real terminal (tmux), against the real server,
with the other person on the scripted CLI; then the server goes away and comes
back. Every wait is bounded; the tmux server is private to the test."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from udpchat_cli.profiles import Home

from .conftest import CLI, ServerProcess, User, befriend, clean_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

MakeUser = Callable[..., User]


class Terminal:
    """One tmux session on a private socket."""

    def __init__(self, socket: str, command: str) -> None:
        self.socket = socket
        env = clean_env()
        exports = " ".join(
            f"{name}={shlex.quote(value)}"
            for name, value in env.items()
            if name.startswith(("UDPCHAT_", "PATH", "HOME", "LANG", "LC_"))
        )
        self.tmux(
            "new-session", "-d", "-s", "chat", "-x", "120", "-y", "40",
            f"env {exports} {command}; echo EXITED $?; sleep 60",
        )  # fmt: skip

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "chat")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "chat", *keys)

    def wait_for(self, text: str, limit: float = 20.0) -> str:
        end = time.monotonic() + limit
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], check=False, capture_output=True, timeout=10
        )


@pytest.fixture
def terminal_for(tmp_path: Path) -> Iterator[Callable[[User], Terminal]]:
    made: list[Terminal] = []

    def make(user: User) -> Terminal:
        command = " ".join(
            shlex.quote(part)
            for part in (*CLI, "--home", str(user.home), "--server", user.server.address, "chat")
        )
        # (unique on the machine: other processes of this run, or other runs, have theirs)
        terminal = Terminal(f"udpchat-test-{uuid.uuid4().hex[:12]}", command)
        made.append(terminal)
        return terminal

    yield make
    for terminal in made:
        terminal.close()


@pytest.mark.slow(seconds=22)
def test_the_chat_in_a_real_terminal_survives_a_server_restart(
    make_user: MakeUser, server: ServerProcess, terminal_for: Callable[[User], Terminal]
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(bob, alice)
    bob.ok("send", "alice", "hello from the shell")
    alice.ok("join", "tea")
    term = terminal_for(alice)
    term.wait_for("connected to")
    term.wait_for("bob: hello from the shell")
    term.keys("hi bob", "Enter")
    term.wait_for("alice: hi bob")
    assert [x["text"] for x in bob.ok("inbox")["messages"]] == ["hi bob"]
    # Alt+N as a terminal sends it (ESC + digit); the title names the open one.
    term.keys("M-2")
    term.wait_for("#tea")
    term.keys("M-1")
    term.wait_for("bob (offline)")
    # Ctrl+J starts a new line; a pasted text of two lines asks first.
    term.keys("line A", "C-j", "line B", "Enter")
    term.wait_for("line B")
    term.tmux("set-buffer", "-b", "two", "one\ntwo")
    term.tmux("paste-buffer", "-p", "-b", "two", "-t", "chat")
    term.wait_for("Send these 2 lines")
    term.keys("y")
    term.wait_for("alice: one")
    got = [x["text"] for x in bob.ok("inbox")["messages"]]
    assert got == ["line A\nline B", "one\ntwo"], got

    # The server goes away: the chat says so, and what is typed meanwhile waits.
    server.stop()
    term.wait_for("reconnecting", limit=60)
    term.keys("sent while away", "Enter")
    term.wait_for("queued")
    again = ServerProcess(server.directory, db=server.db, port=server.port).start()
    try:
        term.wait_for("connected to", limit=60)
        bob_again = User("bob", bob.home, again)
        deadline = time.monotonic() + 30
        texts: list[str] = []
        while "sent while away" not in texts:
            assert time.monotonic() < deadline, texts
            texts += [x["text"] for x in bob_again.ok("inbox")["messages"]]
            time.sleep(0.2)
        assert texts.count("sent while away") == 1
        bob_again.ok("send", "alice", "welcome back")
        term.wait_for("bob: welcome back")
        term.keys("C-q")
        screen = term.wait_for("EXITED 0")
        # The terminal is left as it was found: the chat's screen is gone.
        assert "welcome back" not in screen
    finally:
        again.stop()
        again.kill()
    # Everything the chat showed counts as shown: nothing waits for inbox.
    assert Home(alice.home).load("default").unshown == []
