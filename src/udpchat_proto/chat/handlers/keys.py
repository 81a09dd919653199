"""Requests about devices' keys (end-to-end encryption): upload them, claim one to
open an Olm session, list a conversation's or a user's devices.

The server keeps and hands out what devices signed; it checks the signatures on
the way in (a record that is not the uploading session's, or that does not
verify, is refused) so that nothing it hands out fails a receiver's check, and it
never holds a private key.
"""

from __future__ import annotations

from ...clock import WallClock
from ...e2ee.device import ONE_TIME_KEYS_TARGET, verify_device_keys, verify_one_time_key
from ...e2ee.records import DeviceKeys
from ...errors import ErrorCode
from .. import messages as m
from ..caches import Caches
from ..connection import ChatConnection
from ..connections import ConnectionTable
from ..devicesets import conversation_members, may_see_devices
from ..limits import Limits
from ..outbox import Outbox
from ..requests import RefusedError, Route, route, user_of, utc_from_posix
from ..store import Store
from ..tokens import session_id

__all__ = ["KeyHandlers", "device_connections"]


def device_connections(
    store: Store, connections: ConnectionTable, usernames: set[str]
) -> list[ChatConnection]:
    """The connections of ``usernames`` whose sessions are devices (uploaded keys):
    the only ones a server sends version 2's pushes."""
    found = []
    for username in sorted(usernames):
        for connection in connections.connections_of(username):
            token_hash = connection.token_hash
            if token_hash is not None and store.session_device(token_hash) is not None:
                found.append(connection)
    return found


