"""The adapter interface every signaling protocol implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Prepare = Callable[[Any], None]
"""Called with the RTCPeerConnection once its receivers exist and before media can flow."""


class SignalingError(Exception):
    """A signaling failure with a stable report ``code`` (see probe.report.FAILURE_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Signaling(Protocol):
    kind: str
    """Report's ``target.signaling`` (``whep``, ``janus``)."""
    room: str | None
    """Room / mountpoint the URL names, if any."""
    resource: str | None
    """Session resource on the server once joined (WHEP Location), for the report and for leaving."""
    signaling_ms: float | None
    """Duration of the offer/answer exchange, ms (set by ``join``)."""

    async def join(self, pc: Any, prepare: Prepare, now_ms: Callable[[], float]) -> None:
        """Negotiate ``pc`` (receive video+audio). Raises SignalingError with a stable code."""

    async def leave(self) -> None:
        """Tear the session down on the server (never raises)."""

    # Optional: ``async def wait_lost(self) -> SignalingError`` returns when the server has lost the
    # session mid-watch (e.g. Janus forgot it); the session then ends early with that failure.


AsyncFn = Callable[[], Awaitable[None]]
