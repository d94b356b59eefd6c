"""One probe session: join, watch for ``duration_s``, leave, and return the report.

Failures are data: every way a join can fail ends in a Report with ``failure`` set, never an exception
(an exception escaping here is a bug, and is reported as ``probe_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import structlog
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from probe import fastrecv
from probe import marker as frame_marker
from probe.bitstream import FrameInfo
from probe.hoststalls import merge as merge_stalls
from probe.hoststalls import monitor_for_loop
from probe.ice import addresses_for_target, enlarge_receive_buffers, host_addresses
from probe.report import (
    AudioSummary,
    Event,
    HostStalls,
    JoinPhases,
    Report,
    ResolutionChange,
    StreamStats,
    Summary,
    Target,
    TimelineSample,
    VideoSummary,
)
from probe.rtpstats import StreamCounter
from probe.rtt import StunRtt
from probe.signaling import SignalingError, adapter_for_url
from probe.signaling.base import Signaling
from probe.tap import ReceiverTap, UndecodedFrame
from probe.videostats import VideoStats, percentile

log = structlog.get_logger()

PROBE_VERSION = "0.1.0"
AUDIO_GAP_MS = 200.0


@dataclass
class ProbeOptions:
    url: str
    duration_s: float = 10.0
    decode: bool = True
    region: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    probe_id: str = field(default_factory=lambda: socket.gethostname()[:64] or "probe")
    codec: str | None = None
    token: str | None = None
    """Bearer token for the signaling server, if it needs one."""
    connect_timeout_s: float = 10.0
    """Bound from t0 to ICE and DTLS connected."""
    media_timeout_s: float = 5.0
    """Bound from DTLS connected to the first RTP packet, and to the first video frame."""
    ice_servers: list[str] = field(default_factory=list)
    """STUN/TURN URLs; empty by default: a probe never contacts a server it was not given."""
    ice_addresses: list[str] | None = None
    """Local addresses for host candidates; None = loopback for a loopback target, else all."""
    latency_clock: str | None = None
    """``same_host`` / ``ntp``; None = same_host for a loopback target, else ntp."""
    fast_receive: bool = True
    """Handle SRTP media in the socket callback (``probe.fastrecv``); False keeps aiortc's receive path."""
    fused_receive: bool = True
    """On the direct path, one synchronous handler per packet (``probe.rtphandler``) instead of the
    receiver's coroutines (same results; False exists for benchmarks and tests)."""
    skip_loop_filter: bool = False
    """Decode without the in-loop deblocking filter (~40 % less decode CPU; mode ``decode-no-loop-filter``)."""

    @property
    def mode(self) -> str:
        """The report's ``summary.mode``."""
        if not self.decode:
            return "no-decode"
        return "decode-no-loop-filter" if self.skip_loop_filter else "decode"


@dataclass
class _AudioStats:
    frames: int = 0
    first_ms: float | None = None
    last_ms: float | None = None
    gaps: int = 0
    gap_ms: float = 0.0
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    """``audio_gap`` events: (start s, type, {"duration_ms"})."""

    def on_frame(self, t_ms: float) -> None:
        if self.first_ms is None:
            self.first_ms = t_ms
        elif self.last_ms is not None and t_ms - self.last_ms > AUDIO_GAP_MS:
            self.gaps += 1
            self.gap_ms += t_ms - self.last_ms
            self.events.append((self.last_ms / 1000.0, "audio_gap", {"duration_ms": round(t_ms - self.last_ms, 1)}))
        self.last_ms = t_ms
        self.frames += 1


