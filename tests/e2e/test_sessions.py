"""Login sessions end to end: ``sessions``, ``revoke SESSION_ID``, ``logout --all``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PASSWORD, User

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def second_device(user: User, tmp_path: Path, name: str) -> User:
    """The same user logged in from another profile home (another device)."""
    device = User(user.name, tmp_path / f"home-{user.name}-{name}", user.server)
    device.ok("login", user.name, "--password-stdin", stdin=PASSWORD + "\n")
    return device


@pytest.mark.slow(seconds=14)
def test_sessions_revoke_and_logout_everywhere(make_user: MakeUser, tmp_path: Path) -> None:
    alice = make_user("alice")
    laptop = second_device(alice, tmp_path, "laptop")
    tablet = second_device(alice, tmp_path, "tablet")
    listed = alice.ok("sessions")["sessions"]
    assert len(listed) == 3
    assert [s["current"] for s in listed] == [False, False, True]  # newest first
    for item in listed:
        assert set(item) == {"id", "current", "created_at", "last_used_at"}
        assert re.fullmatch(r"[0-9a-f]{32}", item["id"])
        assert ISO.match(item["created_at"]) and ISO.match(item["last_used_at"])
    (laptop_id,) = [s["id"] for s in laptop.ok("sessions")["sessions"] if s["current"]]

    def laptop_last_used() -> str:
        (used,) = [
            s["last_used_at"] for s in alice.ok("sessions")["sessions"] if s["id"] == laptop_id
        ]
        return str(used)

    # The laptop is listening when its session is revoked: it is told why.
    before = laptop_last_used()
    listener = laptop.listen("--for", "20")
    try:
        deadline = time.monotonic() + 10
        while laptop_last_used() == before:  # until the listener has resumed
            assert time.monotonic() < deadline, "the laptop's listener never connected"
            time.sleep(0.05)
        assert alice.ok("revoke", laptop_id) == {"ok": True}
        _out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode != 0
    assert "ended from another device" in err
    assert laptop_id not in [s["id"] for s in alice.ok("sessions")["sessions"]]
    laptop.refused("not_logged_in", "friends")  # "the login session ... has ended"
    alice.refused("unknown_session", "revoke", laptop_id)
    alice.refused("bad_request", "revoke", "not-hex")

    assert alice.ok("logout", "--all") == {"ok": True, "ended": 2}
    tablet.refused("not_logged_in", "friends")
    assert alice.run("friends").code != 0  # logged out here too
    alice.ok("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert [s["current"] for s in alice.ok("sessions")["sessions"]] == [True]
