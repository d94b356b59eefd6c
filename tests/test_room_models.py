"""Pure parts of the room: loss models, token bucket, delay, schedule, scenario validation, RTP header."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from room.config import RoomConfig, parse_room_spec
from room.impairments import DelayJitter, GilbertElliott, RandomLoss, TokenBucket
from room.scenario import load, parse
from room.schedule import BurstLoss, Refusal, Rule, Settings, next_change_ms, settings_at
from room.sendpath import RtpHeader, is_rtcp, rtx_original_seq


def test_random_loss_is_exact_for_a_seed() -> None:
    model = RandomLoss(5.0, random.Random(42))
    lost = sum(model.lost() for _ in range(100_000))
    again = RandomLoss(5.0, random.Random(42))
    assert lost == sum(again.lost() for _ in range(100_000))
    assert 4_800 < lost < 5_200


def test_random_loss_zero_never_draws() -> None:
    rng = random.Random(1)
    model = RandomLoss(0.0, rng)
    assert not any(model.lost() for _ in range(1000))
    assert rng.random() == random.Random(1).random()  # the RNG was not consumed


def _bursts(flags: list[bool]) -> list[int]:
    runs, n = [], 0
    for f in flags:
        if f:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_gilbert_elliott_matches_its_stationary_loss_and_burst_length() -> None:
    params = BurstLoss.from_mean(loss_pct=5.0, mean_burst_packets=4.0)
    assert params.r == pytest.approx(0.25)
    assert params.stationary_loss == pytest.approx(0.05)
    model = GilbertElliott(params, random.Random(7))
    flags = [model.lost() for _ in range(200_000)]
    assert sum(flags) / len(flags) == pytest.approx(0.05, abs=0.005)
    runs = _bursts(flags)
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.1)


def test_gilbert_elliott_partial_loss_in_bad_state() -> None:
    params = BurstLoss(p=0.1, r=0.5, bad_loss=0.5, good_loss=0.01)
    model = GilbertElliott(params, random.Random(3))
    flags = [model.lost() for _ in range(200_000)]
    assert sum(flags) / len(flags) == pytest.approx(params.stationary_loss, rel=0.05)


def test_token_bucket_enforces_rate_and_drops_beyond_the_queue() -> None:
    bucket = TokenBucket(rate_kbps=1000, burst_bytes=3000, queue_ms=100)  # 1000 kbit/s = 125 bytes/ms
    departures = []
    dropped = 0
    for i in range(2000):  # 1200-byte packets offered at 2 Mbit/s (one every 4.8 ms) for 9.6 s
        d = bucket.admit(now_ms=i * 4.8, size_bytes=1200)
        if d is None:
            dropped += 1
        else:
            departures.append(d)
            assert d >= i * 4.8
            assert d - i * 4.8 <= 100
    sent = len(departures)
    rate_kbps = sent * 1200 * 8 / (departures[-1] - departures[0])
    assert rate_kbps == pytest.approx(1000, rel=0.02)
    assert dropped / 2000 == pytest.approx(0.5, abs=0.02)


def test_token_bucket_lets_a_burst_through_at_once() -> None:
    bucket = TokenBucket(rate_kbps=800, burst_bytes=6000, queue_ms=50)
    assert [bucket.admit(0.0, 1200) for _ in range(5)] == [0.0] * 5
    nxt = bucket.admit(0.0, 1200)
    assert nxt is not None and nxt > 0


def test_token_bucket_under_rate_adds_no_delay() -> None:
    bucket = TokenBucket(rate_kbps=2000, burst_bytes=3000, queue_ms=10)
    assert all(bucket.admit(i * 10.0, 1200) == i * 10.0 for i in range(500))


@given(st.lists(st.floats(min_value=0, max_value=50), min_size=1, max_size=200), st.integers(0, 2**32))
def test_delay_jitter_keeps_order_and_bounds(gaps: list[float], seed: int) -> None:
    model = DelayJitter(delay_ms=40, jitter_ms=15, rng=random.Random(seed))
    t, last = 0.0, float("-inf")
    for gap in gaps:
        t += gap
        out = model.release_ms(t)
        assert out >= last
        assert t + 40 <= out
        last = out


def test_settings_last_rule_wins_per_field_and_freeze_windows() -> None:
    rules = [
        Rule(loss_pct=2.0, delay_ms=30),
        Rule(at_ms=1000, duration_ms=1000, loss_pct=10.0),
        Rule(at_ms=1500, freeze=True, duration_ms=400),
        Rule(room_at_ms=5000, rendition="low"),
    ]
    join_offset = 1000.0  # joined 1 s after room start: room_at_ms=5000 is t=4000 for this viewer
    assert settings_at(rules, 0, join_offset) == Settings(loss_pct=2.0, delay_ms=30)
    assert settings_at(rules, 1200, join_offset) == Settings(loss_pct=10.0, delay_ms=30)
    assert settings_at(rules, 1600, join_offset).freeze
    assert not settings_at(rules, 1900, join_offset).freeze
    assert settings_at(rules, 2000, join_offset).loss_pct == 2.0  # end is exclusive
    assert settings_at(rules, 3999, join_offset).rendition is None
    assert settings_at(rules, 4000, join_offset).rendition == "low"
    edges = []
    t = 0.0
    while (n := next_change_ms(rules, t, join_offset)) is not None:
        edges.append(n)
        t = n
    assert edges == [1000, 1500, 1900, 2000, 4000]


def test_room_relative_rule_already_started_before_join() -> None:
    rules = [Rule(room_at_ms=0, duration_ms=3000, loss_pct=50)]
    assert settings_at(rules, 0, join_offset_ms=2000).loss_pct == 50
    assert settings_at(rules, 1000, join_offset_ms=2000).loss_pct == 0
    assert next_change_ms(rules, 0, join_offset_ms=2000) == 1000


def test_refusal_window_and_labels() -> None:
    r = Refusal(match={"region": ("ap",)}, room_from_ms=1000, room_to_ms=2000)
    assert r.refuses({"region": "ap"}, 1500)
    assert not r.refuses({"region": "eu"}, 1500)
    assert not r.refuses({"region": "ap"}, 2000)
    assert Refusal().refuses({}, 10**9)


def test_rule_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^loss_pct"):
        Rule(loss_pct=120)
    with pytest.raises(ValueError, match=r"^at_ms"):
        Rule(at_ms=10, room_at_ms=10)
    with pytest.raises(ValueError, match=r"^burst\.r"):
        BurstLoss(p=0.1, r=0.0)


EXAMPLE = {
    "version": 1,
    "seed": 7,
    "impairments": [{"match": {"isp": "slowisp"}, "cap_kbps": 800, "queue_ms": 150}],
    "refuse_joins": [{"match": {"region": "ap"}}],
    "rooms": [
        {
            "name": "main",
            "codec": "h264",
            "renditions": [
                {"name": "720p", "width": 1280, "height": 720, "fps": 30, "kbps": 1500},
                {"width": 640, "height": 360, "fps": 30, "kbps": 600},
            ],
            "audio": {"freq_hz": 1000, "kbps": 24},
            "impairments": [
                {"match": {"region": "eu"}, "at_ms": 2000, "duration_ms": 3000, "loss_pct": 5},
                {"match": {"region": ["us", "eu"]}, "burst": {"loss_pct": 2, "mean_burst_packets": 3}},
                {"at_ms": 1000, "freeze_ms": 500},
                {"room_at_ms": 60000, "rendition": "360p"},
                {"delay_ms": 40, "jitter_ms": 10},
            ],
            "refuse_joins": [{"room_from_ms": 0, "room_to_ms": 1000}],
        },
        {"name": "plain"},
    ],
}


def test_scenario_example_parses() -> None:
    scen = parse(EXAMPLE)
    assert scen.seed == 7
    main, plain = scen.rooms
    assert main.codec == "h264"
    assert [r.name for r in main.renditions] == ["720p", "360p"]
    assert main.rules[0].cap_kbps == 800  # top-level rules come first
    assert main.rules[3].freeze and main.rules[3].duration_ms == 500
    assert main.rules[2].burst == BurstLoss.from_mean(2, 3)
    assert main.rules[2].match == {"region": ("us", "eu")}
    assert len(main.refusals) == 2
    assert plain.rules[0].cap_kbps == 800 and plain.renditions == RoomConfig("x").renditions
    cfg = scen.server_config((parse_room_spec("extra:320x180@15"),))
    assert [r.name for r in cfg.rooms] == ["main", "plain", "extra"]
    assert cfg.rooms[2].rules[0].cap_kbps == 800


def test_docs_example_scenario_is_valid() -> None:
    text = (Path(__file__).parent.parent / "docs" / "scenario.md").read_text(encoding="utf-8")
    block = text.split("```json", 1)[1].split("```", 1)[0]
    parse(json.loads(block))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"rooms": [{"name": "a", "impairments": [{"loss_pct": 150}]}]}, "rooms[0].impairments[0].loss_pct"),
        ({"rooms": [{"name": "a", "impairments": [{"lose_pct": 1}]}]}, "rooms[0].impairments[0].lose_pct"),
        (
            {"rooms": [{"name": "a", "impairments": [{"rendition": "4k"}]}]},
            "rooms[0].impairments[0].rendition",
        ),
        (
            {"rooms": [{"name": "a", "renditions": [{"width": 641, "height": 360, "fps": 30, "kbps": 500}]}]},
            "rooms[0].renditions[0].width",
        ),
        ({"rooms": [{"name": "a", "codec": "av1"}]}, "rooms[0].codec"),
        ({"rooms": [{"name": "a"}, {"name": "a"}]}, "rooms[1].name"),
        (
            {"rooms": [{"name": "a", "impairments": [{"burst": {"p": 0.1}}]}]},
            "rooms[0].impairments[0].burst.r",
        ),
        (
            {"rooms": [{"name": "a", "impairments": [{"freeze_ms": 100, "duration_ms": 5}]}]},
            "rooms[0].impairments[0].freeze_ms",
        ),
        ({"refuse_joins": [{"room_from_ms": 5, "room_to_ms": 1}]}, "refuse_joins[0].room_to_ms"),
        ({"version": 2}, "version"),
    ],
)
def test_scenario_errors_name_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError) as err:
        parse(patch)
    assert str(err.value).startswith(field), str(err.value)


def test_scenario_load_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{nope", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(path)


def test_room_spec() -> None:
    room = parse_room_spec("lobby:640x360@25:h264:800")
    assert (room.name, room.codec) == ("lobby", "h264")
    r = room.renditions[0]
    assert (r.width, r.height, r.fps, r.kbps) == (640, 360, 25, 800)
    default = parse_room_spec("test")
    assert default.codec == "vp8" and default.renditions[0].width == 1280
    assert parse_room_spec("x:h264").codec == "h264"
    with pytest.raises(ValueError, match="codec"):
        parse_room_spec("x:640x360:av1")


def test_rtp_header_and_rtcp_demux() -> None:
    # V=2, M=1, PT=96, seq=0x1234, ts=0x01020304, ssrc=0xdeadbeef
    packet = bytes([0x80, 0x80 | 96, 0x12, 0x34, 1, 2, 3, 4, 0xDE, 0xAD, 0xBE, 0xEF]) + b"payload"
    h = RtpHeader.parse(packet)
    assert (h.payload_type, h.marker, h.sequence_number, h.timestamp, h.ssrc) == (
        96,
        True,
        0x1234,
        0x01020304,
        0xDEADBEEF,
    )
    assert not is_rtcp(packet)
    assert is_rtcp(bytes([0x80, 200, 0, 6]) + bytes(24))  # sender report
    with pytest.raises(ValueError):
        RtpHeader.parse(b"\x00" * 12)


def test_shared_encoder_rate_limits_pli_but_not_joins() -> None:
    from room.config import Rendition
    from room.encoder import SharedVideoEncoder

    now = [100.0]
    enc = SharedVideoEncoder(
        "t", "vp8", Rendition("180p", 320, 180, 30, 300), keyframe_interval_s=4, epoch=0.0, clock=lambda: now[0]
    )
    assert enc.request_keyframe("pli")
    assert not enc.request_keyframe("pli")  # one already pending serves both
    enc._force_keyframe, enc._last_keyframe_at = False, 100.0  # as if the keyframe just went out
    now[0] = 100.2
    assert not enc.request_keyframe("pli")  # within 300 ms of the last keyframe
    assert enc.request_keyframe("join")  # a join always gets its keyframe
    enc._force_keyframe = False
    now[0] = 100.31
    assert enc.request_keyframe("pli")
    assert enc.keyframe_requests == {"pli": 4, "join": 1}
    assert enc.keyframe_requests_ignored == 2


def test_content_freeze_rule_is_room_wide() -> None:
    scenario = parse({"rooms": [{"name": "a", "impairments": [{"room_at_ms": 2000, "repeat_ms": 1500}]}]})
    (rule,) = scenario.rooms[0].rules
    assert (rule.repeat, rule.room_at_ms, rule.duration_ms) == (True, 2000, 1500)
    assert rule.to_dict()["repeat"] is True
    # not a viewer setting: the schedule leaves viewers alone
    assert settings_at([rule], 2500, 0) == Settings()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"at_ms": 1000, "repeat_ms": 500}, "repeat_ms: a content freeze is room-wide .*room_at_ms, not at_ms"),
        ({"repeat_ms": 500}, "repeat_ms: .*give room_at_ms"),
        ({"match": {"region": "eu"}, "room_at_ms": 0, "repeat_ms": 500}, "repeat_ms: .*cannot have a match"),
        ({"room_at_ms": 0, "repeat_ms": 500, "duration_ms": 5}, "repeat_ms: a content freeze's duration"),
        ({"room_at_ms": 0, "repeat_ms": 500, "loss_pct": 5}, "repeat_ms: put other impairments"),
        ({"room_at_ms": 0, "repeat_ms": 0}, "repeat_ms: 0 must be"),
    ],
)
def test_content_freeze_rule_errors(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=r"^rooms\[0\]\.impairments\[0\]\." + message):
        parse({"rooms": [{"name": "a", "impairments": [rule]}]})


def test_content_freeze_holds_the_first_picture_of_its_window() -> None:
    from room.config import Rendition
    from room.encoder import SharedVideoEncoder

    # 10 fps: tick n is at n*100 ms since room start; window [250, 550) holds ticks 3, 4, 5
    enc = SharedVideoEncoder(
        "a",
        "vp8",
        Rendition("180p", 320, 180, 10, 300),
        keyframe_interval_s=4,
        epoch=0.0,
        content_freezes=[(250.0, 550.0)],
        started_wall_ms=1_000_000.0,
    )
    shown = [enc._content_freeze(tick, capture_ms=1_000_000 + 100 * tick) for tick in range(8)]
    assert [s[0] for s in shown] == [0, 1, 2, 3, 3, 3, 6, 7]
    assert [s[1] is not None for s in shown] == [False, False, False, False, True, True, False, False]
    assert shown[4][1] == (3, 1_000_300)  # the same marker: seq and capture time
    (cf,) = enc.content_freezes
    assert (cf.marker_seq, cf.start_ms, cf.end_ms) == (3, 1_000_300, 1_000_600)
    assert (cf.scheduled_start_ms, cf.scheduled_end_ms) == (1_000_250, 1_000_550)


def test_classify_freezes_by_what_explains_them() -> None:
    from room.truth import classify_freezes

    # t0 = 1_000_000 ms on the wall clock; the room's encoder ran late from 1_002_000 to 1_002_300
    report = {"started_at": "1970-01-01T00:16:40.000Z", "events": [
        {"t_s": 1.0, "type": "freeze_start", "detail": {"duration_ms": 400.0, "host_stall": True}},
        {"t_s": 1.9, "type": "freeze_start", "detail": {"duration_ms": 300.0}},  # overlaps the late tick
        {"t_s": 2.36, "type": "freeze_start", "detail": {"duration_ms": 300.0}},  # starts 60 ms after it
        {"t_s": 2.36, "type": "freeze_end", "detail": {"duration_ms": 300.0}},
    ]}
    truth = {"encoders": {"720p": {"late": [[1_002_000.0, 1_002_300.0]]}, "audio": {}}}
    got = classify_freezes(report, truth)
    assert [e["t_s"] for e in got["host_stall"]] == [1.0]
    assert [e["t_s"] for e in got["room_late"]] == [1.9]
    assert [e["t_s"] for e in got["unexplained"]] == [2.36]
    # a stall the caller saw (e.g. of the event loop room and probe share) explains it
    got = classify_freezes(report, truth, seen=[(1_002_500.0, 1_002_600.0)])
    assert [e["t_s"] for e in got["seen_stall"]] == [2.36] and got["unexplained"] == []


def test_rtx_original_seq_reads_the_osn_after_csrcs_and_extension() -> None:
    header = bytes([0x80, 97]) + (7).to_bytes(2, "big") + bytes(8)
    assert rtx_original_seq(header + (0xBEEF).to_bytes(2, "big") + b"payload") == 0xBEEF
    # one CSRC and a one-byte-header extension of 2 words (abs-send-time + padding)
    csrc_ext = bytes([0x91, 97]) + (7).to_bytes(2, "big") + bytes(8) + bytes(4)
    csrc_ext += bytes.fromhex("bede0002") + bytes(8)
    assert rtx_original_seq(csrc_ext + (1234).to_bytes(2, "big")) == 1234
    assert rtx_original_seq(csrc_ext + b"\x04") is None  # cut inside the OSN
    assert rtx_original_seq(csrc_ext[:18]) is None  # cut inside the extension header
