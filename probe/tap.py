"""Taps on an aiortc ``RTCRtpReceiver``: the one module that touches aiortc internals.

aiortc exposes no frame counters and its getStats() lets the RTX SSRC overwrite the media SSRC's
entry, so the probe observes the receiver itself, per instance (no global patching):
- every RTP packet before aiortc handles it (original vs RTX, via the negotiated codecs) → StreamCounter;
- every RTCP packet it sends → NACK and PLI counts;
- every complete encoded frame the jitter buffer hands to the decoder (its decoder queue is replaced
  by ``_TapQueue``, whose ``put`` runs on the event loop; on the direct receive path
  ``probe.rtphandler`` calls ``on_encoded_frame`` itself) → assembled frames, keyframes, and in
  no-decode mode the frame size read from the bitstream instead of decoding (from the first keyframe
  on: before it a decoder has nothing to show and asks for a keyframe, and so does the tap), handed to
  ``on_undecoded`` at once (the session's ``_show``) rather than through the track's queue and a task.
Audio frames are counted at assembly and never decoded (nothing here needs PCM).

Decode mode decodes video on the process's decoder threads (one per CPU it may run on, shared by its
probes) with FFmpeg's native VP8/H.264 decoders, single-threaded (``FrameDecoder``): VP8 decoding is
bit-exact across conforming decoders, and FFmpeg's ``vp8`` costs ~1.8 ms per 720p frame here against
~2.6 ms for libvpx, which aiortc uses (and which spawns decoder threads of its own); many probes share a
core, so the cheaper decoder is the one to run.
A decode error sets the receiver's error flag, so aiortc sends a PLI exactly as with its own decoder.
With ``skip_loop_filter`` the decoder skips the in-loop deblocking filter (FFmpeg's ``skip_loop_filter=all``):
every frame is still fully decoded (entropy decoding, prediction, residual), for ~40 % less decode CPU on the
room's 720p VP8 stream; the picture differs from a full decode (luma PSNR: median 30-38 dB, worst frames
27-31 dB) and the marker still reads on every frame (``tests/test_probe_decode.py``). It is a mode of its own
in the report.

NACKs are sent like a browser sends them (``NackRetrier``, after libwebrtc's NackRequester). aiortc sends a
NACK only when a *new* gap appears, listing every packet still missing: a lost retransmission stayed lost
until the next loss, stalling the jitter buffer for hundreds of ms (the probe then reported freezes under
2 % loss that Chromium, on the same stream, did not have), and under heavy loss every new gap re-requested
all older ones, far more often than a browser does (at 10 % loss the probe recovered packets whose
retransmission was lost twice before they froze the picture, where Chromium froze; docs/fidelity.md).
So a new gap's NACK carries only the newly missing packets, and each missing sequence number is
re-requested every 100 ms, at most 10 times.
REMB is throttled like libwebrtc's ``RembThrottler`` (``RembThrottle``): aiortc sends one REMB for every
packet while its overuse detector says "overusing", which a busy probe host triggers by itself (a fleet of
30 probes in one process sent ~35 REMB per second each), telling the SFU to cut the bitrate of a stream
other viewers share. libwebrtc sends at most one per 200 ms unless the estimate fell by more than 3 %.
The receiver's jitter buffer and the REMB estimator's rate counter and frame-period filter are swapped
for exact, faster stand-ins (``probe/jitterbuffer.py``, ``probe/remb.py``; differential tests), on both
receive paths; ``install`` leaves aiortc's own in place where it cannot swap them.
Tested against aiortc 1.16; ``install`` fails loudly if the private names it needs are gone.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import structlog
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket, unpack_remb_fci

from probe.bitstream import FrameInfo, frame_info
from probe.fastrecv import NTP_EPOCH_MS
from probe.hoststalls import KEEP as LAGS_KEPT
from probe.hoststalls import THRESHOLD_MS
from probe.jitterbuffer import install as install_fast_jitter_buffer
from probe.remb import install as install_fast_remb
from probe.rtpstats import StreamCounter

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class UndecodedFrame:
    """What no-decode mode hands to the track consumer in place of a decoded frame."""

    width: int | None
    height: int | None
    keyframe: bool
    t_ms: float | None = None
    """When it was complete: the arrival time (session clock) of the packet that completed it, where known."""


_NOT_VIDEO = FrameInfo(False, None, None)
"""What an audio frame is, for ``on_assembled`` (immutable: one for all)."""

AssembledCallback = Callable[[str, FrameInfo, float], None]
"""(kind, frame info, session time ms) for each complete encoded frame."""


_VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_DECODERS = {"VP8": "vp8", "H264": "h264"}


NACK_RETRY_MS = 100.0
"""libwebrtc's default RTT for re-sending NACKs when it has no RTT estimate (a receive-only peer)."""
NACK_MAX_RETRIES = 10


