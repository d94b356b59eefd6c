"""The probe's faster stand-ins for aiortc receive-path pieces give aiortc's results exactly.

Differential tests: the same inputs go to aiortc's class and to ours, every output is compared.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rate import OveruseEstimator, RateCounter, RemoteBitrateEstimator
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from probe import remb, rtpparse
from probe.jitterbuffer import FastJitterBuffer
from probe.remb import FastOveruseEstimator, FastRateCounter
from probe.tap import ReceiverTap


@pytest.mark.parametrize("window", [1, 2, 5, 7, 100, 1000])
def test_fast_rate_counter_matches_aiortc(window: int) -> None:
    """Seeded random call sequences: adds and rate queries, steps mostly within the window, some gaps
    longer than it, a few backwards, the odd reset."""
    rng = random.Random(window)
    for _ in range(120):
        ref, fast = RateCounter(window, 8000), FastRateCounter(window, 8000)
        now = rng.randrange(10**9)
        for _ in range(rng.randrange(1, 200)):
            now += rng.choice((rng.randint(0, 3), rng.randint(0, window + 2), rng.randint(900, 2500), -1))
            if rng.random() < 0.6:
                value = rng.randint(0, 1500)
                ref.add(value, now)
                fast.add(value, now)
            else:
                assert fast.rate(now) == ref.rate(now)
            if rng.random() < 0.01:
                ref.reset()
                fast.reset()
        assert fast.rate(now) == ref.rate(now)
        assert (fast._origin_ms, fast._origin_index) == (ref._origin_ms, ref._origin_index)


def test_fast_min_frame_period_matches_aiortc() -> None:
    rng = random.Random(3)
    ref, fast = OveruseEstimator(), FastOveruseEstimator()
    for _ in range(3000):
        delta = rng.choice([33.3, 0.0, 1.0, rng.uniform(0, 200)])
        assert fast.update_min_frame_period(delta) == ref.update_min_frame_period(delta)
    assert list(fast._history) == ref.ts_delta_hist


def test_estimator_with_fast_parts_gives_the_same_remb_sequence() -> None:
    """A 30 fps stream with a freeze: aiortc's estimator with or without our parts sends the same REMBs."""
    ref, fast = RemoteBitrateEstimator(), RemoteBitrateEstimator()
    assert remb.install(fast) and not remb.install(fast)
    out_ref, out_fast = [], []
    t, abs_send = 1_000_000, 0
    for frame in range(600):
        if 200 <= frame < 230:  # one second of nothing
            t += 33
            abs_send += 33 * 262
            continue
        for i in range(6):
            size = 1100 + (frame * 7 + i * 13) % 200
            out_ref.append(ref.add(t + i, abs_send & 0xFFFFFF, size, 1234))
            out_fast.append(fast.add(t + i, abs_send & 0xFFFFFF, size, 1234))
        t += 33 + frame % 3
        abs_send += 33 * 262  # abs-send-time: 6.18 fixed point seconds, 2^18 per second
    assert out_fast == out_ref
    assert sum(x is not None for x in out_ref) > 5


# --- RTP parsing ---------------------------------------------------------------------------------
def _ext_map() -> HeaderExtensionsMap:
    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    ]))
    return ext_map


def _fields(packet: RtpPacket) -> tuple[object, ...]:
    return (packet.version, packet.marker, packet.payload_type, packet.sequence_number, packet.timestamp,
            packet.ssrc, packet.csrc, packet.extensions, packet.payload, packet.padding_size)


def _outcome(parse: Callable[[bytes], RtpPacket], data: bytes) -> tuple[object, ...]:
    try:
        return _fields(parse(data))
    except ValueError as exc:
        return ("ValueError", str(exc))


