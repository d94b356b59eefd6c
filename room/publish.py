"""``streamqoe publish``: the marker pattern as plain RTP into an SFU (e.g. a Janus RTP mountpoint).

    streamqoe publish 'rtp://127.0.0.1:5004?audio=5002&codec=vp8&size=1280x720&fps=30&kbps=1500'

The pattern and encoder are the embedded room's (``room.encoder.SharedVideoEncoder`` and
``SharedAudioEncoder``): the same marker strip, the same libvpx realtime settings, so marker latency
and repeated-frame detection work through a real SFU. Frames are packetized with aiortc's codec
``pack()`` (VP8 payload descriptor with picture id, H.264 FU-A/STAP-A) into RTP over a UDP socket.

A plain RTP source never hears a PLI (Janus has no ``videortcpport`` for it here), so keyframes come
only from the periodic interval (``?gop=`` seconds, default 1): a viewer that lost part of a frame
waits for the next one, and Janus's ``videobufferkf`` gives a joining viewer the last keyframe at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from room.config import AudioConfig, Rendition
from room.encoder import EncodedFrame, SharedAudioEncoder, SharedSource, SharedVideoEncoder

log = structlog.get_logger()

OPUS_PT = 111


@dataclass(frozen=True)
class PublishTarget:
    """Where and what to publish, parsed from ``rtp://HOST:VIDEO_PORT?audio=PORT&codec=&size=&fps=&kbps=&pt=&gop=``."""

    host: str
    video_port: int
    audio_port: int | None
    codec: str = "vp8"
    width: int = 1280
    height: int = 720
    fps: float = 30
    kbps: int = 1500
    video_pt: int = 96
    keyframe_interval_s: float = 1.0

    @classmethod
    def parse(cls, url: str) -> PublishTarget:
        p = urlsplit(url)
        if p.scheme != "rtp" or not p.hostname or not p.port:
            raise ValueError(f"{url!r}: expected rtp://HOST:VIDEO_PORT[?audio=PORT&codec=vp8&size=WxH&fps=N]")
        q = dict(parse_qsl(p.query))
        unknown = set(q) - {"audio", "codec", "size", "fps", "kbps", "pt", "gop"}
        if unknown:
            raise ValueError(f"{url!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
        width, height = 1280, 720
        if "size" in q:
            w, _, h = q["size"].lower().partition("x")
            width, height = int(w), int(h)
        codec = q.get("codec", "vp8").lower()
        if codec not in ("vp8", "h264"):
            raise ValueError(f"codec: {codec!r} must be vp8 or h264")
        return cls(
            host=p.hostname,
            video_port=p.port,
            audio_port=int(q["audio"]) if "audio" in q else None,
            codec=codec,
            width=width,
            height=height,
            fps=float(q.get("fps", 30)),
            kbps=int(q.get("kbps", 1500)),
            video_pt=int(q.get("pt", 96)),
            keyframe_interval_s=float(q.get("gop", 1.0)),
        )


class RtpStream:
    """One RTP stream (SSRC, sequence numbers) on a connected UDP socket; packetized by aiortc's ``pack``."""

    def __init__(self, sock: socket.socket, payload_type: int, packer: Any, clock_rate: int) -> None:
        self.sock = sock
        self.payload_type = payload_type
        self.packer = packer
        self.clock_rate = clock_rate
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.packets_sent = 0
        self.bytes_sent = 0

    def send(self, frame: EncodedFrame) -> None:
        payloads, timestamp = self.packer.pack(frame.packet)
        for i, payload in enumerate(payloads):
            pkt = RtpPacket(
                payload_type=self.payload_type,
                marker=int(i == len(payloads) - 1),
                sequence_number=self.seq,
                timestamp=(timestamp + self.ts_offset) % 2**32,
                ssrc=self.ssrc,
                payload=payload,
            )
            data = pkt.serialize()
            # nobody listening (ICMP port unreachable) or buffer full: RTP is lossy anyway
            with contextlib.suppress(OSError):
                self.sock.send(data)
            self.seq = (self.seq + 1) % 2**16
            self.packets_sent += 1
            self.bytes_sent += len(data)


class _Fanout:
    """Subscriber of a shared encoder: hands each frame to its RTP stream."""

    def __init__(self, stream: RtpStream) -> None:
        self.stream = stream

    def on_frame(self, source: SharedSource, frame: EncodedFrame) -> None:
        self.stream.send(frame)


def _udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.connect((host, port))
    return sock


class Publisher:
    """Encode the pattern (and tone) in real time and send it as RTP until ``stop()``."""

    def __init__(self, target: PublishTarget) -> None:
        self.target = target
        epoch = time.monotonic()
        t = target
        rendition = Rendition(name=f"{t.height}p", width=t.width, height=t.height, fps=t.fps, kbps=t.kbps)
        self.video = SharedVideoEncoder(
            "publish", t.codec, rendition, keyframe_interval_s=t.keyframe_interval_s, epoch=epoch
        )
        packer = Vp8Encoder() if t.codec == "vp8" else H264Encoder()
        self.video_stream = RtpStream(_udp(t.host, t.video_port), t.video_pt, packer, 90_000)
        self.audio: SharedAudioEncoder | None = None
        self.audio_stream: RtpStream | None = None
        if t.audio_port is not None:
            self.audio = SharedAudioEncoder("publish", AudioConfig(), epoch=epoch)
            self.audio_stream = RtpStream(_udp(t.host, t.audio_port), OPUS_PT, OpusEncoder(), 48_000)

    def start(self) -> None:
        self.video.subscribe(_Fanout(self.video_stream))
        self.video.start()
        if self.audio is not None and self.audio_stream is not None:
            self.audio.subscribe(_Fanout(self.audio_stream))
            self.audio.start()

    async def stop(self) -> None:
        await self.video.stop()
        if self.audio is not None:
            await self.audio.stop()
        for s in (self.video_stream, self.audio_stream):
            if s is not None:
                s.sock.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video": {**self.video.stats(), "packets_sent": self.video_stream.packets_sent}}
        if self.audio is not None and self.audio_stream is not None:
            out["audio"] = {**self.audio.stats(), "packets_sent": self.audio_stream.packets_sent}
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        help="rtp://HOST:VIDEO_PORT[?audio=PORT&codec=vp8|h264&size=1280x720&fps=30&kbps=1500&pt=96&gop=1]",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until SIGINT/SIGTERM)",
    )


async def _main(target: PublishTarget, duration_s: float | None) -> None:
    pub = Publisher(target)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    pub.start()
    log.info(
        "publishing",
        host=target.host,
        video_port=target.video_port,
        audio_port=target.audio_port,
        codec=target.codec,
        size=f"{target.width}x{target.height}",
        fps=target.fps,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration_s)
    await pub.stop()
    log.info("published", **pub.stats())


def run(args: argparse.Namespace) -> int:
    try:
        target = PublishTarget.parse(args.url)
    except ValueError as e:
        print(f"streamqoe publish: {e}")
        return 2
    asyncio.run(_main(target, args.duration))
    return 0
