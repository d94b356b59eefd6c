"""Light per-viewer tracks that yield the shared encoders' packets to a viewer's RTCRtpSender.

aiortc's sender accepts an ``av.Packet`` from ``track.recv()`` and only packetizes it. The video
track never hands over an inter frame before the viewer's first keyframe (or after a freeze, a
backlog flush or a rendition switch), and asks its encoder for a keyframe in each of those cases.

Two ways out: aiortc's pull (the sender's task awaits ``recv_frame``, fed by a queue), or, once the
sender installed a ``direct`` hook (``room/fastsend.py``), a synchronous push from the encoder's
fan-out: ``on_frame`` decides and sends right away, with no queue and no task switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import av
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from room.encoder import EncodedFrame, SharedAudioEncoder, SharedSource, SharedVideoEncoder

log = structlog.get_logger()

MAX_BACKLOG_FRAMES = 30
"""Frames queued for a viewer beyond which the queue is flushed and the viewer restarts at a keyframe."""


class FrameObserver(Protocol):
    """Told which frame the sender is about to packetize (the send path attributes packets to it)."""

    def frame_out(self, frame: EncodedFrame, after_freeze: bool) -> None: ...


class ViewerVideoTrack(MediaStreamTrack):
    """The shared video of one rendition, as seen by one viewer (freezes and switches included)."""

    kind = "video"

    def __init__(self, source: SharedVideoEncoder, observer: FrameObserver | None = None) -> None:
        super().__init__()
        self.source = source
        self.pending: SharedVideoEncoder | None = None
        self.observer = observer
        self.frozen = False
        self.frames_out = 0
        self.frames_dropped_frozen = 0
        self.backlog_flushes = 0
        self._queue: asyncio.Queue[tuple[SharedSource, EncodedFrame] | None] = asyncio.Queue()
        self._need_keyframe = True
        self._after_freeze = False
        self._subscribed = False
        self._last_pts: int | None = None
        self.direct: Callable[[EncodedFrame], None] | None = None
        """Set by the sender (``room/fastsend.py``): sends a frame now, synchronously."""

    # -- called by the encoders
    def on_frame(self, source: SharedSource, frame: EncodedFrame) -> None:
        direct = self.direct
        if direct is not None and self._queue.empty():
            selected = self._select(source, frame)
            if selected is not None:
                _send_direct(self, direct, selected)
            return
        if self._queue.qsize() >= MAX_BACKLOG_FRAMES:
            self._flush_backlog()
        self._queue.put_nowait((source, frame))

    def _flush_backlog(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self.backlog_flushes += 1
        self._need_keyframe = True
        self.source.request_keyframe("backlog")

    # -- called by the viewer's schedule
    def set_frozen(self, frozen: bool) -> None:
        """Stop (True) or resume (False) handing video frames to the sender; resume at a keyframe."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        if not frozen:
            self._need_keyframe = True
            self._after_freeze = True
            if self._subscribed:
                self.source.request_keyframe("freeze")

    def switch_to(self, target: SharedVideoEncoder) -> None:
        """Move to ``target``'s rendition at its next keyframe (keep the current one until then)."""
        if self.pending is not None and self.pending is not target:
            self.pending.unsubscribe(self)
            self.pending = None
        if target is self.source:
            return
        if not self._subscribed:
            self.source = target
            return
        self.pending = target
        target.subscribe(self)
        target.request_keyframe("switch")

    def request_keyframe(self) -> None:
        """PLI/FIR from the viewer (installed as the RTCRtpSender's ``_send_keyframe``)."""
        (self.pending or self.source).request_keyframe("pli")

    # -- called by the RTCRtpSender
    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        return (await self.recv_frame()).packet

    async def recv_frame(self) -> EncodedFrame:
        """The next frame for this viewer (what ``recv`` hands aiortc's own sender loop, with payloads)."""
        if self.readyState != "live":
            raise MediaStreamError
        if not self._subscribed:
            self._subscribed = True
            self.source.subscribe(self)
            self.source.request_keyframe("join")
        while True:
            item = await self._queue.get()
            if item is None:
                raise MediaStreamError
            selected = self._select(*item)
            if selected is not None:
                return selected

    def _select(self, src: SharedSource, frame: EncodedFrame) -> EncodedFrame | None:
        """``frame`` if it goes out to this viewer now (bookkeeping done), else None (skipped)."""
        if self.frozen:
            self.frames_dropped_frozen += 1
            return None
        if src is self.pending:
            if not frame.keyframe:
                return None
            pts = frame.packet.pts
            if self._last_pts is not None and pts is not None and pts <= self._last_pts:
                # the new rendition's keyframe is for a tick already sent: two frames with one
                # RTP timestamp would be merged by the receiver, so wait for a later keyframe
                self.pending.request_keyframe("switch")
                return None
            self.source.unsubscribe(self)
            self.source, self.pending = self.pending, None
            self._need_keyframe = False
        elif src is not self.source:
            return None  # a frame of the rendition we just left
        elif self._need_keyframe:
            if not frame.keyframe:
                return None
            self._need_keyframe = False
        self.frames_out += 1
        self._last_pts = frame.packet.pts
        if self.observer is not None:
            self.observer.frame_out(frame, self._after_freeze)
        self._after_freeze = False
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.source.unsubscribe(self)
            if self.pending is not None:
                self.pending.unsubscribe(self)
            self._queue.put_nowait(None)
        super().stop()


class ViewerAudioTrack(MediaStreamTrack):
    """The room's shared Opus tone for one viewer."""

    kind = "audio"

    def __init__(self, source: SharedAudioEncoder) -> None:
        super().__init__()
        self.source = source
        self._queue: asyncio.Queue[EncodedFrame | None] = asyncio.Queue()
        self._subscribed = False
        self.direct: Callable[[EncodedFrame], None] | None = None
        """Set by the sender (``room/fastsend.py``): sends a frame now, synchronously."""

    def on_frame(self, source: SharedSource, frame: EncodedFrame) -> None:
        direct = self.direct
        if direct is not None and self._queue.empty():
            _send_direct(self, direct, frame)
            return
        if self._queue.qsize() >= 4 * MAX_BACKLOG_FRAMES:
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        return (await self.recv_frame()).packet

    async def recv_frame(self) -> EncodedFrame:
        """The next shared Opus frame."""
        if self.readyState != "live":
            raise MediaStreamError
        if not self._subscribed:
            self._subscribed = True
            self.source.subscribe(self)
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.source.unsubscribe(self)
            self._queue.put_nowait(None)
        super().stop()


def _send_direct(track: ViewerVideoTrack | ViewerAudioTrack, direct: Callable[[EncodedFrame], None],
                 frame: EncodedFrame) -> None:
    """Send ``frame`` with the track's direct sender; a failure turns the direct path off for this track
    (logged) and never reaches the shared encoder loop that called it."""
    try:
        direct(frame)
    except Exception:
        log.exception("direct_send_failed", track=track.id)
        track.direct = None
