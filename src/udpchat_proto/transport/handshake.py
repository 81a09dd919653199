"""The Noise handshake: ``Noise_NX_25519_ChaChaPoly_SHA256``.

A direct transcription of the Noise Protocol Framework, revision 34 (2018-07-11),
https://noiseprotocol.org/noise.html, for the one protocol udpchat speaks:

* DH: Curve25519 (X25519), ``DHLEN = 32`` (section 12.1);
* cipher: ChaCha20-Poly1305, nonce = 4 zero bytes + 8-byte little-endian ``n``
  (section 12.3);
* hash: SHA-256, ``HASHLEN = 32``, HKDF built on HMAC-SHA256 (sections 4.3, 12.5);
* pattern NX (section 7.4)::

      NX:
        -> e
        <- e, ee, s, es

The initiator (client) learns the responder's (server's) static key in message 2 and
must check it itself (``remote_static_public``). Every primitive comes from the
``cryptography`` package and the standard library; nothing here is hand-written
cryptography.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource

__all__ = [
    "DH_LEN",
    "HASH_LEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PROTOCOL_NAME",
    "TAG_LEN",
    "CipherState",
    "HandshakeState",
    "public_key",
]

PROTOCOL_NAME: Final = b"Noise_NX_25519_ChaChaPoly_SHA256"
DH_LEN: Final = 32
HASH_LEN: Final = 32
KEY_LEN: Final = 32
TAG_LEN: Final = 16
#: Section 3: every Noise message is at most 65535 bytes.
MAX_MESSAGE_LEN: Final = 65535
#: Section 5.1: the nonce 2**64 - 1 is reserved, so usable nonces are below it.
MAX_NONCE: Final = 2**64 - 1

# Section 7.4, pattern NX: the tokens of each handshake message, in order. Even
# positions are written by the initiator, odd ones by the responder.
_NX_MESSAGES: Final = (("e",), ("e", "ee", "s", "es"))

# Section 12.3: 32 bits of zeros followed by the little-endian 64-bit counter.
_NONCE: Final = struct.Struct("<4xQ")


def public_key(private: bytes) -> bytes:
    """Return the raw X25519 public key of a raw private key.

    Args:
        private: the 32-byte X25519 private key.

    Returns:
        The 32-byte public key.

    Raises:
        LocalProtocolError: ``private`` is not 32 bytes.
    """
    return _public_bytes(_private_key(private))


def _private_key(private: bytes) -> X25519PrivateKey:
    if len(private) != DH_LEN:
        raise LocalProtocolError(f"an X25519 private key is {DH_LEN} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    # (public_bytes_raw, not public_bytes(Encoding.Raw, PublicFormat.Raw): the same
    # 32 bytes, without loading cryptography's serialization package, PEM and SSH
    # and all (bcrypt too, when installed): some 6 ms of every CLI command's start-up)
    return key.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """Section 4.1 DH(), rejecting a low-order point (an all-zero shared secret)."""
    try:
        # cryptography (OpenSSL) itself refuses an all-zero result with ValueError.
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise DecodeError("handshake_failed", "invalid or low-order public key") from exc
    if shared == bytes(DH_LEN):  # belt and braces: section 12.1 allows this rejection
        raise DecodeError("handshake_failed", "low-order public key")
    return shared


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Section 4.3 HKDF() with ``num_outputs = 2``."""
    temp_key = _hmac(chaining_key, input_key_material)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    return output1, output2