class NackRetrier:
    """Re-sends NACKs for sequence numbers aiortc's NackGenerator still has missing (pure bookkeeping;
    ``due`` is called on a timer with the current time)."""

    def __init__(self, retry_ms: float = NACK_RETRY_MS, max_retries: int = NACK_MAX_RETRIES) -> None:
        self.retry_ms = retry_ms
        self.max_retries = max_retries
        self._state: dict[int, tuple[float, int]] = {}  # seq -> (last NACK sent, retries)

    def nacked(self, seqs: list[int], now_ms: float) -> None:
        """aiortc sent its (first) NACK for ``seqs`` at ``now_ms``; the retry clock starts there."""
        for seq in seqs:
            self._state.setdefault(seq, (now_ms, 0))

    def fresh(self, seqs: list[int]) -> list[int]:
        """Those of ``seqs`` never NACKed yet. aiortc's NACK on a new gap lists every packet still missing;
        libwebrtc's lists only the newly missing ones (``NackRequester``'s sequence-number batch) and
        re-requests the others on their own timer (here ``due``), so only these go out."""
        state = self._state
        return [seq for seq in seqs if seq not in state]

    def due(self, missing: set[int], now_ms: float) -> list[int]:
        """Sequence numbers to NACK again now; forgets those no longer missing or out of retries."""
        for seq in list(self._state):
            if seq not in missing:
                del self._state[seq]
        out = []
        for seq in missing:
            state = self._state.get(seq)
            if state is None:
                self._state[seq] = (now_ms, 0)  # aiortc NACKed it when it noticed the gap
                continue
            sent, retries = state
            if retries < self.max_retries and now_ms - sent >= self.retry_ms:
                self._state[seq] = (now_ms, retries + 1)
                out.append(seq)
        return sorted(out)


class _ReNack(RtcpRtpfbPacket):
    """A NACK ``NackRetrier`` re-requests (``ReceiverTap._resend_nacks``): ``on_rtcp`` lets it through whole.
    The same bytes on the wire as any NACK."""


REMB_INTERVAL_MS = 200.0
"""libwebrtc's ``kRembSendInterval``."""
REMB_DROP_FACTOR = 1.03
"""libwebrtc's ``kSendThresholdPercent`` (103): a fall of more than ~3 % is sent at once."""


