"""The probe against the embedded room's ground truth: real aiortc on both ends, over loopback.

Each test configures what the room does to the probe (a scenario), runs a real probe session, and
compares the report with the room's own record of what it sent, dropped, froze and switched.
Bounds are generous where timing is involved: these tests must not fail on scheduling noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from probe.report import Report
from probe.session import ProbeOptions, Session, run_session
from room.config import Rendition, RoomConfig, ServerConfig
from room.scenario import parse as parse_scenario
from room.server import RoomServer
from tests.stalls import LoopStalls

pytestmark = [pytest.mark.slow, pytest.mark.realtime]


def small(name: str) -> dict[str, Any]:
    """A 640x360 room: cheap to encode and decode, so timing tests do not depend on a free CPU."""
    return {"name": name, "renditions": [{"name": "360p", "width": 640, "height": 360, "fps": 30, "kbps": 600}]}


def started_ms(report: Report) -> float:
    return datetime.fromisoformat(report.started_at.replace("Z", "+00:00")).timestamp() * 1000.0


async def probe_room(scenario: dict[str, Any], *, duration_s: float = 6.0, decode: bool = True,
                     query: str = "", fast_receive: bool = True, fused: bool = True,
                     stalls: LoopStalls | None = None,
                     on_session: Callable[[Session], Any] | None = None) -> tuple[Report, dict[str, Any]]:
    """Run one probe session against a room built from ``scenario``; returns (report, viewer truth).

    Checks which receive path the session took: the direct one (``probe.fastrecv``; with ``fused``, through
    ``probe.rtphandler``'s one function, else driving aiortc's receiver coroutines) or aiortc's.
    ``stalls``, if given, records this process's stalls during the session and the room's late ticks.
    ``on_session`` is called with the session before it runs.
    """
    config = parse_scenario(scenario).server_config()
    async with RoomServer(config) as server, stalls or contextlib.nullcontext():
        room = config.rooms[0].name
        session = Session(ProbeOptions(url=server.whep_url(room) + query, duration_s=duration_s, decode=decode,
                                       fast_receive=fast_receive, fused_receive=fused))
        if on_session is not None:
            on_session(session)
        report = await session.run()
        truth = server.rooms[room].truth()
    if stalls is not None:
        stalls.add_room_truth(truth)
    if report.summary.join.first_rtp_ms is not None:
        direct = session.direct_receive
        if fast_receive:
            assert direct is not None and direct.packets > 0 and direct.rejected == 0
            assert direct.fused == (direct.packets if fused else 0)
        else:
            assert direct is None
    viewers = truth["viewers"]
    return report, viewers[-1] if viewers else {}


def video_stream(report: Report) -> Any:
    return next(s for s in report.summary.streams if s.kind == "video")


@pytest.mark.parametrize(("receive", "codec"), [("fused", "vp8"), ("direct", "vp8"), ("aiortc", "vp8"),
                                               ("fused", "h264")],
                         ids=["direct-receive", "direct-receive-unfused", "aiortc-receive", "h264"])
async def test_clean_session_matches_what_the_room_sent(receive: str, codec: str) -> None:
    stalls = LoopStalls()
    report, truth = await probe_room({"rooms": [{"name": "clean", "codec": codec}]}, duration_s=5,
                                      fast_receive=receive != "aiortc", fused=receive == "fused", stalls=stalls)
    assert report.failure is None, report.failure_message
    v = report.summary.video
    assert v is not None
    assert (v.width, v.height) == (1280, 720)
    # no scheduled freeze: a freeze here can only be a stall of this shared process (room + probe), which
    # the room feels too; on a loaded machine (a CI run saw 4) they must coincide with stalls the test saw.
    # The probe's own host-stall flag (its loop's and its decoder thread's stalls) explains a freeze too.
    # One freeze may stay unexplained: a CI run saw one of 187 ms, just over the W3C threshold, with no
    # loop stall and before the decoder thread's lag was measured; nothing has shown its cause yet
    unexplained = stalls.unexplained_freezes(report)
    assert len(unexplained) <= 1, (unexplained, stalls.intervals)
    assert v.pauseCount == 0
    # frames: the probe got every frame the room sent it (the room's encoder may skip ticks on a busy
    # machine; those frames were never sent, and the probe sees them as skipped marker numbers)
    assert abs(v.framesReceived - truth["frames_sent"]) <= 3
    assert v.marker_frames == v.framesDecoded and v.marker_repeated_frames == 0
    never_sent = truth["last_marker_seq"] - truth["first_video_packet"]["marker_seq"] + 1 - truth["frames_sent"]
    assert v.marker_skipped_frames == pytest.approx(never_sent, abs=3)
    assert v.fps_mean is not None and v.fps_mean == pytest.approx(v.framesDecoded / v.watch_time_s, rel=0.01)
    assert v.hd_share == pytest.approx(1.0)
    st = video_stream(report)
    sent = truth["video"]["packets_sent"]
    # the probe counts until it closes the connection, the room until the DELETE: a few packets apart
    assert abs(st.packetsReceived - sent) <= 10
    assert st.packetsLost == 0 and st.loss_pct == 0.0
    audio = report.summary.audio
    assert audio is not None and audio.framesReceived > 200
    # an audio gap, like a freeze, only where this process stalled (the probe flags its own loop's stalls)
    t0 = started_ms(report)
    gaps = [e for e in report.events if e.type == "audio_gap"]
    assert len(gaps) == audio.gapCount
    unexplained_gaps = [e for e in gaps if not e.detail.get("host_stall") and not stalls.overlaps(
        t0 + e.t_s * 1000, t0 + e.t_s * 1000 + float(e.detail["duration_ms"]))]
    assert unexplained_gaps == [], (gaps, stalls.intervals)


def _stall_covering(report: Report, start_wall_ms: float, end_wall_ms: float) -> Any:
    """The report's one ``host_stall`` event that covers [start, end] (wall ms; 30 ms of slack each side)."""
    t0 = started_ms(report)
    covering = [e for e in report.events if e.type == "host_stall"
                and t0 + e.t_s * 1000 <= start_wall_ms + 30
                and t0 + e.t_s * 1000 + float(e.detail["duration_ms"]) >= end_wall_ms - 30]
    assert len(covering) == 1, ([e for e in report.events if e.type == "host_stall"], start_wall_ms - t0)
    return covering[0]


