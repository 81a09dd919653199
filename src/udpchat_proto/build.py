"""Which build of the package runs: compiled with mypyc, or pure Python.

The wheel that CI builds (``tools/wheel_check.py``, with
``HATCH_BUILD_HOOK_ENABLE_MYPYC=1``) compiles the modules of :data:`HOT_PATH` with
mypyc, the compiler of the mypy the project already type-checks with: each is then
an extension module beside its ``.py`` source. Every other install (``pip install
-e .`` from a checkout, a build without that variable) is pure Python and needs no
compiler; the two builds behave alike (the test suite runs on both).

``udpchat-server --version`` prints :func:`build_line`, and its ``/metrics`` says
``udpchat_build_info{compiled="true"}`` (or ``"false"``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from typing import Final

__all__ = ["HOT_PATH", "build_line", "compiled_modules", "is_compiled"]

HOT_PATH: Final = (
    "udpchat_proto.transport.ranges",
    "udpchat_proto.transport.replay",
    "udpchat_proto.transport.packets",
    "udpchat_proto.transport.recovery",
    "udpchat_proto.transport.stream",
    "udpchat_proto.transport.connection",
    "udpchat_proto.transport.states",
    "udpchat_proto.transport.events",
    "udpchat_proto.transport.server",
    "udpchat_proto.transport.client",
    "udpchat_proto.transport.handshake",
    "udpchat_proto.chat.dispatch",
    "udpchat_proto.chat.delivery",
    "udpchat_proto.chat.deliveries",
    "udpchat_proto.chat.batch",
    "udpchat_proto.chat.connection",
    "udpchat_proto.chat.connections",
    "udpchat_proto.chat.outbox",
)
"""The modules the compiled wheel compiles (pyproject.toml's
``[tool.hatch.build.targets.wheel.hooks.mypyc] include`` lists their files; a test
keeps the two lists equal): the transport (its packet crypto, ``handshake``,
included), and the chat core's dispatch, delivery and outbox. The codec is left
out: cattrs reads the signatures of its hook factories, which compiled functions
do not have."""


def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`HOT_PATH` that load from an extension module (found,
    not imported: only their packages are)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = []
    for name in HOT_PATH:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            compiled.append(name)
    return tuple(compiled)


def is_compiled() -> bool:
    """Whether this is the compiled build: every module of :data:`HOT_PATH`
    compiled."""
    return len(compiled_modules()) == len(HOT_PATH)


def build_line() -> str:
    """One line saying which build runs, as ``--version`` prints it: ``build:
    compiled (mypyc, 18 modules)``, ``build: pure Python``, or, for a mixed tree
    (an extension left in a checkout), how many of them are compiled."""
    count = len(compiled_modules())
    if count == len(HOT_PATH):
        return f"build: compiled (mypyc, {count} modules)"
    if count == 0:
        return "build: pure Python"
    return f"build: partly compiled ({count} of {len(HOT_PATH)} modules)"
