"""The layout's rules, checked on the source: the core does no I/O, the transport
knows nothing of chat, and the other packages (and the code in the docs) use only
the public API: the face, ``udpchat_proto``, and the subpackages' own names."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "udpchat_proto"

#: What the sans-IO core must never import: it reads no clock, opens no socket,
#: starts no thread and knows nothing of the runtimes built on it.
FORBIDDEN_IN_CORE = {"socket", "time", "threading", "asyncio", "sqlite3", "selectors"}
FORBIDDEN_IN_CORE |= {"udpchat_server", "udpchat_cli"}

#: vodozemac draws its keys from the operating system: the one exception to the
#: core's injected randomness, allowed in the end-to-end encryption package only
#: (no other part of the core, nor the server, which relays what it cannot read).
VODOZEMAC_HOME = CORE / "e2ee"

#: The core's one runtime, ``udpchat_proto.asyncio``, runs the roles on an asyncio
#: loop: asyncio is its whole point, and it alone may import it. Everything else
#: stays forbidden there too (its clocks are the loop's, its sockets asyncio's).
RUNTIME = CORE / "asyncio"
ALLOWED_IN_RUNTIME = {"asyncio"}

#: The public API: the modules other packages may import from, each only the names
#: of its ``__all__``. The face exports what an embedder needs (the message catalogue
#: as ``messages``); the subpackages only their wire-level names (no name is exported
#: twice: tests/test_public_api.py), so a name the face exports comes from the face.
PUBLIC = {
    "udpchat_proto",
    "udpchat_proto.asyncio",
    "udpchat_proto.build",
    "udpchat_proto.bus",
    "udpchat_proto.chat",
    "udpchat_proto.e2ee",
    "udpchat_proto.transport",
}

#: Outside the core, the files that may read its internals, and why: they draw or
#: generate documents from tables and byte layouts no application needs. (tests/ and
#: fuzz/ are white-box too: they test and fuzz the modules themselves.)
WHITE_BOX = {
    "tools/state_diagrams.py": "draws docs/STATES.md from the state machines' own tables",
    "tools/session_vectors.py": "writes docs/vectors/ from the handshake's and packets' internals",
}

#: The pages whose Python examples an embedder copies: they import as the code does.
DOC_PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


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
    allowed = ALLOWED_IN_RUNTIME if path.is_relative_to(RUNTIME) else set()
    for module, line in imports(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN_IN_CORE - allowed, f"{path.name}:{line} {module}"


def test_only_the_runtime_may_import_asyncio() -> None:
    assert RUNTIME.is_dir()
    importers = {
        str(path.relative_to(CORE))
        for path in core_modules()
        if any(module.split(".")[0] == "asyncio" for module, _line in imports(path))
    }
    assert importers and all(name.startswith("asyncio/") for name in importers), importers


@pytest.mark.e2e  # (a fresh interpreter: this one has loaded everything)
def test_the_face_does_not_load_the_runtime() -> None:
    probe = (
        "import sys, udpchat_proto, udpchat_proto.chat, udpchat_proto.transport;"
        "from udpchat_proto import ChatServer, ClientConnection;"
        "print('udpchat_proto.asyncio' in sys.modules, 'asyncio' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_only_the_e2ee_package_imports_vodozemac() -> None:
    everywhere = [
        *core_modules(),
        *(ROOT / "src" / "udpchat_server").rglob("*.py"),
        *(ROOT / "src" / "udpchat_cli").rglob("*.py"),
    ]
    importers = {
        path.relative_to(ROOT / "src")
        for path in everywhere
        for module, _ in imports(path)
        if module.split(".")[0] == "vodozemac"
    }
    assert importers, "the rule checks nothing: vodozemac moved?"
    outside = [p for p in importers if not (ROOT / "src" / p).is_relative_to(VODOZEMAC_HOME)]
    assert not outside, outside


@pytest.mark.parametrize("path", sorted((CORE / "transport").rglob("*.py")), ids=lambda p: p.name)
def test_the_transport_knows_nothing_of_chat(path: Path) -> None:
    for module, line in imports(path):
        assert not module.startswith("udpchat_proto.chat"), f"{path.name}:{line} {module}"


def outside_modules() -> list[Path]:
    return sorted(
        path
        for folder in ("src/udpchat_server", "src/udpchat_cli", "examples", "benchmarks", "tools")
        for path in (ROOT / folder).rglob("*.py")
        if str(path.relative_to(ROOT)) not in WHITE_BOX
    )


def public_api_violations(tree: ast.AST) -> Iterator[str]:
    """Each import in ``tree`` of a part of ``udpchat_proto`` that is not its public API."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("udpchat_proto"):
            module = node.module or ""
            if module not in PUBLIC:
                yield f"{node.lineno}: from {module} (a private module)"
                continue
            exported = set(importlib.import_module(module).__all__)
            for alias in node.names:
                if alias.name not in exported:
                    home = [
                        p for p in sorted(PUBLIC - {module}) if exports(p, alias.name)
                    ] or "none"
                    yield f"{node.lineno}: {alias.name} from {module} (exported by {home})"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("udpchat_proto") and alias.name not in PUBLIC:
                    yield f"{node.lineno}: import {alias.name} (a private module)"


def exports(module: str, name: str) -> bool:
    try:
        return name in importlib.import_module(module).__all__
    except ImportError:  # (udpchat_proto.asyncio, before it exists)
        return False


@pytest.mark.parametrize("path", outside_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_other_packages_use_only_the_public_api(path: Path) -> None:
    assert not list(public_api_violations(ast.parse(path.read_text()))), path.name


def python_examples(page: str) -> list[str]:
    """The fenced ``python`` blocks of a Markdown page."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", DOC_PAGES)
def test_the_docs_examples_import_the_public_api(page: str) -> None:
    for block in python_examples(page):
        violations = list(public_api_violations(ast.parse(block)))
        assert not violations, f"{page}: {violations}"


def test_the_rule_catches_a_private_import_and_a_name_from_the_wrong_face() -> None:
    code = (
        "from udpchat_proto.chat.server import ChatServer\n"
        "from udpchat_proto.chat import ClientConnection\n"
        "from udpchat_proto.transport import ServerKey, ServerTransport\n"
        "import udpchat_proto.chat.codec\n"
        "from udpchat_proto import ChatServer, messages\n"
    )
    assert list(public_api_violations(ast.parse(code))) == [
        "1: from udpchat_proto.chat.server (a private module)",
        "2: ClientConnection from udpchat_proto.chat (exported by ['udpchat_proto'])",
        "3: ServerKey from udpchat_proto.transport (exported by ['udpchat_proto'])",
        "4: import udpchat_proto.chat.codec (a private module)",
    ]


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