class RembThrottle:
    """Which REMB estimates to send (pure bookkeeping, after libwebrtc's ``RembThrottler``)."""

    def __init__(self, interval_ms: float = REMB_INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self._last_ms: float | None = None
        self._last_bitrate: int | None = None
        self.sent = 0
        self.suppressed = 0

    def allow(self, bitrate: int, now_ms: float) -> bool:
        """True if an estimate of ``bitrate`` bps at ``now_ms`` goes out (and becomes the last one sent)."""
        if (self._last_ms is not None and self._last_bitrate is not None
                and bitrate * REMB_DROP_FACTOR > self._last_bitrate and now_ms < self._last_ms + self.interval_ms):
            self.suppressed += 1
            return False
        self._last_ms, self._last_bitrate = now_ms, bitrate
        self.sent += 1
        return True


class DecodeLag:
    """How long the probe's own decode path held each video frame: from the frame leaving the jitter
    buffer complete (``assembled``) to the decoded frame reaching the session (``rendered``), matched by
    RTP timestamp. A decode costs 2-3 ms, so a frame held ``THRESHOLD_MS`` or more means the decoder
    thread, or the hand-back to the event loop, could not run: a host stall the loop's own monitor cannot
    always see (a thread starved of CPU or of the GIL while the loop ran), which renders the frames it
    delays late, as a freeze no viewer had. ``stalls``: merged (start, end) intervals, session ms."""

    def __init__(self) -> None:
        self._pending: OrderedDict[int, float] = OrderedDict()
        self.stalls: deque[tuple[float, float]] = deque(maxlen=LAGS_KEPT)

    def assembled(self, timestamp: int, t_ms: float) -> None:
        self._pending[timestamp] = t_ms
        while len(self._pending) > PENDING_KEPT:  # frames the decoder rejected never come back
            self._pending.popitem(last=False)

    def rendered(self, timestamp: int | None, t_ms: float) -> None:
        start = self._pending.pop(timestamp, None) if timestamp is not None else None
        if start is None or t_ms - start < THRESHOLD_MS:
            return
        if self.stalls and start <= self.stalls[-1][1]:  # the backlog of one episode: one interval
            s, e = self.stalls[-1]
            self.stalls[-1] = (s, max(e, t_ms))
        else:
            self.stalls.append((start, t_ms))


PENDING_KEPT = 256
"""Frames awaiting their decode, at most (~8 s at 30 fps)."""


class _Lanes:
    """The process's decoder threads, shared by every probe in it: as many as CPUs it may run on.

    A thread per probe (as before) gave 12 decoding probes on one core 12 busy threads contending with the
    event loop for one core and the GIL, for no parallelism; with shared threads 12 H.264 probes ran with
    0 false freezes in 4 runs of 5, against 1 and 8 just before (docs/performance.md, session 9). Each
    probe's frames stay on one lane, in order; lanes take the probes round-robin. A frame whose decode
    raises is logged and treated as a decode error, so the lane goes on for the other probes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.SimpleQueue[tuple[FrameDecoder, Any]]] = []
        self._next = 0

    def assign(self) -> queue.SimpleQueue[tuple[FrameDecoder, Any]]:
        with self._lock:
            if not self._queues:
                for i in range(max(1, len(os.sched_getaffinity(0)))):
                    q: queue.SimpleQueue[tuple[FrameDecoder, Any]] = queue.SimpleQueue()
                    threading.Thread(target=_lane, args=(q,), name=f"probe-video-decoder-{i}", daemon=True).start()
                    self._queues.append(q)
            q = self._queues[self._next % len(self._queues)]
            self._next += 1
            return q


def _lane(q: queue.SimpleQueue[tuple[FrameDecoder, Any]]) -> None:
    while True:
        decoder, item = q.get()
        try:
            decoder.run_one(item)
        except Exception:  # one probe's bad frame must not end the thread every probe on this lane shares
            log.exception("probe_decoder_error")
            decoder.failed()


_LANES = _Lanes()


class _Handoff:
    """Decoded frames from the decoder threads to one event loop, with one wake-up per burst.

    ``call_soon_threadsafe`` per frame writes the loop's self-pipe once per frame (360 writes/s for 12
    probes); py-spy put 5 % of a 12-probe process's samples in that write (a system call, and the GIL to
    take back after it). Here a frame is appended to a deque, and the loop is woken only if no wake-up is
    pending; it then hands every queued frame to its probe's queue. (Not measured to change the fleet's
    CPU or freezes: the one quiet run with it, 12 H.264 probes, gave 30.05 fps, 0 false freezes, 6.61 %
    of a core per probe, like the runs before it; docs/performance.md, session 9.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[asyncio.Queue[Any], Any]] = deque()
        self._lock = threading.Lock()
        self._pending = False

    def put(self, output: asyncio.Queue[Any], frame: Any) -> None:
        """Queue ``frame`` for ``output`` (any thread); RuntimeError once the loop is closed."""
        with self._lock:
            self._items.append((output, frame))
            if self._pending:
                return
            self._pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            with self._lock:
                self._pending = False
            raise

    def _drain(self) -> None:
        with self._lock:
            self._pending = False
            items, self._items = self._items, deque()
        for output, frame in items:
            output.put_nowait(frame)