async def test_a_stall_of_the_probes_own_process_is_reported_and_its_freeze_flagged() -> None:
    blocked: list[float] = []

    async def block_loop() -> None:
        await asyncio.sleep(2.5)
        blocked.append(time.time() * 1000.0)
        time.sleep(0.4)  # noqa: ASYNC251 -- on purpose: nothing in this process (room or probe) can run
        blocked.append(time.time() * 1000.0)

    blocker = asyncio.ensure_future(block_loop())
    async with LoopStalls() as watch:
        report, _ = await probe_room({"rooms": [small("blocked")]}, duration_s=5)
    await blocker
    hs = report.summary.host_stalls
    v = report.summary.video
    assert hs is not None and v is not None
    stalls = [e for e in report.events if e.type == "host_stall"]
    # the 400 ms block is one stall, seen as long as the test's own watcher saw it (the monitor wakes every
    # 20 ms, the watcher every 5 ms); a stall from outside that adjoins the block lengthens both alike
    block = _stall_covering(report, blocked[0], blocked[1])
    (seen,) = [(s, e) for s, e in watch.intervals if s <= blocked[0] + 5 and e >= blocked[1] - 5]
    assert float(block.detail["duration_ms"]) >= 380
    assert float(block.detail["duration_ms"]) == pytest.approx(seen[1] - seen[0], abs=60), (block, seen)
    assert "loop" in str(block.detail["source"]).split("+")
    assert hs.count == len(stalls) and hs.max_ms == max(float(e.detail["duration_ms"]) for e in stalls)
    assert hs.stalled_s >= 0.38
    # the room could not send either, so the viewer froze; the freeze is counted and flagged as the host's
    flagged = [e for e in report.events if e.type == "freeze_start" and e.detail.get("host_stall")]
    assert v.freezeCount >= 1 and hs.freezes_during == len(flagged) >= 1
    assert hs.frozen_s_during == pytest.approx(sum(float(e.detail["duration_ms"]) for e in flagged) / 1000, abs=0.002)
    assert 0.38 <= hs.frozen_s_during <= v.totalFreezesDuration