def _strip_credentials(url: str) -> str:
    p = urlsplit(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunsplit((p.scheme, netloc, p.path, p.query, ""))


class Session:
    """State of one session; ``run()`` drives it and returns the Report."""

    def __init__(
        self,
        opts: ProbeOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        signaling: Signaling | None = None,
    ) -> None:
        self.opts = opts
        self.clock = clock
        self.wall_clock = wall_clock
        self.signaling = signaling
        self.t0 = 0.0
        self.started_at = ""
        self.phases: dict[str, float | None] = dict.fromkeys(
            ("signaling_ms", "ice_connected_ms", "dtls_connected_ms", "first_rtp_ms", "first_keyframe_ms",
             "ttff_ms", "first_audio_ms"))
        self.counters: dict[int, StreamCounter] = {}
        self.video = VideoStats()
        self.audio = _AudioStats()
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.samples: list[dict[str, Any]] = []
        self.failure: str | None = None
        self.failure_message: str | None = None
        self.rcvbuf_bytes: int | None = None
        self.direct_receive: fastrecv.DirectReceive | None = None
        self.rtt = StunRtt(clock)
        self._ice_state = asyncio.Event()
        self._dtls_state = asyncio.Event()
        self._first_rtp = asyncio.Event()
        self._first_video = asyncio.Event()
        self._ice_failed = False
        self._dtls_failed = False
        self.latency_clock = opts.latency_clock
        self._ice_addresses: list[str] | None = None
        self.video_tap: ReceiverTap | None = None
        self._end_ms: float | None = None
        """When watching ended (session ms); frames shown later (while leaving) are not counted."""

    def now_ms(self) -> float:
        """Session time: ms since t0."""
        return (self.clock() - self.t0) * 1000.0

    def _fail(self, code: str, message: str) -> None:
        if self.failure is None:
            self.failure, self.failure_message = code, message
            self.events.append((self.now_ms() / 1000.0, "failure", {"code": code}))

    # --- callbacks from the taps -------------------------------------------------------------
    def _on_first_rtp(self, t_ms: float) -> None:
        if self.phases["first_rtp_ms"] is None:
            # the kernel's receive time can precede DTLS connected (the packet waited in the socket while the
            # handshake finished); it counts from when it could be decrypted
            dtls = self.phases["dtls_connected_ms"]
            self.phases["first_rtp_ms"] = t_ms if dtls is None else max(t_ms, dtls)
        self._first_rtp.set()

    def _on_assembled(self, kind: str, info: FrameInfo, t_ms: float) -> None:
        t_ms = self._not_before_first_rtp(t_ms)
        if kind == "audio":
            if self.phases["first_audio_ms"] is None:
                self.phases["first_audio_ms"] = t_ms
            self.audio.on_frame(t_ms)
            return
        self.video.on_assembled(t_ms, info.keyframe)
        if info.keyframe and self.phases["first_keyframe_ms"] is None:
            self.phases["first_keyframe_ms"] = t_ms

    def _prepare(self, pc: Any) -> None:
        for transceiver in pc.getTransceivers():
            kind = transceiver.kind
            tap = ReceiverTap(
                transceiver.receiver, kind, decode=self.opts.decode, skip_loop_filter=self.opts.skip_loop_filter,
                now_ms=self.now_ms, counters=self.counters,
                on_assembled=self._on_assembled, on_first_rtp=self._on_first_rtp,
                on_undecoded=self._show,
            )
            tap.install()
            if kind == "video":
                self._video_receiver = transceiver.receiver
                self.video_tap = tap
        if self.opts.fast_receive:  # hook every transport: BUNDLE keeps one of them, decided later
            for dtls in {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}.values():
                self._fast_receive_on_connect(dtls)

    def _fast_receive_on_connect(self, dtls: Any) -> None:
        @dtls.on("statechange")  # type: ignore[untyped-decorator]
        def _connected() -> None:
            if dtls.state == "connected" and self.direct_receive is None:
                self.direct_receive = fastrecv.install(dtls, fused=self.opts.fused_receive)

    # --- the video consumer ------------------------------------------------------------------
    async def _consume_video(self) -> None:
        """Decode mode: show each decoded frame the track yields (no-decode frames come to ``_show`` directly)."""
        track = self._video_receiver.track  # created by aiortc once the remote description is set
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._show(frame)

    def _not_before_first_rtp(self, t_ms: float) -> float:
        """An arrival time, but not before the first RTP packet could be decrypted (``first_rtp_ms``)."""
        first = self.phases["first_rtp_ms"]
        return t_ms if first is None or t_ms >= first else first

    def _show(self, frame: Any) -> None:
        """A frame reaches the screen: a decoded frame from the track, now; or (no-decode) an
        ``UndecodedFrame`` straight from the tap (no queue, no task switch per frame), when it was complete."""
        undecoded = isinstance(frame, UndecodedFrame)
        t = self._not_before_first_rtp(frame.t_ms) if undecoded and frame.t_ms is not None else self.now_ms()
        if self._end_ms is not None and t > self._end_ms:
            return  # shown after the session's end (while it leaves): outside the watch time
        if undecoded:
            w, h = frame.width, frame.height
            if w is None and self.video.size is not None:
                w, h = self.video.size
            self.video.on_frame(t, w, h, None, None)
        else:
            if self.video_tap is not None:
                self.video_tap.decode_lag.rendered(frame.pts, t)
            mk = _read_marker(frame)
            wall = self.wall_clock() * 1000.0 if mk is not None else None
            self.video.on_frame(t, frame.width, frame.height, mk, wall)
        if self.phases["ttff_ms"] is None:
            self.phases["ttff_ms"] = t
            self._first_video.set()

    async def _tick(self) -> None:
        """Snapshot cumulative network counters at every whole second from t0."""
        sec = 0
        while True:
            sec += 1
            await asyncio.sleep(max(0.0, self.t0 + sec - self.clock()))
            self._snapshot(sec)

    def _snapshot(self, sec: int) -> None:
        video = [c for c in self.counters.values() if c.kind == "video"]
        self.samples.append({
            "sec": sec,
            "received": sum(c.packets_received for c in self.counters.values()),
            "lost": sum(c.packets_lost for c in self.counters.values()),
            "bytes": sum(c.payload_bytes for c in self.counters.values()),
            "jitter_ms": video[0].jitter_ms if video and video[0].packets_received > 1 else None,
        })

    # --- the session ------------------------------------------------------------------------
    async def run(self) -> Report:
        pc: RTCPeerConnection | None = None
        tasks: list[asyncio.Task[None]] = []
        setup_error: SignalingError | None = None
        # set-up that is not part of a viewer's join (imports, adapter, address choice) happens before t0,
        # so TTFF never includes a first import of aiohttp (~0.5 s)
        try:
            if self.signaling is None:
                self.signaling = adapter_for_url(self.opts.url, codec=self.opts.codec, token=self.opts.token)
            host = urlsplit(self.opts.url.split("+", 1)[-1]).hostname or ""
            self._ice_addresses = self.opts.ice_addresses or addresses_for_target(host)
            if self.latency_clock is None:
                self.latency_clock = "same_host" if addresses_for_target(host) else "ntp"
        except SignalingError as e:
            setup_error = e
        self.host_monitor = monitor_for_loop(self.clock)
        self.host_monitor.acquire()
        self.t0 = self.clock()
        self.started_at = datetime.fromtimestamp(self.wall_clock(), tz=UTC).isoformat(timespec="milliseconds")
        self.started_at = self.started_at.replace("+00:00", "Z")
        try:
            if setup_error is not None:
                raise setup_error
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in self.opts.ice_servers]))
            self._watch_states(pc)
            tasks.append(asyncio.ensure_future(self._tick()))
            with host_addresses(self._ice_addresses):  # gathering starts inside the join
                await self._join(pc)
            self.rtt.install(pc)  # consent checks start 4-6 s after ICE connects
            if self.failure is None and self.opts.decode:
                tasks.append(asyncio.ensure_future(self._consume_video()))
                await self._wait_connected_and_media()
            if self.failure is None:
                await self._watch_until_end()
        except SignalingError as e:
            self._fail(e.code, e.message)
        except Exception as e:  # a bug in the probe: still a report
            log.exception("probe_error")
            self._fail("probe_error", f"{type(e).__name__}: {e}")
        end_ms = self._end_ms = self.now_ms()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.signaling is not None:
            await self.signaling.leave()
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()
        try:
            return self._report(end_ms)
        finally:
            self.host_monitor.release()

    async def _watch_until_end(self) -> None:
        """Sleep until t0 + duration, or until the adapter reports the server lost the session."""
        remaining = max(0.0, self.t0 + self.opts.duration_s - self.clock())
        wait_lost = getattr(self.signaling, "wait_lost", None)
        if wait_lost is None:
            await asyncio.sleep(remaining)
            return
        lost: asyncio.Future[SignalingError] = asyncio.ensure_future(wait_lost())
        try:
            done, _ = await asyncio.wait({lost}, timeout=remaining)
            if lost in done:
                err = lost.result()
                self._fail(err.code, err.message)
        finally:
            lost.cancel()

    async def _join(self, pc: RTCPeerConnection) -> None:
        assert self.signaling is not None
        try:
            await asyncio.wait_for(self.signaling.join(pc, self._prepare, self.now_ms), self.opts.connect_timeout_s)
        except TimeoutError:
            raise SignalingError("url_unreachable",
                                 f"signaling did not complete within {self.opts.connect_timeout_s:g} s") from None
        finally:
            self.phases["signaling_ms"] = self.signaling.signaling_ms
        self.rcvbuf_bytes = enlarge_receive_buffers(pc)

    def _watch_states(self, pc: RTCPeerConnection) -> None:
        @pc.on("iceconnectionstatechange")
        def _ice() -> None:
            state = pc.iceConnectionState
            self.events.append((self.now_ms() / 1000.0, "connection_state", {"ice": state}))
            if state in ("connected", "completed") and self.phases["ice_connected_ms"] is None:
                self.phases["ice_connected_ms"] = self.now_ms()
                self._ice_state.set()
            elif state == "failed":
                self._ice_failed = True
                self._ice_state.set()

        @pc.on("connectionstatechange")
        def _conn() -> None:
            state = pc.connectionState
            self.events.append((self.now_ms() / 1000.0, "connection_state", {"peer": state}))
            if state == "connected" and self.phases["dtls_connected_ms"] is None:
                self.phases["dtls_connected_ms"] = self.now_ms()
                self._dtls_state.set()
            elif state == "failed":
                self._dtls_failed = True
                self._dtls_state.set()
                self._ice_state.set()

    async def _wait(self, event: asyncio.Event, deadline: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), max(0.0, deadline - self.clock()))
            return True
        except TimeoutError:
            return False

    async def _wait_connected_and_media(self) -> None:
        o = self.opts
        connect_deadline = self.t0 + o.connect_timeout_s
        if not await self._wait(self._ice_state, connect_deadline) or (
            self._ice_failed and self.phases["ice_connected_ms"] is None
        ):
            if self._ice_failed:
                self._fail("ice_failed", "ICE failed: no candidate pair worked (firewall, wrong address?)")
            else:
                self._fail("ice_timeout", f"ICE did not connect within {o.connect_timeout_s:g} s of the join")
            return
        if not await self._wait(self._dtls_state, connect_deadline) or self._dtls_failed:
            if self._dtls_failed:
                self._fail("dtls_failed", "the DTLS handshake failed after ICE connected")
            else:
                self._fail("dtls_timeout", f"DTLS did not complete within {o.connect_timeout_s:g} s of the join")
            return
        media_deadline = self.clock() + o.media_timeout_s
        if not await self._wait(self._first_rtp, media_deadline):
            self._fail("no_media", f"connected, but no RTP arrived within {o.media_timeout_s:g} s")
            return
        if not await self._wait(self._first_video, media_deadline):
            self._fail("no_video", f"RTP arrives, but no video frame was produced within {o.media_timeout_s:g} s")

    # --- the report -------------------------------------------------------------------------
    def _report(self, end_ms: float) -> Report:
        assert self.signaling is not None or self.failure is not None
        sig = self.signaling
        target = Target(url=_strip_credentials(self.opts.url), signaling=sig.kind if sig else "whep",
                        room=sig.room if sig else None)
        self.video.finish(end_ms)
        summary = Summary(
            mode=self.opts.mode,
            join=JoinPhases(**{k: (round(v, 1) if v is not None else None) for k, v in self.phases.items()}),
            video=self._video_summary(end_ms) if self.video.frames_assembled or self.video.frames_rendered else None,
            audio=AudioSummary(self.audio.frames, self.audio.gaps, round(self.audio.gap_ms, 1))
            if self.audio.frames else None,
            streams=tuple(self._stream_stats(c, end_ms) for c in sorted(self.counters.values(),
                                                                        key=lambda c: (c.kind != "video", c.ssrc))),
            rtt_ms=self.rtt.median_ms(self.t0, self.t0 + end_ms / 1000.0),
            unavailable=self._unavailable(end_ms),
            host_stalls=self._host_stalls(end_ms),
        )
        events = sorted(self.events + self.video.events + self.audio.events, key=lambda e: e[0])
        return Report(
            report_id=str(uuid.uuid4()),
            probe_id=self.opts.probe_id,
            probe_version=PROBE_VERSION,
            started_at=self.started_at,
            duration_s=round(end_ms / 1000.0, 3),
            target=target,
            summary=summary,
            region=self.opts.region,
            labels=dict(self.opts.labels),
            failure=self.failure,
            failure_message=self.failure_message,
            timeline=self._timeline(end_ms),
            events=tuple(Event(round(t, 3), typ, detail) for t, typ, detail in events[:100_000]),
        )

    def _host_stalls(self, end_ms: float) -> HostStalls:
        """The probe's own stalls inside [t0, end]: its event loop's (``probe/hoststalls.py``) and its video
        decode path's (``probe.tap.DecodeLag``), merged; marks each freeze that overlaps one, and each audio gap
        that overlaps a loop stall (``host_stall`` in their events' detail), and adds a ``host_stall`` event
        per stall, naming its sources."""
        loop = [((s - self.t0) * 1000.0, (e - self.t0) * 1000.0)
                for s, e in self.host_monitor.between(self.t0, self.t0 + end_ms / 1000.0)]
        lags = [(s, e) for s, e in (self.video_tap.decode_lag.stalls if self.video_tap is not None else ())
                if e > 0.0 and s < end_ms]
        merged = merge_stalls({"loop": loop, "decoder": lags})
        stalls = [(s, e) for s, e, _ in merged]
        freezes_during, frozen_ms_during = 0, 0.0
        for f in self.video.freezes.stalls:
            if f.kind == "freeze" and any(s < f.end_ms and e > f.start_ms for s, e in stalls):
                freezes_during += 1
                frozen_ms_during += f.duration_ms
                for t, typ, detail in self.video.events:
                    if typ == "freeze_start" and t == f.start_ms / 1000.0:
                        detail["host_stall"] = True
        for t, _typ, detail in self.audio.events:  # audio is never decoded: only the loop's stalls count
            gap_end = t * 1000.0 + float(cast(float, detail["duration_ms"]))
            if any(s < gap_end and e > t * 1000.0 for s, e in loop):
                detail["host_stall"] = True
        for s, e, sources in merged:
            self.events.append((max(0.0, s) / 1000.0, "host_stall",
                                {"duration_ms": round(e - s, 1), "source": "+".join(sources)}))
        inside = [min(e, end_ms) - max(s, 0.0) for s, e in stalls]
        return HostStalls(count=len(stalls), stalled_s=round(sum(inside) / 1000.0, 3),
                          max_ms=round(max(e - s for s, e in stalls), 1) if stalls else None,
                          freezes_during=freezes_during, frozen_s_during=round(frozen_ms_during / 1000.0, 3),
                          decoder_count=sum("decoder" in names for _, _, names in merged))

    def _unavailable(self, end_ms: float) -> tuple[str, ...]:
        out = []
        if self.rtt.median_ms(self.t0, self.t0 + end_ms / 1000.0) is None:
            out.append("rtt_ms")  # no consent check answered yet (the first comes 4-6 s after ICE connects)
        if not self.opts.decode:
            out += ["framesDecoded", "latency_p50_ms", "latency_p95_ms", "marker_repeated_frames",
                    "marker_skipped_frames", "marker_freeze_count", "marker_frozen_s"]
        return tuple(out)

    def _video_summary(self, end_ms: float) -> VideoSummary:
        v = self.video
        freezes, freeze_s = v.freezes.totals("freeze")
        pauses, pause_s = v.freezes.totals("pause")
        watch_ms = v.watch_time_ms(end_ms)
        decode = self.opts.decode
        frames = v.frames_rendered
        return VideoSummary(
            framesReceived=v.frames_assembled,
            framesDecoded=frames if decode else None,
            keyframesReceived=v.keyframes,
            freezeCount=freezes,
            totalFreezesDuration=round(freeze_s, 3),
            freeze_in_progress=v.freeze_in_progress,
            pauseCount=pauses,
            totalPausesDuration=round(pause_s, 3),
            watch_time_s=round(watch_ms / 1000.0, 3),
            stall_ratio=round(min(1.0, (freeze_s + pause_s) * 1000.0 / watch_ms), 5) if watch_ms > 0 else None,
            stalls_per_minute=round((freezes + pauses) / (watch_ms / 60000.0), 3) if watch_ms > 0 else None,
            fps_mean=round(frames / (watch_ms / 1000.0), 2) if watch_ms > 0 else None,
            width=v.size[0] if v.size else None,
            height=v.size[1] if v.size else None,
            hd_share=None if v.hd_share(end_ms) is None else round(v.hd_share(end_ms) or 0.0, 4),
            resolution_timeline=tuple(ResolutionChange(round(t, 3), w, h) for t, w, h in v.resolution_changes),
            marker_frames=v.marker_frames,
            marker_repeated_frames=v.marker_repeated if decode else None,
            marker_skipped_frames=v.marker_skipped if decode else None,
            marker_freeze_count=v.marker_freezes.totals("freeze")[0] if decode else None,
            marker_frozen_s=round(v.marker_freezes.totals("freeze")[1], 3) if decode else None,
            latency_p50_ms=_round(percentile(v.latencies_ms, 50)),
            latency_p95_ms=_round(percentile(v.latencies_ms, 95)),
            latency_clock=self.latency_clock if v.latencies_ms else None,
        )

    def _stream_stats(self, c: StreamCounter, end_ms: float) -> StreamStats:
        span_s = (end_ms - c.first_arrival_ms) / 1000.0 if c.first_arrival_ms is not None else 0.0
        return StreamStats(
            kind=c.kind, ssrc=c.ssrc, packetsReceived=c.packets_received, packetsLost=c.packets_lost,
            loss_pct=_round(c.loss_pct(), 3), residual_loss_pct=_round(c.residual_loss_pct(), 3),
            jitter_ms=round(c.jitter_ms, 3) if c.packets_received > 1 else None,
            bitrate_kbps=round(c.payload_bytes * 8 / span_s / 1000.0, 1) if span_s > 0 else None,
            nackCount=c.nack_count, pliCount=c.pli_count, retransmittedPacketsReceived=c.rtx_received,
        )

    def _timeline(self, end_ms: float) -> tuple[TimelineSample, ...]:
        v = self.video
        frozen = v.frozen_ms_by_second()
        # whole seconds, plus the last partial one if it lasted at least 250 ms (a few ms of "second"
        # with no frames would read as a drop to 0 fps)
        n = int(end_ms // 1000) + (1 if end_ms % 1000 >= 250 else 0)
        snaps = {s["sec"]: s for s in self.samples}
        prev = {"received": 0, "lost": 0, "bytes": 0}
        out = []
        size = None
        for sec in range(n):
            snap = snaps.get(sec + 1)
            if snap is None:  # the last, partial second: take the counters now
                self._snapshot(sec + 1)
                snap = self.samples[-1]
            span = min(1.0, end_ms / 1000.0 - sec)
            size = v.per_second_size.get(sec, size)
            lat = v.per_second_latency.get(sec)
            out.append(TimelineSample(
                t_s=sec,
                frames=v.per_second_frames.get(sec, 0),
                frozen_ms=round(min(1000.0, frozen.get(sec, 0.0)), 1),
                width=size[0] if size else None,
                height=size[1] if size else None,
                bitrate_kbps=round((snap["bytes"] - prev["bytes"]) * 8 / 1000.0 / span, 1) if span > 0 else None,
                packets_received=snap["received"] - prev["received"],
                packets_lost=snap["lost"] - prev["lost"],
                jitter_ms=_round(snap["jitter_ms"], 3),
                latency_ms=_round(percentile(lat, 50), 1) if lat else None,
            ))
            prev = snap
        return tuple(out)


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def _read_marker(frame: Any) -> frame_marker.Marker | None:
    """Marker from a decoded frame's luma plane, without copying the picture."""
    try:
        plane = frame.planes[0]
        y = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
    except (ValueError, AttributeError, IndexError):
        return None
    return frame_marker.read(y)


async def run_session(opts: ProbeOptions, **kwargs: Any) -> Report:
    """Run one session and return its report (never raises for a failed join)."""
    return await Session(opts, **kwargs).run()
