"""Which local addresses ICE may use, and the UDP receive buffer of the sockets it opens.

aioice gathers host candidates on every interface except loopback (through the module-level
``aioice.ice.get_host_addresses``), and aiortc's default configuration adds a public STUN server. A
probe must never reach out on its own, and tests run on loopback, so:
- callers always pass ``RTCConfiguration(iceServers=[])`` unless the user configured servers;
- ``host_addresses([...])`` limits host candidates to the given addresses *within a context*: a
  wrapper installed once consults a context variable and defers to aioice's own function elsewhere.
  Tasks inherit the context, so the gathering ``setLocalDescription`` starts sees it, and a probe and
  a room in one process (tests, the demo) each keep their own choice.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aioice.ice

#: Receive buffer asked for on every ICE socket, bytes. The kernel default (212,992) overflows at
#: ~15-20 viewers per process (UDP RcvbufErrors), see docs/performance.md.
RCVBUF_BYTES = 4 * 1024 * 1024

_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "streamqoe_ice_host_addresses", default=None
)


class _Scoped:
    """Replacement for ``aioice.ice.get_host_addresses`` that honours ``host_addresses()``."""

    def __init__(self, fallback: Callable[[bool, bool], list[str]]) -> None:
        self.fallback = fallback

    def __call__(self, use_ipv4: bool, use_ipv6: bool) -> list[str]:
        fixed = _addresses.get()
        if fixed is None:
            return self.fallback(use_ipv4, use_ipv6)
        return [a for a in fixed if (use_ipv6 if ":" in a else use_ipv4)]


def _install() -> None:
    current = aioice.ice.get_host_addresses
    if not isinstance(current, _Scoped):
        aioice.ice.get_host_addresses = _Scoped(current)


@contextlib.contextmanager
def host_addresses(addresses: Iterable[str] | None) -> Iterator[None]:
    """Within this block (and tasks started in it), gather host candidates on ``addresses`` only.

    ``None`` leaves aioice's default (every interface but loopback) in force.
    """
    if addresses is None:
        yield
        return
    fixed = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    _install()
    token = _addresses.set(fixed)
    try:
        yield
    finally:
        _addresses.reset(token)


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