async def test_a_starved_decoder_thread_is_a_host_stall_and_its_freeze_flagged() -> None:
    """The decoder thread sleeps 400 ms once (releasing the GIL: the event loop, the room and the probe's
    receive path run on, so the loop's monitor sees nothing); the frames queue behind it and render in a
    burst, a freeze no viewer had."""
    starved: list[float] = []
    done = threading.Event()

    def starve_once() -> None:
        if not done.is_set():
            done.set()
            starved.append(time.time() * 1000.0)
            time.sleep(0.4)
            starved.append(time.time() * 1000.0)

    async def arm(session: Session) -> None:
        await asyncio.sleep(2.5)
        assert session.video_tap is not None and session.video_tap.decoder is not None
        session.video_tap.decoder.before_decode = starve_once

    tasks: list[asyncio.Task[None]] = []
    async with LoopStalls() as watch:
        report, _ = await probe_room({"rooms": [small("starved")]}, duration_s=5,
                                     on_session=lambda s: tasks.append(asyncio.ensure_future(arm(s))))
    await tasks[0]
    assert done.is_set()
    hs, v = report.summary.host_stalls, report.summary.video
    assert hs is not None and v is not None
    stall = _stall_covering(report, starved[0], starved[1])
    assert "decoder" in str(stall.detail["source"]).split("+"), stall
    # from the held frame's arrival (the sleep began as it was taken up) to the end of the backlog's
    # decode; a stall from outside inside that window (the watcher's) may lengthen it
    outside = watch.stalled_ms(starved[0] - 200, starved[1] + 300)
    assert 400 - 30 <= float(stall.detail["duration_ms"]) <= 400 + 150 + outside, (stall, watch.intervals)
    assert hs.decoder_count >= 1 and hs.count == len([e for e in report.events if e.type == "host_stall"])
    flagged = [e for e in report.events if e.type == "freeze_start" and e.detail.get("host_stall")]
    assert hs.freezes_during == len(flagged) >= 1
    t0 = started_ms(report)
    assert any(t0 + e.t_s * 1000 < starved[1] and t0 + e.t_s * 1000 + float(e.detail["duration_ms"]) > starved[0]
               for e in flagged), (flagged, starved)


@pytest.mark.parametrize("delay_ms", [0, 80])
async def test_rtt_from_consent_checks_includes_the_rooms_added_delay(delay_ms: int) -> None:
    impairments = [{"delay_ms": delay_ms}] if delay_ms else []
    stalls = LoopStalls()
    report, truth = await probe_room({"rooms": [small("rtt")], "impairments": impairments}, duration_s=8,
                                     stalls=stalls)
    rtt = report.summary.rtt_ms
    # the first consent check goes 4-6 s after ICE connects: an 8 s session has at least one
    assert rtt is not None and "rtt_ms" not in report.summary.unavailable
    # loopback answers in well under a ms; the room holds its STUN replies for the added delay. A stall
    # of this process (room and probe) while a reply is due delays it by at most the stall's length
    longest = max((e - s for s, e in stalls.intervals), default=0.0)
    assert delay_ms <= rtt <= delay_ms + 30 + longest, (rtt, stalls.intervals, truth.get("settings"))


async def test_no_rtt_before_the_first_consent_check() -> None:
    report, _ = await probe_room({"rooms": [small("nortt")]}, duration_s=3)
    assert report.summary.rtt_ms is None and "rtt_ms" in report.summary.unavailable


