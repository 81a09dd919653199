"""The profile's device: its end-to-end encryption state, taken under its lock.

Every command that talks to the server as the profile's user goes through
:class:`DeviceKeeper`: a delivery is decrypted (its key shares taken and saved
before its acknowledgement leaves), a send is encrypted (saved before the request
leaves), keys are uploaded at login and topped up. The state is loaded from disk
each time the lock is taken, since another process of the profile (``listen``
beside ``send``) may have advanced it meanwhile; inside one process the lock is
taken once and re-entered (a delivery that arrives while a send holds it is read
with the same state).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import attrs

from udpchat_proto import ErrorCode
from udpchat_proto import messages as m
from udpchat_proto.chat import ClientCrypto, MessageDropped
from udpchat_proto.e2ee import CryptoState, DeviceTrustError

from .profiles import CryptoFile, Home, Profile
from .session import Session

__all__ = ["DeviceKeeper", "Held", "ProfileCryptoStore", "UntrustedDeviceError"]


class UntrustedDeviceError(Exception):
    """A device was stated with other keys than those pinned: the send stopped."""


@attrs.define
class Held:
    """The profile's device while this process holds its lock."""

    file: CryptoFile
    pickle_key: bytes
    crypto: ClientCrypto | None
    """None when the profile has no device (logged out, or logged in before the
    upgrade and not resumed since)."""

    def save(self) -> None:
        """Save the state now (before anything that depends on it leaves)."""
        if self.crypto is not None:
            self.file.write(self.crypto.state, self.pickle_key)


