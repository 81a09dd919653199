"""Write the seed corpora of the fuzz harnesses from a real, captured session.

A real :class:`~udpchat_proto.chat.server.ChatServer` (on a MemoryStore) and two real
:class:`~udpchat_proto.chat.client.ClientConnection` s, alice and bob, talk in memory
(``_session.Loop``: lossless, no sockets, no sleeps, fixed seeds and clock):
handshakes, register, login, invitation, messages both ways with their delivery
acknowledgements, a room, history, logout and close. Every datagram is captured;
``CipherState.seal`` is wrapped for the duration to capture the plaintext of each
DATA packet, and the stream messages (application payloads) are reassembled from
those plaintexts' STREAM frames.

Each ``fuzz/corpus/<target>/`` directory is emptied and refilled with a few
distinct captured inputs (file names are the SHA-1 of the content, as libFuzzer
names them). The server's and the codec's corpora also get one valid-looking
request of every type (:func:`every_request`), and the server's a few sequences of
them (:data:`SEQUENCES`) that take the fuzzed session where a handler does its
real work (a room joined, a friend made, a password changed). Replayed through the
server harness, the captured session alone ran 29-59% of each handler module's
lines (51% in all); with these seeds, 73-92% (82%). The operator's side has seeds
of its own, written here: the control socket's requests as ``ctl`` sends them, and
configuration files. The seeds and the clock are fixed, so the output is the same
on every run::

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
from _session import (
    ALICE_ADDRESS,
    BOB_ADDRESS,
    PASSWORD,
    SERVER_ADDRESS,
    Address,
    Loop,
    RawClient,
    RawServerPeer,
    established_server,
    new_client,
)

from udpchat_proto import RateLimit
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.codec import MESSAGE_TYPES, decode, encode, message_fields
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.e2ee import DeviceKeys, EncryptedMessage, KeyShare, KeysUpload, OneTimeKey
from udpchat_proto.errors import ErrorCode
from udpchat_proto.transport.handshake import CipherState
from udpchat_proto.transport.packets import (
    DataPacket,
    HandshakeInitiation,
    HandshakeResponse,
    StreamFrame,
    decode_frames,
    decode_packet,
    decode_varint,
    encode_frames,
    encode_varint,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
#: The libFuzzer dictionary of the harnesses that parse JSON (codec, client_established, server).
DICTIONARY = Path(__file__).resolve().parent / "json.dict"
#: The dictionary of the configuration file's harness (config).
TOML_DICTIONARY = Path(__file__).resolve().parent / "toml.dict"
#: At most this many seeds per target (the codec keeps one per message type).
PER_TARGET = 12


#: A message id of alice's, and the password she changes to (the fuzzed session:
#: alice logged in, bob registered, both with ``PASSWORD``).
_MESSAGE_ID = bytes(range(16))
_NEW_PASSWORD = "a new password"


_DEVICE_KEYS: Final = DeviceKeys(
    user="alice",
    device_id=bytes(range(16)),
    curve25519=bytes(range(32)),
    ed25519=bytes(range(32, 64)),
    signature=bytes(64),
)
_ONE_TIME_KEY: Final = OneTimeKey(
    key_id="AAAAAA", key=bytes(range(64, 96)), fallback=False, signature=bytes(64)
)


def every_request() -> list[m.Request]:
    """One valid-looking request of every type, as alice would send it in the fuzzed
    session. Each reaches its handler; many are refused there (bob is no friend yet).

    Raises:
        AssertionError: a request type of the catalogue has no example here.
    """
    requests: list[m.Request] = [
        m.Register(request_id=11, username="carol", password=PASSWORD),
        m.Login(request_id=12, username="alice", password=PASSWORD),
        m.Resume(request_id=13, token=bytes(range(32))),
        m.Logout(request_id=14),
        m.ListSessions(request_id=15),
        m.RevokeSession(request_id=16, session_id=bytes(16)),
        m.LogoutAll(request_id=17),
        m.ChangePassword(request_id=18, current=PASSWORD, new=_NEW_PASSWORD),
        m.DeleteAccount(request_id=19, password=PASSWORD),
        m.SendMessage(request_id=20, message_id=_MESSAGE_ID, to="bob", text="hello bob"),
        m.GetMessageStatus(request_id=21, message_id=_MESSAGE_ID),
        m.AcknowledgeDelivery(message_ids=(_MESSAGE_ID,)),
        m.Invite(request_id=22, username="bob"),
        m.AcceptInvitation(request_id=23, username="bob"),
        m.DeclineInvitation(request_id=24, username="bob"),
        m.CancelInvitation(request_id=25, username="bob"),
        m.Unfriend(request_id=26, username="bob"),
        m.Block(request_id=27, username="bob"),
        m.Unblock(request_id=28, username="bob"),
        m.ListBlocked(request_id=29),
        m.ListInvitations(request_id=30),
        m.ListFriends(request_id=31),
        m.ListOnline(request_id=32),
        m.GetHistory(request_id=33, peer="bob", limit=10, before=_MESSAGE_ID),
        m.JoinRoom(request_id=34, room="#tea"),
        m.LeaveRoom(request_id=35, room="#tea"),
        m.ListRooms(request_id=36),
        m.ListMembers(request_id=37, room="#tea"),
        # End-to-end encryption (version 2): fixed bytes, so the seeds are the same
        # on every run (the server refuses the upload's signatures: it is reached).
        m.UploadKeys(
            request_id=90,
            keys=KeysUpload(
                device_keys=_DEVICE_KEYS,
                one_time_keys=(_ONE_TIME_KEY,),
                fallback_key=attrs.evolve(_ONE_TIME_KEY, key_id="AAAAAQ", fallback=True),
            ),
        ),
        m.ClaimKeys(request_id=91, devices=(_DEVICE_KEYS.device_id,)),
        m.GetDevices(request_id=92, conversation="alice,bob"),
        m.SendMessage(
            request_id=93,
            message_id=_MESSAGE_ID,
            to="bob",
            encrypted=EncryptedMessage(
                conversation="alice,bob",
                sender="alice",
                sender_device=_DEVICE_KEYS.device_id,
                session_id=bytes(range(32)),
                device_set_version=1,
                ciphertext=b"\x03megolm",
            ),
            key_shares=(
                KeyShare(
                    sender_keys=_DEVICE_KEYS,
                    recipient="bob",
                    recipient_device=bytes(range(16, 32)),
                    message_type=0,
                    ciphertext=b"olm",
                ),
            ),
        ),
        m.ShareKeys(
            request_id=94,
            message_id=_MESSAGE_ID,
            key_shares=(
                KeyShare(
                    sender_keys=_DEVICE_KEYS,
                    recipient="bob",
                    recipient_device=bytes(range(16, 32)),
                    message_type=1,
                    ciphertext=b"olm2",
                ),
            ),
        ),
    ]
    missing = {cls.TAG for cls in m.REQUEST_TYPES} - {r.TAG for r in requests}
    assert not missing, f"every_request() has no example of {sorted(missing)}"
    return requests


#: Requests in a row, in one DATA packet each: the state the first ones make lets
#: the later ones succeed (the single requests are mostly refused). Logging in as
#: bob on alice's connection switches it to bob, so one connection plays both.
SEQUENCES: Final[tuple[tuple[m.Request, ...], ...]] = (
    (  # a room: created, used, listed, left (and deleted with its history)
        m.JoinRoom(request_id=40, room="#tea"),
        m.SendMessage(request_id=41, message_id=_MESSAGE_ID, to="#tea", text="tea?"),
        m.GetHistory(request_id=42, peer="#tea"),
        m.GetMessageStatus(request_id=43, message_id=_MESSAGE_ID),
        m.ListMembers(request_id=44, room="#tea"),
        m.ListRooms(request_id=45),
        m.LeaveRoom(request_id=46, room="#tea"),
    ),
    (  # an invitation, withdrawn, then a block and an unblock
        m.Invite(request_id=50, username="bob"),
        m.ListInvitations(request_id=51),
        m.CancelInvitation(request_id=52, username="bob"),
        m.Invite(request_id=53, username="bob"),
        m.Block(request_id=54, username="bob"),
        m.ListBlocked(request_id=55),
        m.Unblock(request_id=56, username="bob"),
    ),
    (  # a friendship: bob accepts on the same connection, alice writes, then unfriends
        m.Invite(request_id=60, username="bob"),
        m.Login(request_id=61, username="bob", password=PASSWORD),
        m.AcceptInvitation(request_id=62, username="alice"),
        m.Login(request_id=63, username="alice", password=PASSWORD),
        m.SendMessage(request_id=64, message_id=_MESSAGE_ID, to="bob", text="hi bob"),
        m.SendMessage(request_id=65, message_id=_MESSAGE_ID, to="bob", text="hi bob"),
        m.GetMessageStatus(request_id=66, message_id=_MESSAGE_ID),
        m.ListFriends(request_id=67),
        m.Unfriend(request_id=68, username="bob"),
    ),
    (  # an invitation declined, then bob's deliveries acknowledged
        m.Invite(request_id=70, username="bob"),
        m.Login(request_id=71, username="bob", password=PASSWORD),
        m.DeclineInvitation(request_id=72, username="alice"),
        m.AcknowledgeDelivery(message_ids=(_MESSAGE_ID,)),
        m.GetHistory(request_id=73, peer="alice", limit=5),
    ),
    (  # sessions: listed, one revoked, the password changed, every session ended
        m.ListSessions(request_id=80),
        m.RevokeSession(request_id=81, session_id=bytes(16)),
        m.ChangePassword(request_id=82, current=PASSWORD, new=_NEW_PASSWORD),
        m.Login(request_id=83, username="alice", password=_NEW_PASSWORD),
        m.LogoutAll(request_id=84),
    ),
    (  # a new account, deleted again; then alice logs out
        m.Register(request_id=90, username="carol", password=PASSWORD),
        m.Login(request_id=91, username="carol", password=PASSWORD),
        m.DeleteAccount(request_id=92, password=PASSWORD),
        m.Login(request_id=93, username="alice", password=PASSWORD),
        m.Logout(request_id=94),
    ),
)


def resume_sequence(token: bytes) -> tuple[m.Request, ...]:
    """Switch to bob, then back to alice by resuming her session with its token (a
    logout would end that session)."""
    return (
        m.Login(request_id=100, username="bob", password=PASSWORD),
        m.Resume(request_id=101, token=token),
        m.ListOnline(request_id=102),
    )


def session_token() -> bytes:
    """The token of the fuzzed session's login: its server is seeded, so it is the
    same on every run. Read from the plaintext the server seals for alice."""
    established_server()  # records the set-up (alice's own seals) before the capture
    plaintexts: list[bytes] = []
    original_seal = CipherState.seal

    def recording_seal(self: CipherState, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        plaintexts.append(plaintext)
        return original_seal(self, nonce, ad, plaintext)

    setattr(CipherState, "seal", recording_seal)  # noqa: B010 (a temporary capture hook)
    try:
        established_server()
    finally:
        setattr(CipherState, "seal", original_seal)  # noqa: B010
    for payload in _messages(plaintexts):
        message = decode(payload)
        if isinstance(message, m.LoggedIn):
            return message.token
    raise AssertionError("the fuzzed session logged nobody in")


def stream_frames(offset: int, messages: Sequence[m.Message]) -> bytes:
    """The frames of a DATA packet carrying ``messages`` on the stream from ``offset``."""
    data = b""
    for message in messages:
        payload = encode(message)
        data += encode_varint(len(payload)) + payload
    return encode_frames([StreamFrame(offset=offset, data=data)])


def _answered(loop: Loop, address: Address, request_id: int) -> Callable[[], bool]:
    def check() -> bool:
        return any(getattr(e, "request_id", None) == request_id for e in loop.events[address])

    return check


def run_session() -> tuple[Loop, dict[bytes, bytes]]:
    """Drive the session; return the loop (with its capture) and the plaintext of
    every sealed DATA datagram, by datagram."""
    plaintexts: dict[bytes, bytes] = {}
    original_seal = CipherState.seal

    def recording_seal(self: CipherState, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        sealed = original_seal(self, nonce, ad, plaintext)
        plaintexts[ad + sealed] = plaintext
        return sealed

    setattr(CipherState, "seal", recording_seal)  # noqa: B010 (a temporary capture hook)
    try:
        loop = _converse()
    finally:
        setattr(CipherState, "seal", original_seal)  # noqa: B010
    return loop, plaintexts


def _converse() -> Loop:
    loop = Loop()
    alice, bob = new_client("alice"), new_client("bob")
    loop.add(alice, ALICE_ADDRESS)
    loop.add(bob, BOB_ADDRESS)

    def ask(client: ClientConnection, address: Address, request_id: int) -> None:
        loop.until(_answered(loop, address, request_id), f"answer to {request_id}")

    # alice first: her handshake is the server's first, as in the harnesses.
    alice.connect(loop.now)
    loop.until(lambda: alice.is_connected, "alice connects")
    ask(alice, ALICE_ADDRESS, alice.register("alice", PASSWORD))
    ask(alice, ALICE_ADDRESS, alice.login("alice", PASSWORD))
    bob.connect(loop.now)
    loop.until(lambda: bob.is_connected, "bob connects")
    ask(bob, BOB_ADDRESS, bob.register("bob", PASSWORD))
    ask(bob, BOB_ADDRESS, bob.login("bob", PASSWORD))
    ask(alice, ALICE_ADDRESS, alice.register("alice", PASSWORD))  # refused: user_exists
    ask(alice, ALICE_ADDRESS, alice.invite("bob"))
    ask(bob, BOB_ADDRESS, bob.list_invitations())
    ask(bob, BOB_ADDRESS, bob.accept_invitation("alice"))
    ask(alice, ALICE_ADDRESS, alice.send_message("bob", "hello bob"))
    ask(bob, BOB_ADDRESS, bob.send_message("alice", "hi alice \u2713 \U0001f600"))
    loop.run(0.5)  # deliveries and their acknowledgements
    ask(alice, ALICE_ADDRESS, alice.list_friends())
    ask(alice, ALICE_ADDRESS, alice.list_online())
    ask(alice, ALICE_ADDRESS, alice.get_history("bob", 10))
    ask(alice, ALICE_ADDRESS, alice.join_room("#tea"))
    ask(bob, BOB_ADDRESS, bob.join_room("#tea"))
    ask(alice, ALICE_ADDRESS, alice.send_message("#tea", "hello room"))
    ask(bob, BOB_ADDRESS, bob.list_members("#tea"))
    ask(bob, BOB_ADDRESS, bob.list_rooms())
    ask(bob, BOB_ADDRESS, bob.leave_room("#tea"))
    ask(alice, ALICE_ADDRESS, alice.send_message("carol", "nobody"))  # refused
    ask(bob, BOB_ADDRESS, bob.unfriend("alice"))
    loop.run(0.5)
    ask(alice, ALICE_ADDRESS, alice.logout())
    alice.close(loop.now)
    loop.run(1.0)
    bob.close(loop.now)
    loop.run(1.0)
    return loop


def _messages(frames_in_order: Sequence[bytes]) -> list[bytes]:
    """The stream messages carried by one direction's plaintexts."""
    pieces: dict[int, bytes] = {}
    for plaintext in frames_in_order:
        for frame in decode_frames(plaintext):
            if isinstance(frame, StreamFrame):
                pieces.setdefault(frame.offset, frame.data)
    stream = bytearray()
    for offset in sorted(pieces):
        data = pieces[offset]
        if offset <= len(stream):
            stream[offset : offset + len(data)] = data
    messages = []
    pos = 0
    while pos < len(stream):
        length, pos = decode_varint(bytes(stream), pos)
        messages.append(bytes(stream[pos : pos + length]))
        pos += length
    return messages


