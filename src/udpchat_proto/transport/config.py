"""Configuration of the transport (both roles), with checked defaults.

Every number has its reason next to it; ``docs/PROTOCOL.md`` (Transport) repeats them.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..config_checks import int_at_least, positive_int, positive_number

__all__ = ["MAX_UDP_PAYLOAD", "RECEIVE_WINDOW", "TransportConfig"]

#: The largest UDP payload over IPv4 (65535 - 8 - 20).
MAX_UDP_PAYLOAD: Final = 65507
#: Protocol constant: a receiver accepts stream bytes up to this far beyond what it
#: has delivered; a sender's ``stream_window_bytes`` may not exceed it. Fixed rather
#: than negotiated, so that both sides agree with no transport parameters.
RECEIVE_WINDOW: Final = 1024 * 1024


@attrs.frozen(kw_only=True)
class TransportConfig:
    """Limits and timers of a transport endpoint. Defaults suit the public chat server.

    Raises:
        ValueError: a field is out of range, or fields contradict each other
            (``keepalive_interval >= idle_timeout``, ``min_rto > max_rto``, a send
            buffer smaller than one message, ...).
    """

    max_datagram_size: int = attrs.field(default=1200, validator=positive_int)
    """Largest datagram sent, bytes. 1200 is QUIC's minimum (RFC 9000, 14): it fits the
    IPv6 minimum MTU of 1280 with headers, so it is never fragmented by IP. Must be
    1200 to 65507."""
    idle_timeout: float = attrs.field(default=30.0, validator=positive_number)
    """Seconds with nothing received before the connection ends with
    ``IDLE_TIMEOUT``. 30 s (QUIC implementations default to 30 s) is the usual UDP NAT
    binding lifetime's floor (RFC 4787 asks for at least 2 minutes, many boxes keep 30 s)."""
    keepalive_interval: float = attrs.field(default=10.0, validator=positive_number)
    """Seconds without sending anything, while established, before a PING goes out.
    10 s keeps NAT bindings open (WireGuard's persistent keepalive is typically 25 s)
    and gives three chances to be heard within ``idle_timeout``."""
    handshake_timeout: float = attrs.field(default=10.0, validator=positive_number)
    """Seconds a handshake may take (client: until the response; server: a half-open
    handshake until the client's first packet). A client that is willing to wait
    longer (the CLI's ``--timeout``) sets its own; the server's bounds how long a
    half-open handshake holds its slot."""
    max_handshake_interval: float = attrs.field(default=0.5, validator=positive_number)
    """Client: the longest wait before the initiation is sent again, seconds. The
    retransmission timeout doubles from the initial RTO (about 1 s) as for data, but
    never beyond this, so a client keeps trying at a steady pace instead of giving up
    after four tries: through a path losing 30% each way a round trip succeeds 49% of
    the time, and 0.5 s gives 20 tries within the default 10 s handshake timeout (a
    failure rate under 1 in 10^5) for 2.4 KB/s of initiations while it lasts."""
    max_message_size: int = attrs.field(default=4 * 1024 * 1024, validator=positive_int)
    """Largest payload ``send`` accepts and the receiver reassembles, bytes: the
    codec's ``MAX_ENCODED_SIZE`` (4 MiB)."""
    max_receive_message_size: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )
    """Largest message this side reassembles from its peer, bytes; a larger declared
    message is a violation. None (the default) means ``max_message_size``. A server
    whose requests are small sets its own (the chat server: about 64 KiB) so that a
    client cannot make it hold a 4 MiB message in reassembly; what it sends stays
    bounded by ``max_message_size``."""
    max_send_buffer_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=positive_int)
    """Most bytes queued and not yet acknowledged per connection; ``send`` raises
    ``LocalProtocolError`` beyond it (check ``send_buffer_size`` to back off). Two
    largest messages, so one can be queued while another is in flight."""
    stream_window_bytes: int = attrs.field(default=256 * 1024, validator=positive_int)
    """Most stream bytes sent beyond the lowest unacknowledged one (flow control). At
    most ``RECEIVE_WINDOW`` (1 MiB); 256 KiB lets the packet window run freely under
    loss while bounding what the receiver holds out of order."""
    max_in_flight_packets: int = attrs.field(default=32, validator=positive_int)
    """Most ack-eliciting packets unacknowledged at once: a fixed congestion window of
    32 x 1200 = 38 KB, about three of QUIC's initial windows (RFC 9002: 10 packets),
    ENet's default of a 32 KB reliable window in spirit. There is no congestion control
    beyond it."""
    max_half_open: int = attrs.field(default=1024, validator=positive_int)
    """Server: most handshakes answered and not yet confirmed by the client's first
    packet. Each holds about 5.5 KB (measured), so a spoofed flood costs at most 6 MB;
    real clients confirm within one RTT, so 1024 absorbs ~100 new clients per second
    even if every one of them took the whole 10 s half-open lifetime."""
    max_connections_per_address: int = attrs.field(default=256, validator=positive_int)
    """Server: most connections (half-open, established or closing) started from one
    source IP. Each may buffer about 1 MiB out of order plus a message being
    reassembled, so without a cap one address could open connections until memory
    runs out (at 50 handshakes a second). 256 leaves room for many users behind one
    NAT, and for scripted clients whose short connections are still closing."""
    retry_threshold: int = attrs.field(default=128, validator=positive_int)
    """Server: half-open handshakes at or above which an initiation must carry a valid
    RETRY token (a proven source address) to be accepted; one without gets a 33-byte
    stateless RETRY instead (QUIC Retry, WireGuard's cookie reply under load). Spoofed
    sources never see the RETRY, so a flood fills at most this many half-open slots
    and the rest of ``max_half_open`` stays for clients that proved their address.
    128 is far above what honest clients hold at once (each confirms within one RTT)
    and below ``max_connections_per_address`` (256), so even a flood from one IP
    reaches it; under it nobody pays the extra round trip. A value at or above
    ``max_half_open`` turns RETRY off (the half-open cap is checked first)."""
    retry_token_lifetime: float = attrs.field(default=10.0, validator=positive_number)
    """Server: seconds a RETRY token stays valid. Long enough for a client to resend
    its initiation through loss (20 tries at ``max_handshake_interval``); a client that
    outlives it gets a new RETRY. Tokens carry their issue time under the MAC, so no
    table of issued tokens exists."""
    ipv4_prefix_length: int = attrs.field(default=32, validator=int_at_least(0))
    """Server: per-address limits (handshake rate, connections per address) key an
    IPv4 source by this prefix. 32: one IPv4 address is what one host (or one NAT)
    gets. 0 to 32."""
    ipv6_prefix_length: int = attrs.field(default=64, validator=int_at_least(0))
    """Server: per-address limits key an IPv6 source by this prefix. 64: the
    smallest subnet a site is given (RFC 6177), so one host can pick from 2^64
    addresses; keyed by the full address a /64 once held 600 half-open handshakes.
    0 to 128."""
    max_connections: int = attrs.field(default=4096, validator=positive_int)
    """Server: most open (established, not closing) connections. At the cap, a new
    connection whose handshake completes makes room by ending an *unprotected*
    one with ``SERVER_BUSY``: one the application did not mark with
    ``ServerTransport.set_protected`` (the chat server protects logged-in users,
    so anonymous and handshake-only connections go first and a user is never
    ended for a stranger). Fairly across address prefixes: each prefix has an
    equal share of the table, and the prefix holding the most unprotected
    connections loses the one of them silent the longest, so an attacker's
    prefixes churn among themselves while a prefix within its share keeps its
    connections. When every other connection is protected, the new one is
    refused instead, with ``SERVER_BUSY`` and the reason. An idle connection
    costs the server about 4.7 KB (tracemalloc, see ``docs/PROTOCOL.md``), so a
    full table is about 19 MB; their buffers are bounded by
    ``max_buffered_bytes``. 4096 is well beyond a small server's users."""
    max_buffered_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=positive_int)
    """Server: most stream bytes held over all connections (unacknowledged output plus
    out-of-order and partial input). Beyond it the connection holding the most ends
    with ``RESOURCE_LIMIT`` and its buffers are freed, until the total fits. One
    connection can hold ``max_send_buffer_bytes`` + 1 MiB + a message, so without a
    global budget a few hundred slow readers would exhaust memory; 256 MiB suits a
    small server."""
    handshakes_per_address_per_second: float = attrs.field(default=50.0, validator=positive_number)
    """Server: sustained handshakes (Diffie-Hellman work) allowed per source IP, as
    WireGuard's ratelimiter (``INITIATIONS_PER_SECOND = 50``)."""
    handshake_burst: int = attrs.field(default=5, validator=positive_int)
    """Server: handshakes allowed back to back per source IP (WireGuard's
    ``INITIATIONS_BURSTABLE = 5``)."""
    initial_rtt: float = attrs.field(default=0.333, validator=positive_number)
    """RTT assumed before the first sample, seconds: RFC 9002's kInitialRtt, giving a
    first timeout of about 1 s as RFC 6298 asks."""
    min_rto: float = attrs.field(default=0.2, validator=positive_number)
    """Smallest retransmission timeout, seconds: Linux TCP's 200 ms (RFC 6298 asks 1 s,
    which is too slow for a chat on a good path; RFC 9002 has no floor beyond 1 ms)."""
    max_rto: float = attrs.field(default=10.0, validator=positive_number)
    """Largest retransmission timeout after backoff, seconds. At most ``idle_timeout``
    so a stalled connection still probes several times before it times out."""
    max_ack_delay: float = attrs.field(default=0.025, validator=positive_number)
    """Longest an acknowledgement of a lone packet is delayed, seconds: RFC 9000's
    default max_ack_delay (25 ms). Two packets, or one out of order, are acknowledged
    at once."""
    ack_timer_slack: float = attrs.field(default=0.005, validator=positive_number)
    """How much earlier than ``max_ack_delay`` the ACK_DELAY timer fires, seconds, so
    that the acknowledgement leaves within ``max_ack_delay`` even when the event loop
    wakes late: RFC 9000, 18.2, counts the expected lateness of the receiver's timers
    in its max_ack_delay. With the timer at 25 ms, the server on a 2-core machine at
    load average 4 acknowledged each of 200 lone PINGs late (on 127.0.0.1: median
    25.6 ms, p90 28.5 ms); with it at 20 ms, 7 of 200 (median 20.6 ms, p90 24.3 ms).
    Less than ``max_ack_delay``."""

    def __attrs_post_init__(self) -> None:
        if not 1200 <= self.max_datagram_size <= MAX_UDP_PAYLOAD:
            raise ValueError(
                f"max_datagram_size must be 1200 to {MAX_UDP_PAYLOAD}, got {self.max_datagram_size}"
            )
        if self.keepalive_interval >= self.idle_timeout:
            raise ValueError("keepalive_interval must be shorter than idle_timeout")
        if self.ack_timer_slack >= self.max_ack_delay:
            raise ValueError("ack_timer_slack must be less than max_ack_delay")
        if self.min_rto > self.max_rto:
            raise ValueError("min_rto must not exceed max_rto")
        if self.max_rto > self.idle_timeout:
            raise ValueError("max_rto must not exceed idle_timeout")
        if self.max_send_buffer_bytes < self.max_message_size + 8:
            raise ValueError("max_send_buffer_bytes must hold one message of max_message_size")
        if self.stream_window_bytes > RECEIVE_WINDOW:
            raise ValueError(f"stream_window_bytes must be at most {RECEIVE_WINDOW}")
        if self.ipv4_prefix_length > 32:
            raise ValueError("ipv4_prefix_length must be 0 to 32")
        if self.ipv6_prefix_length > 128:
            raise ValueError("ipv6_prefix_length must be 0 to 128")
        if self.max_message_size > 1 << 30 or self.receive_message_limit > 1 << 30:
            raise ValueError("max_message_size must be at most 1 GiB")

    @property
    def receive_message_limit(self) -> int:
        """The largest message accepted from the peer: ``max_receive_message_size``,
        or ``max_message_size`` when it is None."""
        if self.max_receive_message_size is None:
            return self.max_message_size
        return self.max_receive_message_size
