"""Write ``docs/chat.svg``: a screenshot of a real ``udpchat-cli chat`` session.

Starts a real ``udpchat-server`` on 127.0.0.1 (port 0, a temporary database), sets
up three people with the real ``udpchat-cli``, opens alice's chat headless (Textual's
``run_test``), lets the others talk to her, and exports the screen as SVG::

    python tools/chat_screenshot.py [OUTPUT.svg]

Every wait is bounded; the server is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udpchat_cli.chat.app import ChatApp, Composer
from udpchat_cli.chat.link import LinkState
from udpchat_cli.profiles import Home
from udpchat_cli.session import parse_servers

BIN = Path(sys.executable).parent
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "chat.svg"
PASSWORD = "correct horse battery staple"
_LISTENING = re.compile(r"listening on (\S+:\d+)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDPCHAT_")}
    env["UDPCHAT_SCRYPT_N"] = "16"  # a throwaway server: no need for slow hashes
    return env


def _cli(home: Path, server: str, *args: str, stdin: str = "") -> None:
    subprocess.run(
        [str(BIN / "udpchat-cli"), "--home", str(home), "--server", server, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=_env(),
    )


def _start_server(directory: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            str(BIN / "udpchat-server"),
            *("--host", "127.0.0.1", "--port", "0", "--db", str(directory / "db.sqlite3")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    end = time.monotonic() + 15
    while time.monotonic() < end:
        found = _LISTENING.search(proc.stdout.readline())
        if found:
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("the server did not start")


async def _shoot(home: Path, server: str, others: dict[str, Path], output: Path) -> None:
    key = Home(home).known_servers.get(server)
    assert key is not None
    app = ChatApp.for_profile(Home(home), "default", server, parse_servers(server), key)
    async with app.run_test(size=(100, 28)) as pilot:
        end = time.monotonic() + 20
        while app.link_state is not LinkState.CONNECTED or app.model.current is None:
            assert time.monotonic() < end, "the chat did not connect"
            await pilot.pause(0.1)
        await asyncio.to_thread(_cli, others["bob"], server, "send", "#tea", "the kettle is on")
        await pilot.pause(0.5)
        composer = app.query_one(Composer)
        composer.insert("see you at four then")
        await pilot.press("enter")
        await pilot.pause(0.5)
        await asyncio.to_thread(_cli, others["bob"], server, "send", "alice", "perfect!")
        await asyncio.to_thread(_cli, others["carol"], server, "invite", "alice")
        await pilot.pause(1.0)
        composer.insert("/accept carol")
        await pilot.pause(0.2)
        app.save_screenshot(output.name, str(output.parent))


def main() -> None:
    output = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else OUTPUT
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        proc, server = _start_server(directory)
        try:
            homes = {name: directory / f"home-{name}" for name in ("alice", "bob", "carol")}
            for name, home in homes.items():
                _cli(home, server, "register", name, "--password-stdin", stdin=PASSWORD + "\n")
                _cli(home, server, "login", name, "--password-stdin", stdin=PASSWORD + "\n")
            _cli(homes["bob"], server, "invite", "alice")
            _cli(homes["alice"], server, "accept", "bob")
            for name in ("alice", "bob"):
                _cli(homes[name], server, "join", "tea")
            _cli(homes["bob"], server, "send", "alice", "tea at four?")
            asyncio.run(asyncio.wait_for(_shoot(homes["alice"], server, homes, output), 60))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
