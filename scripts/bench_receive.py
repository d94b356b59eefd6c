#!/usr/bin/env python3
"""Benchmark: a probe's CPU per received RTP packet, stage by stage, without sockets or timing noise.

A 720p30 H.264 stream (aiortc's own encoder and packetizer on the room's test pattern, ~1 Mbit/s) and a
50 packet/s audio stream are serialized with abs-send-time and mid, SRTP-protected, then replayed into
real aiortc ``RTCRtpReceiver`` objects tapped as a no-decode probe taps them (``probe.tap.ReceiverTap``),
once per variant, each with fresh receivers and a fresh SRTP session. Per variant it prints the CPU µs per
packet (``time.process_time``, best of ``--repeat``):

- ``unprotect``: libsrtp only (``probe.srtp``);
- ``+ parse``: and the RTP parse (``probe.rtpparse``);
- ``+ receiver (direct)``: and the receiver as the direct path drove it before ``probe.rtphandler``: the
  tap's and aiortc's coroutines (``probe.fastrecv.drive``);
- ``+ receiver (fused)``: the receiver through ``probe.rtphandler``'s one function (what probes run).

The reference, measured in the same run, is the ``direct`` row. No sockets: the kernel's share (receive
syscalls, event loop) is not in these numbers; ``scripts/bench_probe.py`` measures whole probes.

    .venv/bin/python scripts/bench_receive.py [--seconds 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylibsrtp
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from probe import rtpparse, srtp
from probe.fastrecv import NTP_EPOCH_MS, drive
from probe.marker import Marker
from probe.rtphandler import fused_handler
from probe.tap import ReceiverTap
from room.pattern import TestPattern

VIDEO_SSRC, AUDIO_SSRC = 1111, 2222
VIDEO_PT, AUDIO_PT = 102, 111
EXTENSIONS = [
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
]
KEY = bytes(range(30))


def _abs_send_time(t_ms: float) -> int:
    """24-bit 6.18 fixed-point seconds, as aiortc's sender stamps it."""
    return int((t_ms / 1000.0) * (1 << 18)) & 0xFFFFFF


def build_stream(seconds: float) -> list[tuple[bytes, float]]:
    """(SRTP datagram, arrival ms since 1900) in arrival order."""
    ext_map = HeaderExtensionsMap()
    ext_map.configure(SimpleNamespace(headerExtensions=EXTENSIONS))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    encoder = H264Encoder()
    encoder.target_bitrate = 1_000_000
    pattern = TestPattern(1280, 720)
    packets: list[tuple[float, RtpPacket]] = []
    t0 = time.time() * 1000.0 + NTP_EPOCH_MS
    vseq = 0
    for i in range(int(seconds * 30)):
        frame = pattern.frame(i, Marker(i, int(i * 1000 / 30)))
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=(i % 120 == 0))
        t = t0 + i * 1000.0 / 30
        for j, payload in enumerate(payloads):
            p = RtpPacket(payload_type=VIDEO_PT, sequence_number=vseq & 0xFFFF, timestamp=timestamp,
                          ssrc=VIDEO_SSRC, marker=j == len(payloads) - 1, payload=payload)
            p.extensions.mid = "0"
            p.extensions.abs_send_time = _abs_send_time(t)
            packets.append((t + 0.05 * j, p))
            vseq += 1
    for k in range(int(seconds * 50)):
        t = t0 + k * 20.0
        p = RtpPacket(payload_type=AUDIO_PT, sequence_number=k & 0xFFFF, timestamp=k * 960, ssrc=AUDIO_SSRC,
                      payload=bytes(90))
        p.extensions.mid = "1"
        packets.append((t + 0.01, p))
    packets.sort(key=lambda x: x[0])
    return [(tx.protect(p.serialize(ext_map)), t) for t, p in packets]


def _codec(kind: str) -> RTCRtpCodecParameters:
    if kind == "video":
        return RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=VIDEO_PT,
                                     parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1",
                                                 "profile-level-id": "42e01f"})
    return RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=AUDIO_PT)


