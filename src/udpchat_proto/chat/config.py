"""The chat server's configuration: every limit it enforces, with its default.

Each field is documented here and in ``docs/PROTOCOL.md`` (limits and rate limits),
because a client author must know them to behave well.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..config_checks import int_at_least, positive_int, positive_number
from ..ratelimit import RateLimit
from ..transport.config import TransportConfig
from .pacing import CommitPacing
from .passwords import ScryptParams

__all__ = ["ServerConfig"]


_window = int_at_least(2)
_rate = attrs.validators.instance_of(RateLimit)


SERVER_RECEIVE_LIMIT: Final = 64 * 1024
"""The largest message a chat server reassembles from a client, bytes. Its largest
legitimate request is a ``send_message`` of 4096 bytes of text, at most about 25 KB
once JSON-escaped, or an ``ack_delivery`` of 1,000 ids (35 KB; a client batches
its acknowledgements): 64 KiB holds both, where the 4 MiB a client accepts from the
server would let each connection pin 4 MiB in reassembly."""


# Typed as their fields (None turns them off): attrs' stubs take a field's type
# from its default.
_RETAIN_DAYS: Final[float | None] = 30.0
_MAX_STORED_PER_USER: Final[int | None] = 64 * 1024 * 1024


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Settings of a :class:`~udpchat_proto.chat.server.ChatServer`.

    Every default is safe for a public server; tests shrink ``scrypt`` and widen
    rate limits. Invalid values raise ``ValueError`` at construction.
    """

    transport: TransportConfig = attrs.field(
        factory=lambda: TransportConfig(max_receive_message_size=SERVER_RECEIVE_LIMIT),
        validator=attrs.validators.instance_of(TransportConfig),
    )
    """Settings of the transport layer (datagram size, timeouts, message size). The
    default receives at most :data:`SERVER_RECEIVE_LIMIT` per message."""

    commit_pacing: CommitPacing = attrs.field(
        factory=CommitPacing, validator=attrs.validators.instance_of(CommitPacing)
    )
    """When a small batch with writes waits for more work before its commit, so
    that requests at low load share commits (:mod:`~udpchat_proto.chat.pacing`;
    ``CommitPacing(most_wait=0)``: never)."""

    scrypt: ScryptParams = attrs.field(
        factory=ScryptParams, validator=attrs.validators.instance_of(ScryptParams)
    )
    """scrypt cost for new password hashes: N=2^17, r=8, p=1, as OWASP advises
    (128 MiB and about 0.4 s per hash on the project's machine; see
    ``docs/SECURITY.md``). An account hashed at another cost is hashed again at
    this one at its next successful login."""

    session_lifetime: float = attrs.field(default=30 * 86400.0, validator=positive_number)
    """Seconds a login session may stay unused before it expires (30 days).

    A session is "used" when it is created, resumed, or has a live connection (live
    sessions are touched at every sweep)."""

    session_max_age: float = attrs.field(default=90 * 86400.0, validator=positive_number)
    """Seconds a login session lives at most, used or not (90 days): a token that
    leaked stops working by then, and every device logs in again now and then."""

    session_sweep_interval: float = attrs.field(default=3600.0, validator=positive_number)
    """Seconds between sweeps that expire unused sessions and forget idle rate-limit
    buckets (one hour). Resume checks expiry itself, so the sweep only reclaims space."""

    max_room_members: int = attrs.field(default=256, validator=positive_int)
    """Most members a room may have; one more join is refused with ``room_full``."""

    max_rooms_per_user: int = attrs.field(default=64, validator=positive_int)
    """Most rooms a user may be in; one more join is refused with ``too_many_rooms``."""

    max_outgoing_invitations: int = attrs.field(default=256, validator=positive_int)
    """Most invitations a user may have waiting for an answer; one more is refused
    ``too_many_invitations``. Any valid name may be invited (whether it has an
    account is not told), so without a cap one account could store invitations
    to made-up names without end; 256 unanswered is beyond any real use."""

    max_blocked_per_user: int = attrs.field(default=1024, validator=positive_int)
    """Most users one user may block; one more is refused ``too_many_blocked``.
    Any valid name may be blocked (whether it has an account is not told), so
    the list is capped as invitations are."""

    login_failures_per_user_address: RateLimit = attrs.field(
        default=RateLimit(burst=5, interval=60.0), validator=_rate
    )
    """Failed logins allowed per (username, client address): 5 in a row, then one a
    minute. This is what slows a guesser: a stranger's failures, from their address,
    do not lock the owner out of their own account from theirs."""

    login_failures_per_user: RateLimit = attrs.field(
        default=RateLimit(burst=100, interval=6.0), validator=_rate
    )
    """Failed logins allowed per username from all addresses together: a high
    ceiling (100 in a row, then 10 a minute) that only a guesser spread over many
    addresses reaches, so that even they get few guesses an hour. Once it is
    spent, an address goes on only with its own allowance
    (``login_failures_beyond_ceiling``): strangers who keep the ceiling spent
    never lock the owner out from an address that has not failed."""

    login_failures_beyond_ceiling: RateLimit = attrs.field(
        default=RateLimit(burst=2, interval=3600.0), validator=_rate
    )
    """Failed logins still allowed per (username, client address) while the
    username's ceiling (``login_failures_per_user``) is spent: 2, then one an
    hour. It is the owner's way in during a distributed attack (their address
    has its own allowance, a typo included, whoever spent the ceiling; a right
    password gives its charge back), and it bounds the attacker: each address
    they bring adds at most 2 guesses, then one an hour."""

    logins_per_user: RateLimit = attrs.field(
        default=RateLimit(burst=10, interval=6.0), validator=_rate
    )
    """Successful logins allowed per username: 10 in a row, then 10 a minute. Each
    creates a session and costs a hash, so a flood of correct logins for one
    account must be slowed too. Only successes count: a guesser's failures do not
    use it up (they count against the failure budgets)."""

    login_failures_per_address: RateLimit = attrs.field(
        default=RateLimit(burst=20, interval=15.0), validator=_rate
    )
    """Failed logins allowed per client IP address (any username): 20 in a row, then
    one every 15 seconds (this slows one address guessing many accounts)."""

    registrations_per_address: RateLimit = attrs.field(
        default=RateLimit(burst=10, interval=60.0), validator=_rate
    )
    """Registrations attempted per client IP address: 10 in a row, then one a minute
    (each costs a password hash)."""

    message_rate: RateLimit = attrs.field(
        default=RateLimit(burst=30, interval=0.2), validator=_rate
    )
    """Messages accepted per user, all sessions together: 30 in a row, then 5 a
    second (per session, a user with many sessions could multiply it). A refused
    message (``rate_limited``) is not stored and may be sent again later with the
    same id."""

    retain_days: float | None = attrs.field(
        default=_RETAIN_DAYS, validator=attrs.validators.optional(positive_number)
    )
    """Days a message is kept once every recipient session has received it (30);
    None keeps everything. The hourly sweep deletes each conversation's oldest such
    messages (a message some device has not received yet stays, and so does every
    later one of its conversation: the promise is that an acknowledged message
    reaches every device). Without it a server's disk only fills, and each user's
    ``max_stored_per_user`` with it."""

    max_stored_per_user: int | None = attrs.field(
        default=_MAX_STORED_PER_USER, validator=attrs.validators.optional(positive_int)
    )
    """Most bytes of messages one user may have stored (64 MiB), counted as the
    sum of :func:`~udpchat_proto.chat.store.stored_size` of every message they sent
    that the store still holds, delivered or not, direct or to a room (stored once
    for all its members). One more is refused ``quota_exceeded``. Message rate
    limits alone let one account store 1.7 GB a day; with ``retain_days`` (30) a
    user sending 2,000 messages of 200 bytes a day stays under a third of it.
    None: no quota."""

    max_waiting_per_recipient: int = attrs.field(default=10_000, validator=positive_int)
    """Most direct messages waiting for one user that none of their devices has
    received; one more is refused ``recipient_full`` (a sender cannot fill the disk
    through an account nobody reads). Room messages are stored once per room, not
    per member, and are not counted."""

    membership_changes_per_user: RateLimit = attrs.field(
        default=RateLimit(burst=10, interval=6.0), validator=_rate
    )
    """Room joins and leaves per user: 10 in a row, then 10 a minute. Each one
    pushes to every member (256 at most), so churn must be slow."""

    key_claims_per_user: RateLimit = attrs.field(
        default=RateLimit(burst=1024, interval=0.05), validator=_rate
    )
    """Keys a user may claim (``claim_keys``, one per device asked), all sessions
    together: 1,024 in a row (the first message to a room of 256 members with four
    devices each), then 20 a second. A claim of many devices passes whole while
    the budget is not spent, and pays for them all; once it is spent, a claim is
    refused ``rate_limited`` and nothing is claimed. A device claims a key once
    per device it opens an Olm session to, so only a new conversation (or a
    stranger's script) spends it."""

    key_claims_per_device: RateLimit = attrs.field(
        default=RateLimit(burst=10, interval=6.0), validator=_rate
    )
    """One-time keys of one device handed out, whoever claims them: 10 in a row,
    then 10 a minute. Beyond it a claim is answered with the device's fallback
    key (as when its one-time keys have run out), never refused: a friend who
    claims in a loop cannot drain another's one-time keys (the device tops them
    up faster than this), and everyone else still opens a session to it."""

    request_rate: RateLimit = attrs.field(
        default=RateLimit(burst=200, interval=0.01), validator=_rate
    )
    """Requests of any kind per connection, ``ack_delivery`` included: 200 in a row,
    then 100 a second. Beyond it requests are answered ``rate_limited`` without
    being executed, and acknowledgements are ignored (delivery repeats them)."""

    max_pending_hash_jobs: int = attrs.field(default=64, validator=positive_int)
    """Most password hashes waiting or running at once (all connections). A
    register or login beyond it is refused with ``rate_limited``."""

    max_hash_jobs_per_address: int = attrs.field(default=8, validator=positive_int)
    """Most password hashes waiting or running for one client address: one address
    cannot fill the queue (8 of the 64). Jobs are handed to the workers
    round-robin across addresses, so a burst from one address delays another's
    login by about one hash time whatever this number; it is 8 rather than 1 or 2
    so that a few people behind one NAT who log in at the same moment get in
    (after a few hash times) instead of being refused."""

    max_hash_jobs_per_user: int = attrs.field(default=2, validator=positive_int)
    """Most password hashes waiting or running for one username from one address
    (two devices may log in at once; a third login meanwhile is refused
    ``rate_limited``). Each address counts apart, so that strangers' guesses in
    flight never hold the owner's place; what one account costs in hashing over
    all addresses is bounded by the failed-login budgets and
    ``max_pending_hash_jobs``."""

    max_sessions_per_user: int = attrs.field(default=32, validator=positive_int)
    """Most login sessions one user may have. A login beyond it ends the least
    recently used one (its connections become anonymous), as a phone that logs in
    again replaces what it lost; each session is a durable row with cursors."""

    protected_connections_per_user: int = attrs.field(default=8, validator=positive_int)
    """How many of a user's logged-in connections here the connection cap
    (``TransportConfig.max_connections``) never ends to admit a new connection:
    those beyond (a user's ninth device, or one session resumed on hundreds of
    connections to fill the table) are ended as anonymous ones are. 8 is more
    devices than a person uses at once; an attacker needs an account per 8
    connections to hold places, and accounts cost registrations (10, then one a
    minute, per address)."""

    max_queued_requests: int = attrs.field(default=64, validator=positive_int)
    """Most requests a connection may pipeline behind its own pending register or
    login. One more closes the connection as abusive."""

    delivery_window: int = attrs.field(default=64, validator=_window)
    """Most ``message_delivered`` pushes a connection may have unacknowledged. The
    server sends the backlog in batches, topping the window up when half of it is
    acknowledged."""

    public_presence: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Whether ``list_online`` shows every connected user (the open list of the
    original design). By default a user sees only the online users who are their
    friends or share a room with them: who is online is nobody else's business."""

    cluster: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Whether this server is one node of several on one database: it then names
    what its batches changed for the others (:meth:`ChatServer.take_news`: the
    users whose messages it stored, pushes, ended sessions, presence) for the
    runtime to tell the other nodes (:meth:`ChatServer.receive_news`)."""

    max_violations: int = attrs.field(default=16, validator=positive_int)
    """Protocol violations (undecodable payloads, messages only a server may send)
    tolerated per connection; the next one closes the connection."""
