"""Hypothesis strategies for every message of the catalogue (reusable by any test)."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from hypothesis import strategies as st

from udpchat_proto import messages as m
from udpchat_proto.chat.codec import MESSAGE_TYPES
from udpchat_proto.chat.validation import MAX_TEXT_BYTES
from udpchat_proto.e2ee import (
    ClaimedKey,
    DeviceKeys,
    DeviceSet,
    EncryptedMessage,
    KeyShare,
    KeysUpload,
    OneTimeKey,
)
from udpchat_proto.errors import ErrorCode

# The names the server takes (check_username): the same set as
# st.from_regex(r"[a-z0-9_.\-]{1,32}"), drawn as text of that alphabet, which costs
# half the time of the regex (the codec's round trips draw thousands of names).
usernames = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=32)
rooms = usernames.map(lambda name: "#" + name)
targets = st.one_of(usernames, rooms)
# Any character but lone surrogates (not valid UTF-8), capped at the byte limit.
_valid_utf8 = st.characters(exclude_categories=["Cs"])
# A message text may hold any of them but NUL (no database keeps it as text).
_text_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
texts = st.text(alphabet=_text_chars, min_size=1, max_size=MAX_TEXT_BYTES // 4)
passwords = st.text(alphabet=_valid_utf8, min_size=8, max_size=64)
message_ids = st.binary(min_size=16, max_size=16)
tokens = st.binary(min_size=32, max_size=32)
request_ids = st.integers(min_value=0, max_value=2**32 - 1)
utc_datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=st.just(datetime.UTC),
)
bools = st.booleans()


def _small_tuple(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, max_size=5).map(tuple)


_plain_chat_messages = st.builds(
    m.ChatMessage, id=message_ids, sender=usernames, to=targets, text=texts, sent_at=utc_datetimes
)
session_ids = st.binary(min_size=16, max_size=16)
_keys32 = st.binary(min_size=32, max_size=32)
_signatures = st.binary(min_size=64, max_size=64)
# The records check their shapes, not their signatures: any bytes of the right
# sizes make a record the codec must carry.
device_keys = st.builds(
    DeviceKeys,
    user=usernames,
    device_id=session_ids,
    curve25519=_keys32,
    ed25519=_keys32,
    signature=_signatures,
)
one_time_keys = st.builds(
    OneTimeKey,
    key_id=st.text(alphabet="ABCDEFabcdef0123456789+/", min_size=1, max_size=64),
    key=_keys32,
    fallback=bools,
    signature=_signatures,
)
key_shares = st.builds(
    KeyShare,
    sender_keys=device_keys,
    recipient=usernames,
    recipient_device=session_ids,
    message_type=st.sampled_from((0, 1)),
    ciphertext=st.binary(min_size=1, max_size=2048),
)


@st.composite
def _shares_of_one_sender(draw: st.DrawFn, max_size: int = 5) -> tuple[KeyShare, ...]:
    """Key shares as one message carries them: all from one device."""
    sender = draw(device_keys)
    shares = draw(st.lists(key_shares, max_size=max_size))
    return tuple(attrs.evolve(share, sender_keys=sender) for share in shares)


def _conversation_of(sender: str, to: str) -> st.SearchStrategy[str]:
    return st.just(to if to.startswith("#") else ",".join(sorted((sender, to))))


@st.composite
def _sender_and_target(draw: st.DrawFn) -> tuple[str, str]:
    sender = draw(usernames)
    to = draw(targets.filter(lambda name: name != sender))
    return sender, to


def _encrypted(sender: str, to: str) -> st.SearchStrategy[EncryptedMessage]:
    return st.builds(
        EncryptedMessage,
        conversation=_conversation_of(sender, to),
        sender=st.just(sender),
        sender_device=session_ids,
        session_id=_keys32,
        device_set_version=st.integers(min_value=0, max_value=2**63 - 1),
        ciphertext=st.binary(min_size=1, max_size=4608),
    )


@st.composite
def _encrypted_chat_message(draw: st.DrawFn) -> m.ChatMessage:
    sender, to = draw(_sender_and_target())
    return m.ChatMessage(
        id=draw(message_ids),
        sender=sender,
        to=to,
        text="",
        sent_at=draw(utc_datetimes),
        encrypted=True,
        ciphertext=draw(_encrypted(sender, to)),
    )


@st.composite
def _send_message(draw: st.DrawFn) -> m.SendMessage:
    request_id, message_id = draw(request_ids), draw(message_ids)
    if draw(bools):
        return m.SendMessage(
            request_id=request_id, message_id=message_id, to=draw(targets), text=draw(texts)
        )
    sender, to = draw(_sender_and_target())
    return m.SendMessage(
        request_id=request_id,
        message_id=message_id,
        to=to,
        encrypted=draw(_encrypted(sender, to)),
        key_shares=draw(_shares_of_one_sender(max_size=3)),
        staged=draw(st.integers(min_value=0, max_value=m.MAX_STAGED_SHARES)),
    )


chat_messages = _plain_chat_messages | _encrypted_chat_message()
device_sets = st.builds(
    DeviceSet,
    conversation=rooms,
    version=st.integers(min_value=0, max_value=2**63 - 1),
    devices=st.lists(device_keys, max_size=4, unique_by=lambda keys: keys.device_id).map(tuple),
)
presences = st.builds(m.UserPresence, username=usernames, online=bools)
room_infos = st.builds(m.RoomInfo, room=rooms, members=st.integers(min_value=0, max_value=10**6))
session_infos = st.builds(
    m.SessionInfo,
    session_id=session_ids,
    current=bools,
    created_at=utc_datetimes,
    last_used_at=utc_datetimes,
)

# Strategy of each field, by field name; a field name means the same thing in every class.
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "request_id": request_ids,
    "username": usernames,
    "password": passwords,
    "token": tokens,
    "message_id": message_ids,
    "message_ids": _small_tuple(message_ids),
    "to": targets,
    "peer": targets,
    "text": texts,
    "limit": st.integers(min_value=1, max_value=100),
    "room": rooms,
    "code": st.sampled_from(ErrorCode),
    "message": st.text(max_size=200),
    "sent_at": utc_datetimes,
    "incoming": _small_tuple(usernames),
    "outgoing": _small_tuple(usernames),
    "usernames": _small_tuple(usernames),
    "friends": _small_tuple(presences),
    "members": _small_tuple(presences),
    "messages": _small_tuple(chat_messages),
    "rooms": _small_tuple(room_infos),
    "online": bools,
    "from_user": usernames,
    "by_user": usernames,
    "accepted": bools,
    "joined": bools,
    "session_id": session_ids,
    "sessions": _small_tuple(session_infos),
    "ended": st.integers(min_value=0, max_value=10**6),
    "current": passwords,
    "new": passwords,
    "delivered_at": st.none() | utc_datetimes,
    "before": st.none() | message_ids,
    "key_shares": _shares_of_one_sender(),
    "keys": st.builds(
        KeysUpload,
        device_keys=device_keys,
        one_time_keys=_small_tuple(one_time_keys),
        fallback_key=st.none() | one_time_keys,
    ),
    "devices": _small_tuple(session_ids),
    "device_set": device_sets,
    "one_time_keys": st.integers(min_value=0, max_value=100),
    "fallback_used": bools,
    "user": usernames,
    "device": device_keys,
}

# Where a field of a class is narrower than the name's meaning elsewhere.
CLASS_FIELD_STRATEGIES: dict[tuple[type[Any], str], st.SearchStrategy[Any]] = {
    (m.MessageDelivered, "message"): chat_messages,
    (m.MessageStatus, "to"): usernames,
    (m.ErrorResponse, "device_set"): st.none() | device_sets,
    (m.ClaimedKeys, "keys"): _small_tuple(
        st.builds(ClaimedKey, device=device_keys, one_time_key=one_time_keys)
    ),
    (m.UserDevices, "devices"): _small_tuple(
        st.builds(m.UserDevice, keys=device_keys, created_at=utc_datetimes)
    ),
    (m.DeliveryReceipts, "receipts"): _small_tuple(
        st.builds(
            m.DeliveryReceipt, message_id=message_ids, to=usernames, delivered_at=utc_datetimes
        )
    ),
}


#: Classes whose fields depend on each other: built whole.
CLASS_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    m.SendMessage: _send_message(),
    m.GetDevices: st.builds(m.GetDevices, request_id=request_ids, conversation=rooms)
    | st.builds(m.GetDevices, request_id=request_ids, user=usernames),
}


def strategy_for(cls: type[Any]) -> st.SearchStrategy[Any]:
    """A strategy building valid instances of one message class."""
    whole = CLASS_STRATEGIES.get(cls)
    if whole is not None:
        return whole
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for field in attrs.fields(cls):
        special = CLASS_FIELD_STRATEGIES.get((cls, field.name))
        kwargs[field.name] = special if special is not None else FIELD_STRATEGIES[field.name]
    return st.builds(cls, **kwargs)


all_messages: st.SearchStrategy[Any] = st.one_of(
    [strategy_for(cls) for cls in MESSAGE_TYPES.values()]
)