async def _receivers() -> tuple[dict[int, RTCRtpReceiver], list[RTCRtpReceiver]]:
    async def send_rtp(data: bytes) -> None:
        return None

    transport = SimpleNamespace(state="connected", _register_rtp_receiver=lambda *a: None, _send_rtp=send_rtp,
                                _unregister_rtp_receiver=lambda *a: None)
    t0 = time.monotonic()
    route: dict[int, RTCRtpReceiver] = {}
    made = []
    for kind, ssrc in (("video", VIDEO_SSRC), ("audio", AUDIO_SSRC)):
        r = RTCRtpReceiver(kind, transport)  # type: ignore[arg-type]
        r._track = RemoteStreamTrack(kind)
        ReceiverTap(r, kind, decode=False, now_ms=lambda: (time.monotonic() - t0) * 1000.0, counters={},
                    on_assembled=lambda *_: None, on_first_rtp=lambda _: None).install()
        codec = _codec(kind)
        encoding = RTCRtpDecodingParameters(ssrc=ssrc, payloadType=codec.payloadType)
        await r.receive(RTCRtpReceiveParameters(codecs=[codec], encodings=[encoding], headerExtensions=EXTENSIONS))
        r._set_rtcp_ssrc(ssrc + 1)
        route[ssrc] = r
        made.append(r)
    return route, made


class _Probe:
    """One probe's receive state: its SRTP session, parser, receivers and their fused handlers."""

    def __init__(self, route: dict[int, RTCRtpReceiver], made: list[RTCRtpReceiver]) -> None:
        self.route, self.made = route, made
        rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self.rx = rx  # the session must outlive its fast op
        self.unprotect, _ = srtp.fast_op(rx, "unprotect")
        ext_map = HeaderExtensionsMap()
        ext_map.configure(SimpleNamespace(headerExtensions=EXTENSIONS))
        self.parse = rtpparse.parser(ext_map)
        self.handlers = {r: fused_handler(r._probe_tap) for r in made}


def _bursts(stream: list[tuple[bytes, float]]) -> list[list[tuple[bytes, float]]]:
    """Packets sent together (a frame's packets, an audio packet): the room sends one viewer a burst, then
    the next viewer the same burst."""
    out: list[list[tuple[bytes, float]]] = []
    for data, t in stream:
        if out and abs(out[-1][-1][1] - t) < 1.0:
            out[-1].append((data, t))
        else:
            out.append([(data, t)])
    return out


async def run_variant(stream: list[tuple[bytes, float]], variant: str, probes: int) -> float:
    """CPU seconds to take ``stream`` through ``variant``'s stages in each of ``probes`` probes, interleaved
    burst by burst as a fleet receives them (many probes: the working set of a fleet, not one hot stream)."""
    fleet = [_Probe(*await _receivers()) for _ in range(probes)]
    bursts = _bursts(stream)
    c0 = time.process_time()
    for burst in bursts:
        for p in fleet:
            unprotect, parse = p.unprotect, p.parse
            if variant == "unprotect":
                for data, _t in burst:
                    unprotect(data)
            elif variant == "+ parse":
                for data, _t in burst:
                    parse(unprotect(data))
            elif variant == "+ receiver (direct)":
                for data, t in burst:
                    packet = parse(unprotect(data))
                    drive(p.route[packet.ssrc]._handle_rtp_packet(packet, arrival_time_ms=t))
            else:
                for data, t in burst:
                    packet = parse(unprotect(data))
                    handler = p.handlers[p.route[packet.ssrc]]
                    assert handler is not None
                    handler(packet, t)
    cpu = time.process_time() - c0
    for p in fleet:
        for r in p.made:
            await r.stop()
    return cpu


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="stream length")
    ap.add_argument("--repeat", type=int, default=5, help="runs per variant (best is printed)")
    ap.add_argument("--only", choices=["direct", "fused"], help="run only this receiver variant (for profiling)")
    ap.add_argument("--probes", type=int, default=1,
                    help="probes receiving the stream, interleaved burst by burst (default 1: one hot stream)")
    args = ap.parse_args()
    stream = build_stream(args.seconds)
    variants = ["unprotect", "+ parse", "+ receiver (direct)", "+ receiver (fused)"]
    if args.only:
        variants = [f"+ receiver ({args.only})"]
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for v in variants:  # interleaved, so every variant sees the same machine
            cpu = await run_variant(stream, v, args.probes)
            best[v] = min(best.get(v, cpu), cpu)
    n = len(stream) * args.probes
    print(f"{n} packets ({args.seconds:g} s of 720p30 H.264 ~1 Mbit/s + 50/s audio, x {args.probes} probes), "
          f"best of {args.repeat}, pid {os.getpid()}")
    print(f"| stages | µs/packet | % of a core per probe ({len(stream) / args.seconds:.0f} packets/s) |")
    print("|---|---|---|")
    for v in variants:
        us = best[v] / n * 1e6
        print(f"| {v} | {us:.2f} | {us * len(stream) / args.seconds / 1e4:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
