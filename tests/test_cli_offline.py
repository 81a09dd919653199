"""``udpchat-cli`` without a server: what it refuses before any I/O, and how.

A request the client can tell is invalid is refused exactly as the server would
(same error code, exit 1); usage errors exit 2; every failure is one ``error:``
line on stderr (and the JSON refusal on stdout with ``--json``).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

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
        (["status", "not hex"], "", "bad_request"),
        (["status", "00" * 17], "", "bad_request"),
        (["revoke", "abcd"], "", "bad_request"),
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


@pytest.mark.parametrize(
    "stdin", ["short\nlong enough password\n", "long enough password\nshort\n"]
)
def test_passwd_refuses_a_bad_password_before_any_io(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path, stdin: str
) -> None:
    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))
    status, out, err = run(
        capsys, monkeypatch, home, "passwd", "--password-stdin", "--json", stdin=stdin
    )
    assert status == 1  # not 3: nothing was sent to the closed port
    assert json.loads(out)["error"] == "invalid_password"
    assert err == "error: invalid password: use 8 to 1024 characters\n"


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


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "nan", "whoami"],
        ["--timeout", "inf", "whoami"],
        ["inbox", "--wait", "nan"],
        ["listen", "--for", "nan"],
        ["listen", "--for", "inf"],
        ["--server", "::1:9999", "whoami"],  # IPv6 needs its brackets
        ["--server", "127.0.0.1:\uff11\uff12", "whoami"],  # fullwidth digits
    ],
)
def test_unbounded_waits_and_ambiguous_servers_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    args: list[str],
) -> None:
    # A NaN deadline never passes: without this check the wait would never end.
    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))
    status, out, err = run(capsys, monkeypatch, home, *args, "--json")
    assert status == 2, (out, err)
    assert json.loads(out)["error"] == "usage"
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_damaged_profile_is_a_local_error_not_a_refusal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))
    path = Home(home).profile_path("default")
    path.write_text(path.read_text().replace("74" * 32, "74" * 2))  # a 2-byte token
    status, out, err = run(capsys, monkeypatch, home, "friends", "--json")
    assert status == 1
    assert json.loads(out)["error"] == "local_error"
    assert "corrupt" in err and err.count("\n") == 1


class FakeGetpass:
    """Stands for getpass.getpass, and warns as it does without a terminal."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str = "", stream: object = None) -> str:
        import getpass
        import warnings

        self.prompts.append(prompt)
        warnings.warn("Can not control echo on the terminal.", getpass.GetPassWarning, stacklevel=2)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


@pytest.mark.parametrize(("command", "prompts"), [("register", 2), ("login", 1)])
def test_the_password_is_asked_without_echo_twice_for_register(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    command: str,
    prompts: int,
) -> None:
    fake = FakeGetpass("long enough password", "long enough password")
    monkeypatch.setattr("getpass.getpass", fake)
    status, out, err = run(capsys, monkeypatch, home, command, "alice", "--json")
    assert status == 3  # asked, then sent to the closed port (nothing read from stdin)
    assert len(fake.prompts) == prompts
    assert json.loads(out)["error"] == "timeout"
    # No warning machinery (file name, line, source) on stderr: one error line.
    assert "GetPassWarning" not in err and "getpass.py" not in err
    assert err.count("error: ") == 1


def test_end_of_input_at_the_prompt_is_interrupted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setattr("getpass.getpass", FakeGetpass())
    status, out, err = run(capsys, monkeypatch, home, "login", "alice", "--json")
    assert status == 1
    assert json.loads(out)["error"] == "interrupted"
    assert err.endswith("error: interrupted\n")


