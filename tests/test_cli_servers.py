"""``udpchat-cli`` in-process against two in-process servers on loopback.

Which server a profile's login token may be shown to: only the one that issued it
(the same key, under whatever name), never another one named with ``--server``.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from udpchat_cli.cli import main
from udpchat_cli.profiles import Home
from udpchat_cli.session import KeyMismatchError, Session
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.loop import ServerLoop

PASSWORD = "correct horse battery"


@pytest.fixture
def servers() -> Iterator[list[str]]:
    """Two servers with different keys: their ``HOST:PORT``s."""
    loops: list[tuple[ServerLoop, threading.Thread, socket.socket]] = []
    addresses = []
    for seed in (1, 2):
        store = MemoryStore()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        server = ChatServer(
            store=store,
            static_key=ServerKey.generate(SeededRandomSource(seed)),
            clock=time.time,
            config=ServerConfig(scrypt=ScryptParams(n=16)),
        )
        loop = ServerLoop(server=server, store=store, sock=sock)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        loops.append((loop, thread, sock))
        addresses.append(f"127.0.0.1:{sock.getsockname()[1]}")
    try:
        yield addresses
    finally:
        for loop, thread, sock in loops:
            loop.stop()
            thread.join(10)
            sock.close()


def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    *args: str,
    stdin: str = "",
) -> tuple[int, dict[str, object]]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(home), "--timeout", "5", "--json", *args])
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, json.loads(capsys.readouterr().out)


def test_the_token_goes_only_to_the_server_that_issued_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    servers: list[str],
) -> None:
    first, second = servers
    home = tmp_path / "home"
    for command in ("register", "login"):
        code, _ = cli(
            capsys, monkeypatch, home, "--server", first, command, "alice", "--password-stdin",
            stdin=PASSWORD,
        )  # fmt: skip
        assert code == 0
    assert cli(capsys, monkeypatch, home, "whoami") == (0, {"user": "alice", "server": first})

    # Another server (another key): refused before the token is sent.
    code, refusal = cli(capsys, monkeypatch, home, "--server", second, "whoami")
    assert code == 1
    assert refusal["error"] == "not_logged_in"
    assert first in str(refusal["message"]) and second in str(refusal["message"])
    # ... and the login on the first server is intact.
    assert cli(capsys, monkeypatch, home, "whoami") == (0, {"user": "alice", "server": first})

    # Another name of the first server (the same key pinned under it) is fine.
    known = (home / "known_servers").read_text()
    first_key = known.split(f"{first} ", 1)[1].split()[0]
    Home(home).update("default", lambda p: setattr(p, "server", "alias.invalid:1"))
    with (home / "known_servers").open("a") as file:
        file.write(f"alias.invalid:1 {first_key}\n")
    code, answer = cli(capsys, monkeypatch, home, "--server", first, "whoami")
    assert (code, answer) == (0, {"user": "alice", "server": first})


def test_a_key_mismatch_after_the_handshake_names_the_real_known_servers(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    servers: list[str],
) -> None:
    first, _second = servers
    home = tmp_path / "home"
    code, _ = cli(
        capsys, monkeypatch, home, "--server", first, "register", "bob", "--password-stdin",
        stdin=PASSWORD,
    )  # fmt: skip
    assert code == 0

    def mismatch(self: Session, _issue: object) -> None:
        raise KeyMismatchError(self.server, b"\x01" * 32, b"\x02" * 32)

    monkeypatch.setattr(Session, "request", mismatch)
    code, refusal = cli(
        capsys, monkeypatch, home, "--server", first, "login", "bob", "--password-stdin",
        stdin=PASSWORD,
    )  # fmt: skip
    assert code == 4
    assert refusal["error"] == "server_key_mismatch"
    assert str(home / "known_servers") in str(refusal["message"])