def _spread(items: Sequence[bytes], limit: int = PER_TARGET) -> list[bytes]:
    """Distinct items, at most ``limit``, spread over the whole capture."""
    unique = list(dict.fromkeys(items))
    if len(unique) <= limit:
        return unique
    step = (len(unique) - 1) / (limit - 1)
    return [unique[round(i * step)] for i in range(limit)]


def _one_per_type(payloads: Sequence[bytes]) -> list[bytes]:
    by_type: dict[Any, bytes] = {}
    for payload in payloads:
        by_type.setdefault(json.loads(payload[1:])["type"], payload)
    return list(by_type.values())


def build() -> dict[str, list[bytes]]:
    """The seeds of every target, captured from the session."""
    loop, plaintexts = run_session()
    captured = loop.captured
    to_server = [d for s, t, d in captured if t == SERVER_ADDRESS and s == ALICE_ADDRESS]
    to_server += [d for s, t, d in captured if t == SERVER_ADDRESS and s == BOB_ADDRESS]
    to_alice = [d for s, t, d in captured if t == ALICE_ADDRESS]

    def plain(datagrams: Sequence[bytes]) -> list[bytes]:
        return [plaintexts[d] for d in datagrams if d in plaintexts]

    alice_up = [d for s, t, d in captured if s == ALICE_ADDRESS]
    requests = _messages(plain(alice_up))
    pushes = _messages(plain(to_alice))
    bob_down = [d for s, t, d in captured if t == BOB_ADDRESS]
    payloads = requests + pushes + _messages(plain(bob_down))

    packets = [decode_packet(d) for _, _, d in captured]
    initiations = [p.noise_message for p in packets if isinstance(p, HandshakeInitiation)]
    responses = [p.noise_message for p in packets if isinstance(p, HandshakeResponse)]
    data_packets = [
        d for (_, _, d), p in zip(captured, packets, strict=True) if isinstance(p, DataPacket)
    ]
    # The response of the harnesses' own seeded initiator (the same as alice's).
    genuine = decode_packet(RawServerPeer(RawClient("alice").initiation).response)
    assert isinstance(genuine, HandshakeResponse)

    def tag(mode: int, items: Sequence[bytes], limit: int) -> list[bytes]:
        return [bytes((mode,)) + item for item in _spread(items, limit)]

    # Where the fuzzed server expects alice's next stream bytes.
    _, _, alice = established_server()
    handlers = [encode(request) for request in every_request()]
    sequences = [
        stream_frames(alice.stream_offset, requests)
        for requests in (*SEQUENCES, resume_sequence(session_token()))
    ]

    return {
        "packet": _spread(
            [d for _, _, d in captured if not isinstance(decode_packet(d), DataPacket)]
            + data_packets
        ),
        "frames": _spread(list(plaintexts.values())),
        "codec": _one_per_type(payloads + handlers),
        "noise_responder": _spread(initiations),
        "noise_initiator": _spread([genuine.noise_message, *responses]),
        "client": _spread(to_alice),
        "client_established": tag(0, to_alice, 4) + tag(1, plain(to_alice), 4) + tag(2, pushes, 6),
        "server": tag(0, to_server, 4)
        + tag(1, plain(alice_up), 2)
        + tag(2, plain(alice_up), 4)
        + tag(3, _one_per_type(requests), 14)
        # Every request handler, and sequences that let them succeed (modes 3 and 2).
        + [b"\x03" + payload for payload in handlers]
        + [b"\x02" + frames for frames in sequences],
        **operator_seeds(),
    }


