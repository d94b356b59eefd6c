"""Host candidates for the room's peer connections: loopback (or one chosen address) only.

aioice gathers host candidates on every interface except 127.0.0.1, through the module-level
``aioice.ice.get_host_addresses``. The room needs the opposite: candidates on the address it was told
to use (127.0.0.1 by default) and nowhere else. Instead of replacing that function for the whole
process (which would also change what a probe in the same process gathers), ``host_addresses()``
sets the addresses in a context variable; a wrapper installed once returns them inside that context
and defers to whatever function was there before everywhere else. Tasks inherit the context, so the
gathering that ``RTCPeerConnection.setLocalDescription`` starts sees it.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterable, Iterator

import aioice.ice

_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "room_ice_host_addresses", default=None
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
def host_addresses(addresses: Iterable[str]) -> Iterator[None]:
    """Within this block (and tasks started in it), ICE gathers host candidates on ``addresses`` only."""
    fixed = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    _install()
    token = _addresses.set(fixed)
    try:
        yield
    finally:
        _addresses.reset(token)
