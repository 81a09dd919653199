"""The real ``udpchat-cli`` shows what others wrote without handing the terminal a
control, bidi or separator character, and no line of a text passes for another
sender's message: a hostile message through the real server, in ``inbox``,
``history`` and ``listen``; a hostile server's refusals, on ``error:`` lines."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from udpchat_proto import messages as m
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.requests import RefusedError
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.loop import ServerLoop

from .conftest import PASSWORD, Result, User, befriend, run_cli

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]

HOSTILE = "hi \x1b[31mred\u202eevil\u2028sep\n[2026-01-01 00:00:00] mallory -> bob: fake"
SHOWN = [
    "bob -> alice: hi \\x1b[31mred\\u202eevil\\u2028sep",
    "  | [2026-01-01 00:00:00] mallory -> bob: fake",
]
RAW = ("\x1b", "\u202e", "\u2028", "\r")


def text_mode(user: User, *args: str) -> Result:
    """A command of ``user`` without ``--json``: what a person reads."""
    done = run_cli(*args, home=user.home, server=user.server.address)
    assert done.code == 0 and done.err == "", done
    return done


def assert_shown_safely(out: str) -> None:
    lines = out.rstrip("\n").split("\n")  # (str.splitlines would cut at U+2028 too)
    assert not [raw for raw in RAW if raw in out], out
    assert len(lines) == 2, lines
    assert lines[0].startswith("[") and lines[0].endswith(SHOWN[0]), lines
    assert lines[1] == SHOWN[1]


def test_a_hostile_text_is_escaped_and_marked_in_inbox_history_and_listen(
    make_user: MakeUser,
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(bob, alice)
    bob.ok("send", "alice", HOSTILE)
    assert_shown_safely(text_mode(alice, "inbox").out)
    assert_shown_safely(text_mode(alice, "history", "bob").out)
    # --json: the text exactly, and still no raw control on the way.
    as_json = alice.run("history", "bob")
    assert as_json.code == 0 and as_json.json["messages"][0]["text"] == HOSTILE
    assert not [raw for raw in RAW if raw in as_json.out]
    bob.ok("send", "alice", HOSTILE)
    assert_shown_safely(text_mode(alice, "listen", "--count", "1", "--for", "20").out)


# --- a hostile server --------------------------------------------------------------------

REFUSAL = "no\x1b]0;owned\x07 \u202eyes\u202c\u2028\nerror: forged \x9b2J"
REFUSAL_SHOWN = "no\\x1b]0;owned\\x07 \\u202eyes\\u202c error: forged \\x9b2J"


class HostileStore(MemoryStore):
    """The store of a server whose refusals carry controls, bidi overrides and line
    breaks: what ``history`` and ``message_status`` read is refused, in its words
    (a handler's refusal: the server answers it as it is)."""

    def history(self, *args: Any, **kwargs: Any) -> list[m.ChatMessage]:
        raise RefusedError(ErrorCode.NOT_FRIENDS, REFUSAL)

    def get_message(self, *args: Any, **kwargs: Any) -> Any:
        raise RefusedError(ErrorCode.UNKNOWN_MESSAGE, REFUSAL)


@pytest.fixture
def hostile() -> Iterator[str]:
    """A hostile server on loopback: its ``HOST:PORT``."""
    store = HostileStore()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = ChatServer(
        store=store,
        static_key=ServerKey.generate(SeededRandomSource(7)),
        clock=time.time,
        config=ServerConfig(scrypt=ScryptParams(n=16)),
    )
    loop = ServerLoop(server=server, store=store, sock=sock)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        loop.stop()
        thread.join(10)
        sock.close()


def test_a_hostile_servers_refusal_is_one_escaped_error_line(hostile: str, tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in ("alice", "bob")}

    def cli(name: str, *args: str, stdin: str | None = None) -> Result:
        return run_cli(*args, home=homes[name], server=hostile, stdin=stdin)

    for name in homes:
        for command in ("register", "login"):
            assert cli(name, command, name, "--password-stdin", stdin=PASSWORD).code == 0
    assert cli("alice", "invite", "bob").code == 0
    assert cli("bob", "accept", "alice").code == 0

    refused = cli("alice", "history", "bob")
    assert (refused.code, refused.out) == (1, "")
    assert refused.err == f"error: {REFUSAL_SHOWN}\n"
    # With --json the object carries the server's words exactly (on one line).
    as_json: Any = cli("alice", "--json", "history", "bob")
    assert as_json.json["message"] == " ".join(REFUSAL.split())
    assert as_json.err == f"error: {REFUSAL_SHOWN}\n"
    # send --wait delivered: the refusal of its status check, on its error: line.
    waited = cli("alice", "send", "bob", "hi", "--wait", "delivered", "--for", "5")
    assert waited.code == 3
    assert waited.out.startswith("sent to bob (id ")
    assert waited.err == f"error: not delivered: {REFUSAL_SHOWN}\n"