def operator_seeds() -> dict[str, list[bytes]]:
    """The seeds of the operator's side, which no session captures: the control
    socket's requests and configuration files."""
    return {"control": control_requests(), "config": config_files()}


def control_requests() -> list[bytes]:
    """Every control command as ``ctl`` sends it (``reset-password`` as the loop
    sees it, hashed), and a few requests the parser refuses."""
    hashed = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16, r=1, p=1), digest=b"d" * 32)
    requests: list[dict[str, Any]] = [
        {"command": "status", "args": {}},
        {"command": "users", "args": {"online": True}},
        {"command": "disable", "args": {"user": "alice"}},
        {"command": "enable", "args": {"user": "bob"}},
        {"command": "reset-password", "args": {"user": "alice", "hash": hashed.to_string()}},
        {"command": "kick", "args": {"user": "alice"}},
        {"command": "backup", "args": {"dest": "/srv/backups/udpchat.sqlite3"}},
        {"command": "ping"},
        {"command": "fly", "args": {}},
    ]
    refused = [b"not json", b"[]", b'{"command": 1}', b'{"command": "kick", "args": []}']
    return [orjson.dumps(request) + b"\n" for request in requests] + refused


def config_files() -> list[bytes]:
    """docs/OPERATIONS.md's example, a configuration as ``--print-config`` prints
    it, and files the loader refuses."""
    from udpchat_server.cli import command  # noqa: PLC0415 (click: only for these seeds)
    from udpchat_server.config_file import to_toml  # noqa: PLC0415

    example = (
        'host = "0.0.0.0"\nport = 9999\ndb = "/var/lib/udpchat/udpchat.sqlite3"\n'
        'max_room_members = 256\nmessage_rate = "20/1"\nretain_days = 365\n'
        'metrics = "127.0.0.1:9464"\nlog_format = "json"\n'
    )
    printed = to_toml(
        command,
        {
            "host": "::1",
            "port": 0,
            "db": "/var/lib/udpchat/chat\x7f.sqlite3",
            "log_level": "debug",
            "public_presence": True,
            "workers": 4,
            "retain_days": 0.5,
            "request_rate": RateLimit(burst=200, interval=0.01),
        },
    )
    broken = [
        "port = [[[[[[1]]]]]]\n",
        "max-room-members = 5\nmax_room_members = 6\n",
        "[server]\nport = 1\n",
        'port = "9999"\ncolour = true\n',
        "port = 1e3\n",
    ]
    return [text.encode() for text in (example, printed, *broken)]