async def test_ttff_is_consistent_with_the_rooms_first_frame() -> None:
    report, truth = await probe_room({"rooms": [small("ttff")]}, duration_s=3)
    j = report.summary.join
    assert j.signaling_ms is not None and j.ice_connected_ms is not None and j.dtls_connected_ms is not None
    assert j.first_rtp_ms is not None and j.first_keyframe_ms is not None and j.ttff_ms is not None
    assert j.signaling_ms <= j.ice_connected_ms <= j.dtls_connected_ms <= j.first_rtp_ms
    assert j.first_rtp_ms <= j.first_keyframe_ms <= j.ttff_ms
    # the room's first video packet is a keyframe, sent at once; the probe assembles that keyframe after
    # the room sent its first packet (ordering is the claim; delivery takes tens of ms on loopback, the
    # 1 s bound only tolerates a machine loaded by other work)
    t0 = started_ms(report)
    first_sent = truth["first_video_packet"]["wall_ms"]
    assert truth["first_keyframe"]["wall_ms"] == pytest.approx(first_sent, abs=1.0)
    keyframe_wall = t0 + j.first_keyframe_ms
    # started_at has ms resolution: allow 2 ms of rounding
    assert -2.0 <= keyframe_wall - first_sent <= 1000.0


async def test_marker_latency_is_sane_on_loopback() -> None:
    stalls = LoopStalls()
    report, _ = await probe_room({"rooms": [small("latency")]}, duration_s=4, stalls=stalls)
    v = report.summary.video
    assert v is not None and v.latency_clock == "same_host"
    assert v.latency_p50_ms is not None and v.latency_p95_ms is not None
    # capture → encode (one frame time of pacing + encode) → loopback → decode: tens of ms, never negative;
    # a stall of this process (room and probe) holds the frames captured before it for as long (a CI run on
    # a starved VM: p95 1.2 s)
    longest = max((e - s for s, e in stalls.intervals), default=0.0)
    assert 0 < v.latency_p50_ms < 400 + longest, (v.latency_p50_ms, stalls.intervals)
    assert v.latency_p50_ms <= v.latency_p95_ms < 1000 + longest, (v.latency_p95_ms, stalls.intervals)
    assert all(s.latency_ms is None or s.latency_ms > 0 for s in report.timeline)


@pytest.mark.parametrize(("loss_pct", "fast_receive"), [(5.0, True), (5.0, False)],
                         ids=["direct-receive", "aiortc-receive"])
async def test_configured_loss_is_measured(loss_pct: float, fast_receive: bool) -> None:
    scenario = {"seed": 7, "rooms": [{"name": "lossy"}], "impairments": [{"loss_pct": loss_pct}]}
    report, truth = await probe_room(scenario, duration_s=8, fast_receive=fast_receive)
    assert report.failure is None, report.failure_message
    st = video_stream(report)
    video = truth["video"]
    true_pct = 100.0 * video["packets_dropped"] / (video["packets_sent"] + video["packets_dropped"])
    assert true_pct == pytest.approx(loss_pct, abs=2.5)  # the room's RNG did what it was told
    # the probe sees exactly the first transmissions the room dropped (apart from the last few in flight)
    assert st.loss_pct == pytest.approx(true_pct, abs=0.5)
    # NACK + RTX repair most of it: residual loss is what retransmission could not recover
    assert st.nackCount > 0 and st.retransmittedPacketsReceived > 0
    assert st.residual_loss_pct is not None and st.residual_loss_pct < st.loss_pct
    # the room's record of dropped retransmissions per original packet adds up to its RTX drop count
    per_packet = truth["rtx_dropped_times"]
    assert sum(int(times) * n for times, n in per_packet.items()) == truth["rtx"]["packets_dropped"] > 0