@pytest.mark.parametrize(("command", "status"), [(["listen"], 0), (["friends"], 1)])
def test_ctrl_c_while_connecting_ends_listen_with_0_and_others_with_1(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    command: list[str],
    status: int,
) -> None:
    from udpchat_cli.app import App

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))
    monkeypatch.setattr(App, "connect", interrupted)
    code, out, err = run(capsys, monkeypatch, home, *command, "--json")
    assert code == status
    if status == 0:
        assert (out, err) == ("", "")
    else:
        assert json.loads(out)["error"] == "interrupted" and err == "error: interrupted\n"


@pytest.mark.parametrize(
    ("module", "status", "err"),
    [("udpchat_cli.cli", 1, "error: interrupted\n"), ("udpchat_server.cli", 0, "")],
)
def test_ctrl_c_while_the_modules_load_shows_no_traceback(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    status: int,
    err: str,
) -> None:
    import importlib
    import importlib.abc
    import sys

    class CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *_args: object) -> None:
            if name == "click":  # half-way through the imports
                raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["prog", "--json", "whoami"])
    monkeypatch.delitem(sys.modules, module, raising=False)  # restored afterwards
    monkeypatch.delitem(sys.modules, "click", raising=False)
    monkeypatch.setattr("sys.meta_path", [CtrlC(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module)
    captured = capsys.readouterr()
    assert exit_info.value.code == status
    assert captured.err == err
    if status:
        assert json.loads(captured.out)["error"] == "interrupted"


@pytest.mark.e2e  # (a fresh interpreter: reloading the module here would give
# every test after it new classes, StartupError among them)
def test_importing_the_server_module_leaves_sigterm_alone() -> None:
    probe = (
        "import signal, udpchat_server.cli; "
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "True"


class CapturedSession:
    """Stands for Session: records the server it was asked for, then times out."""

    servers: ClassVar[list[str]] = []

    def __init__(self, *, server: str, **_kwargs: object) -> None:
        from udpchat_cli.session import ServerTimeoutError

        CapturedSession.servers.append(server)
        raise ServerTimeoutError(f"no answer from {server}")


def test_defaults_and_environment_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import udpchat_cli.app

    for name in ("UDPCHAT_SERVER", "UDPCHAT_HOME", "UDPCHAT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    asked: list[str] = []

    def user_state_dir(appname: str) -> str:
        asked.append(appname)
        return str(state)

    monkeypatch.setattr("platformdirs.user_state_dir", user_state_dir)
    monkeypatch.setattr(udpchat_cli.app, "Session", CapturedSession)
    CapturedSession.servers = []

    def cli(*args: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--json"])
        capsys.readouterr()
        assert isinstance(exit_info.value.code, int)
        return exit_info.value.code

    # No option, no environment: the user state directory, profile "default",
    # server 127.0.0.1:9999.
    assert cli("register", "alice", "--password-stdin") == 3
    assert asked == ["udpchat"]
    assert CapturedSession.servers == ["127.0.0.1:9999"]
    assert state.is_dir() and oct(state.stat().st_mode & 0o777) == "0o700"
    Home(state).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:7"))
    Home(tmp_path / "env").update("bob", lambda p: p.login("bob", b"t" * 32, "127.0.0.1:8"))
    assert cli("friends") == 3
    assert CapturedSession.servers[-1] == "127.0.0.1:7"  # the profile's server
    # The environment names the home, the profile and the server.
    monkeypatch.setenv("UDPCHAT_HOME", str(tmp_path / "env"))
    monkeypatch.setenv("UDPCHAT_PROFILE", "bob")
    assert cli("friends") == 3
    assert CapturedSession.servers[-1] == "127.0.0.1:8"  # bob's, in the env home
    monkeypatch.setenv("UDPCHAT_SERVER", "127.0.0.1:6")
    assert cli("register", "carol", "--password-stdin") == 3
    assert CapturedSession.servers[-1] == "127.0.0.1:6"
    # Options win over the environment.
    assert cli("--server", "127.0.0.1:5", "register", "carol", "--password-stdin") == 3
    assert CapturedSession.servers[-1] == "127.0.0.1:5"
