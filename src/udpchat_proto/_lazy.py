"""Lazy re-exports (PEP 562): a package's public names, each imported when first used.

``udpchat_proto`` and ``udpchat_proto.chat`` re-export both roles, but a program
that plays one (``udpchat-cli`` runs one short process per command) should not pay
for loading the other: every name of the public API is imported from its module at
its first use, then kept in the package like an ordinary attribute. Type checkers
see the same names through the packages' ``if TYPE_CHECKING:`` imports;
``tests/test_public_api.py`` checks that both lists agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], table: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names load lazily.

    Args:
        namespace: the package's ``globals()``; a name is stored there once loaded.
        table: each module (relative to the package) and the names it provides; a
            name equal to the module's own last part is that module (``messages``).

    Returns:
        The package's ``__getattr__`` and ``__dir__``.
    """
    package = namespace["__name__"]
    where = {name: module for module, names in table.items() for name in names}

    def get(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module, package)
        value = loaded if module.rpartition(".")[2] == name else getattr(loaded, name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted({*namespace, *where})

    return get, names
