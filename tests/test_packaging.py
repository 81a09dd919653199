"""The package: one version everywhere, and shell completion of both tools.

The version's single source is ``__version__`` in ``udpchat_proto/__init__.py``
(pyproject.toml reads it through hatchling); both tools' ``--version`` show it.
Completion is click's own (``_UDPCHAT_SERVER_COMPLETE=bash_source udpchat-server``):
these tests load the script it prints into bash and complete a word with it, as a
shell would. ``tools/wheel_check.py`` (run by CI) checks the built wheel itself.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

import udpchat_proto
from udpchat_proto.build import build_line

from .e2e.conftest import CLI, SERVER, clean_env

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/udpchat_proto/__init__.py"


@pytest.mark.e2e  # (runs the installed tools)
@pytest.mark.parametrize(("tool", "command"), [("udpchat-server", SERVER), ("udpchat-cli", CLI)])
def test_both_tools_show_the_version(tool: str, command: list[str]) -> None:
    done = run([*command, "--version"])
    assert done.returncode == 0, done.stderr
    # The server's second line says which build runs (tests/test_build.py).
    build = f"{build_line()}\n" if tool == "udpchat-server" else ""
    assert done.stdout == f"{tool}, version {udpchat_proto.__version__}\n{build}"


def complete(command: list[str], var: str, words: list[str]) -> list[str]:
    """What bash completes for ``words`` (the last one being typed) with the script
    that ``VAR=bash_source COMMAND`` prints."""
    if len(command) > 1:  # the script runs "$1": one word, the program
        pytest.skip("the console script is not installed")
    source = run(command, **{var: "bash_source"})
    assert source.returncode == 0, source.stderr
    function = f"_{var.strip('_').removesuffix('_COMPLETE').lower()}_completion"
    assert f"{function}()" in source.stdout, source.stdout[:500]
    script = (
        f"{source.stdout}\n"
        f"COMP_WORDS=({' '.join(repr(word) for word in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"{function} '{command[0]}'\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.e2e  # (runs the installed tools)
def test_udpchat_server_completes_its_options() -> None:
    found = complete(SERVER, "_UDPCHAT_SERVER_COMPLETE", ["udpchat-server", "--max-room"])
    assert found == ["--max-room-members", "--max-rooms-per-user"]
    found = complete(SERVER, "_UDPCHAT_SERVER_COMPLETE", ["udpchat-server", "--log-level", ""])
    assert found == ["debug", "info", "warning", "error"]


@pytest.mark.e2e  # (runs the installed tools)
def test_udpchat_server_completes_its_subcommands() -> None:
    found = complete(SERVER, "_UDPCHAT_SERVER_COMPLETE", ["udpchat-server", "mi"])
    assert found == ["migrate"]
    found = complete(SERVER, "_UDPCHAT_SERVER_COMPLETE", ["udpchat-server", "migrate", "--"])
    assert {"--from", "--to"} <= set(found)


@pytest.mark.e2e  # (runs the installed tools)
def test_udpchat_cli_completes_its_commands() -> None:
    found = complete(CLI, "_UDPCHAT_CLI_COMPLETE", ["udpchat-cli", "se"])
    assert found == ["send", "sessions"]
    found = complete(CLI, "_UDPCHAT_CLI_COMPLETE", ["udpchat-cli", "send", "--"])
    assert {"--wait", "--json"} <= set(found)
