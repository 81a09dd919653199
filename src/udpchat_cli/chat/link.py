"""The interactive chat's connection: a thin adapter over ``udpchat_proto.asyncio``.

:class:`~udpchat_proto.asyncio.ChatClient` does the work: it reconnects by itself with
backoff (moving along a cluster's nodes), resumes the login session, sends again with
the same ids the messages the server had not acknowledged, and shows each delivered
message once, acknowledging it only once the chat has saved it. What this module adds
is the chat's shape of it: answers to callbacks (the screen is event-driven, not a
coroutine), a message checked before it waits in the outbox, and how many wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

from udpchat_proto import (
    Address,
    ClientConnection,
    ErrorCode,
    ProtocolError,
    RandomSource,
    SystemRandomSource,
    TransportConfig,
)
from udpchat_proto import messages as m
from udpchat_proto.asyncio import (
    TRANSPORT,
    ChatClient,
    ClientPush,
    CryptoStore,
    LinkState,
    RequestRefusedError,
    start,
)
from udpchat_proto.chat import check_text, valid_target

__all__ = ["TRANSPORT_SETTINGS", "ChatLink", "LinkState"]

TRANSPORT_SETTINGS: Final = TRANSPORT
"""A person watches the status line: a server gone is noticed within 10 s (not the
core's 30), and each attempt to reach it again takes at most 5 s."""

Answer = Callable[[m.Response | None], None]
"""Called with a request's answer, or None if it could not be had (the connection
was lost before it, or the link ended)."""


class ChatLink:
    """A login session's connection that heals itself.

    Args:
        servers: the server's address, or its nodes' (each attempt takes the next).
        server_key: its pinned key (a different key ends the link).
        token: the login session to resume.
        on_pushes: called with the pushes as they come, in order; a delivered message
            is acknowledged only after the call returns (what it saves is saved first).
        on_state: called when the state changes, with a detail for people.
        delivered_ids: ids already received (a re-push is acknowledged, not shown).
        random: where connection keys, message ids and backoff jitter come from.
        config: the transport's settings.
        crypto_store: where the device's end-to-end encryption state is kept (the
            profile's, under its lock).
    """

    def __init__(
        self,
        *,
        servers: list[Address],
        server_key: bytes,
        token: bytes,
        on_pushes: Callable[[list[ClientPush]], None],
        on_state: Callable[[LinkState, str], None],
        delivered_ids: Iterable[bytes] = (),
        random: RandomSource | None = None,
        config: TransportConfig = TRANSPORT_SETTINGS,
        crypto_store: CryptoStore | None = None,
    ) -> None:
        self._crypto_store = crypto_store
        self._servers = servers
        self._server_key = server_key
        self._token = token
        self._on_pushes = on_pushes
        self._on_state = on_state
        self._delivered = delivered_ids
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._config = config
        self._client: ChatClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: set[bytes] = set()
        """Ids of the messages sent and not yet answered."""

    # --- the life of the link ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (from the running event loop)."""
        self._client = start(
            self._servers,
            server_key=self._server_key,
            token=self._token,
            delivered_ids=self._delivered,
            config=self._config,
            random=self._random,
            on_state=self._on_state,
            crypto_store=self._crypto_store,
        )
        self._spawn(self._pump(self._client))

    def close(self) -> None:
        """End the link: a polite close datagram, no more reconnects."""
        if self._client is not None:
            self._client.close()

    @property
    def state(self) -> LinkState:
        """Where the link stands."""
        return self._client.state if self._client is not None else LinkState.CONNECTING

    @property
    def attempts(self) -> int:
        """Connections opened (the first included)."""
        return self._client.attempts if self._client is not None else 0

    @property
    def unsent(self) -> int:
        """Messages sent and not yet accepted (they go again after a reconnect)."""
        return len(self._outbox)

    @property
    def connection(self) -> ClientConnection | None:
        """The current core connection (None between attempts)."""
        return self._client.connection if self._client is not None else None

    # --- requests --------------------------------------------------------------------------

    def request(self, issue: Callable[[ClientConnection], int], answer: Answer) -> bool:
        """Send one request; ``answer`` gets its response (None if it could not be had).
        False (and nothing sent) while not connected."""
        client = self._client
        if client is None or client.state is not LinkState.CONNECTED:
            return False

        async def ask() -> None:
            try:
                response: m.Response | None = await client.request(issue)
            except ProtocolError:  # lost with a connection, the link ended, a bad argument
                response = None
            answer(response)

        self._spawn(ask())
        return True

    def send_message(self, to: str, text: str, answer: Answer) -> bytes:
        """Send a chat message, now or once connected again (with the same id, so
        that the server stores it once); ``answer`` gets ``MessageAccepted`` or a
        refusal.

        Raises:
            ValidationError: an invalid recipient or text (nothing is sent).
        """
        # Checked now, with the rules the server applies: a message that can never be
        # sent must not wait in the outbox for a connection.
        to = valid_target(to)
        check_text(text)
        client = self._client
        if client is None or client.state is LinkState.ENDED:
            return b""
        # The client draws the id, encrypts (again, unseen, when the conversation's
        # devices changed) and sends the same ciphertext again after a reconnect.
        token = self._random.token_bytes(16)
        self._outbox.add(token)

        async def send() -> None:
            response: m.Response
            try:
                response = await client.send(to, text)
            except RequestRefusedError as refusal:
                response = refusal.response
            except (ProtocolError, ValueError) as exc:
                if client.state is LinkState.ENDED:
                    return  # the link ended (its state says so)
                response = m.ErrorResponse(
                    request_id=0, code=ErrorCode.INTERNAL, message=f"not sent: {exc}"
                )
            finally:
                self._outbox.discard(token)
            answer(response)

        self._spawn(send())
        return token

    def history(
        self, peer: str, count: int, answer: Answer, *, before: bytes | None = None
    ) -> bool:
        """Ask for a page of history, decrypted; ``answer`` gets ``History``, a
        refusal, or None. False (and nothing sent) while not connected."""
        client = self._client
        if client is None or client.state is not LinkState.CONNECTED:
            return False

        async def ask() -> None:
            response: m.Response | None
            try:
                response = await client.history(peer, count, before=before)
            except RequestRefusedError as refusal:
                response = refusal.response
            except ProtocolError:
                response = None
            answer(response)

        self._spawn(ask())
        return True

    # --- internals -------------------------------------------------------------------------

    async def _pump(self, client: ChatClient) -> None:
        """Hand the pushes over as they come; asking for the next batch acknowledges
        the last."""
        while True:
            try:
                pushes = await client.next_events()
            except ProtocolError:
                return  # ended: on_state told why
            self._on_pushes(pushes)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
