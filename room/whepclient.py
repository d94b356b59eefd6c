"""A minimal aiortc WHEP viewer for the room's own tests and benchmark (not the probe).

Joins recvonly video+audio over loopback, records every decoded video frame (arrival time, size,
marker) and audio frame count. The real viewer, with QoE metrics, is ``probe/``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from probe import marker
from room import ice


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    t: float
    """Arrival (decode) time, ``time.monotonic()`` s."""
    wall_ms: float
    """Arrival wall-clock time, ms since the Unix epoch."""
    width: int
    height: int
    marker: marker.Marker | None
    key_frame: bool


@dataclass
class WhepViewer:
    """One viewer: ``await join()``, read ``frames``, ``await leave()``."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    audio: bool = True
    decode: bool = True
    status: int | None = None
    body: str = ""
    location: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    frames: list[ReceivedFrame] = field(default_factory=list)
    audio_frames: int = 0
    pc: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _new_frame: asyncio.Event = field(default_factory=asyncio.Event)

    async def join(self, session: aiohttp.ClientSession, content_type: str = "application/sdp") -> int:
        """POST the offer; on 201 apply the answer and start reading media. Returns the HTTP status."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
            reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
            self._tasks.append(asyncio.create_task(reader))

        with ice.host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        async with session.post(
            self.url,
            params=dict(self.labels),
            data=pc.localDescription.sdp,
            headers={"Content-Type": content_type},
        ) as resp:
            self.status = resp.status
            self.body = await resp.text()
            self.headers = dict(resp.headers)
            self.location = resp.headers.get("Location")
        if self.status != 201:
            await pc.close()
            return self.status
        await pc.setRemoteDescription(RTCSessionDescription(sdp=self.body, type="answer"))
        return self.status

    async def _read_video(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if not self.decode:
                    continue
                y = frame.to_ndarray(format="yuv420p")[: frame.height]
                self.frames.append(
                    ReceivedFrame(
                        t=time.monotonic(),
                        wall_ms=time.time() * 1000,
                        width=frame.width,
                        height=frame.height,
                        marker=marker.read(y),
                        key_frame=bool(frame.key_frame),
                    )
                )
                self._new_frame.set()
        except MediaStreamError:
            pass

    async def _read_audio(self, track: Any) -> None:
        try:
            while True:
                await track.recv()
                self.audio_frames += 1
        except MediaStreamError:
            pass

    async def wait_frames(self, n: int, within_s: float = 10.0) -> None:
        """Wait until at least ``n`` video frames were decoded (TimeoutError after ``within_s`` s)."""
        async with asyncio.timeout(within_s):
            while len(self.frames) < n:
                self._new_frame.clear()
                await self._new_frame.wait()

    async def leave(self, session: aiohttp.ClientSession | None = None) -> int | None:
        """DELETE the Location (if a session is given) and close the connection. Returns the DELETE status."""
        status = None
        if session is not None and self.location:
            async with session.delete(urljoin(self.url, self.location)) as resp:
                status = resp.status
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return status
