"""Fixtures shared by the simulated-network tests of the chat roles.

``stores`` runs a test once per store (the in-memory one of the core and the SQLite
one of the server, on a fresh file), and ``world`` is a :class:`ChatWorld` on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chat_helpers import ChatWorld, StoreFactory


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each store the server can run on, one test run each."""
    return StoreFactory(request.param, tmp_path / "chat.sqlite3")


@pytest.fixture
def world(stores: StoreFactory) -> ChatWorld:
    """A server on that store, and no users yet."""
    return ChatWorld(stores)
