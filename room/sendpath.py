"""The per-viewer send hook: impairments on real RTP packets, and the ground-truth record.

Installed by replacing one viewer's ``RTCDtlsTransport._send_rtp`` (the last stop before SRTP), so
loss, caps and delay hit every RTP packet the RTCRtpSenders produce, retransmissions (RTX) included.
RTCP passes untouched. Per packet, in order: random loss, burst loss (both drawn for every packet so
each model's state advances per packet), bandwidth cap (token bucket, tail drop beyond its queue),
delay + jitter (order kept). Packets due now go straight out; the others wait in a delay line. STUN
messages (ICE checks and consent) get the added delay too, so a viewer's RTT sees it.

Two entries, same impairments and the same truth accounting: ``send`` (the coroutine that replaces
``_send_rtp``: RTCP, RTX, and every packet when the direct path is off) and ``send_direct`` (a whole
frame's packets, synchronously, from ``room/fastsend.py``'s direct path). While nothing impairs the
viewer (``plain()``), the direct sender sends a frame itself and reports it with ``sent_plain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from room.encoder import EncodedFrame
from room.impairments import DelayJitter, GilbertElliott, RandomLoss, TokenBucket
from room.schedule import Settings
from room.truth import FrameEvent, Freeze, PacketCounts, ViewerTruth

log = structlog.get_logger()

SendRtp = Callable[[bytes], Awaitable[None]]
SendNow = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fixed RTP header fields the send path needs (RFC 3550 §5.1)."""

    payload_type: int
    marker: bool
    sequence_number: int
    timestamp: int
    ssrc: int

    @classmethod
    def parse(cls, data: bytes) -> RtpHeader:
        """Parse the 12-byte fixed header; ValueError if ``data`` is not RTP version 2."""
        if len(data) < 12 or data[0] >> 6 != 2:
            raise ValueError("not an RTP v2 packet")
        return cls(
            payload_type=data[1] & 0x7F,
            marker=bool(data[1] & 0x80),
            sequence_number=int.from_bytes(data[2:4], "big"),
            timestamp=int.from_bytes(data[4:8], "big"),
            ssrc=int.from_bytes(data[8:12], "big"),
        )


def is_rtcp(data: bytes) -> bool:
    """RTCP, not RTP, by the RFC 5761 rule aiortc uses (second byte is an RTCP packet type 192–208)."""
    return len(data) >= 2 and 192 <= data[1] <= 208