class KeyHandlers:
    """Handlers of upload_keys, claim_keys and get_devices.

    Args:
        store: devices, their keys; rooms and friendships (who may see whom).
        connections: whom to tell of a new device, or of keys running low.
        outbox: where answers and pushes go.
        caches: friendships, without a read per request.
        clock: the wall clock (when a device's keys were stored).
        limits: keys claimed per user and per device.
    """

    def __init__(
        self,
        *,
        store: Store,
        connections: ConnectionTable,
        outbox: Outbox,
        caches: Caches,
        clock: WallClock,
        limits: Limits,
    ) -> None:
        self._limits = limits
        self._store = store
        self._connections = connections
        self._outbox = outbox
        self._caches = caches
        self._clock = clock

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.UploadKeys, self.upload_keys),
            route(m.ClaimKeys, self.claim_keys),
            route(m.GetDevices, self.get_devices),
        ]

    def upload_keys(self, connection: ChatConnection, request: m.UploadKeys, now: float) -> None:
        """``upload_keys``: the device's record (once), one-time keys, a fallback key."""
        me, token_hash = user_of(connection), connection.token_hash
        assert token_hash is not None  # (logged in)
        upload = request.keys
        keys = upload.device_keys
        if keys.user != me or keys.device_id != session_id(token_hash):
            raise RefusedError(
                ErrorCode.BAD_REQUEST, "the keys must be this session's device's (its session id)"
            )
        if not verify_device_keys(keys):
            raise RefusedError(ErrorCode.BAD_REQUEST, "the device's signature does not verify")
        uploaded = list(upload.one_time_keys)
        if upload.fallback_key is not None:
            uploaded.append(upload.fallback_key)
        for key in uploaded:
            if not verify_one_time_key(keys, key):
                raise RefusedError(ErrorCode.BAD_REQUEST, f"key {key.key_id} is not signed")
        if any(key.fallback for key in upload.one_time_keys) or (
            upload.fallback_key is not None and not upload.fallback_key.fallback
        ):
            raise RefusedError(ErrorCode.BAD_REQUEST, "a fallback key goes in fallback_key")
        known = self._store.session_device(token_hash)
        added = False
        if known is None:
            added = self._store.set_device_keys(token_hash, keys, self._clock())
        elif known != keys:
            # A device's keys never change while it lives: a new account is a new login.
            raise RefusedError(ErrorCode.BAD_REQUEST, "this device has other keys")
        connection.has_device = True
        held, _used = self._store.key_counts(keys.device_id)
        # At most ONE_TIME_KEYS_TARGET kept: the rest were never needed.
        room = max(0, ONE_TIME_KEYS_TARGET - held)
        fallback = [] if upload.fallback_key is None else [upload.fallback_key]
        self._store.add_one_time_keys(keys.device_id, [*upload.one_time_keys[:room], *fallback])
        held, used = self._store.key_counts(keys.device_id)
        self._outbox.reply(
            connection,
            m.KeysStored(request_id=request.request_id, one_time_keys=held, fallback_used=used),
        )
        if added:
            self._tell_device_added(connection, keys)

    def _tell_device_added(self, connection: ChatConnection, keys: DeviceKeys) -> None:
        """Tell the devices of everyone who shares a conversation with the user (its
        own other devices too), on every node, that it has a new one."""
        related = self._related(keys.user)
        push = m.DeviceAdded(user=keys.user, device=keys)
        for other in device_connections(self._store, self._connections, related):
            if other.connection_id != connection.connection_id:
                self._outbox.send(other.connection_id, push)
        # And their devices on a cluster's other nodes: the news carries it there,
        # where each node sends it to the devices it holds (ClusterNode).
        for username in sorted(related):
            self._outbox.push_to_other_nodes(username, push)

    def _related(self, me: str) -> set[str]:
        """``me``, its friends and its rooms' members: whose devices it may see."""
        related = {me, *self._caches.friends_of(me)}
        for room, _count in self._store.rooms_of(me):
            related.update(self._store.room_members(room))
        return related

    def claim_keys(self, connection: ChatConnection, request: m.ClaimKeys, now: float) -> None:
        """``claim_keys``: a key of each device asked, of those the caller may see
        (its own, its friends', its rooms' members'); others are left out, as an
        ended device is, so that a stranger drains nobody's keys. Within the
        caller's claim budget (``key_claims_per_user``: else ``rate_limited``,
        nothing claimed); a device's one-time keys within its own budget
        (``key_claims_per_device``), its fallback key beyond it, so that no friend
        drains them."""
        me = user_of(connection)
        visible = {
            keys.device_id for keys, _created in self._store.devices_of(sorted(self._related(me)))
        }
        wanted = [device_id for device_id in dict.fromkeys(request.devices) if device_id in visible]
        if wanted and not self._limits.key_claims.spend_overdrawn(me, len(wanted), now=now):
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "you are claiming keys too fast; try again in a minute"
            )
        claimed = []
        low: list[tuple[DeviceKeys, int, bool]] = []
        for device_id in wanted:
            one_time = self._limits.device_key_claims.spend(device_id, now=now)
            found = self._store.claim_key(device_id, one_time=one_time)
            if found is None:
                continue
            claimed.append(found)
            held, used = self._store.key_counts(device_id)
            if held < ONE_TIME_KEYS_TARGET or used:
                low.append((found.device, held, used))
        self._outbox.reply(
            connection, m.ClaimedKeys(request_id=request.request_id, keys=tuple(claimed))
        )
        for device, held, used in low:
            push = m.OneTimeKeysLow(one_time_keys=held, fallback_used=used)
            for other in self._connections.connections_of(device.user):
                hashed = other.token_hash
                if hashed is not None and session_id(hashed) == device.device_id:
                    self._outbox.send(other.connection_id, push)
            # And its connections on a cluster's other nodes (a profile's processes
            # may be on several): the news names the device, and only it is told.
            self._outbox.push_to_other_nodes(device.user, push, device=device.device_id)

    def get_devices(self, connection: ChatConnection, request: m.GetDevices, now: float) -> None:
        """``get_devices``: a conversation's device set, or a user's devices."""
        me = user_of(connection)
        if request.conversation is not None:
            members = conversation_members(self._store, self._caches, me, request.conversation)
            device_set = self._caches.device_set(request.conversation, members)
            self._outbox.reply(
                connection,
                m.ConversationDevices(request_id=request.request_id, device_set=device_set),
            )
            return
        user = request.user
        assert user is not None  # (one of the two: the message checks)
        if not may_see_devices(self._store, self._caches, me, user):
            # The same answer whether the name has an account or not.
            raise RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {user}")
        devices = tuple(
            m.UserDevice(keys=keys, created_at=utc_from_posix(created))
            for keys, created in self._store.devices_of([user])
        )
        self._outbox.reply(
            connection, m.UserDevices(request_id=request.request_id, user=user, devices=devices)
        )
