"""Password hashing with scrypt, with the parameters stored beside the hash.

The core only *describes* the work (:class:`ScryptParams`, :class:`PasswordHash`):
the server state machine never calls :func:`hash_password` itself, because one
call costs tens of milliseconds of CPU. It hands a :class:`HashJob` to its caller,
which runs it off the loop (``hashlib.scrypt`` releases the GIL) and hands the
digest back.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs

from ..config_checks import int_at_least, positive_int
from ..errors import DecodeError

__all__ = ["PasswordHash", "ScryptParams", "hash_password", "verify_digest"]


@attrs.frozen(kw_only=True)
class ScryptParams:
    """scrypt cost parameters.

    The defaults (N=2**17, r=8, p=1: 128 MiB, about 0.4 s of one core on the
    project's machine) are OWASP's advice for scrypt. Tests use a tiny N to stay
    fast; the parameters travel with each stored hash, so changing them does not
    break existing accounts (the server hashes an account again at the new cost at
    its next login).
    """

    n: int = attrs.field(default=2**17, validator=int_at_least(2))
    """CPU/memory cost, a power of two greater than 1."""
    r: int = attrs.field(default=8, validator=positive_int)
    """Block size."""
    p: int = attrs.field(default=1, validator=positive_int)
    """Parallelism."""
    dklen: int = attrs.field(default=32, validator=positive_int)
    """Length of the derived key in bytes."""

    @n.validator
    def _check_n(self, _attr: object, value: int) -> None:
        if value & (value - 1):
            raise ValueError("scrypt n must be a power of two greater than 1")

    @property
    def maxmem(self) -> int:
        """Memory bound to pass to ``hashlib.scrypt`` (128 * n * r, plus slack)."""
        return 128 * self.n * self.r * (self.p + 1) + 1024 * 1024


@attrs.frozen(kw_only=True)
class PasswordHash:
    """What the store keeps of a password: salt, parameters and digest."""

    salt: bytes = attrs.field(repr=False)
    params: ScryptParams
    digest: bytes = attrs.field(repr=False)

    def to_string(self) -> str:
        """Serialise as ``scrypt$N$r$p$salt-hex$digest-hex`` (for a database column)."""
        p = self.params
        return f"scrypt${p.n}${p.r}${p.p}${self.salt.hex()}${self.digest.hex()}"

    @classmethod
    def from_string(cls, text: str) -> PasswordHash:
        """Parse :meth:`to_string` output.

        Raises:
            DecodeError: the text is not a stored scrypt hash.
        """
        try:
            scheme, n, r, p, salt, digest = text.split("$")
            if scheme != "scrypt":
                raise ValueError(scheme)
            raw_digest = bytes.fromhex(digest)
            params = ScryptParams(n=int(n), r=int(r), p=int(p), dklen=len(raw_digest))
            return cls(salt=bytes.fromhex(salt), params=params, digest=raw_digest)
        except ValueError as exc:
            raise DecodeError("bad_password_hash", str(exc)) from None


def hash_password(password: str, salt: bytes, params: ScryptParams) -> bytes:
    """Run scrypt. CPU-heavy by design: call it off the event loop."""
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=params.dklen,
    )


def verify_digest(stored: PasswordHash, digest: bytes) -> bool:
    """Compare a freshly computed digest with the stored one in constant time."""
    return hmac.compare_digest(stored.digest, digest)
