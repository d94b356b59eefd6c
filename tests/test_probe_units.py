"""Pure probe algorithms against hand-computed ground truth (no network)."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from probe import marker
from probe.bitstream import frame_info, h264_info, vp8_info
from probe.freezes import FreezeDetector, freeze_threshold_ms
from probe.rtpstats import StreamCounter
from probe.videostats import VideoStats, percentile


# --- freezes -----------------------------------------------------------------------------------
def frames_at(times: list[float]) -> FreezeDetector:
    d = FreezeDetector()
    for t in times:
        d.add_frame(t)
    return d


def test_steady_30fps_has_no_freeze() -> None:
    d = frames_at([i * 33.3 for i in range(300)])
    assert d.stalls == []


def test_gap_over_threshold_is_one_freeze_with_whole_interval() -> None:
    times = [i * 33.3 for i in range(60)]
    times += [times[-1] + 300 + i * 33.3 for i in range(60)]  # one 300 ms gap
    d = frames_at(times)
    assert d.totals("freeze") == (1, pytest.approx(0.3))
    assert freeze_threshold_ms(33.3) == pytest.approx(183.3)


def test_gap_just_below_threshold_is_not_a_freeze() -> None:
    times = [i * 33.3 for i in range(60)]
    times += [times[-1] + 180 + i * 33.3 for i in range(10)]
    assert frames_at(times).totals("freeze") == (0, 0.0)


def test_needs_five_intervals_before_judging() -> None:
    # 4 intervals then a long gap: not enough history for the W3C rule
    assert frames_at([0, 33, 66, 99, 132, 900]).stalls == []
    assert frames_at([0, 33, 66, 99, 132, 165, 900]).totals("freeze")[0] == 1


def test_long_gap_is_a_pause_not_a_freeze() -> None:
    times = [i * 33.3 for i in range(60)]
    times += [times[-1] + 6000 + i * 33.3 for i in range(30)]
    d = frames_at(times)
    assert d.totals("pause") == (1, pytest.approx(6.0))
    assert d.totals("freeze")[0] == 0


def test_freeze_in_progress_at_end_is_counted_and_flagged() -> None:
    d = frames_at([i * 33.3 for i in range(60)])
    stall = d.finish(d._last_ms + 1000)  # type: ignore[operator]
    assert stall is not None and stall.in_progress and stall.kind == "freeze"
    assert d.totals("freeze") == (1, pytest.approx(1.0))


# --- RTP statistics ----------------------------------------------------------------------------
def test_loss_and_residual_loss_follow_rfc3550() -> None:
    c = StreamCounter("video", 1, 90000)
    lost = {5, 6, 50}
    for i, seq in enumerate(range(65530, 65530 + 100)):  # crosses the 16-bit wrap
        if i in lost:
            continue
        c.add_original(seq & 0xFFFF, i * 3000, i * 33.3, 1000)
    c.add_rtx((65530 + 5) & 0xFFFF, 2000.0, 1000)  # one repaired by RTX
    assert c.expected == 100
    assert c.packets_lost == 3
    assert c.residual_lost == 2
    assert c.loss_pct() == pytest.approx(3.0)
    assert c.residual_loss_pct() == pytest.approx(2.0)
    assert c.rtx_received == 1


def test_jitter_zero_for_perfect_pacing_and_matches_rfc_for_alternating_delay() -> None:
    c = StreamCounter("video", 1, 90000)
    for i in range(200):
        c.add_original(i, i * 3000, i * 1000 / 30, 100)
    assert c.jitter_ms == pytest.approx(0.0, abs=1e-6)
    c = StreamCounter("audio", 2, 48000)
    for i in range(2000):  # transit alternates by 10 ms: |D| = 10 ms each packet → J converges to 10 ms
        c.add_original(i, i * 960, i * 20 + (10 if i % 2 else 0), 100)
    assert c.jitter_ms == pytest.approx(10.0, rel=1e-3)


# --- bitstream ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("encoder", "name", "opts"), [
    ("libvpx", "VP8", {"deadline": "realtime", "cpu-used": "8"}),
    ("libx264", "H264", {"preset": "ultrafast", "tune": "zerolatency"}),
])
@pytest.mark.parametrize(("w", "h"), [(1280, 720), (640, 360), (426, 240)])
def test_keyframe_and_size_from_real_encoder_output(encoder: str, name: str, opts: dict[str, str],
                                                    w: int, h: int) -> None:
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = opts
    infos = []
    for i in range(3):
        f = av.VideoFrame.from_ndarray(np.full((h * 3 // 2, w), 90, np.uint8), format="yuv420p")
        f.pts = i
        infos += [frame_info(name, bytes(p)) for p in enc.encode(f)]
    infos += [frame_info(name, bytes(p)) for p in enc.encode(None)]
    assert infos[0].keyframe and (infos[0].width, infos[0].height) == (w, h)
    assert not infos[1].keyframe and infos[1].width is None


def test_garbage_bitstreams_do_not_raise() -> None:
    assert not vp8_info(b"").keyframe
    assert h264_info(b"\x00\x00\x01\x67\xff").width is None


# --- marker ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("w", "h"), [(1280, 720), (640, 360), (320, 180)])
def test_marker_round_trip_and_crc_rejects_corruption(w: int, h: int) -> None:
    y = np.full((h, w), 120, np.uint8)
    m = marker.Marker(seq=2**32 - 1, capture_ms=1_795_262_400_250)
    marker.draw(y, m)
    assert marker.read(y) == m
    b = marker.block_size(w)
    y[: b, : b] = 255 - y[: b, : b]  # flip the first bit
    assert marker.read(y) is None


def test_marker_survives_vp8_at_low_bitrate_on_noise() -> None:
    w, h = 640, 360
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = w, h, "yuv420p", 300_000
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"deadline": "realtime", "cpu-used": "8"}
    dec = av.CodecContext.create("vp8", "r")
    rng = np.random.default_rng(1)
    seen = []
    for i in range(30):
        img = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        marker.draw(img[:h], marker.Marker(i, 1_795_262_400_000 + 33 * i))
        f = av.VideoFrame.from_ndarray(img, format="yuv420p")
        f.pts = i
        for p in enc.encode(f):
            for out in dec.decode(p):
                seen.append(marker.read(out.to_ndarray(format="yuv420p")[:h]))
    assert len(seen) >= 25
    assert [m.seq for m in seen if m is not None] == list(range(len(seen)))


# --- video stats -------------------------------------------------------------------------------
def test_video_stats_marker_repeats_skips_latency_and_hd_share() -> None:
    v = VideoStats()
    seqs = [0, 1, 2, 3, 4, 5, 6, 6, 6, 9, 10]  # two repeats, then 7 and 8 skipped
    for i, s in enumerate(seqs):
        v.on_frame(i * 100.0, 1280 if i < 5 else 640, 720 if i < 5 else 360,
                   marker.Marker(s, 1000 + i * 100), 1050.0 + i * 100)
    v.finish(1100.0)
    assert v.marker_repeated == 2 and v.marker_skipped == 2
    # the skip is an event at the first frame after it (frame 9, at t = 0.9 s)
    assert [(t, d) for t, typ, d in v.events if typ == "marker_skip"] == [(0.9, {"frames": 2})]
    assert percentile(v.latencies_ms, 50) == pytest.approx(50.0)
    assert v.hd_share(1100.0) == pytest.approx(500 / 1100)
    assert [(w, h) for _, w, h in v.resolution_changes] == [(1280, 720), (640, 360)]


# --- NACK re-sending ---------------------------------------------------------------------------
def test_nack_retrier_resends_every_interval_up_to_the_limit_and_forgets_recovered() -> None:
    from probe.tap import NackRetrier

    r = NackRetrier(retry_ms=100, max_retries=3)
    missing = {10, 11}
    assert r.due(missing, 0.0) == []  # aiortc NACKed them when it saw the gap
    assert r.due(missing, 50.0) == []
    assert r.due(missing, 100.0) == [10, 11]
    missing.discard(10)  # the retransmission of 10 arrived
    assert r.due(missing, 200.0) == [11]
    assert r.due(missing, 300.0) == [11]
    assert r.due(missing, 400.0) == []  # three retries spent
    assert r.due(set(), 500.0) == [] and r._state == {}


def test_nack_retrier_counts_retries_from_the_first_nack_not_from_when_it_looked() -> None:
    from probe.tap import NackRetrier

    r = NackRetrier(retry_ms=100, max_retries=3)
    r.nacked([20], 0.0)  # aiortc's first NACK, seen on the way out
    assert r.due({20}, 90.0) == []  # the retrier's first look, 90 ms later
    assert r.due({20}, 100.0) == [20]  # due 100 ms after the first NACK, not after the first look
    r.nacked([20], 100.0)  # our own re-NACK passes the tap too: it does not reset the count
    assert r._state[20] == (100.0, 1)


def test_remb_throttle_follows_libwebrtc_interval_and_drop_rule() -> None:
    from probe.tap import RembThrottle

    t = RembThrottle(interval_ms=200)
    assert t.allow(1_000_000, 0.0)  # the first estimate goes out
    assert not t.allow(1_000_000, 50.0)  # same estimate within 200 ms: held back
    assert not t.allow(980_000, 100.0)  # a 2 % fall is not urgent
    assert t.allow(960_000, 150.0)  # a 4 % fall goes out at once
    assert not t.allow(2_000_000, 300.0)  # a rise waits for the interval (from the last one sent, 150 ms)
    assert t.allow(2_000_000, 350.0)
    assert (t.sent, t.suppressed) == (3, 3)


def test_drive_runs_a_coroutine_in_place_or_finishes_it_as_a_task() -> None:
    import asyncio

    from probe.fastrecv import drive

    log: list[str] = []

    async def no_wait() -> None:
        log.append("ran")

    async def waits() -> None:
        log.append("start")
        await asyncio.sleep(0.01)
        log.append("end")

    async def main() -> None:
        assert drive(no_wait()) and log == ["ran"]  # finished before drive returned
        assert not drive(waits()) and log == ["ran", "start"]  # suspended at the sleep
        await asyncio.sleep(0.05)
        assert log == ["ran", "start", "end"]  # the rest ran as a task

    asyncio.run(main())


# --- no-decode mode: what a decoder could show -----------------------------------------------------
def test_no_decode_shows_nothing_before_the_first_keyframe_and_asks_for_one() -> None:
    """An interframe before any keyframe cannot be decoded: a decoder shows nothing and its error makes
    aiortc's receiver send a PLI. The no-decode tap does the same with real VP8 frames in a real aiortc
    receiver (its transport a stand-in: nothing is sent here)."""
    from types import SimpleNamespace

    from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver

    from probe.tap import ReceiverTap, UndecodedFrame

    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = 640, 360, "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"deadline": "realtime", "cpu-used": "8"}
    packets = []
    for i in range(3):
        f = av.VideoFrame.from_ndarray(np.full((540, 640), 60 + i, np.uint8), format="yuv420p")
        f.pts = i
        packets += [bytes(p) for p in enc.encode(f)]
    key, inter = packets[0], packets[1]
    assert frame_info("VP8", key).keyframe and not frame_info("VP8", inter).keyframe

    receiver = RTCRtpReceiver("video", SimpleNamespace(state="new"))
    receiver._track = RemoteStreamTrack(kind="video")  # type: ignore[attr-defined]
    assembled: list[bool] = []
    tap = ReceiverTap(receiver, "video", decode=False, now_ms=lambda: 0.0, counters={},
                      on_assembled=lambda _k, info, _t: assembled.append(info.keyframe), on_first_rtp=lambda _: None)
    error = receiver._RTCRtpReceiver__decoder_error  # type: ignore[attr-defined]
    queue = receiver._track._queue  # type: ignore[attr-defined]
    tap.on_encoded_frame("VP8", inter, 0)  # the join keyframe was lost: an interframe comes first
    assert queue.empty() and error.is_set() and tap.undecodable_frames == 1
    error.clear()
    for data in (key, inter):
        tap.on_encoded_frame("VP8", data, 0)
    shown = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(type(s), s.keyframe, s.width) for s in shown] == [
        (UndecodedFrame, True, 640), (UndecodedFrame, False, None)]
    assert not error.is_set() and tap.undecodable_frames == 1
    assert assembled == [False, True, False]  # every frame is still counted as received


def test_cpu_steal_ticks_are_a_share_that_only_grows() -> None:
    from probe.hoststalls import cpu_steal_ticks

    steal0, total0 = cpu_steal_ticks()
    sum(i * i for i in range(200_000))  # some CPU time passes
    steal1, total1 = cpu_steal_ticks()
    assert 0 <= steal0 <= total0 and 0 <= steal1 <= total1
    assert steal1 >= steal0 and total1 >= total0
