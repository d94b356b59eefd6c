"""A room: its shared encoders, its viewers (joined over WHEP) and its ground-truth record."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from probe import ice
from room import fastsend
from room.config import RoomConfig
from room.encoder import SharedAudioEncoder, SharedVideoEncoder
from room.schedule import Refusal, labels_match
from room.sendpath import SendPath
from room.tracks import ViewerAudioTrack, ViewerVideoTrack
from room.truth import ViewerTruth
from room.viewer import Viewer

log = structlog.get_logger()

MAX_HISTORY = 10_000
"""Viewers (joined and left) kept in the truth record per room; the oldest are forgotten first."""


class BadOffer(ValueError):
    """The WHEP offer cannot be used (HTTP 400); the message says why."""


class JoinRefused(Exception):
    """The scenario refuses this join (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def check_offer(sdp: str) -> None:
    """Reject an offer the room cannot answer, with a message naming what is wrong (BadOffer)."""
    if not sdp.strip():
        raise BadOffer("empty SDP offer")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise BadOffer("malformed SDP: the first line must be 'v=0'")
    media = [line for line in lines if line.startswith("m=")]
    if not any(m.startswith("m=video ") for m in media):
        raise BadOffer("SDP offer has no video m-line (m=video ...): the room publishes video")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise BadOffer("malformed SDP: no a=fingerprint (DTLS is required)")
    if not any(line.startswith("a=ice-ufrag:") for line in lines):
        raise BadOffer("malformed SDP: no a=ice-ufrag")


class Room:
    """One named room. ``start()`` before joins, ``close()`` at shutdown."""

    def __init__(
        self,
        config: RoomConfig,
        *,
        seed: int = 0,
        ice_host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        encoder_threads: int = 1,
        fast_send: bool = True,
        udp_gso: bool = False,
    ) -> None:
        self.config = config
        self.name = config.name
        self.seed = seed
        self.ice_host = ice_host
        self.fast_send = fast_send
        self.udp_gso = udp_gso
        self.clock = clock
        self.wall_clock = wall_clock
        self.started_at = clock()
        self.started_wall_ms = wall_clock() * 1000
        content_freezes = [
            (r.room_at_ms or 0.0, (r.room_at_ms or 0.0) + (r.duration_ms or 0.0)) for r in config.rules if r.repeat
        ]
        self.video_encoders = {
            r.name: SharedVideoEncoder(
                config.name,
                config.codec,
                r,
                keyframe_interval_s=config.keyframe_interval_s,
                epoch=self.started_at,
                clock=clock,
                wall_clock=wall_clock,
                threads=encoder_threads,
                content_freezes=content_freezes,
                started_wall_ms=self.started_wall_ms,
            )
            for r in config.renditions
        }
        self.audio_encoder = (
            SharedAudioEncoder(config.name, config.audio, epoch=self.started_at, clock=clock, wall_clock=wall_clock)
            if config.audio
            else None
        )
        self.viewers: dict[str, Viewer] = {}
        self.history: deque[ViewerTruth] = deque(maxlen=MAX_HISTORY)
        self.joins_refused: list[dict[str, Any]] = []
        self.joins_total = 0

    def start(self) -> None:
        for enc in self.video_encoders.values():
            enc.start()
        if self.audio_encoder:
            self.audio_encoder.start()

    async def close(self) -> None:
        await asyncio.gather(*(v.close("room_closed") for v in list(self.viewers.values())))
        for enc in self.video_encoders.values():
            await enc.stop()
        if self.audio_encoder:
            await self.audio_encoder.stop()

    def video_encoder(self, rendition: str | None) -> SharedVideoEncoder:
        """The shared encoder of ``rendition`` (None: the default, first rendition)."""
        return self.video_encoders[self.config.rendition(rendition).name]

    def room_time_ms(self) -> float:
        """ms since the room started."""
        return (self.clock() - self.started_at) * 1000

    def refusal(self, labels: Mapping[str, str]) -> Refusal | None:
        """The refusal rule that applies to a join with ``labels`` now, if any."""
        t = self.room_time_ms()
        return next((r for r in self.config.refusals if r.refuses(labels, t)), None)

    async def join(self, offer_sdp: str, labels: Mapping[str, str]) -> tuple[Viewer, str]:
        """Accept a WHEP offer: returns the viewer and the SDP answer (ICE gathering complete).

        Raises JoinRefused (503) when the scenario refuses it, BadOffer (400) if the offer is unusable.
        """
        refusal = self.refusal(labels)
        if refusal is not None:
            retry = None if refusal.room_to_ms is None else max(0.0, (refusal.room_to_ms - self.room_time_ms()) / 1000)
            self.joins_refused.append(
                {
                    "t_ms": round(self.wall_clock() * 1000, 1),
                    "labels": dict(labels),
                    "rule": refusal.to_dict(),
                }
            )
            raise JoinRefused(f"room {self.name!r} refuses joins now (scenario refuse_joins)", retry)
        check_offer(offer_sdp)
        viewer_id = secrets.token_hex(8)
        index = self.joins_total
        self.joins_total += 1
        truth = ViewerTruth(id=viewer_id, labels=dict(labels), joined_ms=self.wall_clock() * 1000)
        rng = random.Random(f"{self.seed}:{self.name}:{index}")
        sendpath = SendPath(truth, rng, clock=self.clock, wall_clock=self.wall_clock)
        video = ViewerVideoTrack(self.video_encoder(None), observer=sendpath)
        wants_audio = any(line.startswith("m=audio ") for line in offer_sdp.splitlines())
        audio = ViewerAudioTrack(self.audio_encoder) if self.audio_encoder and wants_audio else None

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        fast_senders: list[fastsend.FastSender] = []
        try:
            with ice.host_addresses([self.ice_host]):
                video_tr = pc.addTransceiver(video, direction="sendonly")
                wanted = {f"video/{self.config.codec}", "video/rtx"}
                video_tr.setCodecPreferences(
                    [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in wanted]
                )
                audio_tr = pc.addTransceiver(audio, direction="sendonly") if audio else None
                for transceiver in pc.getTransceivers():
                    _drop_receive_estimator(transceiver.receiver)
                if self.fast_send:  # before the senders can start (they start once DTLS is up)
                    fast_senders.append(fastsend.install(video_tr.sender, video, sendpath, gso=self.udp_gso))
                    if audio_tr is not None and audio is not None:
                        fast_senders.append(fastsend.install(audio_tr.sender, audio, sendpath))
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                except Exception as exc:
                    if "video description" in str(exc):
                        raise BadOffer(
                            f"SDP offer has no codec this room publishes: room {self.name!r} sends "
                            f"{self.config.codec.upper()} only"
                        ) from exc
                    raise BadOffer(f"malformed SDP offer: {exc}") from exc
                await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            video.stop()
            if audio:
                audio.stop()
            raise

        sendpath.set_ssrcs(
            video=video_tr.sender._ssrc,
            rtx=video_tr.sender._rtx_ssrc,
            audio=audio_tr.sender._ssrc if audio_tr else None,
        )
        for dtls in {id(t.sender.transport): t.sender.transport for t in pc.getTransceivers()}.values():
            sendpath.install(dtls)
        # content freezes act on the shared encoders, not on a viewer's schedule
        rules = [r for r in self.config.rules if not r.repeat and labels_match(r.match, labels)]
        viewer = Viewer(
            self,
            pc,
            truth,
            video,
            audio,
            sendpath,
            rules,
            join_offset_ms=self.room_time_ms(),
            clock=self.clock,
            wall_clock=self.wall_clock,
            fast_senders=fast_senders,
        )
        video_tr.sender._send_keyframe = viewer.on_pli  # type: ignore[method-assign]

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            truth.connection_states.append((self.wall_clock() * 1000, pc.connectionState))
            if pc.connectionState in ("failed", "closed"):
                await self.leave(viewer_id, f"connection_{pc.connectionState}")

        self.viewers[viewer_id] = viewer
        self.history.append(truth)
        viewer.start()
        log.info("viewer_joined", room=self.name, viewer=viewer_id, labels=dict(labels))
        return viewer, pc.localDescription.sdp

    async def leave(self, viewer_id: str, reason: str) -> bool:
        """End a viewer's session; False if no such active viewer."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        await viewer.close(reason)
        return True

    def summary(self) -> dict[str, Any]:
        """Short description for ``GET /rooms``."""
        return {
            "name": self.name,
            "codec": self.config.codec,
            "renditions": [r.to_dict() for r in self.config.renditions],
            "audio": self.config.audio is not None,
            "viewers": len(self.viewers),
            "joins_total": self.joins_total,
            "joins_refused": len(self.joins_refused),
            "whep": f"/whep/{self.name}",
        }

    def truth(self, viewer_id: str | None = None) -> dict[str, Any]:
        """The ground-truth record (``GET /rooms/<room>/truth``); see docs/scenario.md."""
        for viewer in self.viewers.values():
            viewer.truth.send_path = viewer.send_path_kind
        viewers = [t for t in self.history if viewer_id is None or t.id == viewer_id]
        encoders = {name: enc.stats() for name, enc in self.video_encoders.items()}
        return {
            "room": self.name,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "started_ms": round(self.started_wall_ms, 1),
            "now_ms": round(self.wall_clock() * 1000, 1),
            "encoders": encoders,
            "content_freezes": sorted(
                (f.to_dict() for enc in self.video_encoders.values() for f in enc.content_freezes),
                key=lambda f: (f["start_ms"], f["rendition"]),
            ),
            "audio_encoder": self.audio_encoder.stats() if self.audio_encoder else None,
            "viewers_active": len(self.viewers),
            "joins_refused": list(self.joins_refused),
            "viewers": [t.to_dict() for t in viewers],
        }


_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"


def _drop_receive_estimator(receiver: Any) -> None:
    """Free the REMB estimator aiortc gives every video receiver: the room's transceivers are send-only, so
    it never sees a packet, but its rate counter is 1,001 Python objects per viewer that every full garbage
    collection walks (200 viewers: 200,000 of the room's ~440,000 tracked objects, and gen-2 collections of
    up to 160 ms, ~5 frame ticks with the encoder loops stopped). aiortc checks it for None before use."""
    if getattr(receiver, _ESTIMATOR, None) is not None:
        setattr(receiver, _ESTIMATOR, None)
