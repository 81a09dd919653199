"""The storage quota and retention end to end: ``--max-stored-per-user`` refuses a
sender over it with ``quota_exceeded`` and one clear line from the real CLI, and
``--retain-days`` (on by default) and the quota read back from ``--print-config``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from .conftest import ServerProcess, User, befriend, run_cli, server_command

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_a_sender_over_the_quota_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    # 3,000 bytes: an encrypted message counts its row (160), its ciphertext and
    # the key shares stored with it (docs/E2EE.md, phase 2c). The first to bob
    # carries a share for his device (about 2.6 KB in all); the second (no share,
    # about 1.1 KB) would pass the quota.
    server = ServerProcess(tmp_path, options=("--max-stored-per-user", "3000")).start()
    try:
        alice, bob = (User(n, tmp_path / f"home-{n}", server) for n in ("alice", "bob"))
        alice.signup()
        bob.signup()
        befriend(alice, bob)
        assert alice.ok("send", "bob", "x" * 500)["ok"] is True
        refused = alice.run("send", "bob", "y" * 500)
        assert refused.code == 1, refused
        assert refused.json["error"] == "quota_exceeded"
        assert refused.err.count("\n") == 1, refused.err
        taken = re.match(
            r"error: your storage quota on this server is full, nothing was sent: "
            r"your stored messages take (\d\.\d) KiB of the 2\.9 KiB this server keeps",
            refused.err,
        )
        assert taken is not None, refused.err
        # The row alone was 160 bytes: the ciphertext and the share count too.
        assert 2.0 <= float(taken[1]) < 2.9, refused.err
        # Without --json, the same line alone.
        human = run_cli("send", "bob", "y" * 500, home=alice.home, server=server.address)
        assert (human.code, human.out, human.err) == (1, "", refused.err)
        # Nothing refused was stored; bob, under his own quota, still sends.
        assert [m["text"] for m in bob.ok("inbox")["messages"]] == ["x" * 500]
        assert bob.ok("send", "alice", "fine")["ok"] is True
    finally:
        server.stop()
        server.kill()


def test_retention_and_the_quota_are_on_by_default_and_0_turns_them_off() -> None:
    default = server_command("--print-config")
    assert default.returncode == 0, default
    printed = tomllib.loads(default.stdout)
    assert printed["retain_days"] == 30.0
    assert printed["max_stored_per_user"] == 64 * 1024 * 1024
    off = server_command("--retain-days", "0", "--max-stored-per-user", "0", "--print-config")
    assert off.returncode == 0, off
    printed = tomllib.loads(off.stdout)
    assert (printed["retain_days"], printed["max_stored_per_user"]) == (0.0, 0)
    units = server_command("--max-stored-per-user", "2GiB", "--print-config")
    assert tomllib.loads(units.stdout)["max_stored_per_user"] == 2 << 30
    bad = server_command("--max-stored-per-user", "lots", "--print-config")
    assert bad.returncode == 2 and "is not a size" in bad.stderr, bad