_handoffs: dict[asyncio.AbstractEventLoop, _Handoff] = {}
_handoffs_lock = threading.Lock()


def _handoff(loop: asyncio.AbstractEventLoop) -> _Handoff:
    with _handoffs_lock:
        for old in [lp for lp in _handoffs if lp.is_closed()]:
            del _handoffs[old]
        h = _handoffs.get(loop)
        if h is None:
            h = _handoffs[loop] = _Handoff(loop)
        return h


class FrameDecoder:
    """Decodes one receiver's video frames on one of the process's decoder threads (``_Lanes``); decoded
    frames go to the track's queue, their ``pts`` the frame's RTP timestamp (``DecodeLag`` matches them
    with their assembly by it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, output: asyncio.Queue[Any], error: threading.Event,
                 *, skip_loop_filter: bool = False) -> None:
        self._loop = loop
        self._options = {"skip_loop_filter": "all"} if skip_loop_filter else {}
        self._output = output
        self._error = error
        self.before_decode: Callable[[], None] | None = None
        """Runs in the decoder thread before each decode (tests starve the thread with it)."""
        self._context: Any = None
        self._codec: str | None = None
        self._ended = False
        self._lane = _LANES.assign()
        self._handoff = _handoff(loop)

    def submit(self, codec_name: str, data: bytes, timestamp: int) -> None:
        self._lane.put((self, (codec_name, data, timestamp)))

    def stop(self) -> None:
        self._lane.put((self, None))

    def failed(self) -> None:
        """``run_one`` raised on this probe's frame: treated like a decode error (the receiver sends a PLI)."""
        self._error.set()

    def run_one(self, item: tuple[str, bytes, int] | None) -> None:
        """Decode one frame (on the lane's thread); ``None`` ends the track."""
        if self._ended:
            return
        if item is None:
            self._ended = True
            self._context = None
            self._deliver(None)
            return
        codec_name, data, timestamp = item
        if self.before_decode is not None:
            self.before_decode()
        if codec_name != self._codec:
            name = _DECODERS.get(codec_name.upper())
            if name is None:
                return
            self._context = av.CodecContext.create(name, "r")
            self._context.thread_count = 1
            if self._options:
                self._context.options = dict(self._options)
            self._codec = codec_name
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = _VIDEO_TIME_BASE
        try:
            frames = self._context.decode(packet)
        except av.FFmpegError:
            self._error.set()  # aiortc's receiver turns this into a PLI
            return
        for frame in frames:
            if not self._deliver(frame):
                self._ended = True  # the loop is closed: drop the rest of this probe's frames
                self._context = None
                return

    def _deliver(self, frame: Any) -> bool:
        """Hand ``frame`` to the event loop; False once the loop is closed (an overloaded probe can still be
        decoding its backlog when its session, and its process's loop, have ended)."""
        try:
            self._handoff.put(self._output, frame)
        except RuntimeError:  # "Event loop is closed"
            return False
        return True


class _TapQueue(queue.Queue[Any]):
    """Stands in for the receiver's decoder queue; ``put`` is called on the event loop thread."""

    def __init__(self, tap: ReceiverTap) -> None:
        super().__init__()
        self._tap = tap

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver is stopping: let aiortc's (idle) decoder thread and ours end
            super().put(None)
            if self._tap.decoder is not None:
                self._tap.decoder.stop()
            if self._tap.nack_task is not None:
                self._tap.nack_task.cancel()
            return
        codec, encoded = item
        self._tap.on_encoded_frame(codec.name, encoded.data, encoded.timestamp)


