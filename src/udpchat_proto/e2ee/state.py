"""A device's whole end-to-end state, and what it does: plan, encrypt, receive
key shares, decrypt, verify, save and load.

:class:`CryptoState` is sans-IO: the caller hands it what the server said (a
device set, claimed keys, key shares, messages) and the time (``at``, POSIX
seconds, the injected wall clock: a rotation deadline outlives the process), and
sends what it hands back. It mutates in place; :meth:`CryptoState.to_bytes` is
the whole of it, so a caller that shares the state between processes does
load, advance, save under one lock, and no ratchet index is ever used twice.
It saves before anything leaves the process: after :meth:`~CryptoState.encrypt`
and before the request is sent (a crash in between would encrypt the next
message at the same Megolm index), and after
:meth:`~CryptoState.receive_key_share` and before the stream is acknowledged.

Sending, in full (``docs/E2EE.md``)::

    plan = state.plan_send(device_set, at)            # device_set: from the server
    claimed = server.claim(plan.claims) if plan.claims else ()
    out = state.encrypt(device_set, text, message_id, at, claimed)
    save(state.to_bytes(pickle_key))                  # before the request leaves
    answer = server.send(out.key_shares, out.message) # one request, all or nothing
    if answer is accepted: state.accepted(out)
    if answer is devices_changed: plan again with the set it names, encrypt again
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any, Final

import attrs
import orjson
import vodozemac
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..chat.validation import ValidationError, check_message_id, check_text, check_username
from ..errors import ErrorCode, LocalProtocolError
from .device import device_keys_of, keys_to_upload, verify_device_keys, verify_one_time_key
from .errors import CryptoDropReason, DeviceTrustError, Dropped
from .fingerprints import device_fingerprint, normalize_fingerprint
from .groups import DeviceRef, InboundGroup, InboundKey, OutboundGroup
from .olm import (
    VODOZEMAC_ERRORS,
    b64decode,
    b64encode,
    curve25519_from_bytes,
    unpublished_fallback_key,
)
from .payloads import KeyPayload, MessagePayload, PayloadError, PayloadTextError
from .records import (
    DEVICE_ID_SIZE,
    PICKLE_KEY_SIZE,
    ClaimedKey,
    DeviceKeys,
    DeviceSet,
    EncryptedMessage,
    KeyShare,
    KeysUpload,
    check_conversation,
    direct_members,
)

__all__ = [
    "CryptoState",
    "Decrypted",
    "KeyShareReceived",
    "KnownDevice",
    "Outgoing",
    "SendPlan",
    "StateError",
]

OLM_SESSIONS_PER_DEVICE: Final = 4
"""Olm sessions kept per other device (two when both opened one at once; more
only when an old one is replaced): the newest is used to encrypt."""
SHARES_REMEMBERED: Final = 4096
"""Key shares remembered (by digest) so that one delivered twice is a duplicate,
not an Olm failure: far more than arrive between two saves."""
_STATE_VERSION: Final = 2
_SEALED: Final = bytes([_STATE_VERSION])
_SEAL_INFO: Final = b"udpchat e2ee state v2"
_PAYLOAD_ERRORS: Final[tuple[type[Exception], ...]] = (PayloadError, *VODOZEMAC_ERRORS)
_LOAD_ERRORS: Final[tuple[type[Exception], ...]] = (
    orjson.JSONDecodeError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    *VODOZEMAC_ERRORS,
)


class StateError(LocalProtocolError):
    """A saved state that cannot be loaded: another pickle key, or not a state."""


@attrs.frozen(kw_only=True)
class KnownDevice:
    """A device this one has seen (in a device set or a key share), its keys pinned."""

    keys: DeviceKeys
    verified: bool = False
    """Whether its fingerprint was compared out of band (:meth:`CryptoState.verify`)."""

    @property
    def fingerprint(self) -> str:
        """Its Ed25519 key in groups of digits."""
        return device_fingerprint(self.keys.ed25519)


@attrs.frozen(kw_only=True)
class SendPlan:
    """What sending to a conversation needs first."""

    conversation: str
    rotate: bool
    """A new Megolm session is due (none yet, a device left, or it expired)."""
    share_with: tuple[DeviceRef, ...]
    """The devices that need the session's key (all of the set's, but this one,
    after a rotation)."""
    claims: tuple[DeviceRef, ...]
    """Those of them with no Olm session yet: claim a one-time key for each."""


@attrs.frozen(kw_only=True)
class Outgoing:
    """An encrypted message and the key shares that must precede it, for one
    request: the server accepts both or neither."""

    message: EncryptedMessage
    key_shares: tuple[KeyShare, ...]
    shared_with: frozenset[DeviceRef]


@attrs.frozen(kw_only=True)
class KeyShareReceived:
    """A key share this device took: it can now read the sender's messages of the
    conversation from ``first_index`` on."""

    sender: str
    sender_device: bytes
    conversation: str
    session_id: bytes
    first_index: int
    duplicate: bool = False
    """The same share was taken before (a redelivery: nothing changed)."""


@attrs.frozen(kw_only=True)
class Decrypted:
    """A message, decrypted and checked."""

    conversation: str
    sender: str
    sender_device: bytes
    message_id: bytes
    text: str
    index: int
    """Its Megolm index in the sender's session."""


