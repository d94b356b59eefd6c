"""The report wire format: golden fixtures round-trip, and bad input is rejected naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from probe.report import SCHEMA_VERSION, Report, is_failure_code, reports_from_json

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = sorted(FIXTURES.glob("report_*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_golden_fixture_round_trips(path: Path) -> None:
    data = json.loads(path.read_text())
    report = Report.from_json_obj(data)
    assert report.to_dict() == data
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_fixtures_cover_success_no_decode_and_failure() -> None:
    kinds = {(d["summary"]["mode"], d["failure"]) for d in map(lambda p: json.loads(p.read_text()), GOLDEN)}
    assert ("decode", None) in kinds and ("no-decode", None) in kinds
    assert any(f is not None for _, f in kinds)


def test_batch_is_a_list() -> None:
    a, b = load("report_ok.json"), load("report_failure.json")
    assert [r.report_id for r in reports_from_json([a, b])] == [a["report_id"], b["report_id"]]


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("report_id",), "not-a-uuid", "report_id"),
        (("started_at",), "2026-11-21 12:00:00", "started_at"),
        (("started_at",), "1999-01-01T00:00:00Z", "started_at"),
        (("summary", "mode"), "sometimes", "summary.mode"),
        (("summary", "video", "freezeCount"), -1, "summary.video.freezeCount"),
        (("summary", "video", "hd_share"), 1.5, "summary.video.hd_share"),
        (("summary", "video", "width"), "1280", "summary.video.width"),
        (("summary", "streams", 0, "kind"), "data", "summary.streams[0].kind"),
        (("summary", "join", "ttff_ms"), float("nan"), "summary.join.ttff_ms"),
        (("failure",), "it_broke", "failure"),
        (("labels",), {"Bad Key": "x"}, "labels"),
        (("timeline", 0, "frames"), 1.5, "timeline[0].frames"),
        (("events", 0, "type"), "explosion", "events[0].type"),
        (("summary", "host_stalls", "count"), -1, "summary.host_stalls.count"),
        (("summary", "host_stalls", "frozen_s_during"), "0", "summary.host_stalls.frozen_s_during"),
        (("summary", "host_stalls", "max_ms"), float("inf"), "summary.host_stalls.max_ms"),
    ],
)
def test_bad_field_is_named(path: tuple[Any, ...], value: Any, needle: str) -> None:
    data = copy.deepcopy(load("report_ok.json"))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Report.from_json_obj(data)


def test_unknown_field_and_missing_field() -> None:
    data = load("report_ok.json")
    data["surprise"] = 1
    with pytest.raises(ValueError, match="surprise: unknown field"):
        Report.from_json_obj(data)
    data = load("report_ok.json")
    del data["summary"]["join"]
    with pytest.raises(ValueError, match=r"summary\.join: is required"):
        Report.from_json_obj(data)


def test_unknown_schema_version_is_explained() -> None:
    data = load("report_ok.json")
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match=r"schema_version: unsupported version .* this build reads"):
        Report.from_json_obj(data)


def test_failure_codes() -> None:
    assert is_failure_code("whep_http_404") and is_failure_code("ice_timeout")
    assert not is_failure_code("whep_http_99") and not is_failure_code("random")


def test_human_summary_warns_when_the_probe_itself_stalled() -> None:
    from probe.humanize import summary_text

    stalled = summary_text(Report.from_dict(load("report_nodecode.json")))  # one host stall of 134 ms
    assert "WARNING this probe's own process could not run 0.13 s (1 stalls, longest 134 ms)" in stalled
    clean = summary_text(Report.from_dict(load("report_ok.json")))
    assert "TTFF" in clean and "WARNING" not in clean
