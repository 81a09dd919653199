"""What the base install leaves out: the commands that need an extra say which.

``pip install udpchat-proto`` brings the core and the two commands; the chat's
screen (Textual) is the ``tui`` extra and Prometheus metrics the ``metrics`` one.
Without them, ``udpchat-cli chat`` and ``udpchat-server --metrics`` exit 1 with
one line naming what installs the extra, before they open anything.
(``tools/wheel_check.py`` checks the same against the wheel installed alone.)
"""

from __future__ import annotations

import importlib.util
import json
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from udpchat_cli.cli import main as cli_main
from udpchat_server.cli import main as server_main


def hide(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    """Make ``importlib.util.find_spec`` say these top-level modules are missing."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        if name.split(".", maxsplit=1)[0] in hidden:
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("module", ["textual", "rich"])
@pytest.mark.parametrize("json_mode", [False, True])
def test_the_chat_without_textual_names_its_extra(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    module: str,
    json_mode: bool,
) -> None:
    hide(monkeypatch, module)
    home = tmp_path / "home"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--home", str(home), *(["--json"] if json_mode else []), "chat"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    line = "the chat needs Textual: pip install 'udpchat-proto[tui]'"
    assert captured.err == f"error: {line}\n"
    if json_mode:
        assert json.loads(captured.out) == {"ok": False, "error": "missing_extra", "message": line}
    else:
        assert captured.out == ""


def test_the_chat_with_textual_goes_on_to_the_profile(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Installed here (the dev extra has every extra): the check lets it through, and
    # the next refusal is the ordinary one of a profile that is not logged in.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--home", str(tmp_path / "home"), "chat"])
    assert exit_info.value.code == 1
    assert "not logged in" in capsys.readouterr().err


def test_metrics_without_prometheus_client_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hide(monkeypatch, "prometheus_client")
    db = tmp_path / "db.sqlite3"
    with pytest.raises(SystemExit) as exit_info:
        server_main(["--port", "0", "--db", str(db), "--metrics", "0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: --metrics needs prometheus-client: pip install 'udpchat-proto[metrics]'"
    ]
    assert not db.exists()  # refused before anything was opened
