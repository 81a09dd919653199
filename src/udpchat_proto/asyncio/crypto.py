"""Where :class:`~udpchat_proto.asyncio.ChatClient` keeps its device's end-to-end
encryption state: a :class:`CryptoStore` the application gives (a profile on disk,
under a lock shared with its other processes), or :class:`MemoryCryptoStore`, the
default, for a program whose device lives as long as it does (the echo bot).

The client takes the store's lock, loads, advances and saves, then releases it, at
each use: a delivery read (its key shares saved before it is acknowledged), a send
(saved after the encryption, before the request leaves, and once accepted), an
upload of keys. Within one client the lock is re-entered: a delivery that arrives
while a send holds it is read with the same state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from ..chat.secure import ClientCrypto
from ..chat.tokens import session_id, token_hash
from ..e2ee import CryptoState

__all__ = ["CryptoStore", "MemoryCryptoStore"]


class CryptoStore(Protocol):
    """The persistence of a device's :class:`~udpchat_proto.e2ee.CryptoState`."""

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive across every process that uses the same state (a file lock):
        held around each load, advance and save."""

    def load(self) -> CryptoState | None:
        """The saved state, or None."""

    def save(self, state: CryptoState) -> None:
        """Save ``state`` (atomically: a crash leaves the old or the new one)."""

    def forget(self) -> None:
        """The device ended (logout): remove its state."""


class MemoryCryptoStore:
    """A state kept in memory only: the device ends with the process."""

    def __init__(self) -> None:
        self._state: CryptoState | None = None

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to lock: one process."""
        return contextlib.nullcontext()

    def load(self) -> CryptoState | None:
        """The state saved last."""
        return self._state

    def save(self, state: CryptoState) -> None:
        """Keep ``state``."""
        self._state = state

    def forget(self) -> None:
        """Drop the state."""
        self._state = None


class Slot:
    """The device while the client holds the store's lock."""

    def __init__(self, store: CryptoStore, crypto: ClientCrypto | None) -> None:
        self._store = store
        self.crypto = crypto

    def create(self, username: str, token: bytes) -> ClientCrypto:
        """A new device for the login session of ``token`` (saved at once)."""
        self.crypto = ClientCrypto.create(username, token)
        self.save()
        return self.crypto

    def save(self) -> None:
        """Save the state now."""
        if self.crypto is not None:
            self._store.save(self.crypto.state)


class DeviceHolder:
    """One client's access to its store: the lock taken once, re-entered."""

    def __init__(self, store: CryptoStore) -> None:
        self.store = store
        self._slot: Slot | None = None

    @contextlib.contextmanager
    def hold(self, username: str | None, token: bytes | None) -> Iterator[Slot]:
        """Take the lock (or re-enter it) and load the device of ``token``'s session
        (``Slot.crypto`` None when the store holds another device's state or none)."""
        if self._slot is not None:
            yield self._slot
            return
        with self.store.lock():
            state = self.store.load()
            crypto = None
            # The device id is the session's, drawn from the token: between
            # connections (no username known) it alone says whose state this is.
            if (
                state is not None
                and token is not None
                and username in (None, state.user)
                and state.device_id == session_id(token_hash(token))
            ):
                crypto = ClientCrypto(state)
            self._slot = Slot(self.store, crypto)
            try:
                yield self._slot
            finally:
                self._slot = None