def test_rtp_parser_matches_aiortc_on_valid_and_broken_packets() -> None:
    rng = random.Random(7)
    ext_map = _ext_map()
    fast = rtpparse.parser(ext_map)
    kinds = set()
    for i in range(4000):
        packet = RtpPacket(payload_type=rng.choice([96, 97, 111]), marker=rng.randint(0, 1),
                           sequence_number=rng.randrange(65536), timestamp=rng.randrange(2**32),
                           ssrc=rng.randrange(2**32), payload=rng.randbytes(rng.randrange(0, 60)))
        if rng.random() < 0.1:
            packet.csrc = [rng.randrange(2**32) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.9:  # mostly a block repeated across packets, as senders do
            packet.extensions.mid = rng.choice(["0", "1", "video"])
            packet.extensions.abs_send_time = rng.choice([12345, 0xFFFFFF, rng.randrange(2**24)])
        if rng.random() < 0.2:
            packet.extensions.audio_level = (True, rng.randrange(128))
        if rng.random() < 0.15:
            packet.padding_size = rng.randint(1, 20)
        data = packet.serialize(ext_map)
        mutation = rng.random()
        if mutation < 0.05:
            data = data[: rng.randrange(len(data))]  # truncated anywhere
        elif mutation < 0.08 and packet.padding_size:
            data = data[:-1] + bytes([rng.choice([0, 255])])  # invalid padding length
        elif mutation < 0.1:
            data = bytes([data[0] ^ 0x40]) + data[1:]  # wrong version
        elif mutation < 0.12 and len(data) > 17:
            data = data[:16] + bytes([0x3F]) + data[17:]  # extension element claiming 4 bytes
        expected, got = _outcome(lambda d: RtpPacket.parse(d, ext_map), data), _outcome(fast, data)
        assert got == expected, (i, data.hex())
        kinds.add(expected[0] if expected[0] == "ValueError" else "ok")
    assert kinds == {"ok", "ValueError"}


# --- jitter buffer -------------------------------------------------------------------------------
def _stream(rng: random.Random, n_frames: int, max_packets: int = 8) -> list[RtpPacket]:
    """Packets of a stream with 1-``max_packets`` packets per frame, then lost, duplicated, reordered, jumped."""
    packets = []
    seq, ts = rng.randrange(65536), rng.randrange(2**32)
    for _ in range(n_frames):
        for _ in range(rng.randint(1, max_packets)):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts)
            packet._data = rng.randbytes(3)  # type: ignore[attr-defined]
            packets.append(packet)
            seq = (seq + 1) & 0xFFFF
        ts = (ts + 3000) & 0xFFFFFFFF
        if rng.random() < 0.02:
            seq = (seq + rng.choice([200, 700, 40000])) & 0xFFFF  # a jump (restart, long loss)
    out: list[RtpPacket] = []
    for packet in packets:
        r = rng.random()
        if r < 0.05:
            continue  # lost
        out.append(packet)
        if r < 0.08:
            out.append(packet)  # duplicate
        elif r < 0.12 and len(out) > 3:
            j = len(out) - 1 - rng.randint(1, 3)
            out[j], out[-1] = out[-1], out[j]  # reordered
    return out


@pytest.mark.parametrize(("capacity", "prefetch", "video", "max_packets"),
                         [(512, 0, True, 8), (16, 4, False, 8), (8, 0, True, 8), (16, 2, True, 8),
                          (512, 0, True, 120), (64, 0, True, 120)])
def test_fast_jitter_buffer_matches_aiortc(capacity: int, prefetch: int, video: bool, max_packets: int) -> None:
    """Every return value and the whole state after every packet; frames of up to 120 packets exercise the
    video scan's resumption (a keyframe's packets) and the buffer's overflow."""
    rng = random.Random(capacity * 10 + prefetch + max_packets)
    frames = plis = 0
    for _ in range(40):
        ref = JitterBuffer(capacity, prefetch=prefetch, is_video=video)
        fast = FastJitterBuffer(capacity, prefetch=prefetch, is_video=video)
        for packet in _stream(rng, 150 if max_packets <= 8 else 60, max_packets):
            pli_ref, frame_ref = ref.add(packet)
            pli_fast, frame_fast = fast.add(packet)
            assert pli_fast == pli_ref
            assert (frame_fast is None) == (frame_ref is None)
            if frame_ref is not None and frame_fast is not None:
                assert (frame_fast.data, frame_fast.timestamp) == (frame_ref.data, frame_ref.timestamp)
                frames += 1
            plis += pli_ref
            assert fast._origin == ref._origin
            assert fast._packets == ref._packets
    assert frames > (500 if max_packets <= 8 else 200) and (plis > 0 or not video)


