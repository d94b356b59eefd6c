"""`streamqoe load`: a fleet of probes in worker processes against the room, summarised."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from room.truth import classify_freezes
from tests.stalls import room_truth
from tests.test_probe_cli import room_process, streamqoe

pytestmark = [pytest.mark.slow, pytest.mark.realtime]


@pytest.fixture(scope="module")
def room_url() -> Iterator[str]:
    with room_process("fleet") as url:
        yield url


def test_load_runs_a_fleet_over_processes_and_summarises_it(room_url: str, tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        streamqoe("load", room_url, "--probes", "3", "--processes", "2", "--duration", "6", "--no-loop-filter",
                  "--json", str(out)),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    brief = json.loads(done.stdout)  # the summary without the reports, on stdout
    summary = json.loads(out.read_text())
    assert brief["joined"] == summary["joined"] == 3 and summary["processes"] == 2
    assert summary["mode"] == "decode-no-loop-filter"
    reports = summary["reports"]
    assert sorted(r["probe_id"] for r in reports) == ["load-0", "load-1", "load-2"]
    assert {r["summary"]["mode"] for r in reports} == {"decode-no-loop-filter"}
    # a clean room: every probe decodes about 30 fps and reads its marker; nothing froze
    truth = room_truth(room_url)
    unexplained = [e for r in reports for e in classify_freezes(r, truth)["unexplained"]]
    assert unexplained == [], (summary["freezes_total"], summary["freezes_during_host_stalls"])
    assert 20 <= summary["fps_mean"] <= 31, summary["fps_mean"]
    assert all(r["summary"]["video"]["latency_p50_ms"] is not None for r in reports)
    assert summary["cpu_pct_per_probe"] is not None and summary["cpu_pct_per_probe"] > 0


def test_load_refuses_an_empty_fleet_and_contradictory_modes(room_url: str) -> None:
    done = subprocess.run(streamqoe("load", room_url, "--probes", "0"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--probes and --processes must be ≥ 1" in done.stderr
    done = subprocess.run(streamqoe("load", room_url, "--no-decode", "--no-loop-filter"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot go with --no-decode" in done.stderr


def test_overload_warning_names_the_host_not_the_stream() -> None:
    from probe.load import overload_warning

    quiet = {"host_stall_s_max": 0.3, "freezes_during_host_stalls": 0}
    assert overload_warning(quiet, 20.0) is None  # 1.5 % of the session: scheduling noise
    assert overload_warning({"host_stall_s_max": None}, 20.0) is None  # no probe joined
    busy = {"host_stall_s_max": 8.7, "freezes_during_host_stalls": 11}
    warning = overload_warning(busy, 20.0)
    assert warning is not None and "8.7 s of its 20 s session" in warning and "11 freezes" in warning