async def test_scheduled_freezes_are_counted_with_their_durations() -> None:
    scenario = {
        "rooms": [small("freezy")],
        "impairments": [{"at_ms": 2000, "freeze_ms": 500}, {"at_ms": 4000, "freeze_ms": 1200}],
    }
    stalls = LoopStalls()
    report, truth = await probe_room(scenario, duration_s=7, stalls=stalls)
    v = report.summary.video
    assert v is not None
    t0 = started_ms(report)

    def span(e: Any) -> tuple[float, float]:
        return t0 + e.t_s * 1000, t0 + e.t_s * 1000 + float(e.detail["duration_ms"])

    def scheduled(e: Any) -> bool:  # the freeze overlaps one the room made (its truth, wall clock)
        return any(f["start_ms"] < span(e)[1] and f["end_ms"] > span(e)[0] for f in truth["freezes"])

    assert len(truth["freezes"]) == 2, truth["freezes"]
    starts = [e for e in report.events if e.type == "freeze_start"]
    for f in truth["freezes"]:
        over = [e for e in starts if f["start_ms"] < span(e)[1] and f["end_ms"] > span(e)[0]]
        assert over, (f, starts)
        gap = f["end_ms"] - f["start_ms"]
        # timing is exact when this process (room and probe) did not stall around the freeze; a stall there
        # can split the freeze in two or lengthen it (never shorten it)
        if not stalls.overlaps(f["start_ms"] - 300, f["end_ms"] + 300):
            (e,) = over
            assert float(e.detail["duration_ms"]) == pytest.approx(gap, abs=120), (gap, e)
            # the freeze starts where the room stopped sending (relative to the probe's t0)
            assert e.t_s * 1000 == pytest.approx(f["start_ms"] - t0, abs=150)
        else:
            assert max(float(e.detail["duration_ms"]) for e in over) >= gap - 120 or len(over) > 1, (gap, over)
    # any other freeze must be a stall of this shared process (see the clean test)
    others = [e for e in stalls.unexplained_freezes(report) if not scheduled(e)]
    assert others == [], (others, stalls.intervals)
    assert v.stall_ratio == pytest.approx(v.totalFreezesDuration / v.watch_time_s, rel=0.01)


async def test_freeze_still_running_at_session_end_is_counted_and_flagged() -> None:
    scenario = {"rooms": [small("endfreeze")], "impairments": [{"at_ms": 2500, "freeze_ms": 10000}]}
    stalls = LoopStalls()
    report, truth = await probe_room(scenario, duration_s=4, stalls=stalls)
    v = report.summary.video
    assert v is not None and v.freeze_in_progress
    # the scheduled freeze is the last one, still running at the end, ~1.5 s of it inside the session;
    # any other freeze must be a stall of this process (a starved machine; see the clean test)
    freezes = [e for e in report.events if e.type == "freeze_start"]
    (wire,) = truth["freezes"]  # still open: the room records when its schedule stopped the video
    assert freezes and wire["scheduled_start_ms"] is not None, wire
    # it starts with the last frame sent before the schedule stopped the video (at most a frame interval
    # earlier); later only by what stalls of this process (room and probe) delayed that frame's processing
    # (a CI run on a starved VM: 0.6 s later, inside a measured stall)
    start_ms = started_ms(report) + freezes[-1].t_s * 1000
    late = start_ms - wire["scheduled_start_ms"]
    slack = stalls.stalled_ms(wire["scheduled_start_ms"] - 100, start_ms)
    assert -100 <= late <= 150 + slack, (late, slack, freezes, stalls.intervals)
    assert wire["scheduled_start_ms"] - started_ms(report) == pytest.approx(2500, abs=300)
    assert float(freezes[-1].detail["duration_ms"]) == pytest.approx(1500 - max(0.0, late), abs=300)
    others = [e for e in stalls.unexplained_freezes(report) if e is not freezes[-1]]
    assert others == [], (others, stalls.intervals)


async def test_resolution_switch_shows_in_timeline_at_the_rooms_switch_time() -> None:
    room = {
        "name": "ladder",
        "renditions": [
            {"name": "720p", "width": 1280, "height": 720, "fps": 30, "kbps": 1500},
            {"name": "360p", "width": 640, "height": 360, "fps": 30, "kbps": 500},
        ],
    }
    scenario = {"rooms": [room], "impairments": [{"at_ms": 3000, "rendition": "360p"}]}
    for decode in (True, False):
        stalls = LoopStalls()
        report, truth = await probe_room(scenario, duration_s=6, decode=decode, stalls=stalls)
        v = report.summary.video
        assert v is not None
        sizes = [(c.width, c.height) for c in v.resolution_timeline]
        # (a fresh-tree full run once saw only 360p from the no-decode probe on a starved machine, cause
        # not known: the message carries what would tell)
        why = (decode, v.resolution_timeline, report.summary.join, v.keyframesReceived, v.framesReceived,
               report.summary.host_stalls, truth["resolution_changes"], truth.get("first_keyframe"),
               [e for e in report.events if e.type in ("resolution_change", "host_stall", "freeze_start")][:20])
        assert sizes == [(c["width"], c["height"]) for c in truth["resolution_changes"]] == [
            (1280, 720), (640, 360)], why
        switch_sent = truth["resolution_changes"][1]["t_ms"] - started_ms(report)
        seen = v.resolution_timeline[1].t_s * 1000
        # later only by the stalls of this process in between (a CI run on a starved VM: 325 ms)
        slack = stalls.stalled_ms(started_ms(report) + switch_sent - 100, started_ms(report) + seen)
        assert seen == pytest.approx(switch_sent, abs=250 + slack), (seen, switch_sent, stalls.intervals)
        assert 0.3 < (v.hd_share or 0) < 0.7
        assert report.timeline[1].height == 720 and report.timeline[-1].height == 360


