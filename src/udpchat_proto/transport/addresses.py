"""How per-address limits name a source: by network prefix, not by full address.

An IPv6 host is usually given a whole /64 (RFC 6177) and can send from any of its
2^64 addresses, so a limit keyed by the full address is no limit at all. Every
per-address limit of the transport (handshake rate, connections per address) keys
a source by :func:`address_key`; the chat layer uses the same function so that its
own per-address limits agree.
"""

from __future__ import annotations

import functools
import ipaddress

from .config import TransportConfig

__all__ = ["address_key", "prefix_key"]


def address_key(host: str, config: TransportConfig) -> str:
    """The key of ``host`` for per-address limits under ``config``'s prefix lengths.

    IPv4 addresses (and IPv4-mapped IPv6 ones, as a dual-stack socket reports them)
    are cut to ``config.ipv4_prefix_length`` bits, IPv6 addresses to
    ``config.ipv6_prefix_length``. A host that is not an IP literal is its own key.

    Args:
        host: the host part of a UDP address, as the socket reports it.
        config: where the prefix lengths come from.

    Returns:
        The network in CIDR notation, e.g. ``"192.0.2.7/32"`` or ``"2001:db8:1:2::/64"``.
    """
    return prefix_key(host, config.ipv4_prefix_length, config.ipv6_prefix_length)


@functools.lru_cache(maxsize=4096)
def prefix_key(host: str, ipv4_prefix_length: int, ipv6_prefix_length: int) -> str:
    """:func:`address_key` with the prefix lengths given directly (cached: a busy
    server sees the same few hosts again and again).

    Args:
        host: the host part of a UDP address.
        ipv4_prefix_length: bits kept of an IPv4 address (0 to 32).
        ipv6_prefix_length: bits kept of an IPv6 address (0 to 128).

    Returns:
        The network in CIDR notation, or ``host`` itself if it is not an IP literal.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            # The zone (fe80::1%eth0) names an interface, not part of the address.
            bare = ipaddress.IPv6Address(address.packed)
            return str(ipaddress.IPv6Network((bare, ipv6_prefix_length), strict=False))
    return str(ipaddress.IPv4Network((address, ipv4_prefix_length), strict=False))
