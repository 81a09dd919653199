"""The transport layer: secure, reliable, ordered messages over UDP (sans-IO).

It knows nothing of chat. A connection starts with a Noise NX handshake (the
client learns and checks the server's static key), then carries an ordered stream
of messages in ChaCha20-Poly1305-sealed datagrams, with acknowledgement ranges,
retransmission, a replay window, keepalives, an idle timeout and a close.

Public API, for wire-level use (an application embeds the chat roles of
:mod:`udpchat_proto` instead): the two roles (:class:`ClientTransport`,
:class:`ServerTransport`), their events and states, and the pieces another
implementation or a benchmark builds on (the Noise handshake and cipher states,
the packet and frame codecs, the replay window). What the chat's roles share with
them is exported by :mod:`udpchat_proto` alone: ``TransportConfig``, ``Address``,
``CloseCode``, ``ServerKey`` and ``fingerprint``.

The modules behind it (internal: import the names above, not from these):

========================  ======================================================
``addresses``             ``address_key``: per-address limits key by prefix
``client``                ``ClientTransport``: the client's handshake and its RETRYs
``server``                ``ServerTransport``: handshakes, routing, per-address limits
``retry``                 the stateless RETRY token (mint, check)
``connection``            one connection after the keys exist (both roles)
``config``                ``TransportConfig``, every limit and its reason
``events``                the events and ``CloseCode``
``states``                the connection's state table and named timers
``capacity``              at ``max_connections``: whom to end, or refuse (policy)
``handshake``             Noise NX (``HandshakeState``, ``CipherState``)
``keys``                  server keys and their fingerprints
``packets``               the datagram and frame layouts (encoders, decoders)
``replay``                the replay window
``ranges``                acknowledgement ranges (``RangeSet``)
``recovery``              RTT estimation, loss detection and retransmission timeouts
``stream``                the ordered byte stream: fragmentation and reassembly
========================  ======================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from .addresses import address_key
    from .client import ClientTransport
    from .config import MAX_UDP_PAYLOAD, RECEIVE_WINDOW
    from .events import (
        ConnectionAddressChanged,
        ConnectionId,
        ConnectionTerminated,
        HandshakeCompleted,
        PayloadReceived,
        TransportEvent,
    )
    from .handshake import CipherState, HandshakeState
    from .keys import KEY_SIZE
    from .packets import (
        PROLOGUE,
        WIRE_VERSION,
        AckFrame,
        CloseFrame,
        DataPacket,
        Frame,
        HandshakeInitiation,
        HandshakeResponse,
        PathChallengeFrame,
        PathResponseFrame,
        PingFrame,
        Retry,
        StreamFrame,
        decode_frames,
        decode_packet,
        encode_data_header,
        encode_frame,
        encode_frames,
    )
    from .replay import ReplayWindow
    from .server import ServerTransport
    from .states import TransportState

#: Where each public name lives: imported at its first use (``udpchat_proto/_lazy.py``),
#: so that a client does not load the server's handshake limits, nor either role the
#: packet codec's every piece before it needs them.
_EXPORTS: Final = {
    # The two roles, their events and states.
    ".client": ("ClientTransport",),
    ".server": ("ServerTransport",),
    ".events": (
        "ConnectionAddressChanged",
        "ConnectionId",
        "ConnectionTerminated",
        "HandshakeCompleted",
        "PayloadReceived",
        "TransportEvent",
    ),
    ".states": ("TransportState",),
    ".config": ("MAX_UDP_PAYLOAD", "RECEIVE_WINDOW"),
    ".addresses": ("address_key",),
    # The wire: the Noise handshake, the packets and frames, the replay window.
    ".handshake": ("CipherState", "HandshakeState"),
    ".keys": ("KEY_SIZE",),
    ".packets": (
        "PROLOGUE",
        "WIRE_VERSION",
        "AckFrame",
        "CloseFrame",
        "DataPacket",
        "Frame",
        "HandshakeInitiation",
        "HandshakeResponse",
        "PathChallengeFrame",
        "PathResponseFrame",
        "PingFrame",
        "Retry",
        "StreamFrame",
        "decode_frames",
        "decode_packet",
        "encode_data_header",
        "encode_frame",
        "encode_frames",
    ),
    ".replay": ("ReplayWindow",),
}

__all__ = [
    "KEY_SIZE",
    "MAX_UDP_PAYLOAD",
    "PROLOGUE",
    "RECEIVE_WINDOW",
    "WIRE_VERSION",
    "AckFrame",
    "CipherState",
    "ClientTransport",
    "CloseFrame",
    "ConnectionAddressChanged",
    "ConnectionId",
    "ConnectionTerminated",
    "DataPacket",
    "Frame",
    "HandshakeCompleted",
    "HandshakeInitiation",
    "HandshakeResponse",
    "HandshakeState",
    "PathChallengeFrame",
    "PathResponseFrame",
    "PayloadReceived",
    "PingFrame",
    "ReplayWindow",
    "Retry",
    "ServerTransport",
    "StreamFrame",
    "TransportEvent",
    "TransportState",
    "address_key",
    "decode_frames",
    "decode_packet",
    "encode_data_header",
    "encode_frame",
    "encode_frames",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