class CipherState:
    """Section 5.1: a key ``k`` (or none) and a 64-bit nonce counter ``n``.

    After the handshake, :meth:`HandshakeState.split` returns two of these. The
    packet layer uses :meth:`seal` and :meth:`open` with the packet number as
    an explicit nonce; :meth:`encrypt_with_ad` and :meth:`decrypt_with_ad` are the
    spec's counter-based operations.

    Attributes:
        n: the nonce the next :meth:`encrypt_with_ad` or :meth:`decrypt_with_ad`
            uses. It starts at 0.
    """

    __slots__ = ("_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        """Section 5.1 InitializeKey(key).

        Args:
            key: a 32-byte key, or ``None`` for a state with no key (it then
                passes plaintext through unchanged).

        Raises:
            LocalProtocolError: ``key`` is not 32 bytes.
        """
        if key is not None and len(key) != KEY_LEN:
            raise LocalProtocolError(f"a cipher key is {KEY_LEN} bytes, got {len(key)}")
        self._key = key
        self.n = 0

    @property
    def key(self) -> bytes | None:
        """The 32-byte key, or ``None`` before one is set."""
        return self._key

    def has_key(self) -> bool:
        """Section 5.1 HasKey(): whether a key is set."""
        return self._key is not None

    def _cipher(self) -> ChaCha20Poly1305:
        # The AEAD object is kept only while the state is among the last
        # _WARM_STATES to make one (_RING, below): a ChaCha20Poly1305 holds OpenSSL
        # contexts, 2.2 KB outside Python's heap, and a connection has two, which
        # kept for every connection made an idle one cost 4.5 KB more than its
        # Python objects; made for each use instead, it costs 0.7 us, half of a
        # 150-byte seal. The busy connections keep theirs; the idle ones, pushed
        # out of the ring, hold none. (Kept beside the state, not in a slot of
        # its own: 16 bytes less for every idle connection.)
        ring = _RING
        aead = ring.ciphers.get(self)
        if aead is None:
            assert self._key is not None
            aead = ChaCha20Poly1305(self._key)
            ring.keep(self, aead)
        return aead

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Section 5.1 EncryptWithAd(): encrypt with nonce ``n``, then increment ``n``.

        Args:
            ad: associated data, authenticated but not encrypted.
            plaintext: the bytes to encrypt.

        Returns:
            ``plaintext`` followed by a 16-byte tag once encrypted, or ``plaintext``
            unchanged if there is no key.

        Raises:
            LocalProtocolError: the nonces are exhausted (``n`` reached 2**64 - 1).
        """
        if self._key is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonces exhausted")
        # The handshake's: once or twice a state, not worth a place in the ring.
        ciphertext = ChaCha20Poly1305(self._key).encrypt(_NONCE.pack(self.n), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Section 5.1 DecryptWithAd(): decrypt with nonce ``n``; increment ``n`` on success.

        Args:
            ad: the associated data the sender used.
            ciphertext: the encrypted bytes and their 16-byte tag.

        Returns:
            The plaintext, or ``ciphertext`` unchanged if there is no key.

        Raises:
            DecodeError: ``"decrypt_failed"`` if authentication fails, the input is
                shorter than a tag, or the nonces are exhausted; ``n`` is unchanged.
        """
        if self._key is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise DecodeError("decrypt_failed", "nonces exhausted")
        plaintext = self._decrypt(ChaCha20Poly1305(self._key), self.n, ad, ciphertext)
        self.n += 1
        return plaintext

    def seal(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt with an explicit nonce; ``n`` is neither used nor changed.

        The caller must never use the same nonce twice with one key (udpchat uses
        the packet number).

        Args:
            nonce: an integer from 0 to 2**64 - 2.
            ad: associated data, authenticated but not encrypted.
            plaintext: the bytes to encrypt.

        Returns:
            The ciphertext followed by its 16-byte tag.

        Raises:
            LocalProtocolError: there is no key, or ``nonce`` is out of range.
        """
        if self._key is None:
            raise LocalProtocolError("seal() needs a key")
        if not 0 <= nonce < MAX_NONCE:
            raise LocalProtocolError(f"nonce out of range: {nonce}")
        return self._cipher().encrypt(_NONCE.pack(nonce), plaintext, ad)

    def open(self, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt with an explicit nonce; ``n`` is neither used nor changed.

        Args:
            nonce: the nonce the sender sealed with.
            ad: the associated data the sender used.
            ciphertext: the encrypted bytes and their 16-byte tag.

        Returns:
            The plaintext.

        Raises:
            LocalProtocolError: there is no key.
            DecodeError: ``"decrypt_failed"`` if authentication fails, the input is
                shorter than a tag, or ``nonce`` is out of range.
        """
        if self._key is None:
            raise LocalProtocolError("open() needs a key")
        if not 0 <= nonce < MAX_NONCE:
            raise DecodeError("decrypt_failed", f"nonce out of range: {nonce}")
        return self._decrypt(self._cipher(), nonce, ad, ciphertext)

    @staticmethod
    def _decrypt(aead: ChaCha20Poly1305, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < TAG_LEN:
            raise DecodeError("decrypt_failed", "shorter than a tag")
        try:
            return aead.decrypt(_NONCE.pack(nonce), ciphertext, ad)
        except (InvalidTag, ValueError, OverflowError) as exc:
            raise DecodeError("decrypt_failed", "authentication failed") from exc

    def __repr__(self) -> str:  # never show the key
        return f"CipherState(has_key={self.has_key()}, n={self.n})"


_WARM_STATES: Final = 512
"""How many cipher states keep their AEAD object: the last ones to make one. 512
(256 busy connections, a direction each) hold about 1.1 MB of OpenSSL contexts
however many connections there are; a connection busier than the ring is wide
makes one per seal or open, as every connection did before."""


class _WarmRing:
    """The AEAD objects of the cipher states that made one last, the oldest out first."""

    __slots__ = ("ciphers", "next", "states")

    def __init__(self) -> None:
        self.ciphers: dict[CipherState, ChaCha20Poly1305] = {}
        self.states: list[CipherState | None] = [None] * _WARM_STATES
        self.next = 0

    def keep(self, state: CipherState, aead: ChaCha20Poly1305) -> None:
        """``state`` made ``aead``: it takes the oldest place, whose state drops its
        own. (A closed connection's states stay here, key and context, until pushed
        out: at most _WARM_STATES of them. A state that comes back while an older
        place still names it loses its object early when that place is taken:
        made again, no harm.)"""
        index = self.next
        old = self.states[index]
        if old is not None:
            self.ciphers.pop(old, None)
        self.states[index] = state
        self.ciphers[state] = aead
        index += 1
        self.next = 0 if index == _WARM_STATES else index


_RING: Final = _WarmRing()


class _SymmetricState:
    """Section 5.2: the chaining key ``ck``, the handshake hash ``h`` and a CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, ck: bytes, h: bytes, cipher: CipherState) -> None:
        self.ck = ck
        self.h = h
        self.cipher = cipher

    @classmethod
    def initialize(cls, protocol_name: bytes) -> _SymmetricState:
        """InitializeSymmetric(): ``h`` is the name zero-padded, or its hash if longer."""
        if len(protocol_name) <= HASH_LEN:
            h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            h = _hash(protocol_name)
        return cls(ck=h, h=h, cipher=CipherState())

    def copy(self) -> _SymmetricState:
        cipher = CipherState(self.cipher.key)
        cipher.n = self.cipher.n
        return _SymmetricState(self.ck, self.h, cipher)

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(): ``ck, temp_k = HKDF(ck, ikm, 2)``; InitializeKey(temp_k)."""
        self.ck, temp_k = _hkdf2(self.ck, input_key_material)
        self.cipher = CipherState(temp_k)  # HASHLEN is 32: no truncation needed

    def mix_hash(self, data: bytes) -> None:
        """MixHash(): ``h = HASH(h || data)``."""
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(): encrypt with ``h`` as ad, then mix the ciphertext into ``h``."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash(): decrypt with ``h`` as ad, then mix the ciphertext into ``h``."""
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): ``temp_k1, temp_k2 = HKDF(ck, zerolen, 2)``."""
        temp_k1, temp_k2 = _hkdf2(self.ck, b"")
        return CipherState(temp_k1), CipherState(temp_k2)


class HandshakeState:
    """Section 5.3: one side of a ``Noise_NX_25519_ChaChaPoly_SHA256`` handshake.

    Build one with :meth:`initiator` (client) or :meth:`responder` (server). The
    initiator calls :meth:`write_message`, the responder :meth:`read_message` then
    :meth:`write_message`, and the initiator :meth:`read_message`. Both are then
    :attr:`is_complete`; call :meth:`split` for the transport cipher states, and
    check :attr:`remote_static_public` on the initiator.

    :meth:`read_message` is all or nothing: if it raises, the state is exactly as
    it was, so a forged or corrupted datagram does not spoil the handshake.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        random: RandomSource,
        prologue: bytes,
        static_private: bytes | None,
        ephemeral_private: bytes | None,
    ) -> None:
        # Section 5.3 Initialize(): InitializeSymmetric(protocol_name), MixHash(prologue).
        # NX has no pre-messages.
        self._initiator = initiator
        self._random = random
        self._symmetric = _SymmetricState.initialize(PROTOCOL_NAME)
        self._symmetric.mix_hash(prologue)
        self._s = _private_key(static_private) if static_private is not None else None
        self._fixed_e = _private_key(ephemeral_private) if ephemeral_private is not None else None
        self._e: X25519PrivateKey | None = None
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._message_index = 0

    @classmethod
    def initiator(
        cls,
        *,
        random: RandomSource,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
    ) -> HandshakeState:
        """Start the initiator's (client's) side.

        Args:
            random: where the ephemeral key comes from.
            prologue: data both sides must agree on, mixed into the handshake hash.
            ephemeral_private: a fixed 32-byte ephemeral key, for test vectors only.

        Returns:
            A state whose next step is :meth:`write_message`.

        Raises:
            LocalProtocolError: ``ephemeral_private`` is not 32 bytes.
        """
        return cls(
            initiator=True,
            random=random,
            prologue=prologue,
            static_private=None,
            ephemeral_private=ephemeral_private,
        )

    @classmethod
    def responder(
        cls,
        *,
        static_private: bytes,
        random: RandomSource,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
    ) -> HandshakeState:
        """Start the responder's (server's) side.

        Args:
            static_private: the server's 32-byte static X25519 private key.
            random: where the ephemeral key comes from.
            prologue: data both sides must agree on, mixed into the handshake hash.
            ephemeral_private: a fixed 32-byte ephemeral key, for test vectors only.

        Returns:
            A state whose next step is :meth:`read_message`.

        Raises:
            LocalProtocolError: a key is not 32 bytes.
        """
        return cls(
            initiator=False,
            random=random,
            prologue=prologue,
            static_private=static_private,
            ephemeral_private=ephemeral_private,
        )

    @property
    def is_complete(self) -> bool:
        """Whether both handshake messages have been written or read."""
        return self._message_index >= len(_NX_MESSAGES)

    @property
    def handshake_hash(self) -> bytes:
        """The final handshake hash ``h`` (section 11.2, channel binding).

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        self._require_complete()
        return self._symmetric.h

    @property
    def remote_static_public(self) -> bytes | None:
        """The peer's static public key: for the initiator, the server's key after
        message 2 (the caller must check it, e.g. against a pinned key); ``None``
        before then and always on the responder."""
        return self._rs

    def _is_my_turn_to_write(self) -> bool:
        # Even messages go initiator -> responder, odd ones back.
        return not self.is_complete and (self._message_index % 2 == 0) == self._initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        """Section 5.3 WriteMessage(): the next handshake message of this side.

        Args:
            payload: application data carried by the message. It is encrypted in
                message 2; message 1 carries it in the clear (no key exists yet).

        Returns:
            The message to send.

        Raises:
            LocalProtocolError: it is not this side's turn to write, the handshake is
                complete, or the message would exceed 65535 bytes.
        """
        if not self._is_my_turn_to_write():
            raise LocalProtocolError("not this side's turn to write a handshake message")
        sym = self._symmetric
        out = bytearray()
        for token in _NX_MESSAGES[self._message_index]:
            if token == "e":
                self._e = self._fixed_e
                if self._e is None:
                    self._e = X25519PrivateKey.from_private_bytes(self._random.token_bytes(DH_LEN))
                e_public = _public_bytes(self._e)
                out += e_public
                sym.mix_hash(e_public)
            elif token == "s":
                assert self._s is not None  # only the responder writes s in NX
                out += sym.encrypt_and_hash(_public_bytes(self._s))
            else:
                sym.mix_key(self._write_dh(token))
        out += sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise LocalProtocolError(f"handshake message too long: {len(out)} bytes")
        self._message_index += 1
        return bytes(out)

    def _write_dh(self, token: str) -> bytes:
        # Only the responder writes DH tokens in NX: ee = DH(e, re), es = DH(s, re).
        assert self._e is not None and self._s is not None and self._re is not None
        return _dh(self._e if token == "ee" else self._s, self._re)

    def read_message(self, message: bytes) -> bytes:
        """Section 5.3 ReadMessage(): process the peer's next handshake message.

        On any failure nothing changes, so the caller may drop the datagram and
        wait for a genuine one.

        Args:
            message: the handshake message as received.

        Returns:
            The payload the peer sent.

        Raises:
            DecodeError: ``"handshake_failed"`` for any bad input: a message that is
                too short or too long, an invalid or low-order key, a failed
                authentication, or a message when none is expected. No other
                exception is raised.
        """
        if self.is_complete or self._is_my_turn_to_write():
            raise DecodeError("handshake_failed", "no handshake message expected")
        if len(message) > MAX_MESSAGE_LEN:
            raise DecodeError("handshake_failed", "message too long")
        sym = self._symmetric.copy()  # work on a copy: commit only on success
        re, rs = self._re, self._rs
        view = memoryview(message)
        try:
            for token in _NX_MESSAGES[self._message_index]:
                if token == "e":
                    re, view = _take(view, DH_LEN), view[DH_LEN:]
                    sym.mix_hash(re)
                    self._check_point(re)
                elif token == "s":
                    size = DH_LEN + TAG_LEN if sym.cipher.has_key() else DH_LEN
                    encrypted, view = _take(view, size), view[size:]
                    rs = sym.decrypt_and_hash(encrypted)
                else:
                    # Only the initiator reads DH tokens in NX: ee = DH(e, re), es = DH(e, rs).
                    assert self._e is not None
                    remote = re if token == "ee" else rs
                    assert remote is not None
                    sym.mix_key(_dh(self._e, remote))
            payload = sym.decrypt_and_hash(bytes(view))
        except DecodeError as exc:
            raise DecodeError("handshake_failed", exc.detail or exc.reason) from exc
        self._symmetric, self._re, self._rs = sym, re, rs
        self._message_index += 1
        return payload

    def _check_point(self, remote_ephemeral: bytes) -> None:
        # The responder's DHs with re happen only when it writes message 2; reject a
        # low-order re now, while reading, so that bad input fails here. A point is
        # low-order iff its DH with any clamped scalar is zero, so DH with s decides.
        if self._s is not None:
            _dh(self._s, remote_ephemeral)

    def split(self) -> tuple[CipherState, CipherState]:
        """Section 5.2 Split(): the transport cipher states.

        Returns:
            ``(c1, c2)``: ``c1`` encrypts initiator -> responder, ``c2`` responder ->
            initiator. The initiator sends with ``c1`` and receives with ``c2``; the
            responder the other way round. Each call returns fresh states.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        self._require_complete()
        return self._symmetric.split()

    def _require_complete(self) -> None:
        if not self.is_complete:
            raise LocalProtocolError("the handshake is not complete")

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return f"HandshakeState({role}, message_index={self._message_index})"


def _take(view: memoryview, size: int) -> bytes:
    if len(view) < size:
        raise DecodeError("handshake_failed", "message too short")
    return bytes(view[:size])
