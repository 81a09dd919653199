"""The transport layer: secure, reliable, ordered messages over UDP (sans-IO).

It knows nothing of chat. A connection starts with a Noise NX handshake (the
client learns and checks the server's static key), then carries an ordered stream
of messages in ChaCha20-Poly1305-sealed datagrams, with acknowledgement ranges,
retransmission, a replay window, keepalives, an idle timeout and a close.

Public API: the two roles (:class:`ClientTransport`, :class:`ServerTransport`),
their configuration and events, server keys, and the wire-level pieces another
implementation or a benchmark builds on (the Noise handshake and cipher states,
the packet and frame codecs, the replay window). The modules behind it:

========================  ======================================================
``addresses``             :func:`address_key`: per-address limits key by prefix
``client``                :class:`ClientTransport`: the client's handshake and its RETRYs
``server``                :class:`ServerTransport`: handshakes, routing, per-address limits
``retry``                 the stateless RETRY token (mint, check)
``connection``            one connection after the keys exist (both roles)
``config``                :class:`TransportConfig`, every limit and its reason
``events``                the events and :class:`CloseCode`
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

from .addresses import address_key
from .client import ClientTransport
from .config import MAX_UDP_PAYLOAD, RECEIVE_WINDOW, TransportConfig
from .events import (
    Address,
    CloseCode,
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    TransportEvent,
)
from .handshake import CipherState, HandshakeState
from .keys import KEY_SIZE, ServerKey, fingerprint
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

__all__ = [
    "KEY_SIZE",
    "MAX_UDP_PAYLOAD",
    "PROLOGUE",
    "RECEIVE_WINDOW",
    "WIRE_VERSION",
    "AckFrame",
    "Address",
    "CipherState",
    "ClientTransport",
    "CloseCode",
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
    "ServerKey",
    "ServerTransport",
    "StreamFrame",
    "TransportConfig",
    "TransportEvent",
    "TransportState",
    "address_key",
    "decode_frames",
    "decode_packet",
    "encode_data_header",
    "encode_frame",
    "encode_frames",
    "fingerprint",
]
