"""Where :class:`~udpchat_proto.asyncio.ChatClient` keeps its device's end-to-end
encryption state: a :class:`CryptoStore` the application gives (a profile on disk,
under a lock shared with its other processes), or :class:`MemoryCryptoStore`, the
default, for a program whose device lives as long as it does (the echo bot).

The client takes the store's lock, loads, advances and saves, then releases it, at
each use: a delivery read (its key shares saved before it is acknowledged), a send
(saved after the encryption, before the request leaves, and once accepted), an
upload of keys. Within one client the lock is re-entered: a delivery that arrives
while a send holds it is read with the same state. All of it runs on the client's
:class:`CryptoWorker` thread, in order, never on the event loop: a lock that
another process holds delays the deliveries, not the application.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

from ..chat.secure import ClientCrypto
from ..chat.tokens import session_id, token_hash
from ..e2ee import CryptoState

__all__ = ["CryptoStore", "MemoryCryptoStore"]

T = TypeVar("T")


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
    """One client's access to its store: the lock taken once, re-entered (by the
    :class:`CryptoWorker`'s thread only)."""

    def __init__(self, store: CryptoStore) -> None:
        self.store = store
        self._slot: Slot | None = None
        self._depth = 0
        self._release: contextlib.ExitStack | None = None

    def enter(self, username: str | None, token: bytes | None) -> Slot:
        """Take the lock (or re-enter it) and load the device of ``token``'s session
        (``Slot.crypto`` None when the store holds another device's state or none).
        Each call is matched by one :meth:`exit`."""
        if self._slot is None:
            with contextlib.ExitStack() as stack:
                stack.enter_context(self.store.lock())
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
                self._release = stack.pop_all()  # (held until the last exit)
        self._depth += 1
        return self._slot

    def exit(self) -> None:
        """Leave what :meth:`enter` took; the last exit releases the lock."""
        self._depth -= 1
        if self._depth == 0:
            release, self._release, self._slot = self._release, None, None
            if release is not None:
                release.close()

    @contextlib.contextmanager
    def hold(self, username: str | None, token: bytes | None) -> Iterator[Slot]:
        """:meth:`enter`, then :meth:`exit` at the block's end."""
        slot = self.enter(username, token)
        try:
            yield slot
        finally:
            self.exit()


class CryptoWorker:
    """Where a client's device work runs: one thread of its own, the jobs in the
    order they were given, so that the event loop never waits on the store's lock
    (another process of the profile may hold it for a whole send, a third of a
    second) nor on the state's encryption and saving.

    One thread, not a pool: the jobs advance one state, and their order is the
    order of the deliveries and sends. A job whose caller is cancelled still runs
    to its end (a state half advanced and not saved would reuse a ratchet step).
    """

    def __init__(self, store: CryptoStore) -> None:
        self.holder = DeviceHolder(store)
        # (Its idle thread ends when the worker is collected with its client.)
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="udpchat-crypto"
        )

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        """Run ``job(*args)`` on the worker's thread, after the jobs given before;
        its result (or exception)."""
        return await asyncio.shield(asyncio.wrap_future(self._thread.submit(job, *args)))

    def submit(self, job: Callable[..., object], *args: Any) -> None:
        """Run ``job(*args)`` after the jobs given before, not waiting for it."""
        self._thread.submit(job, *args)

    @contextlib.asynccontextmanager
    async def holding(self, username: str | None, token: bytes | None) -> AsyncIterator[Slot]:
        """The store's lock, taken on the worker's thread (or re-entered), for the
        block: use the slot's state only in jobs (:meth:`run`)."""
        entered = self._thread.submit(self.holder.enter, username, token)
        try:
            slot = await asyncio.shield(asyncio.wrap_future(entered))
        except asyncio.CancelledError:
            # The enter still runs: leave after it, or the lock stays taken.
            self._thread.submit(self._exit_after, entered)
            raise
        try:
            yield slot
        finally:
            await self.run(self.holder.exit)

    def _exit_after(self, entered: concurrent.futures.Future[Slot]) -> None:
        if entered.exception() is None:
            self.holder.exit()
