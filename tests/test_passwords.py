"""scrypt password records: hashing, verification and the stored text form."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat_proto.chat.passwords import PasswordHash, ScryptParams, hash_password, verify_digest
from udpchat_proto.errors import DecodeError

# Tiny cost: these tests check behaviour, not strength.
FAST = ScryptParams(n=16, r=1, p=1)
SALT = bytes(range(16))


def test_hash_is_scrypt_with_the_given_parameters() -> None:
    digest = hash_password("correct horse", SALT, FAST)
    expected = hashlib.scrypt(b"correct horse", salt=SALT, n=16, r=1, p=1, dklen=32)
    assert digest == expected
    assert len(digest) == FAST.dklen


def test_verify_accepts_the_password_and_rejects_others() -> None:
    stored = PasswordHash(salt=SALT, params=FAST, digest=hash_password("correct horse", SALT, FAST))
    assert verify_digest(stored, hash_password("correct horse", SALT, FAST))
    assert not verify_digest(stored, hash_password("correct horsf", SALT, FAST))
    # The same password under another salt is another digest.
    assert not verify_digest(stored, hash_password("correct horse", b"\x00" * 16, FAST))


def test_salt_and_parameters_change_the_digest() -> None:
    base = hash_password("pw-pw-pw", SALT, FAST)
    assert hash_password("pw-pw-pw", SALT, ScryptParams(n=32, r=1, p=1)) != base
    assert hash_password("pw-pw-pw", SALT[::-1], FAST) != base


def test_to_string_format_and_round_trip() -> None:
    record = PasswordHash(salt=b"\xab\xcd", params=ScryptParams(n=16, r=2, p=3), digest=b"\x01\x02")
    assert record.to_string() == "scrypt$16$2$3$abcd$0102"
    assert PasswordHash.from_string(record.to_string()) == PasswordHash(
        salt=b"\xab\xcd", params=ScryptParams(n=16, r=2, p=3, dklen=2), digest=b"\x01\x02"
    )


def test_repr_hides_salt_and_digest() -> None:
    record = PasswordHash(salt=b"\xab" * 16, params=FAST, digest=b"\xcd" * 32)
    assert "ab" * 4 not in repr(record)
    assert "cd" * 4 not in repr(record)


@pytest.mark.parametrize("bad_n", [0, 1, 3, 24, -16])
def test_n_must_be_a_power_of_two_above_one(bad_n: int) -> None:
    with pytest.raises(ValueError):
        ScryptParams(n=bad_n)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "bcrypt$16$1$1$abcd$0102",  # another scheme
        "scrypt$16$1$1$abcd",  # a field missing
        "scrypt$16$1$1$abcd$0102$extra",  # one too many
        "scrypt$sixteen$1$1$abcd$0102",  # n not a number
        "scrypt$15$1$1$abcd$0102",  # n not a power of two
        "scrypt$16$1$1$xyz$0102",  # salt not hex
        "scrypt$16$1$1$abcd$01g2",  # digest not hex
        "scrypt$16$1$1$abc$0102",  # odd hex length
    ],
)
def test_from_string_of_garbage_raises_decode_error(text: str) -> None:
    with pytest.raises(DecodeError):
        PasswordHash.from_string(text)


@given(st.text())
def test_from_string_raises_only_decode_error(text: str) -> None:
    try:
        record = PasswordHash.from_string(text)
    except DecodeError:
        return
    assert PasswordHash.from_string(record.to_string()) == record


@given(
    salt=st.binary(min_size=1, max_size=64),
    digest=st.binary(min_size=1, max_size=64),
    log2_n=st.integers(min_value=1, max_value=20),
    r=st.integers(min_value=1, max_value=32),
    p=st.integers(min_value=1, max_value=16),
)
def test_to_string_from_string_round_trip(
    salt: bytes, digest: bytes, log2_n: int, r: int, p: int
) -> None:
    params = ScryptParams(n=2**log2_n, r=r, p=p, dklen=len(digest))
    record = PasswordHash(salt=salt, params=params, digest=digest)
    assert PasswordHash.from_string(record.to_string()) == record