async def test_no_decode_mode_counts_frames_and_says_what_it_cannot_measure() -> None:
    report, truth = await probe_room({"rooms": [small("nodecode")]}, duration_s=4, decode=False)
    v = report.summary.video
    assert report.summary.mode == "no-decode" and v is not None
    assert v.framesDecoded is None and v.latency_p50_ms is None
    assert {"framesDecoded", "latency_p50_ms"} <= set(report.summary.unavailable)
    assert (v.width, v.height) == (640, 360)
    # counting without decoding: every frame the room sent is counted (the room and the probe share one
    # process here, so a stall of either is a real freeze; the count is the claim, not a quiet machine)
    assert abs(v.framesReceived - truth["frames_sent"]) <= 3
    assert v.fps_mean is not None and v.fps_mean == pytest.approx(v.framesReceived / v.watch_time_s, rel=0.05)


# --- failures are data -----------------------------------------------------------------------
async def test_unknown_room_is_whep_http_404() -> None:
    async with RoomServer(ServerConfig(rooms=(RoomConfig("real"),))) as server:
        report = await run_session(ProbeOptions(url=server.whep_url("nope"), duration_s=2))
    assert report.failure == "whep_http_404", report.failure_message
    assert "404" in (report.failure_message or "")
    assert report.summary.join.signaling_ms is not None and report.summary.join.ttff_ms is None


async def test_refused_join_is_whep_http_503() -> None:
    scenario = {"rooms": [{"name": "full"}], "refuse_joins": [{"match": {"region": ["eu"]}}]}
    report, _ = await probe_room(scenario, duration_s=2, query="?region=eu")
    assert report.failure == "whep_http_503", report.failure_message


async def test_closed_port_is_url_unreachable() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    report = await run_session(ProbeOptions(url=f"http://127.0.0.1:{port}/whep/x", duration_s=2))
    assert report.failure == "url_unreachable"
    assert str(port) in (report.failure_message or "")


async def test_unsupported_scheme_is_url_invalid() -> None:
    report = await run_session(ProbeOptions(url="ftp://127.0.0.1/whep/x", duration_s=1))
    assert report.failure == "url_invalid"


async def test_all_packets_dropped_is_no_media() -> None:
    scenario = {"rooms": [{"name": "blackhole"}], "impairments": [{"at_ms": 0, "loss_pct": 100}]}
    config = parse_scenario(scenario).server_config()
    async with RoomServer(config) as server:
        report = await run_session(ProbeOptions(url=server.whep_url("blackhole"), duration_s=4,
                                                media_timeout_s=2))
    assert report.failure == "no_media"
    assert report.summary.join.dtls_connected_ms is not None and report.summary.join.first_rtp_ms is None


async def test_video_frozen_from_the_start_is_no_video() -> None:
    scenario = {"rooms": [{"name": "novideo"}], "impairments": [{"at_ms": 0, "freeze_ms": 60000}]}
    config = parse_scenario(scenario).server_config()
    async with RoomServer(config) as server:
        report = await run_session(ProbeOptions(url=server.whep_url("novideo"), duration_s=4, media_timeout_s=2))
    assert report.failure == "no_video"
    # audio still flows: RTP arrived, so this is not "no_media"
    assert report.summary.join.first_rtp_ms is not None and report.summary.join.first_audio_ms is not None


