"""One viewer of a room: its peer connection, tracks, send path, schedule and truth record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from room.fastsend import FastSender
from room.schedule import Rule, Settings, next_change_ms, settings_at
from room.sendpath import SendPath
from room.tracks import ViewerAudioTrack, ViewerVideoTrack
from room.truth import ViewerTruth

if TYPE_CHECKING:
    from room.room import Room

log = structlog.get_logger()


class Viewer:
    """A joined viewer. Built by ``Room.join``; ``close()`` ends it (idempotent)."""

    def __init__(
        self,
        room: Room,
        pc: Any,
        truth: ViewerTruth,
        video: ViewerVideoTrack,
        audio: ViewerAudioTrack | None,
        sendpath: SendPath,
        rules: Sequence[Rule],
        join_offset_ms: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        fast_senders: Sequence[FastSender] = (),
    ) -> None:
        self.room = room
        self.fast_senders = tuple(fast_senders)
        self.pc = pc
        self.truth = truth
        self.video = video
        self.audio = audio
        self.sendpath = sendpath
        self.rules = tuple(rules)
        self.join_offset_ms = join_offset_ms
        self.clock = clock
        self.wall_clock = wall_clock
        self.joined_at = clock()
        self.settings: Settings | None = None
        self._schedule_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def id(self) -> str:
        return self.truth.id

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Apply the settings in force at join and follow the schedule until the viewer leaves."""
        self._apply(settings_at(self.rules, 0.0, self.join_offset_ms))
        if next_change_ms(self.rules, 0.0, self.join_offset_ms) is not None:
            self._schedule_task = asyncio.create_task(self._follow_schedule(), name=f"schedule-{self.id}")

    async def _follow_schedule(self) -> None:
        while True:
            t_ms = (self.clock() - self.joined_at) * 1000
            self._apply(settings_at(self.rules, t_ms, self.join_offset_ms))
            nxt = next_change_ms(self.rules, t_ms, self.join_offset_ms)
            if nxt is None:
                return
            await asyncio.sleep(max(0.0, (nxt - t_ms) / 1000))

    def _apply(self, settings: Settings) -> None:
        old = self.settings
        if settings == old:
            return
        self.settings = settings
        self.sendpath.apply(settings)
        if old is None or settings.rendition != old.rendition:
            self.video.switch_to(self.room.video_encoder(settings.rendition))
        if settings.freeze != self.video.frozen:
            self.sendpath.freeze_scheduled(settings.freeze)
            self.video.set_frozen(settings.freeze)
        self.truth.settings.append({"t_ms": round(self.wall_clock() * 1000, 1), **settings.to_dict()})
        log.debug("viewer_settings", room=self.room.name, viewer=self.id, **settings.to_dict())

    @property
    def send_path_kind(self) -> str:
        """How media leaves: ``direct`` (synchronous SRTP + sendto), ``fast`` (fastsend through aiortc's
        coroutines), ``aiortc`` (aiortc's own sender loop)."""
        if not self.fast_senders:
            return "aiortc"
        return "direct" if all(f.direct for f in self.fast_senders) else "fast"

    def on_pli(self) -> None:
        """PLI/FIR from the viewer's decoder (installed as the video sender's ``_send_keyframe``)."""
        self.truth.pli_received += 1
        self.video.request_keyframe()

    async def close(self, reason: str) -> None:
        """Leave: stop the schedule, the send path and the peer connection; record the time."""
        if self._closed:
            return
        self._closed = True
        self.truth.left_ms = self.wall_clock() * 1000
        self.truth.leave_reason = reason
        self.truth.send_path = self.send_path_kind
        if self._schedule_task is not None:
            self._schedule_task.cancel()
        open_freeze = self.truth.freezes[-1] if self.truth.freezes else None
        if open_freeze is not None and open_freeze.scheduled_end_ms is None:
            open_freeze.scheduled_end_ms = self.truth.left_ms
        await self.sendpath.close()
        await self.pc.close()
        self.video.stop()
        if self.audio is not None:
            self.audio.stop()
        log.info("viewer_left", room=self.room.name, viewer=self.id, reason=reason)
