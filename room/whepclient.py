"""A minimal aiortc WHEP viewer for the room's own tests and benchmark (not the probe).

Joins recvonly video+audio over loopback, records every decoded video frame (arrival time, size,
marker) and audio frame count. The real viewer, with QoE metrics, is ``probe/``.

``WireTap`` counts the RTP packets that reach the viewer's UDP socket, per SSRC, from the SRTP
packets' cleartext headers (before any decryption): what the room really put on the wire. With
``swallow=True`` it also keeps them from aiortc (no decryption, no jitter buffer, no decoder), which
makes a viewer light enough to run a few hundred of them for a benchmark.
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

from probe import ice, marker


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


@dataclass(slots=True)
class SsrcCount:
    """RTP packets of one SSRC that arrived on the viewer's socket."""

    packets: int = 0
    bytes: int = 0
    """SRTP bytes (UDP payload)."""
    first_seq: int | None = None
    highest_seq: int = 0
    """Highest extended (wrap-counted) sequence number seen."""
    marked: int = 0
    """Packets with the RTP marker bit (for video: the last packet of each frame sent)."""

    @property
    def expected(self) -> int:
        """Packets from the first to the highest sequence number seen (RFC 3550 A.3)."""
        return 0 if self.first_seq is None else self.highest_seq - self.first_seq + 1


class WireTap:
    """Counts RTP arriving on a peer connection's ICE sockets, per SSRC (install once ICE gathered)."""

    def __init__(self, pc: Any, *, swallow: bool = False) -> None:
        self.by_ssrc: dict[int, SsrcCount] = {}
        self.swallow = swallow
        """Keep RTP from aiortc (counted only); STUN, DTLS and RTCP still pass."""
        transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
        for dtls in transports.values():
            for protocol in dtls.transport._connection._protocols:
                protocol.datagram_received = self._wrap(protocol.datagram_received)

    def _wrap(self, original: Any) -> Any:
        by_ssrc, swallow = self.by_ssrc, self.swallow

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 208:  # RTP, not RTCP
                ssrc = int.from_bytes(data[8:12], "big")
                count = by_ssrc.get(ssrc)
                if count is None:
                    count = by_ssrc[ssrc] = SsrcCount()
                count.packets += 1
                count.bytes += len(data)
                count.marked += data[1] >> 7
                seq = int.from_bytes(data[2:4], "big")
                if count.first_seq is None:
                    count.first_seq = count.highest_seq = seq
                else:
                    delta = (seq - count.highest_seq) & 0xFFFF
                    if 0 < delta < 0x8000:
                        count.highest_seq += delta
                if swallow:
                    return
            original(data, addr)

        return datagram_received


@dataclass
class WhepViewer:
    """One viewer: ``await join()``, read ``frames``, ``await leave()``."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    audio: bool = True
    decode: bool = True
    tap: bool = False
    """Count RTP on the wire per SSRC (``wire``)."""
    light: bool = False
    """Count RTP on the wire and keep it from aiortc: no decryption, no decoding (implies ``tap``)."""
    status: int | None = None
    body: str = ""
    location: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    frames: list[ReceivedFrame] = field(default_factory=list)
    audio_frames: int = 0
    pc: Any = None
    wire: WireTap | None = None
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
        if self.tap or self.light:  # the sockets exist once gathering is done
            self.wire = WireTap(pc, swallow=self.light)
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