# --- installed where the probe receives ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["video", "audio"])
def test_the_tap_installs_the_stand_ins_in_aiortcs_receiver(kind: str) -> None:
    """With the aiortc this project pins, every stand-in is in place (their installs fall back silently
    to aiortc's own classes when its internals change; this is where such a change shows)."""
    receiver = RTCRtpReceiver(kind, SimpleNamespace(state="new"))
    old_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    ReceiverTap(receiver, kind, decode=False, now_ms=lambda: 0.0, counters={},
                on_assembled=lambda *_: None, on_first_rtp=lambda _: None).install()
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert isinstance(buffer, FastJitterBuffer)
    assert (buffer.capacity, buffer._prefetch, buffer._is_video) == (old_buffer.capacity, old_buffer._prefetch,
                                                                     old_buffer._is_video)
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
    if kind == "video":
        assert isinstance(estimator.incoming_bitrate, FastRateCounter)
        assert isinstance(estimator.estimator, FastOveruseEstimator)
    else:
        assert estimator is None  # aiortc estimates no audio bandwidth


# --- the fused handler (probe/rtphandler.py) against the coroutine pair it replaces ------------------
VIDEO_PT, RTX_PT, AUDIO_PT = 102, 103, 111
VIDEO_SSRC, RTX_SSRC, AUDIO_SSRC = 1111, 1112, 2222


class _Recorder:
    """Stands in for the DTLS transport under a receiver: records the RTCP it is asked to send."""

    def __init__(self) -> None:
        self.state = "connected"
        self.sent: list[bytes] = []

    def _register_rtp_receiver(self, *args: object) -> None:
        pass

    def _unregister_rtp_receiver(self, *args: object) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


async def _tapped_receiver(kind: str, clock: list[float], assembled: list[tuple[object, ...]],
                           shown: list[object]) -> tuple[RTCRtpReceiver, _Recorder, dict[int, object]]:
    from aiortc.rtcrtpparameters import (
        RTCRtcpFeedback,
        RTCRtpCodecParameters,
        RTCRtpDecodingParameters,
        RTCRtpReceiveParameters,
        RTCRtpRtxParameters,
    )
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    transport = _Recorder()
    r = RTCRtpReceiver(kind, transport)  # type: ignore[arg-type]
    r._track = RemoteStreamTrack(kind)
    counters: dict[int, object] = {}
    ReceiverTap(r, kind, decode=False, now_ms=lambda: clock[0], counters=counters,  # type: ignore[arg-type]
                on_assembled=lambda *a: assembled.append(a), on_first_rtp=lambda t: assembled.append(("first", t)),
                on_undecoded=shown.append).install()
    if kind == "video":
        fb = [RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli"),
              RTCRtcpFeedback(type="goog-remb")]
        codecs = [RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=VIDEO_PT,
                                        rtcpFeedback=fb, parameters={"packetization-mode": "1"}),
                  RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=RTX_PT,
                                        parameters={"apt": VIDEO_PT})]
        encodings = [RTCRtpDecodingParameters(ssrc=VIDEO_SSRC, payloadType=VIDEO_PT,
                                              rtx=RTCRtpRtxParameters(ssrc=RTX_SSRC))]
    else:
        codecs = [RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=AUDIO_PT)]
        encodings = [RTCRtpDecodingParameters(ssrc=AUDIO_SSRC, payloadType=AUDIO_PT)]
    await r.receive(RTCRtpReceiveParameters(codecs=codecs, encodings=encodings))
    r._set_rtcp_ssrc(4444)
    return r, transport, counters


