"""Fixtures shared by the simulated-network tests of the chat roles, and the
hypothesis profiles.

``stores`` runs a test once per store (the in-memory one of the core and the SQLite
one of the server, on a fresh file), and ``world`` is a :class:`ChatWorld` on it.

Hypothesis: a property test that names no ``max_examples`` follows the profile,
``default`` (100 examples, hypothesis's own count) in the README's commands, or
``deep`` (1,000) with ``pytest --hypothesis-profile=deep`` for a thorough run (after
changing the codec or the messages, say). Neither has a deadline: the suite runs on
several processes of a shared machine, where an example's time measures the
machine's load, not the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from tests.chat_helpers import ChatWorld, StoreFactory

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile("default")  # (--hypothesis-profile, read later, wins)


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each store the server can run on, one test run each."""
    return StoreFactory(request.param, tmp_path / "chat.sqlite3")


@pytest.fixture
def world(stores: StoreFactory) -> ChatWorld:
    """A server on that store, and no users yet."""
    return ChatWorld(stores)
