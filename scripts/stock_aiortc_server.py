#!/usr/bin/env python3
"""The room's benchmark reference: a WHEP server written the way aiortc's examples write one.

Every viewer gets its own ``RTCPeerConnection`` with its own video track (the room's test pattern,
drawn per viewer) and aiortc's silence audio track, so aiortc encodes and packetizes per viewer,
as it does by default. This is what the embedded room (encode once, fan out; docs/room.md) is measured
against in ``scripts/bench_room.py --reference-viewers K``, on the same core, in the same run.

    .venv/bin/python scripts/stock_aiortc_server.py --port PORT [--spec 1280x720@30:vp8:1500]

``POST /whep/<room>`` (offer → 201 + answer + Location), ``DELETE`` the Location to leave. ICE gathers on
127.0.0.1 only, no STUN. aiortc's encoder starts at its own default bitrate and moves it with the
viewer's REMB; here it starts at the spec's bitrate (aiortc's module default, set before any encoder
exists), and ``MAX_BITRATE`` is raised to it where needed. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiortc.codecs.h264
import aiortc.codecs.vpx
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack

from probe import ice
from probe.marker import Marker
from room.config import parse_room_spec
from room.pattern import TestPattern


class PatternTrack(VideoStreamTrack):
    """The room's pattern with its marker, drawn for one viewer at aiortc's 30 fps pacing."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self._pattern = TestPattern(width, height)
        self._index = 0

    async def recv(self) -> Any:
        pts, time_base = await self.next_timestamp()
        frame = self._pattern.frame(self._index, Marker(seq=self._index, capture_ms=int(time.time() * 1000)))
        self._index += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


def make_app(spec: str) -> web.Application:
    room = parse_room_spec(f"bench:{spec}")
    rendition = room.renditions[0]
    bitrate = rendition.kbps * 1000
    module = aiortc.codecs.vpx if room.codec == "vp8" else aiortc.codecs.h264
    module.DEFAULT_BITRATE = bitrate  # type: ignore[attr-defined]
    module.MAX_BITRATE = max(module.MAX_BITRATE, bitrate)  # type: ignore[attr-defined]
    peers: dict[str, RTCPeerConnection] = {}

    async def offer(request: web.Request) -> web.Response:
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="expected application/sdp")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        with ice.host_addresses(["127.0.0.1"]):
            video = pc.addTransceiver(PatternTrack(rendition.width, rendition.height), direction="sendonly")
            wanted = {f"video/{room.codec}", "video/rtx"}
            video.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in wanted])
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        resource = secrets.token_hex(8)
        peers[resource] = pc
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whep/{request.match_info['room']}/{resource}"})

    async def leave(request: web.Request) -> web.Response:
        pc = peers.pop(request.match_info["resource"], None)
        if pc is None:
            return web.Response(status=404, text="no such session")
        await pc.close()
        return web.Response(status=200)

    async def sessions(_: web.Request) -> web.Response:
        return web.json_response({"sessions": len(peers)})

    async def close_all(_: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in peers.values()), return_exceptions=True)

    app = web.Application()
    app.router.add_post("/whep/{room}", offer)
    app.router.add_delete("/whep/{room}/{resource}", leave)
    app.router.add_get("/sessions", sessions)
    app.on_shutdown.append(close_all)
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spec", default="1280x720@30:vp8:1500", help="WxH@FPS:CODEC:KBPS, as bench_room.py's")
    args = ap.parse_args()
    web.run_app(make_app(args.spec), host="127.0.0.1", port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