class CryptoState:
    """The end-to-end state of one device (a login session); see the module.

    Make one with :meth:`create` at login, or :meth:`from_bytes` from the profile.
    """

    def __init__(self, account: vodozemac.Account, user: str, device_id: bytes) -> None:
        self._account = account
        self.user = user
        self.device_id = device_id
        self._has_fallback = False
        self._olm: dict[DeviceRef, list[vodozemac.Session]] = {}
        self._outbound: dict[str, OutboundGroup] = {}
        self._inbound: dict[InboundKey, InboundGroup] = {}
        self._known: dict[DeviceRef, KnownDevice] = {}
        self._shares: dict[bytes, KeyShareReceived] = {}
        self.device_keys = device_keys_of(account, user, device_id)
        """This device's signed identity record."""

    # --- the device -------------------------------------------------------------

    @classmethod
    def create(cls, user: str, device_id: bytes) -> CryptoState:
        """A new device: a new Olm account (vodozemac draws its keys)."""
        check_username(user)
        if type(device_id) is not bytes or len(device_id) != DEVICE_ID_SIZE:
            raise ValidationError(ErrorCode.BAD_REQUEST, "a device id is 16 bytes")
        return cls(vodozemac.Account(), user, device_id)

    @property
    def fingerprint(self) -> str:
        """This device's fingerprint (what ``udpchat-cli devices`` shows)."""
        return device_fingerprint(self.device_keys.ed25519)

    def keys_to_upload(
        self, *, published_one_time_keys: int, fallback_used: bool = False
    ) -> KeysUpload | None:
        """What to upload: at login (``published_one_time_keys=0``), and whenever
        the server says it holds fewer than
        :data:`~udpchat_proto.e2ee.device.ONE_TIME_KEYS_TARGET` or that a claim took
        the fallback key. Call :meth:`mark_keys_published` once it has them."""
        return keys_to_upload(
            self._account,
            self.user,
            self.device_id,
            published_one_time_keys=published_one_time_keys,
            new_fallback=fallback_used or not self._has_fallback,
        )

    def mark_keys_published(self) -> None:
        """The server holds the last upload: its keys are not sent again."""
        self._account.mark_keys_as_published()
        self._has_fallback = True

    @property
    def keys_pending(self) -> bool:
        """Keys made for an upload the server has not confirmed (the login's, lost
        with its connection, say): the next :meth:`keys_to_upload` sends them."""
        return (
            not self._has_fallback
            or bool(self._account.one_time_keys)
            or unpublished_fallback_key(self._account) is not None
        )

    # --- other devices ----------------------------------------------------------

    def known_device(self, user: str, device_id: bytes) -> KnownDevice | None:
        """A device seen before, with its pinned keys and verified flag."""
        return self._known.get((user, device_id))

    def known_devices(self, user: str) -> list[KnownDevice]:
        """The devices of ``user`` seen before (ended ones included)."""
        return [known for (owner, _), known in self._known.items() if owner == user]

    def verify(self, user: str, device_id: bytes, fingerprint_text: str) -> bool:
        """Mark a device verified when ``fingerprint_text`` is its fingerprint (as
        compared out of band); False, and nothing changed, when it is not.
        ``LocalProtocolError`` for a device never seen."""
        known = self._known.get((user, device_id))
        if known is None:
            raise LocalProtocolError(f"{user} has no device {device_id.hex()} known here")
        if normalize_fingerprint(fingerprint_text) != known.fingerprint:
            return False
        self._known[user, device_id] = attrs.evolve(known, verified=True)
        return True

    def remember(self, keys: DeviceKeys) -> KnownDevice:
        """Pin a device's record as a user's device list states it (``devices``,
        ``verify``): checked against its pin, or its signature when it has none
        (:class:`DeviceTrustError` if not). Returns what is known of it."""
        if (keys.user, keys.device_id) == (self.user, self.device_id):
            if keys != self.device_keys:
                raise DeviceTrustError(keys.user, keys.device_id, "not this device's keys")
            return KnownDevice(keys=keys)  # (nothing to compare: it is this one)
        self._pin(keys)
        return self._known[keys.user, keys.device_id]

    def _pin(self, keys: DeviceKeys) -> None:
        """Check a device's record and remember its keys (DeviceTrustError if not)."""
        if self._check_keys(keys):
            self._known[keys.user, keys.device_id] = KnownDevice(keys=keys)

    def _check_keys(self, keys: DeviceKeys) -> bool:
        """Check a device's record against its pin, or its signature when it has
        none (DeviceTrustError if not); whether it is new."""
        ref = (keys.user, keys.device_id)
        known = self._known.get(ref)
        if known is not None:
            if known.keys != keys:
                raise DeviceTrustError(keys.user, keys.device_id, "its keys changed")
            return False
        if ref == (self.user, self.device_id) and keys != self.device_keys:
            raise DeviceTrustError(keys.user, keys.device_id, "not this device's keys")
        if not verify_device_keys(keys):
            raise DeviceTrustError(keys.user, keys.device_id, "its signature does not verify")
        return True

    # --- sending ----------------------------------------------------------------

    def plan_send(self, device_set: DeviceSet, at: float) -> SendPlan:
        """What sending to ``device_set.conversation`` needs first: a rotation, key
        shares, one-time keys to claim. Pins the set's devices (DeviceTrustError
        for one that does not verify or whose keys changed)."""
        _check_time(at)
        members = direct_members(device_set.conversation)
        if members is not None and self.user not in members:
            raise LocalProtocolError(f"{self.user} is not in {device_set.conversation}")
        for keys in device_set.devices:
            if members is not None and keys.user not in members:
                raise DeviceTrustError(
                    keys.user, keys.device_id, f"not in the conversation {device_set.conversation}"
                )
        for keys in device_set.devices:
            if (keys.user, keys.device_id) != (self.user, self.device_id):
                self._pin(keys)
        targets = [
            (keys.user, keys.device_id)
            for keys in device_set.devices
            if (keys.user, keys.device_id) != (self.user, self.device_id)
        ]
        group = self._outbound.get(device_set.conversation)
        rotate = group is None or group.expired(at) or not group.sent_to <= set(targets)
        share_with = tuple(
            ref for ref in targets if rotate or group is None or ref not in group.delivered
        )
        claims = tuple(ref for ref in share_with if not self._olm.get(ref))
        return SendPlan(
            conversation=device_set.conversation,
            rotate=rotate,
            share_with=share_with,
            claims=claims,
        )

    def encrypt(
        self,
        device_set: DeviceSet,
        text: str,
        message_id: bytes,
        at: float,
        claimed: Iterable[ClaimedKey] = (),
    ) -> Outgoing:
        """Encrypt ``text`` for the conversation's devices as ``device_set`` states
        them, with the key shares it needs (:meth:`plan_send`'s, its claims answered
        by ``claimed``). The text is checked first (``ValidationError``, as a server
        answered before: ``invalid_text``, ``too_large``); a claim missing, or a
        claimed key not signed by its device, is ``LocalProtocolError``.

        Resending after a lost answer resends this :class:`Outgoing` as it is (the
        server's de-duplication by message id); after ``devices_changed``, call
        again with the new set."""
        check_text(text)
        check_message_id(message_id)
        plan = self.plan_send(device_set, at)
        answers = {(c.device.user, c.device.device_id): c for c in claimed}
        for ref in plan.claims:
            self._open_olm(ref, answers.get(ref))
        conversation = device_set.conversation
        group = self._outbound.get(conversation)
        if plan.rotate or group is None:
            group = OutboundGroup(
                conversation=conversation, session=vodozemac.GroupSession(), created_at=at
            )
            self._outbound[conversation] = group
            # This device reads its own messages later (history) like any other.
            self._inbound[conversation, self.user, self.device_id, group.session_id] = InboundGroup(
                conversation=conversation,
                sender=self.user,
                sender_device=self.device_id,
                session=vodozemac.InboundGroupSession(group.session.session_key),
            )
        first_index = group.session.message_index
        session_key = group.session.session_key.to_base64()
        shares = tuple(
            self._share(ref, conversation, group.session_id, first_index, session_key)
            for ref in plan.share_with
        )
        group.sent_to.update(plan.share_with)
        payload = MessagePayload(message_id=message_id, conversation=conversation, text=text)
        ciphertext = group.session.encrypt(payload.to_bytes()).to_bytes()
        message = EncryptedMessage(
            conversation=conversation,
            sender=self.user,
            sender_device=self.device_id,
            session_id=group.session_id,
            device_set_version=device_set.version,
            ciphertext=ciphertext,
        )
        return Outgoing(message=message, key_shares=shares, shared_with=frozenset(plan.share_with))

    def accepted(self, outgoing: Outgoing) -> None:
        """The server accepted ``outgoing``: its shares were delivered, and are not
        made again for this session (a later rotation shares afresh)."""
        group = self._outbound.get(outgoing.message.conversation)
        if group is not None and group.session_id == outgoing.message.session_id:
            group.delivered.update(outgoing.shared_with)

    def _open_olm(self, ref: DeviceRef, claim: ClaimedKey | None) -> None:
        if claim is None:
            raise LocalProtocolError(f"no one-time key claimed for {ref[0]}'s {ref[1].hex()}")
        device = self._known[ref].keys
        if claim.device != device:
            raise DeviceTrustError(ref[0], ref[1], "the claimed key is for other keys")
        if not verify_one_time_key(device, claim.one_time_key):
            raise DeviceTrustError(ref[0], ref[1], "its one-time key is not signed by it")
        session = self._account.create_outbound_session(
            curve25519_from_bytes(device.curve25519),
            curve25519_from_bytes(claim.one_time_key.key),
        )
        self._olm.setdefault(ref, []).insert(0, session)
        del self._olm[ref][OLM_SESSIONS_PER_DEVICE:]

    def _share(
        self, ref: DeviceRef, conversation: str, session_id: bytes, index: int, key: str
    ) -> KeyShare:
        device = self._known[ref].keys
        payload = KeyPayload(
            sender=self.user,
            sender_device=self.device_id,
            sender_ed25519=self.device_keys.ed25519,
            recipient=device.user,
            recipient_device=device.device_id,
            recipient_ed25519=device.ed25519,
            conversation=conversation,
            session_id=session_id,
            first_index=index,
            session_key=key,
        )
        message_type, ciphertext = self._olm[ref][0].encrypt(payload.to_bytes()).to_parts()
        return KeyShare(
            sender_keys=self.device_keys,
            recipient=device.user,
            recipient_device=device.device_id,
            message_type=message_type,
            ciphertext=ciphertext,
        )

    # --- receiving --------------------------------------------------------------

    def receive_key_share(self, share: KeyShare) -> KeyShareReceived | Dropped:
        """Take a key share from this device's stream: the sender's session key,
        or :class:`Dropped` (never an exception) when it cannot be used."""
        sender = share.sender_keys
        ref = (sender.user, sender.device_id)

        def drop(reason: CryptoDropReason, detail: str = "") -> Dropped:
            return Dropped(
                reason=reason, detail=detail, sender=sender.user, sender_device=sender.device_id
            )

        if (share.recipient, share.recipient_device) != (self.user, self.device_id):
            return drop("not_for_this_device")
        digest = hashlib.sha256(
            b"%b%d:%b" % (sender.device_id, share.message_type, share.ciphertext)
        ).digest()
        seen = self._shares.get(digest)
        if seen is not None:
            return attrs.evolve(seen, duplicate=True)
        try:
            self._check_keys(sender)
        except DeviceTrustError as error:
            changed = ref in self._known
            return drop("key_changed" if changed else "untrusted_sender", str(error))
        plaintext = self._olm_decrypt(ref, sender, share)
        if plaintext is None:
            return drop("olm_failed")
        # Pinned only now that an Olm session with its Curve25519 key opened it: a
        # record is self-signed, so anyone can make one naming any device, and a
        # pin taken from a share nobody could open would refuse the real one later.
        self._pin(sender)
        try:
            payload = KeyPayload.parse(plaintext)
            inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(payload.session_key))
            session_id = b64decode(inbound.session_id)
        except _PAYLOAD_ERRORS as error:
            return drop("malformed", str(error))
        if (payload.sender, payload.sender_device, payload.sender_ed25519) != (
            sender.user,
            sender.device_id,
            sender.ed25519,
        ):
            return drop("untrusted_sender", "the payload names another sender")
        if (payload.recipient, payload.recipient_device, payload.recipient_ed25519) != (
            self.user,
            self.device_id,
            self.device_keys.ed25519,
        ):
            return drop("not_for_this_device", "the payload names another recipient")
        if session_id != payload.session_id or inbound.first_known_index != payload.first_index:
            return drop("malformed", "the session key is not the one named")
        if not _may_speak_in(payload.conversation, sender.user, self.user):
            return drop("wrong_conversation", "the sender or this device is not in it")
        key = (payload.conversation, sender.user, sender.device_id, session_id)
        existing = self._inbound.get(key)
        if existing is None or existing.session.first_known_index > inbound.first_known_index:
            # (an earlier index reads more: keep the one that reads most)
            self._inbound[key] = InboundGroup(
                conversation=payload.conversation,
                sender=sender.user,
                sender_device=sender.device_id,
                session=inbound,
            )
        received = KeyShareReceived(
            sender=sender.user,
            sender_device=sender.device_id,
            conversation=payload.conversation,
            session_id=session_id,
            first_index=payload.first_index,
        )
        self._shares[digest] = received
        while len(self._shares) > SHARES_REMEMBERED:
            del self._shares[next(iter(self._shares))]
        return received

    def _olm_decrypt(self, ref: DeviceRef, sender: DeviceKeys, share: KeyShare) -> bytes | None:
        sessions = self._olm.setdefault(ref, [])
        try:
            message = vodozemac.AnyOlmMessage.from_parts(share.message_type, share.ciphertext)
            pre_key = message.to_pre_key() if share.message_type == 0 else None
        except VODOZEMAC_ERRORS:
            return None
        for session in sessions:
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                plaintext = session.decrypt(message)
            except VODOZEMAC_ERRORS:
                if pre_key is not None:
                    # A pre-key message of a session this device holds, that it
                    # cannot open: a replay (or tampering). Opening it again (a
                    # fallback key still can) would make a second copy of the
                    # session, newest, so the next share would go out on a ratchet
                    # the peer left long ago: the Olm wedge. Drop it.
                    return None
                continue
            return plaintext
        if pre_key is None:
            return None
        try:
            session, plaintext = self._account.create_inbound_session(
                curve25519_from_bytes(sender.curve25519), pre_key
            )
        except VODOZEMAC_ERRORS:
            return None
        # The session the peer opened is the one to answer on: it confirms it.
        sessions.insert(0, session)
        del sessions[OLM_SESSIONS_PER_DEVICE:]
        return plaintext

    def decrypt(self, message: EncryptedMessage, message_id: bytes) -> Decrypted | Dropped:
        """Decrypt a message delivered (or returned by history) as ``message_id``:
        the text and its sender's device, or :class:`Dropped`. Idempotent: the same
        message again decrypts again."""

        def drop(reason: CryptoDropReason, detail: str = "") -> Dropped:
            return Dropped(
                reason=reason,
                detail=detail,
                sender=message.sender,
                sender_device=message.sender_device,
            )

        key = (message.conversation, message.sender, message.sender_device, message.session_id)
        group = self._inbound.get(key)
        if group is None:
            return drop("unknown_session")
        if not _may_speak_in(message.conversation, message.sender, self.user):
            # (a session taken before shares were checked for it: never read)
            return drop("wrong_conversation", "the sender or this device is not in it")
        if group.sender != message.sender:
            return drop("wrong_conversation", "another sender's session")
        try:
            megolm = vodozemac.MegolmMessage.from_bytes(message.ciphertext)
        except VODOZEMAC_ERRORS as error:
            return drop("malformed", str(error))
        index = megolm.message_index()
        if index < group.session.first_known_index:
            return drop("unknown_session", f"index {index} is before the share")
        try:
            plaintext = group.session.decrypt(megolm).plaintext
        except VODOZEMAC_ERRORS as error:
            return drop("bad_ciphertext", str(error))
        try:
            payload = MessagePayload.parse(plaintext)
        except PayloadTextError as error:
            return drop("invalid_text", str(error))
        except PayloadError as error:
            return drop("malformed", str(error))
        if payload.conversation != message.conversation:
            return drop("wrong_conversation", "it names another conversation")
        if payload.message_id != message_id:
            return drop("replayed", "it was sent as another message")
        try:
            check_text(payload.text)
        except ValidationError as error:
            return drop("invalid_text", str(error))
        return Decrypted(
            conversation=message.conversation,
            sender=message.sender,
            sender_device=message.sender_device,
            message_id=message_id,
            text=payload.text,
            index=index,
        )

    # --- saving -----------------------------------------------------------------

    def to_bytes(self, pickle_key: bytes) -> bytes:
        """The whole state, for the profile, sealed with ``pickle_key``: one byte
        of version (2), then AES-SIV (RFC 5297) of a JSON document under a key
        derived from ``pickle_key`` (HKDF-SHA256, info ``udpchat e2ee state v2``),
        the version byte as associated data. The document holds the account and
        sessions as vodozemac pickles and the rest (pinned device records,
        verified flags, conversations, the rotation's bookkeeping) beside them:
        sealed whole, none of it can be read or edited without the key (an edited
        pin or ``verified`` flag, or a rotation's ``sent_to`` emptied, would
        otherwise load as if this device had written it)."""
        return _SEALED + _sealer(pickle_key).encrypt(self._to_json(pickle_key), [_SEALED])

    def _to_json(self, pickle_key: bytes) -> bytes:
        """The state's JSON document (what :meth:`to_bytes` seals)."""
        _check_pickle_key(pickle_key)

        def ref(r: DeviceRef) -> list[str]:
            return [r[0], r[1].hex()]

        state = {
            "v": _STATE_VERSION,
            "user": self.user,
            "device_id": self.device_id.hex(),
            "account": self._account.pickle(pickle_key),
            "has_fallback": self._has_fallback,
            "olm": [
                {"device": ref(r), "sessions": [s.pickle(pickle_key) for s in sessions]}
                for r, sessions in self._olm.items()
                if sessions
            ],
            "outbound": [
                {
                    "conversation": g.conversation,
                    "session": g.session.pickle(pickle_key),
                    "created_at": g.created_at,
                    "sent_to": sorted(ref(r) for r in g.sent_to),
                    "delivered": sorted(ref(r) for r in g.delivered),
                }
                for g in self._outbound.values()
            ],
            "inbound": [
                {
                    "conversation": g.conversation,
                    "sender": g.sender,
                    "sender_device": g.sender_device.hex(),
                    "session": g.session.pickle(pickle_key),
                }
                for g in self._inbound.values()
            ],
            "known": [{**_keys_json(k.keys), "verified": k.verified} for k in self._known.values()],
            "shares": [
                {
                    "digest": d.hex(),
                    "sender": s.sender,
                    "sender_device": s.sender_device.hex(),
                    "conversation": s.conversation,
                    "session_id": s.session_id.hex(),
                    "first_index": s.first_index,
                }
                for d, s in self._shares.items()
            ],
        }
        return orjson.dumps(state)

    @classmethod
    def from_bytes(cls, data: bytes, pickle_key: bytes) -> CryptoState:
        """A state :meth:`to_bytes` wrote; :class:`StateError` if ``pickle_key`` is
        not the one it was written with, or ``data`` is not a state."""
        sealer = _sealer(pickle_key)
        if type(data) is not bytes or data[:1] != _SEALED:
            raise StateError("not a sealed state of version 2")
        try:
            document = sealer.decrypt(data[1:], [_SEALED])
        except InvalidTag as error:
            raise StateError("not a state this key opens (or it was edited)") from error
        return cls._from_json(document, pickle_key)

    @classmethod
    def _from_json(cls, document: bytes, pickle_key: bytes) -> CryptoState:
        """A state from its JSON document (what :meth:`from_bytes` opens)."""
        _check_pickle_key(pickle_key)
        try:
            return cls._load(orjson.loads(document), pickle_key)
        except _LOAD_ERRORS as error:
            raise StateError(f"not a state: {error}") from error

    @classmethod
    def _load(cls, value: dict[str, object], key: bytes) -> CryptoState:
        if value["v"] != _STATE_VERSION:
            raise StateError(f"a state of version {value['v']!r}")
        doc = _Json(value)
        state = cls(
            vodozemac.Account.from_pickle(doc.text("account"), key),
            doc.text("user"),
            bytes.fromhex(doc.text("device_id")),
        )
        state._has_fallback = doc.value["has_fallback"] is True
        for item in doc.items("olm"):
            state._olm[_ref(item["device"])] = [
                vodozemac.Session.from_pickle(p, key) for p in item["sessions"]
            ]
        for item in doc.items("outbound"):
            group = OutboundGroup(
                conversation=item["conversation"],
                session=vodozemac.GroupSession.from_pickle(item["session"], key),
                created_at=float(item["created_at"]),
                sent_to={_ref(r) for r in item["sent_to"]},
                delivered={_ref(r) for r in item["delivered"]},
            )
            state._outbound[group.conversation] = group
        for item in doc.items("inbound"):
            inbound = InboundGroup(
                conversation=item["conversation"],
                sender=item["sender"],
                sender_device=bytes.fromhex(item["sender_device"]),
                session=vodozemac.InboundGroupSession.from_pickle(item["session"], key),
            )
            session_id = b64decode(inbound.session.session_id)
            check_username(inbound.sender)
            check_conversation(inbound.conversation)
            ref = (inbound.conversation, inbound.sender, inbound.sender_device, session_id)
            state._inbound[ref] = inbound
        for item in doc.items("known"):
            keys = DeviceKeys(
                user=item["user"],
                device_id=bytes.fromhex(item["device_id"]),
                curve25519=b64decode(item["curve25519"]),
                ed25519=b64decode(item["ed25519"]),
                signature=b64decode(item["signature"]),
            )
            state._known[keys.user, keys.device_id] = KnownDevice(
                keys=keys, verified=item["verified"] is True
            )
        for item in doc.items("shares"):
            state._shares[bytes.fromhex(item["digest"])] = KeyShareReceived(
                sender=item["sender"],
                sender_device=bytes.fromhex(item["sender_device"]),
                conversation=item["conversation"],
                session_id=bytes.fromhex(item["session_id"]),
                first_index=int(item["first_index"]),
            )
        return state


