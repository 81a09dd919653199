"""The README's quickstart and room conversation, pasted into a shell as a newcomer would."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, ServerProcess, clean_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def block(name: str) -> str:
    """The shell block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        rf"<!-- {name}:begin -->\s*```sh\n(.*?)```\s*<!-- {name}:end -->", readme, re.DOTALL
    )
    assert match, f"README has no {name} block"
    return match.group(1)


def test_the_readme_gets_users_chatting(server: ServerProcess, tmp_path: Path) -> None:
    env = clean_env(UDPCHAT_SERVER=server.address, UDPCHAT_HOME=str(tmp_path / "home"))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    script = "set -eu\n" + block("quickstart") + block("rooms")
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "alice -> bob: Hi Bob!" in out
    assert "bob -> alice: Hi Alice, how are you?" in out
    assert "bob offline" in out
    assert "alice -> #general: Welcome, both of you!" in out
    assert "bob -> #general: Thanks Alice" in out
    assert "#general (3 members)" in out
    assert "left #general" in out
