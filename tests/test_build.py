"""The compiled build and the pure one (``udpchat_proto.build``).

The README's test command runs on the pure build (an editable install from the
checkout). CI also builds the mypyc-compiled wheel (``tools/wheel_check.py``),
installs it into a fresh environment and runs the transport, chat and end-to-end
tests against it with ``UDPCHAT_TEST_BUILD=compiled``: then the first test here
fails unless every module of the hot path really is compiled, so that a build that
silently fell back to Python cannot pass for the compiled one.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from udpchat_proto import build

ROOT = Path(__file__).resolve().parent.parent


def test_the_build_is_the_one_asked_for() -> None:
    wanted = os.environ.get("UDPCHAT_TEST_BUILD", "")
    compiled = build.compiled_modules()
    if wanted == "compiled":
        assert compiled == build.HOT_PATH
        assert build.is_compiled()
        assert build.build_line() == f"build: compiled (mypyc, {len(build.HOT_PATH)} modules)"
    elif wanted == "pure":
        assert compiled == ()
        assert build.build_line() == "build: pure Python"
    else:
        assert not wanted, f"UDPCHAT_TEST_BUILD={wanted!r}: compiled or pure"
        pytest.skip("UDPCHAT_TEST_BUILD is not set: either build may run")


def test_the_wheel_compiles_the_modules_of_the_hot_path() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hook = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    files = ["src/" + name.replace(".", "/") + ".py" for name in build.HOT_PATH]
    assert hook["include"] == files
    for path in files:
        assert (ROOT / path).is_file(), path
    # Off unless a build asks for it: `pip install -e .` needs no compiler.
    assert hook["enable-by-default"] is False


def test_the_build_line_counts_the_compiled_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    # A checkout where a compiled build left some extensions says so.
    monkeypatch.setattr(build, "compiled_modules", lambda: build.HOT_PATH[:3])
    assert build.build_line() == f"build: partly compiled (3 of {len(build.HOT_PATH)} modules)"
    assert not build.is_compiled()
    monkeypatch.setattr(build, "compiled_modules", lambda: build.HOT_PATH)
    assert build.build_line().startswith("build: compiled (mypyc, ")
    assert build.is_compiled()
    monkeypatch.setattr(build, "compiled_modules", tuple)
    assert build.build_line() == "build: pure Python"


def test_the_metrics_say_which_build_runs() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from udpchat_server.metrics import ServerMetrics

    text = generate_latest(ServerMetrics().registry).decode()
    flag = "true" if build.is_compiled() else "false"
    assert f'udpchat_build_info{{compiled="{flag}"}} 1.0' in text
