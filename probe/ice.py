"""Which local addresses ICE may use, and the UDP receive buffer of the sockets it opens.

aioice gathers host candidates on every interface except loopback, and aiortc's default configuration
adds a public STUN server. A probe must never reach out on its own, and tests run on loopback, so:
- callers always pass ``RTCConfiguration(iceServers=[])`` unless the user configured servers;
- ``restrict_host_addresses(["127.0.0.1"])`` limits host candidates to the given addresses (process-wide:
  aioice reads a module-level function; the last call wins, which suits one target per process).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aioice.ice

_original_get_host_addresses = aioice.ice.get_host_addresses

#: Receive buffer asked for on every ICE socket, bytes. The kernel default (212,992) overflows at
#: ~15-20 viewers per process (UDP RcvbufErrors), see docs/performance.md.
RCVBUF_BYTES = 4 * 1024 * 1024


def restrict_host_addresses(addresses: Iterable[str] | None) -> None:
    """Gather host candidates only on ``addresses`` (None restores aioice's default: all but loopback)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    fixed = [str(ipaddress.ip_address(a)) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def addresses_for_target(host: str) -> list[str] | None:
    """Loopback target → gather on 127.0.0.1 only; otherwise None (aioice's default interfaces)."""
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return None
    return ["127.0.0.1"] if ip.is_loopback else None


def enlarge_receive_buffers(pc: Any, size: int = RCVBUF_BYTES) -> int | None:
    """Set SO_RCVBUF (SO_RCVBUFFORCE when root) on every ICE socket of ``pc``.

    Returns the smallest buffer the kernel granted, bytes (Linux reports twice the requested value,
    we report what getsockopt says), or None if no socket was found.
    """
    granted: list[int] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        connection = dtls.transport.iceGatherer._connection
        for protocol in getattr(connection, "_protocols", []):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            force = getattr(socket, "SO_RCVBUFFORCE", None)
            try:
                if force is None:
                    raise PermissionError
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except (PermissionError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            granted.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return min(granted) if granted else None