def dictionary() -> list[str]:
    """libFuzzer dictionary entries for the JSON of the application messages: the
    type tags, every field name, error codes and the session's names."""
    words = {"{", "}", "[", "]", ":", ",", "true", "false", "null", "0", "-1", "1e999", '"'}
    words.add(json.dumps("type"))
    for tag, cls in MESSAGE_TYPES.items():
        words.add(json.dumps(tag))
        words.update(json.dumps(name) for name in message_fields(cls))
    for cls in (m.ChatMessage, m.UserPresence, m.RoomInfo, m.SessionInfo):
        words.update(json.dumps(field.name) for field in attrs.fields(cls))
    words.update(json.dumps(code.value) for code in ErrorCode)
    words.update(json.dumps(name) for name in ("alice", "bob", "#tea", "00" * 16))
    return sorted(words)


def toml_dictionary() -> list[str]:
    """libFuzzer dictionary entries for configuration files: TOML's syntax and
    every option's key, with dashes and with underscores."""
    from udpchat_server.cli import command  # noqa: PLC0415 (click: only for this)

    words = {"=", "[", "]", "[[", "]]", "{", "}", ",", ".", '"', "'", '"""', "#", "\n"}
    words |= {"true", "false", "inf", "nan", "-0", "0x1F", "1e3", "1_000", "1979-05-27T07:32:00Z"}
    words |= {"\\u007F", "\\U0001F600", "\\n", "\\"}
    for param in command.params:
        if param.name is not None:
            words |= {param.name, param.name.replace("_", "-")}
    return sorted(words)


def write_dictionary(
    words: Sequence[str],
    path: Path = DICTIONARY,
    about: str = "JSON of udpchat's application messages",
) -> None:
    """Write ``words`` as a libFuzzer dictionary (one quoted, escaped entry a line)."""
    lines = [f"# Written by fuzz/make_corpus.py: {about}."]
    for word in words:
        escaped = "".join(
            c if c.isalnum() or c in " #_-.:,{}[]" else f"\\x{ord(c):02x}" for c in word
        )
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n")


def write(corpora: dict[str, list[bytes]], root: Path = CORPUS) -> None:
    """Replace each ``root/<target>`` with the seeds of ``corpora``."""
    for target, seeds in corpora.items():
        directory = root / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for seed in seeds:
            (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main() -> None:
    """Capture the session and write ``fuzz/corpus``."""
    corpora = build()
    write(corpora)
    write_dictionary(dictionary())
    write_dictionary(toml_dictionary(), TOML_DICTIONARY, "udpchat-server's configuration files")
    for target, seeds in corpora.items():
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds))} bytes")


if __name__ == "__main__":
    main()
