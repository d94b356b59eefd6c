"""Per-SSRC receive statistics, counted by the probe itself (aiortc's getStats() mixes media and RTX).

Definitions (docs/metrics.md):
- ``packetsReceived``: original (non-RTX) media packets received, duplicates included (RFC 3550 §6.4.1).
- ``expected`` = extended highest sequence number − first sequence number + 1.
- ``packetsLost`` = expected − packetsReceived (RFC 3550 cumulative lost; repairs by RTX do not count).
- ``residual lost``: sequence numbers in [first, highest] never received, neither originally nor via RTX.
- ``jitter``: RFC 3550 §6.4.1 / A.8 interarrival jitter over original packets, J += (|D| − J) / 16,
  in RTP clock units; ``jitter_ms`` = J / clock_rate · 1000.
- ``payload_bytes``: RTP payload bytes of original and RTX packets (W3C ``bytesReceived`` counts payload).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _extend(seq: int, last_ext: int) -> int:
    """Extend a 16-bit sequence number to the value closest to ``last_ext``."""
    base = last_ext & ~0xFFFF
    cand = base | seq
    if cand - last_ext > 0x8000:
        cand -= 0x10000
    elif last_ext - cand > 0x8000:
        cand += 0x10000
    return cand


@dataclass
class StreamCounter:
    kind: str
    ssrc: int
    clock_rate: int
    packets_received: int = 0
    rtx_received: int = 0
    payload_bytes: int = 0
    first_ext: int | None = None
    max_ext: int = 0
    nack_count: int = 0
    pli_count: int = 0
    jitter: float = 0.0
    first_arrival_ms: float | None = None
    last_arrival_ms: float | None = None
    _seen: bytearray = field(default_factory=bytearray)
    _transit: float | None = None

    def _mark(self, ext: int) -> None:
        assert self.first_ext is not None
        idx = ext - self.first_ext
        if idx < 0:
            return  # before the first packet we saw: outside the measured range
        if idx >= len(self._seen):
            self._seen.extend(b"\x00" * max(idx + 1 - len(self._seen), 1024))
        self._seen[idx] = 1

    def add_original(self, seq: int, rtp_ts: int, arrival_ms: float, payload_len: int) -> None:
        """An original media packet with 16-bit ``seq`` arrived at ``arrival_ms``."""
        if self.first_ext is None:
            self.first_ext = self.max_ext = seq
            self.first_arrival_ms = arrival_ms
            ext = seq
        else:
            ext = _extend(seq, self.max_ext)
            self.max_ext = max(self.max_ext, ext)
        self._mark(ext)
        self.packets_received += 1
        self.payload_bytes += payload_len
        self.last_arrival_ms = arrival_ms
        # RFC 3550 A.8: transit = arrival (in RTP units) - RTP timestamp
        transit = arrival_ms * self.clock_rate / 1000.0 - rtp_ts
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < 2**31:  # ignore timestamp wraps / restarts
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    def add_rtx(self, original_seq: int, arrival_ms: float, payload_len: int) -> None:
        """A retransmission of ``original_seq`` (the OSN inside the RTX payload) arrived."""
        self.rtx_received += 1
        self.payload_bytes += payload_len
        self.last_arrival_ms = arrival_ms
        if self.first_ext is not None:
            self._mark(_extend(original_seq, self.max_ext))

    @property
    def expected(self) -> int:
        return 0 if self.first_ext is None else self.max_ext - self.first_ext + 1

    @property
    def packets_lost(self) -> int:
        return self.expected - self.packets_received

    @property
    def residual_lost(self) -> int:
        n = self.expected
        return n - sum(self._seen[:n]) if n else 0

    @property
    def jitter_ms(self) -> float:
        return self.jitter / self.clock_rate * 1000.0

    def loss_pct(self) -> float | None:
        """100 · packetsLost / expected; None before any packet."""
        return 100.0 * self.packets_lost / self.expected if self.expected else None

    def residual_loss_pct(self) -> float | None:
        return 100.0 * self.residual_lost / self.expected if self.expected else None
