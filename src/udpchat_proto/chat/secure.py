"""The client side of end-to-end encryption, sans-IO: :class:`ClientCrypto`.

Every client runtime (the CLI's scripted commands, ``udpchat_proto.asyncio``'s
``ChatClient``, the chat, the echo bot) drives one of these beside its
:class:`~udpchat_proto.ClientConnection`; it holds the device's
:class:`~udpchat_proto.e2ee.CryptoState` and turns what the application means
(log in, send a text, read what arrived) into the requests version 2 needs:

* **login**: :meth:`ClientCrypto.create` makes the device (its id is the login
  session's), :meth:`ClientCrypto.upload` the keys to upload, :meth:`ClientCrypto.keys_stored`
  takes the answer; a ``one_time_keys_low`` push asks for another upload;
* **send**: :meth:`ClientCrypto.send` gives a :class:`SendFlow`, whose steps are the
  requests to issue one after the other (device set, claim, the encrypted send);
  a ``devices_changed`` refusal re-plans with the set it carries and sends again,
  never reaching the application;
* **receive**: :meth:`ClientCrypto.read` takes a delivered message's key shares and
  decrypts it: a :class:`DecryptedMessage` for the application, or a
  :class:`MessageDropped` to count and log (never shown raw); :meth:`ClientCrypto.read_history`
  the same for a page of history; :meth:`ClientCrypto.device_push` checks a
  ``device_added`` push (a key change is refused) and passes it on as an event.

Saving is the runtime's (it owns the profile and its lock), at the points
``docs/E2EE.md`` names: when a :class:`SendStep` says ``save_first`` (the state
advanced by an encryption: save before the request leaves), after an accepted
send, and after :meth:`ClientCrypto.read` took a key share (``Read.changed``),
before the stream position is acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import attrs

from ..e2ee import (
    ONE_TIME_KEYS_TARGET,
    ClaimedKey,
    CryptoState,
    Decrypted,
    DeviceSet,
    DeviceTrustError,
    Dropped,
    KeyShareReceived,
    KeysUpload,
    Outgoing,
    direct_conversation,
)
from ..e2ee import device_fingerprint as _fingerprint
from ..errors import ErrorCode
from . import messages as m
from . import validation as v
from .client import ClientConnection
from .tokens import session_id, token_hash

__all__ = [
    "MAX_REPLANS",
    "ClientCrypto",
    "DecryptedMessage",
    "MessageDropped",
    "Read",
    "SendFlow",
    "SendStep",
    "fingerprint_of",
]

MAX_REPLANS: Final = 8
"""How many times one send is planned again (``devices_changed``, a device gone
between the set and the claim) before its last refusal is the answer: a set that
changes at every attempt is a server misbehaving, not a race to win."""

Issue = Callable[[ClientConnection], int]


@attrs.frozen(kw_only=True)
class DecryptedMessage(m.ChatMessage):
    """A delivered (or history's) message as its reader decrypted it: ``text`` is
    the plaintext, ``encrypted`` is True, ``ciphertext`` is gone.

    Made by :class:`ClientCrypto` only, never decoded from the wire: a server cannot
    present a text as end-to-end encrypted.
    """

    def __attrs_post_init__(self) -> None:
        if not self.encrypted or self.ciphertext is not None:
            raise v.ValidationError(
                ErrorCode.BAD_REQUEST, "a decrypted message is marked encrypted, without its record"
            )
        v.check_text(self.text)


@attrs.frozen(kw_only=True)
class MessageDropped:
    """A delivered message (or a key share) that could not be read: counted and
    logged, never shown (the reason is one of
    :data:`~udpchat_proto.e2ee.CRYPTO_DROP_REASONS`)."""

    message_id: bytes
    sender: str
    to: str
    reason: str
    detail: str = ""


@attrs.frozen(kw_only=True)
class Read:
    """What :meth:`ClientCrypto.read` made of one delivery."""

    message: m.ChatMessage | None
    """The message to show (a :class:`DecryptedMessage`, or a text message stored
    before the upgrade as it is); None when it was dropped."""
    dropped: tuple[MessageDropped, ...] = ()
    """Its key shares or itself, when they could not be used."""
    changed: bool = False
    """A key share was taken: save the state before the delivery is acknowledged."""


@attrs.frozen(kw_only=True)
class SendStep:
    """One request of a :class:`SendFlow`: issue it, then give its answer to
    :meth:`SendFlow.answer`."""

    issue: Issue
    save_first: bool = False
    """The state just advanced (an encryption): save it before this request leaves."""


class SendFlow:
    """One encrypted send, step by step: the conversation's device set, the
    one-time keys its plan needs, the encrypted message with its key shares; again
    from the plan when the server says the devices changed.

    Loop: ``while (step := flow.step()) is not None: flow.answer(<step's answer>)``;
    then :attr:`result` is the ``MessageAccepted`` or the refusal to show (never
    ``devices_changed`` unless :data:`MAX_REPLANS` ran out).

    Raises (from :meth:`answer`): :class:`~udpchat_proto.e2ee.DeviceTrustError`, a
    device stated with keys other than those pinned (the send stops).
    """

    def __init__(
        self, crypto: ClientCrypto, to: str, text: str, message_id: bytes, at: float
    ) -> None:
        v.check_text(text)
        self._crypto = crypto
        self._to = to
        self._text = text
        self._message_id = message_id
        self._at = at
        self._conversation = to if v.is_room(to) else direct_conversation(crypto.state.user, to)
        self._device_set: DeviceSet | None = crypto.device_sets.get(self._conversation)
        self._claimed: tuple[ClaimedKey, ...] = ()
        self._outgoing: Outgoing | None = None
        self._plans = 0
        self.result: m.Response | None = None
        """The final answer, once :meth:`step` returns None."""
        self._next: SendStep | None = self._plan()

    @property
    def message_id(self) -> bytes:
        """The message's id (the same through every attempt)."""
        return self._message_id

    def step(self) -> SendStep | None:
        """The next request to issue, or None when :attr:`result` is set."""
        return self._next

    def _plan(self) -> SendStep | None:
        """From the device set: claim what the plan needs, or encrypt."""
        if self._device_set is None:
            conversation = self._conversation
            return SendStep(issue=lambda conn: conn.get_devices(conversation=conversation))
        self._plans += 1
        plan = self._crypto.state.plan_send(self._device_set, self._at)
        if plan.claims:
            ids = tuple(ref[1] for ref in plan.claims)
            return SendStep(issue=lambda conn: conn.claim_keys(ids))
        return self._encrypt()

    def _encrypt(self) -> SendStep:
        assert self._device_set is not None
        out = self._crypto.state.encrypt(
            self._device_set, self._text, self._message_id, self._at, self._claimed
        )
        self._outgoing = out
        to, message_id = self._to, self._message_id
        return SendStep(
            issue=lambda conn: conn.send_encrypted(
                to, out.message, out.key_shares, message_id=message_id
            ),
            save_first=True,
        )

    def answer(self, response: m.Response) -> None:
        """The answer to the last step's request."""
        self._next = None
        if isinstance(response, m.ErrorResponse):
            if (
                response.code is ErrorCode.DEVICES_CHANGED
                and response.device_set is not None
                and self._plans < MAX_REPLANS
            ):
                self._replan(response.device_set)
                return
            self.result = response
            return
        if isinstance(response, m.ConversationDevices):
            self._replan(response.device_set)
        elif isinstance(response, m.ClaimedKeys):
            self._claimed = response.keys
            assert self._device_set is not None
            plan = self._crypto.state.plan_send(self._device_set, self._at)
            wanted = {ref[1] for ref in plan.claims}
            if wanted - {key.device.device_id for key in response.keys}:
                # A device ended between the set and the claim: the set is stale.
                self._device_set = None
                self._crypto.device_sets.pop(self._conversation, None)
                if self._plans < MAX_REPLANS:
                    self._next = self._plan()
                    return
                self.result = m.ErrorResponse(
                    request_id=response.request_id,
                    code=ErrorCode.DEVICES_CHANGED,
                    message="the conversation's devices kept changing: try again",
                )
                return
            self._next = self._encrypt()
        elif isinstance(response, m.MessageAccepted):
            assert self._outgoing is not None
            self._crypto.state.accepted(self._outgoing)
            self.result = response
        else:
            self.result = response  # (an answer of another kind: the caller's to judge)

    def _replan(self, device_set: DeviceSet) -> None:
        self._device_set = device_set
        self._crypto.device_sets[self._conversation] = device_set
        self._claimed = ()
        self._next = self._plan()


class ClientCrypto:
    """The end-to-end encryption of one client device; see the module.

    Args:
        state: the device's state (made at login, or loaded from the profile).
    """

    def __init__(self, state: CryptoState) -> None:
        self.state = state
        self.device_sets: dict[str, DeviceSet] = {}
        """The device set last seen per conversation (a send starts from it; a
        stale one costs one ``devices_changed``)."""
        # A state loaded with keys the server never confirmed (its upload lost with
        # the connection) uploads them again; one whose keys were taken, nothing
        # until the server asks (``one_time_keys_low``).
        self._published: int | None = 0 if state.keys_pending else None
        """One-time keys the server holds as far as known; None: nothing to upload."""
        self._fallback_used = False
        self.drops = 0
        """Deliveries (or key shares) that could not be read."""

    @classmethod
    def create(cls, username: str, token: bytes) -> ClientCrypto:
        """A new device for the login session of ``token`` (its id is the session's)."""
        return cls(CryptoState.create(username, session_id(token_hash(token))))

    @staticmethod
    def device_id_of(token: bytes) -> bytes:
        """The device id of the login session of ``token``."""
        return session_id(token_hash(token))

    # --- keys ---------------------------------------------------------------------

    def upload(self) -> Issue | None:
        """The upload to make now (at login; after ``one_time_keys_low``), or None.
        Give its ``KeysStored`` to :meth:`keys_stored`, then save."""
        if self._published is None:
            return None
        keys: KeysUpload | None = self.state.keys_to_upload(
            published_one_time_keys=self._published, fallback_used=self._fallback_used
        )
        if keys is None:
            self._published = None
            return None
        upload = keys
        return lambda conn: conn.upload_keys(upload)

    def keys_stored(self, answer: m.KeysStored) -> None:
        """The server holds the upload: its keys are not sent again."""
        self.state.mark_keys_published()
        self._need(answer.one_time_keys, answer.fallback_used)

    def _need(self, one_time_keys: int, fallback_used: bool) -> None:
        if one_time_keys < ONE_TIME_KEYS_TARGET or fallback_used:
            self._published, self._fallback_used = one_time_keys, fallback_used
        else:
            self._published, self._fallback_used = None, False

    def device_push(self, push: m.DevicePush) -> m.DeviceAdded | MessageDropped | None:
        """Take a ``device_added`` or ``one_time_keys_low`` push: the first is an
        event for the application, its device pinned (save the state then); a key
        that changed, or a record that does not verify, is a
        :class:`MessageDropped` (``key_changed``, ``untrusted_sender``), never
        trusted. After the second, :meth:`upload` has keys to upload."""
        if isinstance(push, m.OneTimeKeysLow):
            self._need(push.one_time_keys, push.fallback_used)
            return None
        known = self.state.known_device(push.user, push.device.device_id)
        try:
            if push.device.user != push.user:
                raise DeviceTrustError(push.user, push.device.device_id, "another user's record")
            self.state.remember(push.device)
        except DeviceTrustError as error:
            self.drops += 1
            return MessageDropped(
                message_id=b"",
                sender=push.user,
                to=self.state.user,
                reason="key_changed" if known is not None else "untrusted_sender",
                detail=str(error),
            )
        return push

    # --- sending ------------------------------------------------------------------

    def send(self, to: str, text: str, message_id: bytes, at: float) -> SendFlow:
        """A send of ``text`` to ``to`` (a friend or ``#room``) as ``message_id``
        at wall-clock time ``at`` (seconds since the epoch).

        Raises:
            ValidationError: the text is empty or too long (``invalid_text``,
                ``too_large``): the sender checks what the server cannot read.
        """
        return SendFlow(self, to, text, message_id, at)

    # --- receiving ----------------------------------------------------------------

    def read(self, push: m.MessageDelivered) -> Read:
        """Take a delivery's key shares, then decrypt its message."""
        drops: list[MessageDropped] = []
        changed = False
        message = push.message
        for share in push.key_shares:
            taken = self.state.receive_key_share(share)
            if isinstance(taken, KeyShareReceived):
                changed = changed or not taken.duplicate
            else:
                drops.append(self._dropped(message, taken))
        shown = self._decrypt(message, drops)
        return Read(message=shown, dropped=tuple(drops), changed=changed)

    def read_history(
        self, messages: Iterable[m.ChatMessage]
    ) -> tuple[list[m.ChatMessage], list[MessageDropped]]:
        """Decrypt a page of history: the messages to show, and those dropped."""
        drops: list[MessageDropped] = []
        shown = [
            read for message in messages if (read := self._decrypt(message, drops)) is not None
        ]
        return shown, drops

    def _decrypt(self, message: m.ChatMessage, drops: list[MessageDropped]) -> m.ChatMessage | None:
        if not message.encrypted or message.ciphertext is None:
            return message  # stored as text before the upgrade: shown "encrypted": false
        result = self.state.decrypt(message.ciphertext, message.id)
        if isinstance(result, Decrypted):
            if result.sender != message.sender:
                drops.append(self._dropped(message, None, "wrong_conversation"))
                return None
            return DecryptedMessage(
                id=message.id,
                sender=message.sender,
                to=message.to,
                text=result.text,
                sent_at=message.sent_at,
                encrypted=True,
            )
        drops.append(self._dropped(message, result))
        return None

    def _dropped(
        self, message: m.ChatMessage, dropped: Dropped | None, reason: str = ""
    ) -> MessageDropped:
        self.drops += 1
        return MessageDropped(
            message_id=message.id,
            sender=message.sender,
            to=message.to,
            reason=dropped.reason if dropped is not None else reason,
            detail=dropped.detail if dropped is not None else "",
        )


def fingerprint_of(push: m.DeviceAdded) -> str:
    """The fingerprint of the device a ``device_added`` push names."""
    return _fingerprint(push.device.ed25519)
