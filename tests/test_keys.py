"""Tests of the server's static key and fingerprints."""

from __future__ import annotations

import re

import pytest

from udpchat_proto.errors import LocalProtocolError
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.handshake import HandshakeState, public_key
from udpchat_proto.transport.keys import ServerKey, fingerprint

FIXED_PRIVATE = bytes(range(32))
# X25519 public key of 00 01 02 ... 1f (as in the Noise test vectors' static keys).
FIXED_PUBLIC = bytes.fromhex("8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
FIXED_FINGERPRINT = "SHA256:7t2IPaCpRRWT3Ao45YP7dw+ifbvtIJwgQE4HXmjE8Mk"


def test_generate_is_deterministic_with_a_seeded_source() -> None:
    first = ServerKey.generate(SeededRandomSource(42))
    assert first == ServerKey.generate(SeededRandomSource(42))
    assert first.private_bytes == SeededRandomSource(42).token_bytes(32)
    assert first != ServerKey.generate(SeededRandomSource(43))


def test_from_bytes_round_trip() -> None:
    key = ServerKey.generate(SeededRandomSource(1))
    loaded = ServerKey.from_bytes(key.private_bytes)
    assert loaded == key
    assert loaded.public_bytes == key.public_bytes


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_bad_length_is_refused(size: int) -> None:
    with pytest.raises(LocalProtocolError):
        ServerKey.from_bytes(bytes(size))
    with pytest.raises(LocalProtocolError):
        ServerKey(bytes(size))


def test_public_key_and_fingerprint_of_a_fixed_key() -> None:
    key = ServerKey.from_bytes(FIXED_PRIVATE)
    assert key.public_bytes == FIXED_PUBLIC == public_key(FIXED_PRIVATE)
    assert key.fingerprint == FIXED_FINGERPRINT == fingerprint(FIXED_PUBLIC)


def test_fingerprint_format() -> None:
    for seed in range(20):
        value = ServerKey.generate(SeededRandomSource(seed)).fingerprint
        # 32 digest bytes -> 43 base64 characters once the "=" padding is dropped.
        assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", value), value
    with pytest.raises(LocalProtocolError):
        fingerprint(bytes(31))


def test_repr_hides_the_private_key() -> None:
    key = ServerKey.from_bytes(FIXED_PRIVATE)
    assert FIXED_PRIVATE.hex() not in repr(key)
    assert repr(FIXED_PRIVATE) not in repr(key)


def test_key_is_frozen() -> None:
    key = ServerKey.from_bytes(FIXED_PRIVATE)
    with pytest.raises(AttributeError):
        key.private_bytes = bytes(32)  # type: ignore[misc]


def test_client_sees_the_server_fingerprint_after_the_handshake() -> None:
    server_key = ServerKey.generate(SeededRandomSource("server"))
    random = SeededRandomSource("conversation")
    client = HandshakeState.initiator(random=random)
    server = HandshakeState.responder(static_private=server_key.private_bytes, random=random)
    server.read_message(client.write_message())
    client.read_message(server.write_message())
    assert client.remote_static_public is not None
    assert fingerprint(client.remote_static_public) == server_key.fingerprint
