"""Round-trip time from ICE consent checks, as the transport gives it.

A receive-only aiortc peer gets no RTT from RTCP (only a sender computes one from receiver reports), but
its ICE agent keeps asking the other side for consent to send (RFC 7675): a STUN binding request on the
nominated candidate pair every 4–6 s, answered at once. The time from request to success response is
the round-trip time that W3C webrtc-stats reports as ``RTCIceCandidatePairStats.currentRoundTripTime``.

:class:`StunRtt` times those transactions on the session's own ICE connection. Only requests sent once
(consent checks are sent with ``retransmissions=0``) are timed, so a retransmission timeout never poses
as a round trip; a check that times out gives no sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


class StunRtt:
    """RTT samples (session clock, seconds) of one peer connection's consent checks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.samples: list[tuple[float, float]] = []
        """(when the response arrived, round-trip time), clock seconds."""

    def install(self, pc: Any) -> int:
        """Time the STUN requests of ``pc``'s ICE connections (after gathering); returns how many
        sockets (STUN protocols) are now timed. Uses aioice internals: 0 if they moved."""
        timed = 0
        connections = {id(c): c for c in (_ice_connection(t) for t in pc.getTransceivers()) if c is not None}
        for connection in connections.values():
            for protocol in getattr(connection, "_protocols", ()):
                if getattr(protocol, "_streamqoe_rtt", None) is None:
                    protocol.request = self._timed(protocol.request)
                    protocol._streamqoe_rtt = self
                    timed += 1
        return timed

    def _timed(self, request: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(message: Any, addr: Any, integrity_key: bytes | None = None,
                        retransmissions: int | None = None) -> Any:
            sent = self.clock()
            result = await request(message, addr, integrity_key=integrity_key, retransmissions=retransmissions)
            if retransmissions == 0:
                now = self.clock()
                self.samples.append((now, now - sent))
            return result

        return timed

    def median_ms(self, start: float, end: float) -> float | None:
        """Median RTT of the samples in [start, end] (clock seconds), ms; None without one."""
        inside = [rtt for t, rtt in self.samples if start <= t <= end]
        return round(1000.0 * statistics.median(inside), 2) if inside else None


def _ice_connection(transceiver: Any) -> Any:
    try:
        return transceiver.receiver.transport.transport._connection
    except AttributeError:
        return None
