"""Sphinx configuration of the API reference: the docstrings (autodoc, Google style by
napoleon) and the Markdown pages beside this file (MyST).

Build it as CI does (warnings are errors, so a broken reference fails the build)::

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

The build needs no network: Python's own inventory (links to the standard library)
is fetched only with ``UDPCHAT_DOCS_INTERSPHINX=1``. The public modules and their
pages are listed in ``api/index.md``; ``tests/test_public_api.py`` checks that every
public module has its page and every public name its entry.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

from docutils.nodes import Element
from pygments.lexers.special import TextLexer
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # (a checkout without the package installed)

import udpchat_proto  # noqa: E402

project = "udpchat"
author = "udpchat developers"
copyright = "udpchat developers"
release = version = udpchat_proto.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
]

# The Markdown pages are the sources next to this file; what is not a page is left out.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "vectors/README.md", "perf/*.md"]

# Every reference must resolve (with -W a dangling one fails the build), but for the
# names of other libraries, which the offline build cannot link to.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(collections|typing|types|enum|contextlib|datetime|hashlib|ipaddress)\..*"),
    ("py:.*", r"(asyncio|concurrent)\..*"),
    ("py:.*", r"(attrs|attr|cattrs|cryptography|orjson)\..*"),
    ("py:class", r"(Callable|Iterable|Iterator|Sequence|Mapping|Hashable|Generator)"),
    ("py:class", r"(Any|Final|TypeAlias|Protocol|TypeVar|Self)"),
]

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# The pages use GitHub's Markdown: a heading may skip a level, a link may name a
# file of the repository that is not a page (a test, a script).
suppress_warnings = ["myst.header", "myst.xref_missing"]

# Python's inventory only on request: the build must work where only PyPI is reachable.
intersphinx_mapping: dict[str, tuple[str, str | None]] = (
    {"python": ("https://docs.python.org/3", None)}
    if os.environ.get("UDPCHAT_DOCS_INTERSPHINX") == "1"
    else {}
)

html_theme = "furo"
html_title = f"udpchat {release}"
html_static_path: list[str] = []


# --- names: an object documented under its public name --------------------------------

#: The public modules: an object the core defines in a private module
#: (``udpchat_proto.chat.client.ClientConnection``) is documented under its public
#: name (``udpchat_proto.ClientConnection``), the first module here that exports it.
PUBLIC_MODULES = [
    "udpchat_proto",
    "udpchat_proto.chat",
    "udpchat_proto.chat.messages",
    "udpchat_proto.transport",
    "udpchat_proto.asyncio",
]


def public_names() -> tuple[dict[int, str], dict[str, list[str]]]:
    """Each public class or function (by identity) and its public dotted name; each
    public name's last part and the dotted names it may stand for."""
    by_id: dict[int, str] = {}
    by_short: dict[str, list[str]] = {}
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # (a module not written yet)
            continue
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            by_short.setdefault(name, []).append(f"{module_name}.{name}")
            # (a module, ``messages``, is documented under its own name)
            if isinstance(value, type) or (callable(value) and not isinstance(value, type(sys))):
                by_id.setdefault(id(value), f"{module_name}.{name}")
    return by_id, by_short


PUBLIC_BY_ID, PUBLIC_BY_SHORT = public_names()


def resolve_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    """Resolve what the Python domain could not: a reference to a private path (a type
    hint, a docstring's ``:class:`~udpchat_proto.chat.server.ChatServer```) or a bare
    name written in another module (``:meth:`Store.commit```), to its public entry.

    A reference to an internal object, which the reference does not document, is
    shown as code without a link; one that names nothing at all is left unresolved,
    and fails the build (``nitpicky``): a renamed or removed name cannot rot there.
    """
    if node.get("refdomain") != "py" or not str(node["reftarget"]).strip():
        return None
    exists = False
    domain = env.get_domain("py")
    for candidate in candidates(node):
        value, attribute = lookup(candidate)
        if value is None:
            continue
        exists = True
        public = PUBLIC_BY_ID.get(id(value))
        if (
            public is None
            and not attribute
            and candidate in PUBLIC_BY_SHORT.get(candidate.rpartition(".")[2], [])
        ):
            public = candidate  # (a constant, known by its name)
        if public is None:
            continue
        retry = node.deepcopy()
        retry["reftarget"] = public + attribute
        found = domain.resolve_xref(
            env,
            node.get("refdoc", ""),
            app.builder,
            node["reftype"],
            public + attribute,
            retry,
            contnode,
        )
        if found is not None:
            return found
    return contnode if exists else None


