"""The public API loads lazily (``udpchat_proto/_lazy.py``) and is still whole: every
name in ``__all__`` is there, the very object its module defines, and type checkers
see the same names; a scripted CLI command loads none of the chat server's modules."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import udpchat_proto
import udpchat_proto.chat

PACKAGES = [udpchat_proto, udpchat_proto.chat]


def type_checking_names(package: ModuleType) -> dict[str, str]:
    """The names the package's ``if TYPE_CHECKING:`` block imports, and from where."""
    assert package.__file__ is not None
    tree = ast.parse(Path(package.__file__).read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.unparse(stmt)
                module = "." * stmt.level + (stmt.module or "")
                for alias in stmt.names:
                    submodule = module + ("." if stmt.module else "") + alias.name
                    found[alias.name] = submodule if is_module(submodule, package) else module
    return found


def is_module(name: str, package: ModuleType) -> bool:
    try:
        return importlib.util.find_spec(name, package.__name__) is not None
    except ModuleNotFoundError:  # (a name inside a module, not a module)
        return False


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_is_its_modules_object(package: ModuleType) -> None:
    exports: dict[str, tuple[str, ...]] = package._EXPORTS
    names = {name for group in exports.values() for name in group}
    assert names == set(package.__all__) - {"__version__"}
    assert set(dir(package)) >= names
    for module, group in exports.items():
        defined = importlib.import_module(module, package.__name__)
        for name in group:
            expected = defined if module.endswith("." + name) else getattr(defined, name)
            assert getattr(package, name) is expected, f"{package.__name__}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_type_checkers_see_the_same_names_from_the_same_modules(package: ModuleType) -> None:
    where = {name: module for module, group in package._EXPORTS.items() for name in group}
    assert type_checking_names(package) == where


@pytest.mark.e2e  # (a fresh interpreter: this one has loaded everything)
def test_a_scripted_command_loads_none_of_the_servers_modules() -> None:
    probe = "import sys, udpchat_cli.cli; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "udpchat_proto.chat.client" in loaded  # (it did load the client)
    server_side = {
        "udpchat_proto.chat.server",
        "udpchat_proto.chat.core",
        "udpchat_proto.chat.cluster",
        "udpchat_proto.chat.handlers",
        "udpchat_proto.chat.memory_store",
        "udpchat_proto.chat.password_jobs",
    }
    assert not loaded & server_side, sorted(loaded & server_side)
