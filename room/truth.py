"""Ground truth: what the room actually sent to each viewer, for ``GET /rooms/<room>/truth``.

Recorded on the send path (after impairments), so a probe's measurements can be checked against it.
Times are wall-clock ms since the Unix epoch. Field meanings: docs/scenario.md, "Ground truth".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class PacketCounts:
    """RTP packets of one kind handed to the transport (sent) or discarded by an impairment (dropped)."""

    packets_sent: int = 0
    packets_dropped: int = 0
    bytes_sent: int = 0
    """RTP bytes (header + payload, before SRTP) of the packets sent."""

    def to_dict(self) -> dict[str, int]:
        return {
            "packets_sent": self.packets_sent,
            "packets_dropped": self.packets_dropped,
            "bytes_sent": self.bytes_sent,
        }


@dataclass(slots=True)
class FrameEvent:
    """A frame's first packet leaving the room."""

    wall_ms: float
    marker_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"wall_ms": round(self.wall_ms, 1), "marker_seq": self.marker_seq}


@dataclass(slots=True)
class Freeze:
    """A scheduled freeze and what it did on the wire."""

    scheduled_start_ms: float
    """When the schedule froze the video (wall ms)."""
    scheduled_end_ms: float | None = None
    """When the schedule released it (wall ms); None while still frozen."""
    start_ms: float | None = None
    """Last video media packet sent before the gap (wall ms); None if none was sent before."""
    end_ms: float | None = None
    """First video media packet sent after the gap, i.e. the resume keyframe (wall ms); None if not yet."""
    resume_marker_seq: int | None = None
    """Marker seq of the keyframe that ended the freeze."""

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "scheduled_start_ms": r(self.scheduled_start_ms),
            "scheduled_end_ms": r(self.scheduled_end_ms),
            "start_ms": r(self.start_ms),
            "end_ms": r(self.end_ms),
            "duration_ms": None if self.start_ms is None or self.end_ms is None else r(self.end_ms - self.start_ms),
            "resume_marker_seq": self.resume_marker_seq,
        }