def candidates(node: pending_xref) -> list[str]:
    """The dotted names a reference may mean, most specific first."""
    target = str(node["reftarget"]).lstrip("~.")
    if target.startswith("udpchat_proto"):
        return [target]
    found = []
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        context = lookup(f"{module}.{cls}")[0]
        found.append(f"{module}.{cls}.{target}")
        defining = getattr(context, "__module__", None)
        if defining:  # (a class documented under its public name: its own module)
            found += [f"{defining}.{cls.split('.')[-1]}.{target}", f"{defining}.{target}"]
    if module:
        found.append(f"{module}.{target}")
    head, _, rest = target.partition(".")
    found += [public + (f".{rest}" if rest else "") for public in PUBLIC_BY_SHORT.get(head, [])]
    # An internal name written bare in an internal module's docstring.
    found += [
        f"{name}.{target}"
        for name in sorted(sys.modules)
        if name.startswith("udpchat_proto.") and hasattr(sys.modules[name], head)
    ]
    return found


@functools.cache
def lookup(dotted: str) -> tuple[Any, str]:
    """The object ``dotted`` names, and the attribute path past the last class or
    module (``Store.commit`` is the class Store and ``.commit``); (None, "") if it
    names nothing. An instance's attribute (``DecodeError.reason``, set by
    ``__init__``) cannot be seen on its class: one past a class counts as named."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        owner, attribute = value, ""
        for part in parts[cut:]:
            if attribute:
                return None, ""
            if not hasattr(value, part) and not instance_attribute(value, part):
                return None, ""
            value = getattr(value, part, None)
            if isinstance(value, type | type(sys)):
                owner = value
            else:
                attribute = f".{part}"
        return (owner, attribute) if attribute else (value, "")
    return None, ""


@functools.cache
def instance_attribute(cls: Any, name: str) -> bool:
    """Whether instances of ``cls`` have the attribute ``name`` that the class itself
    does not: an attrs field (slotted), or one its methods set (``self.name = ...``)."""
    if not isinstance(cls, type):
        return False
    if any(field.name == name for field in getattr(cls, "__attrs_attrs__", ())):
        return True
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"\bself\.{re.escape(name)}\s*[:=]", source) is not None


# --- doc strings: aliases, attributes ---------------------------------------------------


def alias_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """A re-exported alias (``udpchat_proto.ClientEvent``) takes the doc string written
    under its assignment in the module that defines it: Python keeps none on the
    object (autodoc would show its type's: ``tuple``'s, a union's), and autodoc reads
    only the source of the module it documents."""
    if what not in {"data", "attribute"}:
        return
    package_name, _, attribute = name.rpartition(".")
    package = sys.modules.get(package_name)
    exports: dict[str, tuple[str, ...]] = getattr(package, "_EXPORTS", {})
    for module, names in exports.items():
        if attribute in names:
            defining = importlib.util.resolve_name(module, package_name)
            try:
                docs = ModuleAnalyzer.for_module(defining).find_attr_docs()
            except PycodeError:
                return
            if ("", attribute) in docs:
                lines[:] = list(docs["", attribute])
            return


#: An attribute's doc string, kept from napoleon (see ``keep_attribute_docs``).
_KEPT: dict[int, list[str]] = {}


def keep_attribute_docs(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Before napoleon: keep an attribute's doc string as it is. Napoleon reads the
    first line of one as ``type: description``, while here the types are the
    annotations and the doc strings prose ("Seconds a session lives at most: ...")."""
    if what in {"attribute", "property", "data"}:
        _KEPT[id(lines)] = list(lines)


def restore_attribute_docs(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """After napoleon: put back what ``keep_attribute_docs`` kept."""
    kept = _KEPT.pop(id(lines), None)
    if kept is not None:
        lines[:] = kept


def setup(app: Sphinx) -> None:
    # (napoleon listens at the default priority, 500)
    app.connect("autodoc-process-docstring", alias_docstring, priority=400)
    app.connect("autodoc-process-docstring", keep_attribute_docs, priority=450)
    app.connect("autodoc-process-docstring", restore_attribute_docs, priority=550)
    app.connect("missing-reference", resolve_reference)
    # STATES.md draws its state machines in Mermaid, which GitHub renders; here they
    # are shown as the text they are.
    app.add_lexer("mermaid", TextLexer)