def rtx_original_seq(data: bytes) -> int | None:
    """The original sequence number (OSN) an RTX packet carries: the first two bytes of its payload, after
    the CSRCs and any header extension (RFC 4588 §4, RFC 3550 §5.3.1); None if the packet is too short."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    if len(data) < offset + 2:
        return None
    return int.from_bytes(data[offset : offset + 2], "big")


class SendPath:
    """One viewer's send path. ``ssrcs`` must be set (``set_ssrcs``) before media flows."""

    def __init__(
        self,
        truth: ViewerTruth,
        rng: random.Random,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.truth = truth
        self.rng = rng
        self.clock = clock
        self.wall_clock = wall_clock
        self.settings = Settings()
        self._random: RandomLoss | None = None
        self._burst: GilbertElliott | None = None
        self._bucket: TokenBucket | None = None
        self._delay: DelayJitter | None = None
        self._video_ssrc = self._rtx_ssrc = self._audio_ssrc = b""  # 4-byte big-endian SSRCs
        self._lossy = False  # a loss model is active
        self._direct = True  # no cap and no delay
        self._current: EncodedFrame | None = None
        self._current_after_freeze = False
        self._last_sent_frame: EncodedFrame | None = None
        self._last_video_wall_ms: float | None = None
        self._last_size: tuple[int, int] | None = None
        # (release ms, async send | None, sync send | None, packet, kind, frame, after_freeze)
        self._line: deque[tuple[float, SendRtp | None, SendNow | None, bytes, str, EncodedFrame | None, bool]] = deque()
        self._line_wakeup = asyncio.Event()
        self._line_task: asyncio.Task[None] | None = None
        self._last_release_ms = float("-inf")
        self._closed = False

    def set_ssrcs(self, video: int | None, rtx: int | None, audio: int | None) -> None:
        """SSRCs of the video sender, its RTX stream and the audio sender (None if absent)."""

        def key(ssrc: int | None) -> bytes:
            return b"" if ssrc is None else ssrc.to_bytes(4, "big")

        self._video_ssrc, self._rtx_ssrc, self._audio_ssrc = key(video), key(rtx), key(audio)
        self.truth.ssrcs = {"video": video, "rtx": rtx, "audio": audio}

    def install(self, dtls: Any) -> None:
        """Route ``dtls._send_rtp`` (an aiortc RTCDtlsTransport) through this send path, and delay the STUN
        messages of its ICE connection (``install_stun``)."""
        # a partial, not a wrapper coroutine: one coroutine per packet instead of two
        dtls._send_rtp = functools.partial(self.send, dtls._send_rtp)
        with contextlib.suppress(AttributeError):  # aioice internals moved: STUN stays undelayed
            self.install_stun(dtls.transport._connection)

    def install_stun(self, connection: Any) -> None:
        """Hold every STUN message this viewer's ICE connection (aioice) sends for the added delay in force
        (``delay_ms``; jitter, loss and caps apply to RTP only): the viewer's ICE checks, and so the
        round-trip time it measures from them (probe ``rtt_ms``), see the scheduled delay as its media does."""
        loop = asyncio.get_running_loop()
        for protocol in connection._protocols:
            send = protocol.send_stun

            def send_later(message: Any, addr: Any, send: Callable[[Any, Any], None] = send) -> None:
                if not self._closed:
                    with contextlib.suppress(Exception):  # the connection closed meanwhile
                        send(message, addr)

            def send_stun(message: Any, addr: Any, send: Callable[[Any, Any], None] = send,
                          send_later: Callable[[Any, Any], None] = send_later) -> None:
                delay_ms = self.settings.delay_ms
                if delay_ms > 0:
                    loop.call_later(delay_ms / 1000.0, send_later, message, addr)
                else:
                    send(message, addr)

            protocol.send_stun = send_stun

    def apply(self, settings: Settings) -> None:
        """Put ``settings`` in force (a model is rebuilt, fresh, only when its parameters change)."""
        old = self.settings
        if settings.loss_pct != old.loss_pct or self._random is None:
            self._random = RandomLoss(settings.loss_pct, self.rng) if settings.loss_pct > 0 else None
        if settings.burst != old.burst:
            self._burst = GilbertElliott(settings.burst, self.rng) if settings.burst else None
        if (settings.cap_kbps, settings.queue_ms, settings.burst_bytes) != (
            old.cap_kbps,
            old.queue_ms,
            old.burst_bytes,
        ):
            self._bucket = (
                TokenBucket(settings.cap_kbps, settings.burst_bytes, settings.queue_ms) if settings.cap_kbps else None
            )
        if (settings.delay_ms, settings.jitter_ms) != (old.delay_ms, old.jitter_ms):
            self._delay = (
                DelayJitter(settings.delay_ms, settings.jitter_ms, self.rng)
                if settings.delay_ms or settings.jitter_ms
                else None
            )
        self.settings = settings
        self._lossy = self._random is not None or self._burst is not None
        self._direct = self._bucket is None and self._delay is None

    def frame_out(self, frame: EncodedFrame, after_freeze: bool) -> None:
        """The video track is handing ``frame`` to the sender: the next video packets belong to it."""
        self._current = frame
        self._current_after_freeze = after_freeze

    # -- per packet
    async def send(self, original: SendRtp, data: bytes) -> None:
        # per-packet hot path (tens of thousands of calls a second): no helper calls until needed
        if len(data) < 12 or 192 <= data[1] <= 208:  # RTCP (RFC 5761 demux, as aiortc's is_rtcp)
            await original(data)
            return
        ssrc = data[8:12]
        frame: EncodedFrame | None = None
        after_freeze = False
        if ssrc == self._video_ssrc:
            kind, counts = "video", self.truth.video
            frame, after_freeze = self._current, self._current_after_freeze
        elif ssrc == self._audio_ssrc:
            kind, counts = "audio", self.truth.audio
        elif ssrc == self._rtx_ssrc:
            kind, counts = "rtx", self.truth.rtx
        else:
            kind, counts = "other", self.truth.other
        if self._lossy:
            lost_random = self._random is not None and self._random.lost()
            lost_burst = self._burst is not None and self._burst.lost()
            if lost_random or lost_burst:
                self._drop(counts, "random" if lost_random else "burst")
                if kind == "rtx":
                    self._record_rtx_drop(data)
                return
        if self._direct and not self._line:  # no cap, no delay: straight out
            await original(data)
            counts.packets_sent += 1
            counts.bytes_sent += len(data)
            if frame is not None:
                self._record_video(frame, after_freeze)
            return
        now_ms = self.clock() * 1000
        at_ms = self._release_ms(now_ms, len(data))
        if at_ms is None:
            self._drop(counts, "cap")
            return
        if at_ms <= now_ms and not self._line:
            await original(data)
            self._record(kind, counts, len(data), frame, after_freeze)
            return
        at_ms = max(at_ms, self._last_release_ms)
        self._last_release_ms = at_ms
        self._enqueue(at_ms, original, None, data, kind, frame, after_freeze)

    def _release_ms(self, now_ms: float, size: int) -> float | None:
        """When a packet of ``size`` bytes leaves: after the bandwidth cap's queue, then the added delay
        and jitter; None if the cap's bounded queue drops it. Wall ms on the room clock."""
        at_ms = now_ms
        if self._bucket is not None:
            depart = self._bucket.admit(now_ms, size)
            if depart is None:
                return None
            at_ms = depart
        if self._delay is not None:
            at_ms = self._delay.release_ms(at_ms)
        return at_ms

    def plain(self) -> bool:
        """True when a packet sent now meets no impairment (no loss model, no cap, no delay, nothing queued)."""
        return not self._lossy and self._direct and not self._line

    def sent_plain(self, packets: int, size: int, video: bool) -> None:
        """The direct sender sent a whole frame, ``packets`` RTP packets of ``size`` bytes, itself (while
        ``plain()``): the same truth as ``send_direct`` records for it."""
        if video:
            counts = self.truth.video
            if self._current is not None:
                self._record_video(self._current, self._current_after_freeze)
        else:
            counts = self.truth.audio
        counts.packets_sent += packets
        counts.bytes_sent += size

    def send_direct(self, out: SendNow, packets: list[bytes], video: bool) -> None:
        """Send one frame's RTP ``packets`` (video media or audio) through the impairments with ``out``.

        Synchronous: ``out`` SRTP-protects and hands a packet to the UDP socket. Same models, same
        order of draws and the same truth as ``send`` would give packet by packet.
        """
        truth = self.truth
        frame: EncodedFrame | None = None
        after_freeze = False
        if video:
            kind, counts = "video", truth.video
            frame, after_freeze = self._current, self._current_after_freeze
        else:
            kind, counts = "audio", truth.audio
        for data in packets:
            if self._lossy:
                lost_random = self._random is not None and self._random.lost()
                lost_burst = self._burst is not None and self._burst.lost()
                if lost_random or lost_burst:
                    self._drop(counts, "random" if lost_random else "burst")
                    continue
            if self._direct and not self._line:
                out(data)
                self._record(kind, counts, len(data), frame, after_freeze)
                continue
            now_ms = self.clock() * 1000
            at_ms = self._release_ms(now_ms, len(data))
            if at_ms is None:
                self._drop(counts, "cap")
                continue
            if at_ms <= now_ms and not self._line:
                out(data)
                self._record(kind, counts, len(data), frame, after_freeze)
                continue
            at_ms = max(at_ms, self._last_release_ms)
            self._last_release_ms = at_ms
            self._enqueue(at_ms, None, out, data, kind, frame, after_freeze)

    def _enqueue(
        self,
        at_ms: float,
        original: SendRtp | None,
        out: SendNow | None,
        data: bytes,
        kind: str,
        frame: EncodedFrame | None,
        after_freeze: bool,
    ) -> None:
        self._line.append((at_ms, original, out, data, kind, frame, after_freeze))
        self._line_wakeup.set()
        if self._line_task is None:
            self._line_task = asyncio.create_task(self._run_line())

    def _record_rtx_drop(self, data: bytes) -> None:
        """Count a dropped retransmission against its original packet."""
        osn = rtx_original_seq(data)
        if osn is not None:
            self.truth.rtx_drops[osn] += 1

    def _drop(self, counts: PacketCounts, cause: str) -> None:
        counts.packets_dropped += 1
        self.truth.dropped_by[cause] += 1

    async def _run_line(self) -> None:
        """Send delayed packets when due (release times are non-decreasing)."""
        counts = {
            "video": self.truth.video,
            "audio": self.truth.audio,
            "rtx": self.truth.rtx,
            "other": self.truth.other,
        }
        while not self._closed:
            if not self._line:
                self._line_wakeup.clear()
                await self._line_wakeup.wait()
                continue
            at_ms, original, out, data, kind, frame, after_freeze = self._line[0]
            wait_s = (at_ms - self.clock() * 1000) / 1000
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self._line.popleft()
            try:
                if out is not None:
                    out(data)
                elif original is not None:
                    await original(data)
            except ConnectionError:
                continue
            self._record(kind, counts[kind], len(data), frame, after_freeze)

    def _record(
        self, kind: str, counts: PacketCounts, size: int, frame: EncodedFrame | None, after_freeze: bool
    ) -> None:
        counts.packets_sent += 1
        counts.bytes_sent += size
        if frame is not None:  # only video media packets carry their frame
            self._record_video(frame, after_freeze)

    def _record_video(self, frame: EncodedFrame, after_freeze: bool) -> None:
        """Bookkeeping for a video media packet of ``frame`` just sent."""
        truth = self.truth
        now_ms = self.wall_clock() * 1000
        if frame is not self._last_sent_frame:  # the first packet of a frame
            self._last_sent_frame = frame
            truth.frames_sent += 1
            if frame.seq == truth.last_marker_seq:
                truth.marker_repeated_frames += 1
            truth.last_marker_seq = frame.seq
            if truth.first_video_packet is None:
                truth.first_video_packet = FrameEvent(now_ms, frame.seq)
            if frame.keyframe:
                truth.keyframes_sent += 1
                if truth.first_keyframe is None:
                    truth.first_keyframe = FrameEvent(now_ms, frame.seq)
            if (frame.width, frame.height) != self._last_size:
                self._last_size = (frame.width, frame.height)
                truth.resolution_changes.append(
                    {
                        "t_ms": round(now_ms, 1),
                        "width": frame.width,
                        "height": frame.height,
                        "rendition": frame.rendition,
                        "marker_seq": frame.seq,
                    }
                )
            if after_freeze:
                open_freeze = next((f for f in reversed(truth.freezes) if f.end_ms is None), None)
                if open_freeze is not None:
                    open_freeze.start_ms = self._last_video_wall_ms
                    open_freeze.end_ms = now_ms
                    open_freeze.resume_marker_seq = frame.seq
        self._last_video_wall_ms = now_ms

    def freeze_scheduled(self, frozen: bool) -> None:
        """The schedule froze (True) or released (False) the video now."""
        now_ms = self.wall_clock() * 1000
        if frozen:
            self.truth.freezes.append(Freeze(scheduled_start_ms=now_ms))
        elif self.truth.freezes and self.truth.freezes[-1].scheduled_end_ms is None:
            self.truth.freezes[-1].scheduled_end_ms = now_ms

    async def close(self) -> None:
        """Stop the delay line (queued packets are discarded)."""
        self._closed = True
        if self._line_task is not None:
            self._line_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._line_task
            self._line_task = None
        self._line.clear()
