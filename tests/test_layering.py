"""The layout's rules, checked on the source: the core does no I/O, the transport
knows nothing of chat, and the other packages use only the public API."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "udpchat_proto"

#: What the sans-IO core must never import: it reads no clock, opens no socket,
#: starts no thread and knows nothing of the runtimes built on it.
FORBIDDEN_IN_CORE = {"socket", "time", "threading", "asyncio", "sqlite3", "selectors"}
FORBIDDEN_IN_CORE |= {"udpchat_server", "udpchat_cli"}

#: The public API: what other packages may import from.
PUBLIC = {
    "udpchat_proto",
    "udpchat_proto.bus",
    "udpchat_proto.chat",
    "udpchat_proto.chat.messages",
    "udpchat_proto.transport",
}


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (relative imports resolved), with its line."""
    package = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base, node.lineno


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_does_no_io(path: Path) -> None:
    for module, line in imports(path):
        assert module.split(".")[0] not in FORBIDDEN_IN_CORE, f"{path.name}:{line} {module}"


@pytest.mark.parametrize("path", sorted((CORE / "transport").rglob("*.py")), ids=lambda p: p.name)
def test_the_transport_knows_nothing_of_chat(path: Path) -> None:
    for module, line in imports(path):
        assert not module.startswith("udpchat_proto.chat"), f"{path.name}:{line} {module}"


def outside_modules() -> list[Path]:
    return sorted(
        path
        for folder in ("src/udpchat_server", "src/udpchat_cli", "examples", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
    )


@pytest.mark.parametrize("path", outside_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_other_packages_use_only_the_public_api(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("udpchat_proto"):
            assert node.module in PUBLIC, f"{path.name}:{node.lineno} from {node.module}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("udpchat_proto.") or alias.name in PUBLIC


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_never_calls_now_wall_time(path: Path) -> None:
    # ``now`` is a monotonic clock everywhere in the core (only the injected wall
    # clock is POSIX time): a docstring that says otherwise misleads an embedder.
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
            continue
        text = " ".join((ast.get_docstring(node) or "").split())
        if isinstance(node, ast.FunctionDef) and node.name == "get_timer":
            assert "POSIX" not in text and "wall" not in text, f"{path.name}: {node.name}"
        for claim in re.findall(r"\bnow\b\W{0,4}[^.;]{0,30}", text):
            assert "POSIX" not in claim and "wall clock" not in claim, f"{path.name}: {claim}"