@dataclass(slots=True)
class ContentFreeze:
    """A scheduled content freeze (``repeat_ms``) of one rendition: one picture encoded again and again."""

    rendition: str
    scheduled_start_ms: float
    """Window start (room start + ``room_at_ms``), wall ms."""
    scheduled_end_ms: float
    """Window end (start + ``repeat_ms``), wall ms."""
    marker_seq: int
    """Marker seq of the held picture (the first frame encoded in the window)."""
    start_ms: float
    """Capture time of the held picture (the marker's ``capture_ms``), wall ms."""
    end_ms: float | None = None
    """Capture time of the first fresh picture after the window, wall ms; None until there is one."""
    frames_repeated: int = 0
    """Frames encoded (and handed to every subscribed viewer) showing ``marker_seq`` after the first."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rendition": self.rendition,
            "scheduled_start_ms": round(self.scheduled_start_ms, 1),
            "scheduled_end_ms": round(self.scheduled_end_ms, 1),
            "marker_seq": self.marker_seq,
            "start_ms": round(self.start_ms, 1),
            "end_ms": None if self.end_ms is None else round(self.end_ms, 1),
            "frames_repeated": self.frames_repeated,
        }


@dataclass(slots=True)
class ViewerTruth:
    """Everything the room did for one viewer."""

    id: str
    labels: dict[str, str]
    joined_ms: float
    """Wall ms when the WHEP POST was accepted."""
    left_ms: float | None = None
    """Wall ms when the viewer left (DELETE, connection failed/closed, room shutdown)."""
    leave_reason: str | None = None
    connection_states: list[tuple[float, str]] = field(default_factory=list)
    first_video_packet: FrameEvent | None = None
    first_keyframe: FrameEvent | None = None
    video: PacketCounts = field(default_factory=PacketCounts)
    """Media SSRC, first transmissions."""
    rtx: PacketCounts = field(default_factory=PacketCounts)
    """Video retransmissions (RTX SSRC)."""
    audio: PacketCounts = field(default_factory=PacketCounts)
    other: PacketCounts = field(default_factory=PacketCounts)
    dropped_by: Counter[str] = field(default_factory=Counter)
    """Drops by cause: ``random``, ``burst``, ``cap``."""
    rtx_drops: Counter[int] = field(default_factory=Counter)
    """Random or burst drops of retransmissions, per original sequence number (the RTX payload's OSN)."""
    frames_sent: int = 0
    keyframes_sent: int = 0
    last_marker_seq: int | None = None
    marker_repeated_frames: int = 0
    """Frames sent whose marker seq equals the previous frame sent's (a content freeze, as a viewer sees it)."""
    freezes: list[Freeze] = field(default_factory=list)
    resolution_changes: list[dict[str, Any]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)
    """Timeline of the impairment settings in force: {t_ms, ...settings}."""
    pli_received: int = 0
    ssrcs: dict[str, int | None] = field(default_factory=dict)
    """SSRCs of the streams sent: ``video``, ``rtx``, ``audio`` (None if absent)."""
    send_path: str | None = None
    """How media left the room: ``direct``, ``fast`` or ``aiortc`` (``Viewer.send_path_kind``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "labels": dict(self.labels),
            "joined_ms": round(self.joined_ms, 1),
            "left_ms": None if self.left_ms is None else round(self.left_ms, 1),
            "leave_reason": self.leave_reason,
            "connection_states": [{"t_ms": round(t, 1), "state": s} for t, s in self.connection_states],
            "first_video_packet": self.first_video_packet.to_dict() if self.first_video_packet else None,
            "first_keyframe": self.first_keyframe.to_dict() if self.first_keyframe else None,
            "video": self.video.to_dict(),
            "rtx": self.rtx.to_dict(),
            "audio": self.audio.to_dict(),
            "other_rtp": self.other.to_dict(),
            "dropped_by": dict(self.dropped_by),
            "rtx_dropped_times": {str(k): n for k, n in sorted(Counter(self.rtx_drops.values()).items())},
            "frames_sent": self.frames_sent,
            "keyframes_sent": self.keyframes_sent,
            "last_marker_seq": self.last_marker_seq,
            "marker_repeated_frames": self.marker_repeated_frames,
            "freezes": [f.to_dict() for f in self.freezes],
            "resolution_changes": list(self.resolution_changes),
            "settings": list(self.settings),
            "pli_received": self.pli_received,
            "ssrcs": dict(self.ssrcs),
            "send_path": self.send_path,
        }


def classify_freezes(report: dict[str, Any], truth: dict[str, Any], margin_ms: float = 50.0,
                     seen: Iterable[tuple[float, float]] = ()) -> dict[str, list[Any]]:
    """A probe report's freezes (wire JSON ``freeze_start`` events) by what explains them, given the
    truth of the room it watched:

    * ``host_stall``: the probe's own process could not run then (the probe flags these itself);
    * ``room_late``: the room's encoder ran late then (``encoders.*.late``): the room, starved, really
      sent nothing; the probe was right;
    * ``seen_stall``: the caller saw a stall then (``seen``: wall-clock ms intervals, e.g. a test
      watching the event loop the room and the probe share);
    * ``unexplained``: none of these: the freeze the probe reports has no cause on this machine but the
      stream (or a scheduled impairment).
    """
    t0 = datetime.fromisoformat(report["started_at"].replace("Z", "+00:00")).timestamp() * 1000.0
    late = [(s, e) for enc in truth["encoders"].values() for s, e in enc.get("late", ())]
    seen = list(seen)
    out: dict[str, list[Any]] = {"host_stall": [], "room_late": [], "seen_stall": [], "unexplained": []}
    for e in report["events"]:
        if e["type"] != "freeze_start":
            continue
        start = t0 + e["t_s"] * 1000.0
        end = start + float(e["detail"]["duration_ms"])
        if e["detail"].get("host_stall"):
            out["host_stall"].append(e)
        elif any(s < end + margin_ms and f > start - margin_ms for s, f in late):
            out["room_late"].append(e)
        elif any(s < end + margin_ms and f > start - margin_ms for s, f in seen):
            out["seen_stall"].append(e)
        else:
            out["unexplained"].append(e)
    return out