class _Json:
    """The top of a saved state, read with its types checked."""

    def __init__(self, value: dict[str, object]) -> None:
        self.value = value

    def text(self, name: str) -> str:
        item = self.value[name]
        if not isinstance(item, str):
            raise TypeError(f"{name} is not a string")
        return item

    def items(self, name: str) -> list[dict[str, Any]]:
        item = self.value[name]
        if not isinstance(item, list) or not all(isinstance(i, dict) for i in item):
            raise TypeError(f"{name} is not a list of objects")
        return item


def _ref(value: list[str]) -> DeviceRef:
    return value[0], bytes.fromhex(value[1])


def _keys_json(keys: DeviceKeys) -> dict[str, str]:
    return {
        "user": keys.user,
        "device_id": keys.device_id.hex(),
        "curve25519": b64encode(keys.curve25519),
        "ed25519": b64encode(keys.ed25519),
        "signature": b64encode(keys.signature),
    }


def _check_time(at: float) -> None:
    """``at`` is saved and compared: NaN (saved as null) or an infinity would make
    a state that never loads again, or a session that never ages."""
    if not isinstance(at, int | float) or not math.isfinite(at):
        raise LocalProtocolError(f"a time must be a finite number of seconds, not {at!r}")


def _may_speak_in(conversation: str, sender: str, recipient: str) -> bool:
    """Whether ``sender``'s key shares and messages may be taken in ``conversation``
    by ``recipient``: always in a room (its members are the server's word), and in
    a direct conversation only between its two users."""
    members = direct_members(conversation)
    return members is None or (sender in members and recipient in members)


def _sealer(pickle_key: bytes) -> AESSIV:
    """The state's AEAD. AES-SIV because it needs no nonce: the core draws no
    randomness of its own (vodozemac is the one exception), and a deterministic
    AEAD shows only that two saves were of the same state."""
    _check_pickle_key(pickle_key)
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_SEAL_INFO).derive(pickle_key)
    return AESSIV(key)


def _check_pickle_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) != PICKLE_KEY_SIZE:
        raise LocalProtocolError(f"a pickle key is {PICKLE_KEY_SIZE} bytes")
