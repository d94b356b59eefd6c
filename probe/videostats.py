"""What the viewer saw, from the stream of rendered frames (pure: times are arguments).

Times are ms from the session's t0. A "rendered" frame is a decoded frame handed to the probe
(decode mode) or a complete frame assembled from RTP (no-decode mode). docs/metrics.md defines:
- watch time: first rendered frame → session end.
- stall ratio: (totalFreezesDuration + totalPausesDuration) / watch time: all time the picture stood
  still beyond the W3C threshold, pauses included (a viewer sees a 10 s outage as a stall).
- hd_share: share of watch time during which the last rendered frame had height ≥ 720.
- marker: a frame whose marker seq equals the previous frame's is *repeated* (the picture froze even
  though frames arrive); a jump of k > 1 in seq means k − 1 frames *skipped*. Marker freezes run the
  W3C rule over the times the marker *changed* (content freezes that frame-arrival freezes miss).
- latency: render wall-clock time − marker capture time, per frame, ms.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from probe.freezes import FreezeDetector, Stall
from probe.marker import Marker

HD_HEIGHT = 720


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class VideoStats:
    frames_rendered: int = 0
    frames_assembled: int = 0
    keyframes: int = 0
    first_frame_ms: float | None = None
    first_keyframe_ms: float | None = None
    last_frame_ms: float | None = None
    size: tuple[int, int] | None = None
    resolution_changes: list[tuple[float, int, int]] = field(default_factory=list)
    freezes: FreezeDetector = field(default_factory=FreezeDetector)
    marker_freezes: FreezeDetector = field(default_factory=FreezeDetector)
    marker_frames: int = 0
    marker_repeated: int = 0
    marker_skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    per_second_frames: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    per_second_latency: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    per_second_size: dict[int, tuple[int, int]] = field(default_factory=dict)
    events: list[tuple[float, str, dict[str, object]]] = field(default_factory=list)
    _last_seq: int | None = None
    _hd_ms: float = 0.0
    _ended: Stall | None = None

    def on_assembled(self, t_ms: float, keyframe: bool) -> None:
        """A complete encoded frame left the jitter buffer at ``t_ms``."""
        self.frames_assembled += 1
        if keyframe:
            self.keyframes += 1
            if self.first_keyframe_ms is None:
                self.first_keyframe_ms = t_ms
            self.events.append((t_ms / 1000.0, "keyframe", {}))

    def on_frame(
        self, t_ms: float, width: int | None, height: int | None, marker: Marker | None, wall_ms: float | None
    ) -> None:
        """A frame was rendered at ``t_ms`` (session clock) / ``wall_ms`` (Unix ms, for latency)."""
        if self.first_frame_ms is None:
            self.first_frame_ms = t_ms
        if self.last_frame_ms is not None and self.size is not None and self.size[1] >= HD_HEIGHT:
            self._hd_ms += t_ms - self.last_frame_ms
        self.last_frame_ms = t_ms
        self.frames_rendered += 1
        sec = int(t_ms // 1000)
        self.per_second_frames[sec] += 1
        if width is not None and height is not None and (width, height) != self.size:
            self.size = (width, height)
            self.resolution_changes.append((t_ms / 1000.0, width, height))
            self.events.append((t_ms / 1000.0, "resolution_change", {"width": width, "height": height}))
        if self.size is not None:
            self.per_second_size[sec] = self.size
        stall = self.freezes.add_frame(t_ms)
        if stall is not None:
            self._stall_events(stall, "")
        if marker is not None:
            self._on_marker(t_ms, marker, wall_ms)

    def _on_marker(self, t_ms: float, marker: Marker, wall_ms: float | None) -> None:
        self.marker_frames += 1
        if self._last_seq is not None:
            step = (marker.seq - self._last_seq) % 2**32
            if step == 0:
                self.marker_repeated += 1
                return  # the content did not change: no new sample for the content-freeze rule
            if 1 < step < 2**31:
                self.marker_skipped += step - 1
                self.events.append((t_ms / 1000.0, "marker_skip", {"frames": step - 1}))
        self._last_seq = marker.seq
        stall = self.marker_freezes.add_frame(t_ms)
        if stall is not None and stall.kind == "freeze":
            self.events.append((stall.start_ms / 1000.0, "marker_repeat", {"duration_ms": round(stall.duration_ms, 1)}))
        if wall_ms is not None:
            lat = wall_ms - marker.capture_ms
            self.latencies_ms.append(lat)
            self.per_second_latency[int(t_ms // 1000)].append(lat)

    def _stall_events(self, stall: Stall, suffix: str) -> None:
        kind = stall.kind
        detail: dict[str, object] = {"duration_ms": round(stall.duration_ms, 1)}
        if stall.in_progress:
            detail["in_progress"] = True
        self.events.append((stall.start_ms / 1000.0, f"{kind}_start", detail))
        if not stall.in_progress:
            self.events.append((stall.end_ms / 1000.0, f"{kind}_end", detail))

    def finish(self, end_ms: float) -> None:
        """Close the session at ``end_ms`` (a freeze still under way is counted, flagged in progress)."""
        if self.last_frame_ms is not None and self.size is not None and self.size[1] >= HD_HEIGHT:
            self._hd_ms += max(0.0, end_ms - self.last_frame_ms)
        stall = self.freezes.finish(end_ms)
        if stall is not None:
            self._stall_events(stall, "")
        self._ended = stall
        self.marker_freezes.finish(end_ms)

    # --- results -------------------------------------------------------------------------------
    @property
    def freeze_in_progress(self) -> bool:
        return self._ended is not None

    def watch_time_ms(self, end_ms: float) -> float:
        return 0.0 if self.first_frame_ms is None else max(0.0, end_ms - self.first_frame_ms)

    def hd_share(self, end_ms: float) -> float | None:
        w = self.watch_time_ms(end_ms)
        return None if w <= 0 else min(1.0, self._hd_ms / w)

    def frozen_ms_by_second(self) -> dict[int, float]:
        """Freeze and pause time spread over the seconds each interval spans, ms per second."""
        out: dict[int, float] = defaultdict(float)
        for s in self.freezes.stalls:
            t = s.start_ms
            while t < s.end_ms:
                sec = int(t // 1000)
                nxt = min(s.end_ms, (sec + 1) * 1000.0)
                out[sec] += nxt - t
                t = nxt
        return out
