"""``udpchat-cli`` without a server: what it refuses before any I/O, and how.

A request the client can tell is invalid is refused exactly as the server would
(same error code, exit 1); usage errors exit 2; every failure is one ``error:``
line on stderr (and the JSON refusal on stdout with ``--json``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from udpchat_cli.cli import main
from udpchat_cli.profiles import Home


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    # A closed port: any test here that reached the network would fail with 3.
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(home), "--server", "127.0.0.1:9", "--timeout", "0.2", *args])
    captured = capsys.readouterr()
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, captured.out, captured.err


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        (
            ["register", "Bad Name", "--password-stdin"],
            "long enough password\n",
            "invalid_username",
        ),
        (["login", "x" * 33, "--password-stdin"], "long enough password\n", "invalid_username"),
        (["register", "alice", "--password-stdin"], "short\n", "invalid_password"),
        (["register", "alice", "--password-stdin"], "", "invalid_password"),
        (["send", "bob", ""], "", "invalid_text"),
        (["send", "bob", "é" * 2049], "", "too_large"),
        (["send", "bad name", "hi"], "", "invalid_username"),
        (["send", "#bad room", "hi"], "", "invalid_room"),
        (["join", "#"], "", "invalid_room"),
        (["members", "bad room"], "", "invalid_room"),
        (["history", "bob", "--limit", "0"], "", "bad_request"),
        (["invite", "NO!"], "", "invalid_username"),
        (["whoami"], "", "not_logged_in"),
        (["logout"], "", "not_logged_in"),
        (["inbox"], "", "not_logged_in"),
        (["listen", "--for", "1"], "", "not_logged_in"),
        (["send", "bob", "hi"], "", "not_logged_in"),
        (["rooms"], "", "not_logged_in"),
    ],
)
def test_refused_before_any_io(
    *,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    args: list[str],
    stdin: str,
    code: str,
) -> None:
    status, out, err = run(capsys, monkeypatch, home, *args, "--json", stdin=stdin)
    assert status == 1
    refusal = json.loads(out)
    assert refusal["ok"] is False
    assert refusal["error"] == code
    assert err == f"error: {refusal['message']}\n"


def test_human_refusal_prints_only_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    status, out, err = run(capsys, monkeypatch, home, "whoami")
    assert (status, out) == (1, "")
    assert err == "error: not logged in: run 'udpchat-cli login USER' first\n"


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["send", "bob"],
        ["history", "bob", "--limit", "many"],
        ["--json", "listen", "--count", "0"],
        ["inbox", "--wait", "-1"],
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    args: list[str],
) -> None:
    status, out, err = run(capsys, monkeypatch, home, *args)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    if "--json" in args:
        assert json.loads(out)["error"] == "usage"
    else:
        assert out == ""


def test_bad_global_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for args in (["--server", "nope"], ["--profile", "../x"], ["--timeout", "0"]):
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        with pytest.raises(SystemExit) as exit_info:
            main(["--home", str(tmp_path), *args, "whoami", "--json"])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2, args
        assert json.loads(captured.out)["error"] == "usage"


def test_exit_3_when_the_server_does_not_answer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    status, out, err = run(
        capsys,
        monkeypatch,
        home,
        "register",
        "alice",
        "--password-stdin",
        "--json",
        stdin="long enough password\n",
    )
    assert status == 3
    assert json.loads(out)["error"] == "timeout"
    assert err.startswith("error: no answer from 127.0.0.1:9")


def test_the_profile_keeps_its_server_after_login(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exit_info:
        main(["--home", str(home), "--timeout", "0.2", "--json", "friends"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 3
    assert "127.0.0.1:9" in captured.err  # not the default 127.0.0.1:9999


def test_no_command_shows_the_help_as_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.out == ""
    assert captured.err.startswith("Usage: udpchat-cli")
