"""The room's encoders send the bitrate they are configured with, from the first seconds on.

Real libvpx and libx264 (PyAV) on the room's own pattern, with the settings the room uses
(``room.encoder.open_video_codec``): a bandwidth cap or a loss rate is only meaningful against a stream
that carries the configured bitrate. Before session 11, x264's ABR reached the target only after 5-10 s
on this pattern (668 kbps over 2-5 s at 720p for 1500), and libvpx's fastest speed overshot low bitrates
(436 kbps for 300 at 360p); docs/room.md lists the measurements.
"""

from __future__ import annotations

import random

import av
import pytest

from probe.marker import Marker
from room.config import Rendition
from room.encoder import VIDEO_TIME_BASE, SharedVideoEncoder, open_video_codec
from room.pattern import TestPattern

TOLERANCE = 0.12
"""Allowed deviation of a window's bitrate from the configured one."""


def _window_kbps(codec: str, width: int, height: int, kbps: int, seconds: int, fps: int = 30) -> list[float]:
    """The encoded bitrate (kbit/s) of each second; one keyframe, the first frame, as the room sends it."""
    ctx = open_video_codec(codec, Rendition("t", width, height, fps, kbps))
    pattern = TestPattern(width, height)
    per_second = [0] * seconds
    for i in range(seconds * fps):
        picture = pattern.frame(i, Marker(seq=i, capture_ms=1_700_000_000_000 + i * 1000 // fps))
        picture.pts = i * 90_000 // fps
        picture.time_base = VIDEO_TIME_BASE
        picture.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
        per_second[i // fps] += sum(p.size for p in ctx.encode(picture))
    return [8 * size / 1000 for size in per_second]


@pytest.mark.parametrize(
    ("codec", "width", "height", "kbps"),
    [("vp8", 1280, 720, 1500), ("vp8", 640, 360, 300), ("h264", 1280, 720, 1500), ("h264", 640, 360, 800)],
)
def test_room_encoder_holds_its_configured_bitrate_from_the_start(codec: str, width: int, height: int,
                                                                   kbps: int) -> None:
    seconds = _window_kbps(codec, width, height, kbps, seconds=5)
    early, late = sum(seconds[:2]) / 2, sum(seconds[2:]) / 3  # 0-2 s (with the keyframe), 2-5 s
    assert abs(early - kbps) <= TOLERANCE * kbps, (early, seconds)
    assert abs(late - kbps) <= TOLERANCE * kbps, (late, seconds)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_late_rooms_encoder_does_not_send_more_than_its_bitrate(codec: str) -> None:
    """When the room runs late it skips ticks (the viewer sees the gap in RTP time). The codec must not
    answer a skipped tick with bigger frames: libvpx, given the ticks' pts, sent 2,557 kbps for 1,500 with
    25 % of ticks skipped, so a late room sent more and fell further behind (200 viewers: 22.8 fps)."""
    enc = SharedVideoEncoder("t", codec, Rendition("720p", 1280, 720, 30, 1500), keyframe_interval_s=4, epoch=0.0)
    rng = random.Random(1)
    tick, frames, pts_seen = 0, 0, []
    while tick < 300:  # 10 s of ticks, a quarter of them skipped in runs of 1-3
        if tick > 0 and rng.random() < 0.25:
            tick += rng.choice([1, 2, 3])
            continue
        frame = enc._draw_and_encode(tick, 1_700_000_000_000 + tick * 33, tick * 3000, force=tick == 0)
        assert frame is not None
        pts_seen.append(frame.packet.pts)
        frames += 1
        tick += 1
    kbps = enc.bytes_encoded * 8 / 10 / 1000
    assert kbps <= 1500 * (1 + TOLERANCE), kbps
    assert frames < 260 and pts_seen[-1] > (frames - 1) * 3000  # ticks were skipped, and the packets' pts show it