def _h264_packets(rng: random.Random, n_frames: int) -> list[tuple[RtpPacket, float]]:
    """(packet, arrival ms) of a video stream with abs-send-time per frame: single-NAL H.264 payloads
    (an IDR every 60 frames), 1-6 packets a frame; then lost, duplicated, reordered; some lost packets come
    back later as RTX, one packet carries an unknown payload type and one is empty."""
    out: list[tuple[RtpPacket, float]] = []
    seq, ts, t = rng.randrange(65536), rng.randrange(2**32), 1_000_000.0
    rtx_seq = rng.randrange(65536)
    lost: list[RtpPacket] = []
    for frame in range(n_frames):
        nal = 0x65 if frame % 60 == 0 else 0x41
        for i in range(rng.randint(1, 6)):
            p = RtpPacket(payload_type=VIDEO_PT, sequence_number=seq, timestamp=ts, ssrc=VIDEO_SSRC,
                          payload=bytes([nal]) + rng.randbytes(rng.randint(20, 300)))
            p.extensions.abs_send_time = int((t / 1000.0) * (1 << 18)) & 0xFFFFFF
            seq = (seq + 1) & 0xFFFF
            r = rng.random()
            if r < 0.04:
                lost.append(p)
                continue
            out.append((p, t + i * 0.2))
            if r < 0.06:
                out.append((p, t + i * 0.2 + 0.1))
        if lost and rng.random() < 0.3:
            original = lost.pop(0)
            rtx = RtpPacket(payload_type=RTX_PT, sequence_number=rtx_seq, timestamp=original.timestamp, ssrc=RTX_SSRC,
                            payload=original.sequence_number.to_bytes(2, "big") + original.payload)
            rtx.extensions.abs_send_time = original.extensions.abs_send_time
            rtx_seq = (rtx_seq + 1) & 0xFFFF
            out.append((rtx, t + 7))
        ts = (ts + 3000) & 0xFFFFFFFF
        t += rng.choice([33.0, 33.0, 34.0, 90.0])
    for j in range(len(out) - 1):
        if rng.random() < 0.02:
            out[j], out[j + 1] = out[j + 1], out[j]
    out.insert(len(out) // 2, (RtpPacket(payload_type=99, sequence_number=1, timestamp=1, ssrc=VIDEO_SSRC,
                                         payload=b"\x41xx"), out[len(out) // 2][1]))
    out.insert(len(out) // 3, (RtpPacket(payload_type=VIDEO_PT, sequence_number=seq, timestamp=ts, ssrc=VIDEO_SSRC,
                                         payload=b""), out[len(out) // 3][1]))
    return out


def _opus_packets(rng: random.Random, n: int) -> list[tuple[RtpPacket, float]]:
    out = []
    seq, ts, t = rng.randrange(65536), rng.randrange(2**32), 1_000_000.0
    for _ in range(n):
        p = RtpPacket(payload_type=AUDIO_PT, sequence_number=seq, timestamp=ts, ssrc=AUDIO_SSRC,
                      payload=rng.randbytes(80))
        if rng.random() > 0.05:
            out.append((p, t))
        seq, ts, t = (seq + 1) & 0xFFFF, (ts + 960) & 0xFFFFFFFF, t + 20.0
    return out


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_fused_handler_does_what_the_coroutine_pair_does(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same packets (loss, duplicates, reordering, RTX, an unknown payload type, an empty payload) go to a
    receiver driven as before (the tap's and aiortc's coroutines) and to one through the fused handler:
    the frames assembled and shown, the tap's counters, the RTCP sent (NACK, PLI, REMB, byte for byte) and
    aiortc's own statistics and NACK state are the same."""
    from probe.fastrecv import NTP_EPOCH_MS, drive
    from probe.rtphandler import fused_handler

    rng = random.Random(kind)
    packets = _h264_packets(rng, 400) if kind == "video" else _opus_packets(rng, 600)
    clock = [0.0]
    # the wall clock reads the arrival time too (the tap dates packets by it; aiortc's RTCP statistics read it)
    monkeypatch.setattr(time, "time", lambda: clock[0] / 1000.0)
    results = []
    for fused in (False, True):
        assembled: list[tuple[object, ...]] = []
        shown: list[object] = []
        r, transport, counters = await _tapped_receiver(kind, clock, assembled, shown)
        tap = r._probe_tap  # type: ignore[attr-defined]
        frames: list[tuple[str, bytes, int]] = []
        on_encoded_frame = tap.on_encoded_frame

        def record(codec: str, data: bytes, timestamp: int, arrival_ms: float | None = None, *,
                   on_encoded_frame: Callable[..., None] = on_encoded_frame,
                   frames: list[tuple[str, bytes, int]] = frames) -> None:
            frames.append((codec, data, timestamp))
            on_encoded_frame(codec, data, timestamp, arrival_ms)

        tap.on_encoded_frame = record  # what the decoder would get: codec, bytes, mapped timestamp
        handler = fused_handler(tap) if fused else None
        assert (handler is not None) == fused
        for packet, arrival in packets:
            clock[0] = arrival  # the session clock reads the arrival time: both paths see the same "now"
            arrival_ntp = arrival + NTP_EPOCH_MS
            copy = RtpPacket.parse(packet.serialize(_ext_map()), _ext_map())  # a fresh object each path
            if handler is not None:
                handler(copy, arrival_ntp)
            else:
                assert drive(r._handle_rtp_packet(copy, arrival_time_ms=arrival_ntp))
        stats = {ssrc: (s.packets_received, s.max_seq, s.cycles, s.base_seq, s.jitter)
                 for ssrc, s in r._RTCRtpReceiver__remote_streams.items()}  # type: ignore[attr-defined]
        nack = r._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        results.append((frames, assembled, shown, {k: vars(v) for k, v in counters.items()}, transport.sent, stats,
                        None if nack is None else (nack.max_seq, sorted(nack.missing))))
        await r.stop()
    before, after = results
    names = ["frames", "assembled", "shown", "counters", "rtcp", "stats", "nack"]
    for name, a, b in zip(names, before, after, strict=True):
        assert b == a, name
    _frames, assembled, shown, _counters, rtcp, _stats, _nack = before
    assert len(assembled) > (300 if kind == "video" else 400)
    if kind == "video":
        assert len(shown) > 300 and len(rtcp) > 20  # NACKs, PLIs and REMBs were compared


# --- what the probe's NACKs ask for (probe/tap.py, NackRetrier) ------------------------------------------
async def test_a_new_gaps_nack_lists_only_the_newly_missing_packets_like_libwebrtc(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc NACKs every packet still missing whenever a new gap appears; libwebrtc's NackRequester NACKs
    only the new ones and re-requests older ones on their own timer (every 100 ms without an RTT). Under
    heavy loss aiortc's way recovered twice-lost retransmissions faster than Chromium does, and the probe
    missed freezes Chromium had (docs/fidelity.md). The probe now asks as libwebrtc does."""
    import asyncio

    from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket

    from probe.fastrecv import NTP_EPOCH_MS
    from probe.tap import NACK_RETRY_MS

    clock = [0.0]
    monkeypatch.setattr(time, "time", lambda: clock[0] / 1000.0)
    r, transport, _ = await _tapped_receiver("video", clock, [], [])
    seq0 = 1000

    async def receive(ks: range, skip: set[int]) -> None:
        for k in ks:
            if k in skip:
                continue
            p = RtpPacket(payload_type=VIDEO_PT, sequence_number=seq0 + k, timestamp=3000 * (k // 3),
                          ssrc=VIDEO_SSRC, payload=b"\x41" + bytes(50))
            await r._handle_rtp_packet(p, arrival_time_ms=int(NTP_EPOCH_MS + clock[0]))

    def nacks() -> list[list[int]]:
        return [p.lost for data in transport.sent for p in RtcpPacket.parse(data)
                if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK]

    try:
        await receive(range(0, 30), skip={10, 20})
        assert nacks() == [[seq0 + 10], [seq0 + 20]]  # aiortc alone: [[1010], [1010, 1020]]
        clock[0] += NACK_RETRY_MS  # both are due again: one re-request for both
        for _ in range(40):
            await asyncio.sleep(0.01)
            if len(nacks()) > 2:
                break
        assert nacks()[2:] == [[seq0 + 10, seq0 + 20]]
        await receive(range(30, 40), skip={35})  # a third gap: only 1035, though 1010 and 1020 are still missing
        assert nacks()[3:] == [[seq0 + 35]]
    finally:
        await r.stop()  # also ends the tap's re-request task