@attrs.define
class DeviceKeeper:
    """The device of one profile, for one process."""

    home: Home
    profile_name: str
    on_device_added: Callable[[m.DeviceAdded], None] | None = None
    """Where ``device_added`` events go (``listen`` prints them)."""
    _held: Held | None = None
    _low: m.OneTimeKeysLow | None = None
    drops: int = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[Held]:
        """Take the lock (or re-enter it) and load the profile's device."""
        if self._held is not None:
            yield self._held
            return
        profile = self.home.load(self.profile_name)
        key = self.home.pickle_key(self.profile_name)
        file = self.home.crypto(self.profile_name)
        with file.locked():
            state = file.read(key)
            crypto = None
            if state is not None and _is_device_of(state.user, state.device_id, profile):
                crypto = ClientCrypto(state)
            self._held = Held(file=file, pickle_key=key, crypto=crypto)
            try:
                yield self._held
            finally:
                self._held = None

    # --- keys -------------------------------------------------------------------------

    def start(self, session: Session, username: str, token: bytes) -> None:
        """Make the device of a new login session (saved first), upload its keys."""
        with self.hold() as held:
            held.crypto = ClientCrypto.create(username, token)
            held.save()
            self._upload(session, held.crypto)
            held.save()

    def ensure(self, session: Session, username: str, token: bytes) -> None:
        """After a resume: a profile logged in before the upgrade gets its device now
        (no new step for the user); a top-up asked for is made."""
        with self.hold() as held:
            if held.crypto is None:
                held.crypto = ClientCrypto.create(username, token)
                held.save()
                self._upload(session, held.crypto)
                held.save()
        self.top_up(session)

    @property
    def upload_pending(self) -> bool:
        """The server asked for more one-time keys (or a new fallback key)."""
        return self._low is not None

    def top_up(self, session: Session) -> None:
        """Upload the keys the server asked for (``one_time_keys_low``)."""
        low, self._low = self._low, None
        if low is None:
            return
        with self.hold() as held:
            if held.crypto is None:
                return
            held.crypto.device_push(low)
            self._upload(session, held.crypto)
            held.save()

    @staticmethod
    def _upload(session: Session, crypto: ClientCrypto) -> None:
        while (issue := crypto.upload()) is not None:
            answer = session.request(issue)
            if not isinstance(answer, m.KeysStored):
                return  # (refused: the next command tries again)
            crypto.keys_stored(answer)

    def device_pushes(self, pushes: list[m.DevicePush]) -> None:
        """The session's handler of ``device_added`` and ``one_time_keys_low``."""
        with self.hold() as held:
            for push in pushes:
                if isinstance(push, m.OneTimeKeysLow):
                    self._low = push
                    continue
                if held.crypto is None:
                    continue
                event = held.crypto.device_push(push)
                if isinstance(event, MessageDropped):
                    self._log(event)
                    continue
                held.save()  # (the device is pinned now)
                if event is not None and self.on_device_added is not None:
                    self.on_device_added(event)

    # --- messages ---------------------------------------------------------------------

    def read(self, pushes: list[m.Push]) -> list[m.Push]:
        """Decrypt the deliveries among ``pushes`` (each share taken and saved
        first); a message that cannot be read is logged and left out."""
        if not any(isinstance(push, m.MessageDelivered) for push in pushes):
            return pushes
        out: list[m.Push] = []
        with self.hold() as held:
            changed = False
            for push in pushes:
                if not isinstance(push, m.MessageDelivered):
                    out.append(push)
                    continue
                if held.crypto is None:
                    if not push.message.encrypted:
                        out.append(push)
                    else:
                        self._log(_unreadable(push.message, "no_device_state"))
                    continue
                read = held.crypto.read(push)
                changed = changed or read.changed
                for dropped in read.dropped:
                    self._log(dropped)
                if read.message is not None:
                    out.append(m.MessageDelivered(message=read.message))
            if changed:
                held.save()  # before the acknowledgements leave with the turn
        return out

    def read_history(self, messages: tuple[m.ChatMessage, ...]) -> list[m.ChatMessage]:
        """Decrypt a page of history (a message that cannot be read is left out)."""
        if not any(message.encrypted for message in messages):
            return list(messages)
        with self.hold() as held:
            if held.crypto is None:
                return [message for message in messages if not message.encrypted]
            shown, drops = held.crypto.read_history(messages)
        for dropped in drops:
            self._log(dropped)
        return shown

    def send(self, session: Session, to: str, text: str, message_id: bytes) -> m.Response:
        """Encrypt and send ``text``: the device set, claims, the send, again on
        ``devices_changed`` (never shown). Returns the final answer.

        Raises:
            UntrustedDeviceError: a device's keys changed.
        """
        with self.hold() as held:
            if held.crypto is None:
                return m.ErrorResponse(
                    request_id=0,
                    code=ErrorCode.NOT_LOGGED_IN,
                    message="this profile has no device: log in again",
                )
            crypto = held.crypto
            if crypto.state.keys_pending:
                # The login's upload was lost (its command timed out): the server
                # takes no send from a device whose keys it does not hold.
                self._upload(session, crypto)
                held.save()
            try:
                flow = crypto.send(to, text, message_id, time.time())
                while (step := flow.step()) is not None:
                    if step.save_first:
                        held.save()
                    flow.answer(session.request(step.issue))
            except DeviceTrustError as exc:
                raise UntrustedDeviceError(str(exc)) from None
            if isinstance(flow.result, m.MessageAccepted):
                held.save()
            assert flow.result is not None
            return flow.result

    def _log(self, dropped: MessageDropped) -> None:
        self.drops += 1
        what = f"message {dropped.message_id.hex()}" if dropped.message_id else "a device record"
        print(
            f"warning: {what} from {dropped.sender} could not be read ({dropped.reason}); "
            "it is not shown",
            file=sys.stderr,
            flush=True,
        )


class ProfileCryptoStore:
    """The profile's crypto state for ``udpchat_proto.asyncio``'s client (the chat):
    the same file, key and lock as the scripted commands, so that the chat and a
    script beside it never use a ratchet step twice
    (:class:`~udpchat_proto.asyncio.CryptoStore`)."""

    def __init__(self, home: Home, profile_name: str) -> None:
        self._file = home.crypto(profile_name)
        self._key = home.pickle_key(profile_name)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The state's exclusive lock (shared with the profile's other processes)."""
        return self._file.locked()

    def load(self) -> CryptoState | None:
        """The state as saved last (by any process of the profile)."""
        return self._file.read(self._key)

    def save(self, state: CryptoState) -> None:
        """Save ``state`` (atomic, 0600)."""
        self._file.write(state, self._key)

    def forget(self) -> None:
        """The device ended."""
        self._file.remove()


def _is_device_of(user: str, device_id: bytes, profile: Profile) -> bool:
    return (
        profile.token is not None
        and profile.username == user
        and ClientCrypto.device_id_of(profile.token) == device_id
    )


def _unreadable(message: m.ChatMessage, reason: str) -> MessageDropped:
    return MessageDropped(
        message_id=message.id, sender=message.sender, to=message.to, reason=reason
    )
