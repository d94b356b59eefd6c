"""The probe report: the wire format between probe and collector.

Standard library only, so the collector and analysis never import aiortc or av.

Conventions (docs/metrics.md has every definition):
- An envelope (``Report``) around the measurement (``Summary``, ``timeline``, ``events``).
- Times inside a report are seconds or milliseconds relative to the session's start (the probe's t0,
  taken just before the first signaling request); ``started_at`` is absolute UTC.
- Units are in field names (``ttff_ms``, ``bitrate_kbps``); W3C webrtc-stats names keep the W3C
  spelling and unit (``totalFreezesDuration`` is in seconds).
- ``None`` means "not measured" (and is never written as 0).
- Every dataclass validates on construction and raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = 1

#: Stable failure codes. ``whep_http_NNN`` and ``janus_http_NNN`` carry the HTTP status.
FAILURE_CODES = frozenset(
    {
        "url_invalid",  # the target URL cannot be parsed or has an unsupported scheme
        "url_unreachable",  # TCP connect / DNS failed, or the signaling server did not answer in time
        "bad_sdp",  # the answer (or offer, for Janus) is not SDP aiortc can apply
        "ice_timeout",  # ICE did not reach "connected" within the bound
        "ice_failed",  # ICE reported "failed"
        "dtls_timeout",  # ICE connected but DTLS did not complete within the bound
        "dtls_failed",  # the DTLS handshake failed
        "no_media",  # connected, but no RTP arrived within the bound
        "no_video",  # RTP arrived, but no video frame could be produced within the bound
        "janus_error",  # Janus answered with an error not covered below
        "janus_unknown_mountpoint",  # Janus streaming plugin error 455: no such mountpoint
        "janus_session_timeout",  # Janus forgot the session (timed out / destroyed)
        "probe_error",  # the probe itself failed (a bug); the message has the exception
    }
)
_HTTP_FAILURE = re.compile(r"^(whep|janus)_http_[1-5][0-9][0-9]$")

SIGNALING_KINDS = frozenset({"whep", "janus"})
MODES = frozenset({"decode", "decode-no-loop-filter", "no-decode"})
EVENT_TYPES = frozenset(
    {
        "freeze_start",
        "freeze_end",
        "pause_start",
        "pause_end",
        "resolution_change",
        "keyframe",
        "marker_repeat",
        "marker_skip",
        "connection_state",
        "host_stall",
        "audio_gap",
        "reconnect",
        "failure",
    }
)
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_PROBE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_failure_code(code: str) -> bool:
    """True if ``code`` is one of the stable failure codes."""
    return code in FAILURE_CODES or bool(_HTTP_FAILURE.match(code))


def _need(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {why}")


def _num(value: Any, name: str, *, lo: float = 0.0, hi: float = math.inf, optional: bool = True) -> None:
    if value is None:
        _need(optional, name, "is required")
        return
    _need(
        isinstance(value, int | float) and not isinstance(value, bool), name, f"must be a number, got {value!r}"
    )
    _need(math.isfinite(value), name, "must be finite")
    _need(lo <= value <= hi, name, f"must be in [{lo}, {hi}], got {value}")


def _int(value: Any, name: str, *, lo: int = 0, hi: int = 2**63 - 1, optional: bool = True) -> None:
    if value is None:
        _need(optional, name, "is required")
        return
    _need(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
    _need(lo <= value <= hi, name, f"must be in [{lo}, {hi}], got {value}")


def _str(value: Any, name: str, *, max_len: int = 256, optional: bool = False) -> None:
    if value is None:
        _need(optional, name, "is required")
        return
    _need(isinstance(value, str), name, f"must be a string, got {type(value).__name__}")
    _need(len(value) <= max_len, name, f"longer than {max_len} characters")


T = TypeVar("T", bound="_Record")


class _Record:
    """Shared to_dict/from_dict for flat records whose fields are plain JSON values."""

    _nested: ClassVar[dict[str, type[_Record]]] = {}
    _nested_lists: ClassVar[dict[str, type[_Record]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Record):
                v = v.to_dict()
            elif isinstance(v, tuple) and v and isinstance(v[0], _Record):
                v = [x.to_dict() for x in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[T], data: Any, where: str = "") -> T:
        """Build from a JSON object; ``ValueError`` names the offending field (dotted path)."""
        prefix = f"{where}." if where else ""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where or cls.__name__}: must be an object")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{prefix}{unknown[0]}: unknown field")
        kwargs: dict[str, Any] = {}
        for name in known:
            if name not in data:
                continue
            v = data[name]
            if name in cls._nested and v is not None:
                v = cls._nested[name].from_dict(v, prefix + name)
            elif name in cls._nested_lists:
                if not isinstance(v, list):
                    raise ValueError(f"{prefix}{name}: must be a list")
                v = tuple(cls._nested_lists[name].from_dict(x, f"{prefix}{name}[{i}]") for i, x in enumerate(v))
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[name] = v
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            missing = str(e).split("'")[1] if "'" in str(e) else str(e)
            raise ValueError(f"{prefix}{missing}: is required") from None
        except ValueError as e:
            raise ValueError(f"{prefix}{e}") from None


@dataclass(frozen=True)
class Target(_Record):
    """What the probe joined."""

    url: str
    """The URL given to the probe (credentials stripped)."""
    signaling: str
    """Signaling adapter used: ``whep`` or ``janus``."""
    room: str | None = None
    """Room or mountpoint name, when the URL names one."""

    def __post_init__(self) -> None:
        _str(self.url, "url", max_len=2048)
        _need(self.signaling in SIGNALING_KINDS, "signaling", f"must be one of {sorted(SIGNALING_KINDS)}")
        _str(self.room, "room", max_len=128, optional=True)


@dataclass(frozen=True)
class JoinPhases(_Record):
    """Join phases in ms from the probe's t0 (just before the first signaling request); None = not reached."""

    signaling_ms: float | None = None
    """Offer sent → answer received (for Janus: create → offer received → answer acknowledged)."""
    ice_connected_ms: float | None = None
    """t0 → ICE connection state ``connected``."""
    dtls_connected_ms: float | None = None
    """t0 → DTLS handshake complete (SRTP keys ready)."""
    first_rtp_ms: float | None = None
    """t0 → first RTP packet of any media stream received."""
    first_keyframe_ms: float | None = None
    """t0 → first complete video keyframe assembled."""
    ttff_ms: float | None = None
    """t0 → first video frame decoded (no-decode mode: first complete keyframe)."""
    first_audio_ms: float | None = None
    """t0 → first audio frame."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _num(getattr(self, f.name), f.name, hi=86_400_000)


@dataclass(frozen=True)
class ResolutionChange(_Record):
    """The frame size changed at ``t_s`` (seconds from t0)."""

    t_s: float
    width: int
    height: int

    def __post_init__(self) -> None:
        _num(self.t_s, "t_s", optional=False, hi=86_400)
        _int(self.width, "width", lo=1, hi=16384, optional=False)
        _int(self.height, "height", lo=1, hi=16384, optional=False)


@dataclass(frozen=True)
class VideoSummary(_Record):
    """What the viewer saw. Freeze/pause definitions follow W3C webrtc-stats (docs/metrics.md)."""

    framesReceived: int
    """Complete frames assembled from RTP (decode and no-decode modes)."""
    framesDecoded: int | None
    """Frames decoded (None in no-decode mode)."""
    keyframesReceived: int
    """Complete keyframes assembled."""
    freezeCount: int
    """W3C freezes: inter-frame interval ≥ max(3·avg, avg + 150 ms), avg over the last 30 intervals (≥ 5)."""
    totalFreezesDuration: float
    """Sum of freeze intervals, seconds (W3C unit)."""
    freeze_in_progress: bool
    """A freeze was under way when the session ended; it is included in the two fields above."""
    pauseCount: int
    """Intervals > 5 s with no frame (W3C pause)."""
    totalPausesDuration: float
    """Sum of pause intervals, seconds."""
    watch_time_s: float
    """First frame → end of session, seconds."""
    stall_ratio: float | None
    """totalFreezesDuration / watch_time_s (None before a first frame)."""
    stalls_per_minute: float | None
    """freezeCount per minute of watch time."""
    fps_mean: float | None
    """Frames rendered / watch time."""
    width: int | None
    """Last frame width, pixels."""
    height: int | None
    """Last frame height, pixels."""
    hd_share: float | None
    """Share of watch time at height ≥ 720."""
    resolution_timeline: tuple[ResolutionChange, ...] = ()
    """Every change of frame size (the first frame's size included)."""
    marker_frames: int = 0
    """Frames whose marker decoded (CRC ok)."""
    marker_repeated_frames: int | None = None
    """Frames showing the same marker sequence number as the previous frame (a frozen picture)."""
    marker_skipped_frames: int | None = None
    """Sequence numbers never seen between two decoded markers (frames lost before display)."""
    marker_freeze_count: int | None = None
    """Content freezes: the W3C freeze rule applied to the times the marker *changed* (a picture that
    stands still while frames keep arriving counts here, not in freezeCount)."""
    marker_frozen_s: float | None = None
    """Total duration of those content freezes, seconds."""
    latency_p50_ms: float | None = None
    """Glass-to-glass latency (decode time − marker capture time), median, ms."""
    latency_p95_ms: float | None = None
    """Glass-to-glass latency, 95th percentile, ms."""
    latency_clock: str | None = None
    """Clock source for latency: ``same_host`` (one wall clock) or ``ntp`` (synced hosts)."""

    _nested_lists: ClassVar[dict[str, type[_Record]]] = {"resolution_timeline": ResolutionChange}

    def __post_init__(self) -> None:
        for name in ("framesReceived", "keyframesReceived", "freezeCount", "pauseCount", "marker_frames"):
            _int(getattr(self, name), name, optional=False)
        for name in ("framesDecoded", "marker_repeated_frames", "marker_skipped_frames", "marker_freeze_count"):
            _int(getattr(self, name), name)
        for name in ("totalFreezesDuration", "totalPausesDuration", "watch_time_s"):
            _num(getattr(self, name), name, optional=False, hi=86_400)
        _need(isinstance(self.freeze_in_progress, bool), "freeze_in_progress", "must be a boolean")
        _num(self.stall_ratio, "stall_ratio", hi=1.0)
        _num(self.hd_share, "hd_share", hi=1.0)
        _num(self.stalls_per_minute, "stalls_per_minute", hi=1e6)
        _num(self.fps_mean, "fps_mean", hi=1000)
        _int(self.width, "width", lo=1, hi=16384)
        _int(self.height, "height", lo=1, hi=16384)
        for name in ("latency_p50_ms", "latency_p95_ms"):
            _num(getattr(self, name), name, lo=-86_400_000, hi=86_400_000)
        _num(self.marker_frozen_s, "marker_frozen_s", hi=86_400)
        _need(self.latency_clock in (None, "same_host", "ntp"), "latency_clock", "must be same_host or ntp")


@dataclass(frozen=True)
class StreamStats(_Record):
    """Receive statistics of one media SSRC (RTX excluded), counted by the probe itself."""

    kind: str
    """``video`` or ``audio``."""
    ssrc: int
    packetsReceived: int
    """Media packets received, originals and RTX-recovered counted once."""
    packetsLost: int
    """RFC 3550: expected − received, before retransmission repairs (can be negative for duplicates)."""
    loss_pct: float | None
    """100 · packetsLost / expected."""
    residual_loss_pct: float | None
    """Loss left after retransmission: sequence numbers never received, original nor RTX, / expected."""
    jitter_ms: float | None
    """RFC 3550 interarrival jitter, converted from RTP clock units to ms."""
    bitrate_kbps: float | None
    """Media payload+header bits received / session duration after first packet, kbit/s."""
    nackCount: int
    """RTCP NACK packets sent."""
    pliCount: int
    """RTCP PLI packets sent."""
    retransmittedPacketsReceived: int = 0
    """RTX packets received for this SSRC."""

    def __post_init__(self) -> None:
        _need(self.kind in ("video", "audio"), "kind", "must be video or audio")
        _int(self.ssrc, "ssrc", hi=2**32 - 1, optional=False)
        _int(self.packetsReceived, "packetsReceived", optional=False)
        _int(self.packetsLost, "packetsLost", lo=-(2**31), hi=2**31, optional=False)
        _num(self.loss_pct, "loss_pct", lo=-100, hi=100)
        _num(self.residual_loss_pct, "residual_loss_pct", hi=100)
        _num(self.jitter_ms, "jitter_ms", hi=1e6)
        _num(self.bitrate_kbps, "bitrate_kbps", hi=1e7)
        for name in ("nackCount", "pliCount", "retransmittedPacketsReceived"):
            _int(getattr(self, name), name, optional=False)


@dataclass(frozen=True)
class AudioSummary(_Record):
    """What the listener heard."""

    framesReceived: int
    """Audio frames (Opus packets) received."""
    gapCount: int
    """Intervals > 200 ms with no audio frame, after the first one."""
    total_gap_ms: float
    """Sum of those intervals, ms."""

    def __post_init__(self) -> None:
        _int(self.framesReceived, "framesReceived", optional=False)
        _int(self.gapCount, "gapCount", optional=False)
        _num(self.total_gap_ms, "total_gap_ms", optional=False, hi=86_400_000)


@dataclass(frozen=True)
class HostStalls(_Record):
    """Stalls of the probe's own process during the session (``probe/hoststalls.py``): times its event loop
    woke ≥ 100 ms late, and times its video decode path held a frame ≥ 100 ms (merged where they
    overlap). A freeze inside one may be the probe's own doing, not the stream's."""

    count: int
    """Host stalls that overlap the session."""
    stalled_s: float
    """Their total duration inside the session, seconds."""
    max_ms: float | None
    """The longest, ms (None if there were none)."""
    freezes_during: int
    """Freezes (counted in ``video.freezeCount``) whose interval overlaps a host stall."""
    frozen_s_during: float = 0.0
    """Their total duration, seconds (part of ``video.totalFreezesDuration``)."""
    decoder_count: int = 0
    """Of the stalls, those in which the video decode path held a frame ≥ 100 ms (complete frame → decoded
    picture in the session): the decoder thread or the hand-back was starved (of CPU or of the GIL),
    whether or not the event loop was (0 in no-decode mode, which has no decoder)."""

    def __post_init__(self) -> None:
        _int(self.count, "count", optional=False)
        _int(self.decoder_count, "decoder_count", optional=False)
        _num(self.stalled_s, "stalled_s", optional=False, hi=86_400)
        _num(self.max_ms, "max_ms", hi=86_400_000)
        _int(self.freezes_during, "freezes_during", optional=False)
        _num(self.frozen_s_during, "frozen_s_during", optional=False, hi=86_400)


@dataclass(frozen=True)
class Summary(_Record):
    """The measurement of one session."""

    mode: str
    """``decode``, ``decode-no-loop-filter`` (decoded without the deblocking filter) or ``no-decode``."""
    join: JoinPhases
    video: VideoSummary | None = None
    audio: AudioSummary | None = None
    streams: tuple[StreamStats, ...] = ()
    rtt_ms: float | None = None
    """Round-trip time, ms: the median of the session's ICE consent checks (STUN binding request → response
    on the nominated pair, RFC 7675; W3C ``currentRoundTripTime``), None before the first (4–6 s after ICE
    connects)."""
    unavailable: tuple[str, ...] = ()
    """Metrics this mode cannot give (e.g. ``framesDecoded`` in no-decode mode)."""
    host_stalls: HostStalls | None = None
    """The probe's own stalls (None from a probe that did not measure them)."""

    _nested: ClassVar[dict[str, type[_Record]]] = {
        "join": JoinPhases,
        "video": VideoSummary,
        "audio": AudioSummary,
        "host_stalls": HostStalls,
    }
    _nested_lists: ClassVar[dict[str, type[_Record]]] = {"streams": StreamStats}

    def __post_init__(self) -> None:
        _need(self.mode in MODES, "mode", f"must be one of {sorted(MODES)}")
        _need(isinstance(self.join, JoinPhases), "join", "must be an object")
        _num(self.rtt_ms, "rtt_ms", hi=1e6)
        for i, u in enumerate(self.unavailable):
            _str(u, f"unavailable[{i}]", max_len=64)


@dataclass(frozen=True)
class TimelineSample(_Record):
    """One second of the session: [t_s, t_s + 1) from t0."""

    t_s: int
    frames: int = 0
    """Frames rendered (decode) or completed (no-decode) in this second: the fps."""
    frozen_ms: float = 0.0
    """Freeze time attributed to this second, ms."""
    width: int | None = None
    height: int | None = None
    bitrate_kbps: float | None = None
    """Video+audio RTP bits received in this second."""
    packets_received: int = 0
    packets_lost: int = 0
    """Expected − received for sequence numbers first expected in this second (media SSRCs)."""
    jitter_ms: float | None = None
    """Video interarrival jitter at the end of this second."""
    latency_ms: float | None = None
    """Median marker latency of frames in this second."""

    def __post_init__(self) -> None:
        _int(self.t_s, "t_s", hi=86_400, optional=False)
        _int(self.frames, "frames", optional=False)
        _num(self.frozen_ms, "frozen_ms", optional=False, hi=1000.0 + 1e-6)
        _int(self.width, "width", lo=1, hi=16384)
        _int(self.height, "height", lo=1, hi=16384)
        _num(self.bitrate_kbps, "bitrate_kbps", hi=1e7)
        _int(self.packets_received, "packets_received", optional=False)
        _int(self.packets_lost, "packets_lost", lo=-(2**31), hi=2**31, optional=False)
        _num(self.jitter_ms, "jitter_ms", hi=1e6)
        _num(self.latency_ms, "latency_ms", lo=-86_400_000, hi=86_400_000)


@dataclass(frozen=True)
class Event(_Record):
    """Something that happened at ``t_s`` (seconds from t0)."""

    t_s: float
    type: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _num(self.t_s, "t_s", optional=False, hi=86_400)
        _need(self.type in EVENT_TYPES, "type", f"unknown event type {self.type!r}")
        _need(isinstance(self.detail, Mapping), "detail", "must be an object")
        _need(len(self.detail) <= 16, "detail", "at most 16 keys")
        for k, v in self.detail.items():
            _need(isinstance(k, str) and len(k) <= 64, "detail", "keys must be short strings")
            _need(
                v is None or isinstance(v, str | int | float | bool),
                f"detail.{k}",
                "must be a string, number, boolean or null",
            )
            if isinstance(v, str):
                _need(len(v) <= 256, f"detail.{k}", "longer than 256 characters")


def parse_utc(value: str, name: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp (``...Z`` or ``+00:00``); ``ValueError`` otherwise."""
    _str(value, name, max_len=40)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: not an RFC 3339 timestamp: {value!r}") from None
    _need(dt.tzinfo is not None and dt.utcoffset() is not None, name, "must carry a UTC offset")
    _need(dt.utcoffset().total_seconds() == 0, name, "must be UTC")  # type: ignore[union-attr]
    _need(2020 <= dt.year <= 2100, name, f"year {dt.year} is not plausible")
    return dt


@dataclass(frozen=True)
class Report(_Record):
    """The envelope around one probe session (OONI-style): identity, target, failure, then measurement."""

    report_id: str
    """UUID; the collector's idempotency key."""
    probe_id: str
    probe_version: str
    started_at: str
    """t0 as RFC 3339 UTC."""
    duration_s: float
    """t0 → end of session (leave), seconds."""
    target: Target
    summary: Summary
    region: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    """Free dimensions: isp, cdn, device, ... (lower-case keys)."""
    failure: str | None = None
    """Stable failure code (FAILURE_CODES) or None for a session that joined and received media."""
    failure_message: str | None = None
    timeline: tuple[TimelineSample, ...] = ()
    events: tuple[Event, ...] = ()
    schema_version: int = SCHEMA_VERSION

    _nested: ClassVar[dict[str, type[_Record]]] = {"target": Target, "summary": Summary}
    _nested_lists: ClassVar[dict[str, type[_Record]]] = {"timeline": TimelineSample, "events": Event}

    def __post_init__(self) -> None:
        _need(self.schema_version == SCHEMA_VERSION, "schema_version",
              f"unsupported version {self.schema_version!r}; this build reads {SCHEMA_VERSION}")
        _str(self.report_id, "report_id", max_len=36)
        try:
            uuid.UUID(self.report_id)
        except ValueError:
            raise ValueError(f"report_id: not a UUID: {self.report_id!r}") from None
        _str(self.probe_id, "probe_id", max_len=64)
        _need(bool(_PROBE_ID.match(self.probe_id)), "probe_id", "letters, digits, . _ : - only")
        _str(self.probe_version, "probe_version", max_len=32)
        parse_utc(self.started_at, "started_at")
        _num(self.duration_s, "duration_s", optional=False, hi=86_400)
        _need(isinstance(self.target, Target), "target", "must be an object")
        _need(isinstance(self.summary, Summary), "summary", "must be an object")
        if self.region is not None:
            _str(self.region, "region", max_len=64)
            _need(bool(_REGION.match(self.region)), "region", "letters, digits, . _ - only")
        _need(isinstance(self.labels, Mapping), "labels", "must be an object")
        _need(len(self.labels) <= 16, "labels", "at most 16 labels")
        for k, v in self.labels.items():
            _need(isinstance(k, str) and bool(_LABEL_KEY.match(k)), f"labels.{k}", "key must match [a-z][a-z0-9_]*")
            _str(v, f"labels.{k}", max_len=128)
        if self.failure is not None:
            _str(self.failure, "failure", max_len=64)
            _need(is_failure_code(self.failure), "failure", f"unknown failure code {self.failure!r}")
        _str(self.failure_message, "failure_message", max_len=2048, optional=True)
        _need(len(self.timeline) <= 86_400, "timeline", "too many samples")
        _need(len(self.events) <= 100_000, "events", "too many events")

    @classmethod
    def from_json_obj(cls, data: Any) -> Report:
        """``from_dict`` that first checks ``schema_version`` so an old/new probe gets a clear message."""
        if isinstance(data, Mapping) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version: unsupported version {data.get('schema_version')!r}; "
                f"this build reads {SCHEMA_VERSION}"
            )
        return cls.from_dict(data)


def reports_from_json(data: Any) -> Sequence[Report]:
    """A single report object or a list of them (a batch)."""
    if isinstance(data, list):
        out = []
        for i, item in enumerate(data):
            try:
                out.append(Report.from_json_obj(item))
            except ValueError as e:
                raise ValueError(f"[{i}].{e}") from None
        return out
    return [Report.from_json_obj(data)]