def test_rendition_config_is_what_the_room_serves() -> None:
    # guards the assumption above that a room's first rendition is its default
    cfg = RoomConfig("x", renditions=(Rendition("a", 640, 360, 30, 500), Rendition("b", 1280, 720, 30, 1500)))
    assert cfg.renditions[0].height == 360


async def test_udp_receive_buffer_is_enlarged() -> None:
    # the kernel default (212,992 bytes) drops packets at ~15-20 viewers per process
    from probe.session import Session

    async with RoomServer(ServerConfig(rooms=(RoomConfig("buf", renditions=(Rendition("s", 320, 180, 15, 200),)),))) \
            as server:
        session = Session(ProbeOptions(url=server.whep_url("buf"), duration_s=1.5))
        report = await session.run()
    assert report.failure is None, report.failure_message
    assert session.rcvbuf_bytes is not None and session.rcvbuf_bytes >= 1_000_000


async def test_content_freeze_shows_as_repeated_markers_not_as_a_w3c_freeze() -> None:
    # the picture stands still for 1.5 s while frames keep arriving at 30 fps: the W3C freeze rule
    # (frame arrival) sees nothing; the marker sees the same frame repeated, as the room recorded
    scenario = {"rooms": [small("stuck")], "impairments": [{"room_at_ms": 2500, "repeat_ms": 1500}]}
    config = parse_scenario(scenario).server_config()
    async with RoomServer(config) as server, LoopStalls() as stalls:
        report = await run_session(ProbeOptions(url=server.whep_url("stuck"), duration_s=6))
        truth = server.rooms["stuck"].truth()
    stalls.add_room_truth(truth)
    v = report.summary.video
    assert report.failure is None and v is not None
    (stuck,) = truth["content_freezes"]
    viewer = truth["viewers"][-1]
    # the room held the picture for its frames (30 fps over the window on a quiet machine; fewer when the
    # room's ticks ran late: a CI run on a starved VM, 14), and the probe counted exactly those
    assert viewer["marker_repeated_frames"] == stuck["frames_repeated"] >= 10
    # every repeated frame the room sent was decoded and recognised as a repeat (a frame may be lost
    # to a decode-queue race at most rarely; none is lost on loopback)
    assert v.marker_repeated_frames == pytest.approx(stuck["frames_repeated"], abs=2)
    # frames kept coming: not a W3C freeze (one only a stall of this process explains does not count)
    assert stalls.unexplained_freezes(report) == [], stalls.intervals
    # The marker's freeze rule runs over the times the content changed, so a gap in frame arrival is a
    # marker freeze too: the one over the room's content freeze is the finding, any other must be an
    # arrival gap the report also has as a W3C freeze (which the line above tied to a stall)
    t0 = started_ms(report)

    def span(e: Any) -> tuple[float, float]:
        return t0 + e.t_s * 1000, t0 + e.t_s * 1000 + float(e.detail["duration_ms"])

    repeats = [e for e in report.events if e.type == "marker_repeat"]
    def overlap(e: Any) -> float:
        return min(span(e)[1], stuck["end_ms"]) - max(span(e)[0], stuck["start_ms"])

    # the marker freeze over the content freeze is the one that overlaps it most (an arrival gap next to it,
    # a stall of this process, is a marker freeze of its own, and is held to the rule below like any other)
    held = max(repeats, key=overlap)
    assert overlap(held) > 0, (repeats, stuck)
    gaps = [span(e) for e in report.events if e.type == "freeze_start"]
    others = [e for e in repeats if e is not held and not any(a < span(e)[1] and b > span(e)[0] for a, b in gaps)]
    assert others == [], (repeats, gaps)
    assert v.marker_freeze_count == len(repeats)
    held_ms = float(held.detail["duration_ms"])
    # the content stood still from the held frame to the first fresh one (capture times in the truth)
    assert held_ms == pytest.approx(stuck["end_ms"] - stuck["start_ms"], abs=150)
    assert v.marker_frozen_s == pytest.approx(sum(float(e.detail["duration_ms"]) for e in repeats) / 1000, abs=0.01)
    assert held.t_s * 1000 == pytest.approx(stuck["start_ms"] - t0, abs=300)
