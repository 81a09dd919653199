"""What ``udpchat-cli`` keeps on disk: profiles and pinned server keys.

Layout of the home directory (``--home``, mode 0700)::

    HOME/known_servers          one "HOST:PORT KEYHEX" line per server (pinned keys)
    HOME/profiles/NAME.json     one profile per ``--profile``: who is logged in where,
                                the login token, and the inbox bookkeeping
    HOME/profiles/NAME.lock     taken (flock) around every read-modify-write
    HOME/profiles/NAME.crypto   the device's end-to-end encryption state (sealed
                                with the profile's 32-byte pickle key)
    HOME/profiles/NAME.crypto.lock  held (flock) while a process loads, advances
                                and saves that state

Every file is mode 0600 and replaced atomically (temporary file, fsync, ``os.replace``)
so that a crash never leaves half a profile, and a lock serialises the processes of
one profile (``listen`` in one terminal, ``send`` in another).

Inbox bookkeeping: the server delivers each message to a login session until the
session acknowledges it. Any command may be the one that receives it (the server
pushes pending messages as soon as a connection resumes the session), so every
command records what it received here *before* the acknowledgement leaves:

* ``delivered``: the ids received (the newest :data:`DELIVERED_MAX`), handed back
  to the core as ``delivered_ids`` so a redelivery is dropped, not shown twice;
* ``unshown``: the messages received but not yet printed, which the next ``inbox``
  or ``listen`` prints first and then removes (decrypted: the inbox keeps what
  was read, the crypto state what reads the rest).

End-to-end encryption: the profile holds a 32-byte pickle key (``pickle_key``,
made with the profile) that seals the device's state in ``NAME.crypto``. That
state is taken under its own exclusive lock (:meth:`Home.crypto`): load, advance,
save (atomic, 0600) before the lock is released, so that two processes of one
profile (``listen`` beside ``send``) never use a ratchet step twice.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from udpchat_proto import messages as m
from udpchat_proto.chat import TOKEN_SIZE, check_username
from udpchat_proto.e2ee import PICKLE_KEY_SIZE
from udpchat_proto.transport import KEY_SIZE

if TYPE_CHECKING:
    from udpchat_proto.e2ee import CryptoState

from .session import parse_servers, server_names

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _message_to_json(message: m.ChatMessage) -> dict[str, Any]:
    """A kept message as the profile stores it (the profile's own format: the id in
    hex, ``sent_at`` in integer microseconds since the epoch, UTC)."""
    return {
        "id": message.id.hex(),
        "sender": message.sender,
        "to": message.to,
        "text": message.text,
        "sent_at": (message.sent_at - _EPOCH) // _MICROSECOND,
        "encrypted": message.encrypted,
    }


def _message_from_json(item: Any) -> m.ChatMessage:
    """Parse :func:`_message_to_json` output (the message's own validators check it).

    Raises:
        ValueError, TypeError, KeyError: not a kept message.
    """
    if not isinstance(item, dict) or type(item["sent_at"]) is not int:
        raise ValueError("not a kept message")
    kind = m.ChatMessage
    if item.get("encrypted") is True:
        # (Only then: its module is the client's end-to-end encryption, vodozemac
        # and all, which a command that finds no encrypted message never loads.)
        from udpchat_proto.chat import DecryptedMessage  # noqa: PLC0415

        kind = DecryptedMessage
    return kind(
        id=bytes.fromhex(item["id"]),
        sender=item["sender"],
        to=item["to"],
        text=item["text"],
        sent_at=_EPOCH + datetime.timedelta(microseconds=item["sent_at"]),
        encrypted=kind is not m.ChatMessage,
    )


try:  # POSIX only; elsewhere the profile simply is not locked.
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms we test
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DELIVERED_MAX",
    "CryptoFile",
    "Home",
    "HomeError",
    "KnownServers",
    "Profile",
    "check_profile_name",
]

#: How many delivered ids a profile remembers. The server only redelivers what was
#: not acknowledged, so only the newest few ever matter.
DELIVERED_MAX = 10_000

_PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

T = TypeVar("T")


class HomeError(Exception):
    """A file of the home directory cannot be read, written or parsed."""


def check_profile_name(name: str) -> str:
    """Return ``name`` if it can name a profile file (no path tricks), else raise ValueError."""
    if _PROFILE_NAME_RE.fullmatch(name) is None or name.startswith("."):
        raise ValueError(
            f"invalid profile name {name!r}: use 1 to 64 characters of A-Z a-z 0-9 _ . - "
            "(not starting with '.')"
        )
    return name


@attrs.define(kw_only=True)
class Profile:
    """One user's login and inbox state, as saved in ``profiles/NAME.json``."""

    username: str | None = None
    """Who logged in last (kept after logout, for the messages)."""
    token: bytes | None = attrs.field(default=None, repr=False)
    """The login session's token; None when logged out."""
    server: str | None = None
    """The ``HOST:PORT`` the login session belongs to."""
    delivered: list[bytes] = attrs.Factory(list)
    """Ids of messages received, oldest first, at most :data:`DELIVERED_MAX`."""
    unshown: list[m.ChatMessage] = attrs.Factory(list)
    """Messages received but not yet printed, in delivery order."""
    pickle_key: bytes | None = attrs.field(default=None, repr=False)
    """The key that seals the crypto state (32 random bytes, made with the profile)."""

    @property
    def logged_in(self) -> bool:
        """Whether the profile holds a login session."""
        return self.token is not None and self.username is not None

    def record(self, messages: list[m.ChatMessage], *, shown: bool) -> None:
        """Note messages just received; keep them for ``inbox`` unless ``shown``."""
        known = set(self.delivered)
        if shown:
            # Printed by this process (listen) while another of the profile, on the
            # same login session, kept it for inbox: it is shown now, not twice.
            printed = {message.id for message in messages}
            self.unshown = [message for message in self.unshown if message.id not in printed]
        for message in messages:
            if message.id in known:
                continue
            known.add(message.id)
            self.delivered.append(message.id)
            if not shown:
                self.unshown.append(message)
        del self.delivered[:-DELIVERED_MAX]

    def mark_shown(self, ids: set[bytes]) -> None:
        """Drop printed messages from :attr:`unshown`."""
        self.unshown = [message for message in self.unshown if message.id not in ids]

    def login(self, username: str, token: bytes, server: str) -> None:
        """Hold a new login session; another user's inbox state is forgotten."""
        if username != self.username:
            self.delivered.clear()
            self.unshown.clear()
        self.username, self.token, self.server = username, token, server

    def logout(self) -> None:
        """Forget the login session (the username and messages stay)."""
        self.token = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object saved on disk."""
        return {
            "version": 1,
            "username": self.username,
            "token": None if self.token is None else self.token.hex(),
            "server": self.server,
            "delivered": [item.hex() for item in self.delivered],
            "unshown": [_message_to_json(message) for message in self.unshown],
            "pickle_key": None if self.pickle_key is None else self.pickle_key.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError, TypeError, KeyError: the data is not a profile.
        """
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a version 1 profile")
        token = data.get("token")
        pickle_key = data.get("pickle_key")
        profile = cls(
            username=_optional_str(data.get("username")),
            token=None if token is None else bytes.fromhex(token),
            server=_optional_str(data.get("server")),
            delivered=[bytes.fromhex(item) for item in data.get("delivered", [])],
            unshown=[_message_from_json(item) for item in data.get("unshown", [])],
            pickle_key=None if pickle_key is None else bytes.fromhex(pickle_key),
        )
        # What the commands use as it is must be valid here, so that a damaged file
        # is reported as such rather than as a refusal or a usage error.
        if profile.username is not None:
            check_username(profile.username)
        if profile.token is not None and len(profile.token) != TOKEN_SIZE:
            raise ValueError(f"a login token is {TOKEN_SIZE} bytes")
        if profile.server is not None:
            parse_servers(profile.server)
        if profile.pickle_key is not None and len(profile.pickle_key) != PICKLE_KEY_SIZE:
            raise ValueError(f"a pickle key is {PICKLE_KEY_SIZE} bytes")
        return profile


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


class KnownServers:
    """The pinned public key of every server contacted, as SSH's ``known_hosts``.

    The file holds one ``HOST:PORT KEYHEX`` line per server; ``#`` starts a comment.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, server: str) -> bytes | None:
        """The key pinned for ``server`` (``HOST:PORT``), or None. For the nodes of
        one server (``HOST:PORT,HOST:PORT``), the key pinned for the first of them
        that has one (they all present the same)."""
        entries = self._read()
        for name in server_names(server):
            if name in entries:
                return entries[name]
        return None

    def pin(self, server: str, key: bytes) -> None:
        """Pin ``key`` for ``server`` (each of its nodes) where no key is pinned yet
        (first contact)."""
        with _locked(self.path.with_name(self.path.name + ".lock")):
            entries = self._read()
            new = [name for name in server_names(server) if name not in entries]
            if not new:
                return
            lines = [f"{name} {value.hex()}" for name, value in entries.items()]
            lines += [f"{name} {key.hex()}" for name in new]
            _write_atomic(self.path, "".join(line + "\n" for line in lines).encode())

    def _read(self) -> dict[str, bytes]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise HomeError(f"cannot read {self.path}: {exc}") from None
        entries: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                name, value = line.split()
                key = bytes.fromhex(value)
                if len(key) != KEY_SIZE:
                    raise ValueError("not a public key")
            except ValueError:
                raise HomeError(
                    f"{self.path} line {number} is not 'HOST:PORT KEYHEX' "
                    f"(a key is {KEY_SIZE} bytes, {2 * KEY_SIZE} hex digits)"
                ) from None
            entries[name] = key
        return entries


class Home:
    """The ``--home`` directory: profiles and known servers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def known_servers(self) -> KnownServers:
        """The pinned server keys."""
        self.ensure()
        return KnownServers(self.path / "known_servers")

    def ensure(self) -> None:
        """Create the directories (mode 0700) if missing."""
        try:
            for directory in (self.path, self.path / "profiles"):
                if not directory.is_dir():
                    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                    # mkdir's mode is filtered by the umask; say it once more.
                    directory.chmod(0o700)
        except OSError as exc:
            raise HomeError(f"cannot create {self.path}: {exc}") from None

    def profile_path(self, name: str) -> Path:
        """Where profile ``name`` is saved."""
        return self.path / "profiles" / f"{check_profile_name(name)}.json"

    def load(self, name: str) -> Profile:
        """Read profile ``name``; an empty profile if it does not exist yet."""
        return self._load(self.profile_path(name))

    def update(self, name: str, change: Callable[[Profile], T]) -> T:
        """Read profile ``name``, apply ``change`` to it and save it, under the lock.

        Returns:
            What ``change`` returned.
        """
        self.ensure()
        path = self.profile_path(name)
        with _locked(path.with_suffix(".lock")):
            profile = self._load(path)
            result = change(profile)
            _write_atomic(path, _dump(profile))
        return result

    def pickle_key(self, name: str) -> bytes:
        """Profile ``name``'s pickle key, made (32 random bytes) if it has none yet."""
        key = self.load(name).pickle_key
        if key is not None:
            return key

        def ensure(profile: Profile) -> bytes:
            if profile.pickle_key is None:
                profile.pickle_key = os.urandom(PICKLE_KEY_SIZE)
            return profile.pickle_key

        return self.update(name, ensure)

    def crypto(self, name: str) -> CryptoFile:
        """Where profile ``name``'s crypto state is saved."""
        self.ensure()
        return CryptoFile(self.profile_path(name).with_suffix(".crypto"))

    @staticmethod
    def _load(path: Path) -> Profile:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return Profile()
        except (OSError, ValueError) as exc:
            raise HomeError(f"cannot read profile {path}: {exc}") from None
        try:
            return Profile.from_json(data)
        except Exception as exc:  # any shape error: the file is not ours to trust
            raise HomeError(f"profile {path} is corrupt ({exc}); remove it") from None


class CryptoFile:
    """A profile's end-to-end encryption state on disk (``NAME.crypto``), sealed
    with the profile's pickle key; taken under :meth:`locked`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the state's exclusive lock: load, advance and save inside it."""
        return _locked(self.path.with_name(self.path.name + ".lock"))

    def read(self, pickle_key: bytes) -> CryptoState | None:
        """The saved state, or None when there is none (never logged in since the
        upgrade, or logged out).

        Raises:
            HomeError: the file cannot be read or unsealed.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HomeError(f"cannot read {self.path}: {exc}") from None
        from udpchat_proto.e2ee import CryptoState  # noqa: PLC0415 (vodozemac: only here)

        try:
            return CryptoState.from_bytes(data, pickle_key)
        except Exception as exc:  # damaged, or sealed with another key
            raise HomeError(f"the crypto state {self.path} is corrupt ({exc}); remove it") from None

    def write(self, state: CryptoState, pickle_key: bytes) -> None:
        """Save ``state`` (atomically, mode 0600)."""
        _write_atomic(self.path, state.to_bytes(pickle_key))

    def remove(self) -> None:
        """Forget the device (it ended), with the lock held."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def forget(self) -> None:
        """Forget the device (it ended): a later login is a new device."""
        with self.locked():
            self.remove()


def _dump(profile: Profile) -> bytes:
    return (json.dumps(profile.to_json(), ensure_ascii=False, indent=1) + "\n").encode()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600) for the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise HomeError(f"cannot open {path}: {exc}") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so readers see the old or the new file."""
    # (tempfile, with the random and shutil it loads, only for a command that writes)
    import tempfile  # noqa: PLC0415

    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:  # mkstemp creates it 0600
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError as exc:
        raise HomeError(f"cannot write {path}: {exc}") from None
