"""WHEP (draft-ietf-wish-whep): POST an SDP offer, get 201 + answer + Location; DELETE Location to leave."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import aiohttp
from aiortc import RTCRtpReceiver, RTCSessionDescription

from probe.signaling.base import Prepare, SignalingError

HTTP_TIMEOUT_S = 10.0


class WhepSignaling:
    kind = "whep"

    def __init__(self, url: str, *, codec: str | None = None, token: str | None = None,
                 http_timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.url = url
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        self.room: str | None = segments[-1] if segments else None
        self.labels = dict(parse_qsl(parts.query))
        self.codec = codec
        self.token = token
        self.http_timeout_s = http_timeout_s
        self.resource: str | None = None
        self.signaling_ms: float | None = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {}
        if content_type:
            h["Content-Type"] = content_type
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def join(self, pc: Any, prepare: Prepare, now_ms: Callable[[], float]) -> None:
        video = pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        if self.codec:
            caps = RTCRtpReceiver.getCapabilities("video")
            assert caps is not None
            wanted = [c for c in caps.codecs if c.name.lower() in (self.codec.lower(), "rtx")]
            if not any(c.name.lower() == self.codec.lower() for c in wanted):
                raise SignalingError("probe_error", f"codec {self.codec!r} is not supported by aiortc")
            video.setCodecPreferences(wanted)
        prepare(pc)
        await pc.setLocalDescription(await pc.createOffer())  # waits for ICE gathering (no trickle)
        start = now_ms()
        timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                self.url, data=pc.localDescription.sdp, headers=self._headers("application/sdp")
            ) as resp:
                body = await resp.text(errors="replace")
                location = resp.headers.get("Location")
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as e:
            raise SignalingError("url_unreachable", f"cannot reach {self.url}: {e or type(e).__name__}") from None
        self.signaling_ms = now_ms() - start
        if status != 201:
            detail = " ".join(body.split())[:300]
            raise SignalingError(f"whep_http_{status}", f"WHEP server answered HTTP {status} to the offer: {detail}")
        if location:
            self.resource = urljoin(self.url, location)
        if "application/sdp" not in ctype:
            raise SignalingError("bad_sdp", f"WHEP answer has Content-Type {ctype!r}, expected application/sdp")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SignalingError("bad_sdp", f"the WHEP answer is not usable SDP: {e}") from None

    async def leave(self) -> None:
        if not self.resource:
            return
        try:
            timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.delete(
                self.resource, headers=self._headers()
            ) as resp:
                await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass  # leaving is best effort: the server also times the session out
