"""W3C webrtc-stats freezes and pauses, as libwebrtc's VideoQualityObserver computes them.

Feed the render time of every frame (ms, any monotonic origin). For the interval d between two
consecutive rendered frames:
- **pause**: d > 5000 ms (W3C ``pauseCount`` / ``totalPausesDuration``). A pause is not also a freeze.
- **freeze**: otherwise, when at least 5 earlier intervals are known and
  d ≥ max(3 · avg, avg + 150 ms), avg = mean of the last 30 intervals before this one
  (W3C ``freezeCount`` / ``totalFreezesDuration``; the whole interval counts as frozen).
Every interval, freeze or not, then joins the 30-interval window (as in libwebrtc).
``finish(end_ms)`` treats the session end as a last frame: an interval still open then that already
qualifies is counted and flagged ``in_progress``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 30
MIN_SAMPLES = 5
MIN_INCREASE_MS = 150.0
PAUSE_MS = 5000.0


@dataclass(frozen=True, slots=True)
class Stall:
    kind: str
    """``freeze`` or ``pause``."""
    start_ms: float
    """Render time of the last frame before the gap."""
    end_ms: float
    """Render time of the frame that ended it (or the session end, if in progress)."""
    in_progress: bool = False

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


def freeze_threshold_ms(avg_ms: float) -> float:
    """The W3C freeze threshold for a mean inter-frame interval ``avg_ms``."""
    return max(3.0 * avg_ms, avg_ms + MIN_INCREASE_MS)


@dataclass
class FreezeDetector:
    """Incremental freeze/pause detector; ``stalls`` lists every freeze and pause found."""

    stalls: list[Stall] = field(default_factory=list)
    _intervals: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _last_ms: float | None = None
    _sum: float = 0.0

    def add_frame(self, t_ms: float) -> Stall | None:
        """Record a rendered frame at ``t_ms``; returns the freeze or pause it ends, if any."""
        last, self._last_ms = self._last_ms, t_ms
        if last is None:
            return None
        stall = self._classify(last, t_ms, in_progress=False)
        self._push(t_ms - last)
        if stall is not None:
            self.stalls.append(stall)
        return stall

    def _classify(self, start: float, end: float, *, in_progress: bool) -> Stall | None:
        d = end - start
        if d > PAUSE_MS:
            return Stall("pause", start, end, in_progress)
        if len(self._intervals) >= MIN_SAMPLES:
            avg = self._sum / len(self._intervals)
            if d >= freeze_threshold_ms(avg):
                return Stall("freeze", start, end, in_progress)
        return None

    def _push(self, d: float) -> None:
        if len(self._intervals) == WINDOW:
            self._sum -= self._intervals[0]
        self._intervals.append(d)
        self._sum += d

    def finish(self, end_ms: float) -> Stall | None:
        """Close the session at ``end_ms``: count a freeze/pause still under way, flagged in_progress."""
        if self._last_ms is None or end_ms <= self._last_ms:
            return None
        stall = self._classify(self._last_ms, end_ms, in_progress=True)
        if stall is not None:
            self.stalls.append(stall)
        return stall

    def current_threshold_ms(self) -> float | None:
        """The freeze threshold that applies to the next interval (None until 5 intervals are known)."""
        if len(self._intervals) < MIN_SAMPLES:
            return None
        return freeze_threshold_ms(self._sum / len(self._intervals))

    def totals(self, kind: str) -> tuple[int, float]:
        """(count, total duration in seconds) of stalls of ``kind``."""
        chosen = [s for s in self.stalls if s.kind == kind]
        return len(chosen), sum(s.duration_ms for s in chosen) / 1000.0
