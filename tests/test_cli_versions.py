"""``udpchat-cli`` against a server of another protocol version: a clear refusal.

A fake server on loopback speaks only version 2: it answers every initiation with a
VERSION_NEGOTIATION (type 5, the connection id echoed, its versions). The CLI
shows what the server said, as a refusal (exit 1), not a timeout.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from udpchat_cli.cli import main


@pytest.fixture
def version_2_server() -> Iterator[str]:
    """The ``HOST:PORT`` of a server that speaks only protocol version 2."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if len(data) >= 1200 and data[0] == 1:
                sock.sendto(b"\x05" + data[2:10] + b"\x02", addr)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        sock.close()


def test_a_server_of_another_protocol_version_is_shown_as_such(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    version_2_server: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    home = str(tmp_path / "home")
    argv = ["--home", home, "--server", version_2_server, "--timeout", "5", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "login", "alice", "--password-stdin"])
    assert exit_info.value.code == 1  # the server answered, and refused: not a timeout
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "ok": False,
        "error": "unsupported_version",
        "message": "the server speaks protocol version 2; this client speaks 1",
    }
    assert err == "error: the server speaks protocol version 2; this client speaks 1\n"