class ReceiverTap:
    def __init__(
        self,
        receiver: Any,
        kind: str,
        *,
        decode: bool,
        skip_loop_filter: bool = False,
        now_ms: Callable[[], float],
        counters: dict[int, StreamCounter],
        on_assembled: AssembledCallback,
        on_first_rtp: Callable[[float], None],
        on_undecoded: Callable[[UndecodedFrame], None] | None = None,
    ) -> None:
        self.receiver = receiver
        self.kind = kind
        self.decode = decode and kind == "video"
        self.skip_loop_filter = skip_loop_filter
        self.now_ms = now_ms
        self.counters = counters
        self.on_assembled = on_assembled
        self.on_first_rtp = on_first_rtp
        self.on_undecoded = on_undecoded
        """No-decode mode: where each shown ``UndecodedFrame`` goes, synchronously (None: the track's queue)."""
        self._first_rtp = False
        self.decoder: FrameDecoder | None = None
        self.decode_lag = DecodeLag()
        self.keyframe_seen = False
        """No-decode mode: a keyframe has been assembled (frames before it cannot be shown)."""
        self.undecodable_frames = 0
        """No-decode mode: frames assembled before the first keyframe, not shown."""
        self.nack_task: asyncio.Task[None] | None = None
        self.media_ssrc: int | None = None
        self.remb = RembThrottle()
        self.nacks = NackRetrier()
        self._payload_types: dict[int, tuple[bool, int]] = {}  # negotiated payload type -> (is RTX, clock rate)

    def install(self) -> None:
        r = self.receiver
        for name in ("_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__rtx_ssrc",
                     "_RTCRtpReceiver__decoder_error"):
            if not hasattr(r, name):
                raise RuntimeError(f"aiortc internals changed: RTCRtpReceiver has no {name}")
        if getattr(r, "_RTCRtpReceiver__decoder_thread", None) is not None:
            raise RuntimeError("tap must be installed before the receiver starts")
        r._RTCRtpReceiver__decoder_queue = _TapQueue(self)
        # same results, less CPU (probe/remb.py, probe/jitterbuffer.py)
        install_fast_remb(getattr(r, "_RTCRtpReceiver__remote_bitrate_estimator", None))
        install_fast_jitter_buffer(r)
        handle_rtp = r._handle_rtp_packet
        send_rtcp = r._send_rtcp

        async def tapped_rtp(packet: Any, arrival_time_ms: float) -> None:
            self.on_rtp(packet, arrival_time_ms)
            await handle_rtp(packet, int(arrival_time_ms))  # aiortc's estimator indexes by whole ms

        async def tapped_rtcp(packet: Any) -> None:
            if self.on_rtcp(packet):
                await send_rtcp(packet)

        r._handle_rtp_packet = tapped_rtp
        r._send_rtcp = tapped_rtcp
        r._probe_tap = self  # the direct receive path's fused handler (probe/rtphandler.py) starts here

    def on_rtp(self, packet: Any, arrival_time_ms: float | None = None) -> None:
        """Count an RTP packet. ``arrival_time_ms`` is the time aiortc's receiver is given (ms since 1900):
        a float from the direct receive path (the kernel's receive time, ``probe.fastrecv``), used to
        date the packet on the session clock; an int from aiortc's own path (the wall clock in whole ms
        read just before), where the time now is the better reading."""
        if isinstance(arrival_time_ms, float):
            self.count(packet, self.arrived(arrival_time_ms))
        else:
            self.count(packet, self.now_ms())

    def arrived(self, arrival_time_ms: float) -> float:
        """A kernel receive time (ms since 1900, aiortc's clock) on the session clock: now, less how long ago
        it was (never later than now)."""
        return self.now_ms() - max(0.0, time.time() * 1000.0 + NTP_EPOCH_MS - arrival_time_ms)

    def count(self, packet: Any, now: float) -> None:
        """Count an RTP packet that arrived at ``now`` (session ms)."""
        if not self._first_rtp:
            self._first_rtp = True
            self.on_first_rtp(now)
        pt = self._payload_types.get(packet.payload_type)
        if pt is None:
            codec = self.receiver._RTCRtpReceiver__codecs.get(packet.payload_type)
            if codec is None:
                return
            pt = self._payload_types[packet.payload_type] = (codec.name.lower() == "rtx", codec.clockRate)
        is_rtx, clock_rate = pt
        if is_rtx:
            media = self.receiver._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)
            counter = self.counters.get(media) if media is not None else None
            if counter is not None and len(packet.payload) >= 2:
                osn = int.from_bytes(packet.payload[:2], "big")
                counter.add_rtx(osn, now, len(packet.payload) - 2)
            return
        counter = self.counters.get(packet.ssrc)
        if counter is None:
            counter = self.counters[packet.ssrc] = StreamCounter(self.kind, packet.ssrc, clock_rate)
            if self.kind == "video" and self.media_ssrc is None:
                self.media_ssrc = packet.ssrc
                generator = getattr(self.receiver, "_RTCRtpReceiver__nack_generator", None)
                if generator is not None:
                    self.nack_task = asyncio.ensure_future(self._resend_nacks(generator))
        counter.add_original(packet.sequence_number, packet.timestamp, now, len(packet.payload))

    async def _resend_nacks(self, generator: Any) -> None:
        retrier = self.nacks
        while True:
            # while packets are missing, check 4 times per retry interval; otherwise once per interval (a
            # new gap's first NACK is noted by ``on_rtcp``, so its first retry is still on time)
            await asyncio.sleep(NACK_RETRY_MS / (4000.0 if generator.missing else 1000.0))
            again = retrier.due(generator.missing, self.now_ms())
            rtcp_ssrc = getattr(self.receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
            if again and self.media_ssrc is not None and rtcp_ssrc is not None:
                await self.receiver._send_rtcp(_ReNack(RTCP_RTPFB_NACK, rtcp_ssrc, self.media_ssrc, lost=again))

    def on_rtcp(self, packet: Any) -> bool:
        """Count an outgoing RTCP packet; False if it is a REMB the throttle holds back."""
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, _ = unpack_remb_fci(packet.fci)
            except ValueError:
                return True
            return self.remb.allow(bitrate, self.now_ms())
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if not isinstance(packet, _ReNack):  # aiortc's NACK on a new gap: only what was never requested
                packet.lost = self.nacks.fresh(packet.lost)
                if not packet.lost:
                    return False
            self.nacks.nacked(packet.lost, self.now_ms())
            c = self.counters.get(packet.media_ssrc)
            if c is not None:
                c.nack_count += 1
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            c = self.counters.get(packet.media_ssrc)
            if c is not None:
                c.pli_count += 1
        return True

    def on_encoded_frame(self, codec_name: str, data: bytes, timestamp: int, arrival_ms: float | None = None) -> None:
        """Record a complete encoded frame, then decode it (decode mode) or pass its size on (no-decode).

        ``arrival_ms``: the arrival time (session clock) of the packet that completed it, from the direct
        receive path; the frame is assembled then, however late this process got to it. None: now."""
        t = self.now_ms() if arrival_ms is None else arrival_ms
        if self.kind != "video":
            self.on_assembled(self.kind, _NOT_VIDEO, t)
            return
        info = frame_info(codec_name, data)
        self.on_assembled("video", info, t)
        track_queue: asyncio.Queue[Any] = self.receiver._track._queue
        if not self.decode:
            if not self.keyframe_seen:
                if not info.keyframe:
                    # what a decoder does with an interframe before any keyframe: nothing to show, and an
                    # error that makes the receiver send a PLI (without it a lost join keyframe left
                    # no-decode probes waiting for the sender's next periodic one, counting undecodable
                    # frames as shown)
                    self.undecodable_frames += 1
                    self.receiver._RTCRtpReceiver__decoder_error.set()
                    return
                self.keyframe_seen = True
            frame = UndecodedFrame(info.width, info.height, info.keyframe, t)
            if self.on_undecoded is not None:
                self.on_undecoded(frame)
            else:
                track_queue.put_nowait(frame)
            return
        if self.decoder is None:
            self.decoder = FrameDecoder(asyncio.get_running_loop(), track_queue,
                                        self.receiver._RTCRtpReceiver__decoder_error,
                                        skip_loop_filter=self.skip_loop_filter)
        self.decode_lag.assembled(timestamp, self.now_ms())  # the decoder's queue starts now
        self.decoder.submit(codec_name, data, timestamp)
