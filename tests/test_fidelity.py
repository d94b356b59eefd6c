"""Fidelity: the probe and headless Chromium watch the same room scenarios; compare with the room's truth.

Runs scripts/fidelity_report.py's scenarios once (about 100 s on 2 cores) in a loopback-only network
namespace, then checks per scenario what is honestly true (docs/fidelity.md explains each bound):

- no impairment: at most 2 short freezes on either side (the probe's inside its own host stalls not
  counted), the same resolution, no loss;
- scheduled freezes (300 ms, 1 s, 3 s): each viewer's freezes within 10 % of the wire gaps the room
  sent it, and the two viewers' totals, each as a share of its own wire gaps, within 10 points;
- resolution switch: the same resolution timeline;
- random loss: the probe's RFC 3550 loss equals the room's drop count (within 0.5 pp, in practice
  exactly); Chromium's ``packetsLost`` is reduced by part of the retransmissions, so it is at most the
  truth and close to it only at low loss. Freezes under loss are not compared one to one: each viewer
  gets its own random drops, and the two receivers' jitter buffers recover differently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.realtime import attempt, evidence

pytestmark = [pytest.mark.chromium, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(420),
              pytest.mark.realtime]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"

if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} missing (Debian package chromium; scripts/setup-system installs it)",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("needs root: Chromium runs in a loopback-only network namespace", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("fidelity_report", ROOT / "scripts" / "fidelity_report.py")
assert _spec is not None and _spec.loader is not None
fidelity = importlib.util.module_from_spec(_spec)
sys.modules["fidelity_report"] = fidelity  # dataclasses look their module up there
_spec.loader.exec_module(fidelity)

DURATION_S = 15.0
LONG_MS = 280
"""Freezes at least this long are the scheduled ones (the shortest, 300 ms, shows as 320-400 ms); the
probe also sees 190-250 ms stalls of its own under CPU load that Chromium's playout buffer absorbs."""


def _summaries(raw: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["scenario"]: {**fidelity.summarize(r), "raw": r} for r in raw}


@pytest.fixture(scope="module")
def first_run() -> dict[str, dict[str, Any]]:
    """Every scenario, run once for the whole module (about 100 s)."""
    raw = fidelity.run_all(fidelity.SCENARIOS, DURATION_S)
    out = Path(tempfile.gettempdir()) / "streamqoe-test-out"
    out.mkdir(exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(raw, indent=1))
    return _summaries(raw)


class Scenarios(Mapping[str, dict[str, Any]]):
    """The scenarios' results as a test sees them. A test run again by the ``realtime`` plugin (its attempt
    failed on a starved machine, tests/realtime.py) must not judge the same starved run again: on a later
    attempt, each scenario the test reads is run afresh (once per attempt) and replaces the module's copy."""

    def __init__(self, cache: dict[str, dict[str, Any]], fresh: bool, item: pytest.Item | None = None) -> None:
        self.cache, self.fresh, self.item, self.rerun = cache, fresh, item, set[str]()

    def __getitem__(self, name: str) -> dict[str, Any]:
        if self.fresh and name not in self.rerun:
            (scenario,) = [sc for sc in fidelity.SCENARIOS if sc.name == name]
            self.cache |= _summaries(fidelity.run_all([scenario], DURATION_S))
            self.rerun.add(name)
        got = self.cache[name]
        if self.item is not None:  # the machine is judged over the time this scenario ran, not only the test's
            evidence(self.item, *got["raw"]["window_ms"])
        return got

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache)

    def __len__(self) -> int:
        return len(self.cache)


@pytest.fixture
def results(request: pytest.FixtureRequest, first_run: dict[str, dict[str, Any]]) -> Scenarios:
    return Scenarios(first_run, fresh=attempt(request.node) > 1, item=request.node)


def _sides(results: Mapping[str, dict[str, Any]], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    s = results[name]
    probe, chrome = s["probe"], s["chromium"]
    assert not probe.get("failure"), probe
    assert not chrome.get("error"), chrome
    print(name, "probe", probe, "chromium", chrome, "truth", s.get("truth_probe"), "truth_chromium",
          s.get("truth_chromium"))
    return probe, chrome


def _probe_own_freezes(probe: dict[str, Any]) -> dict[str, float]:
    """The probe's freezes that did not overlap a stall of its own process: count and total seconds."""
    host = probe.get("host_freezes_ms", [])
    return {"count": probe["freezeCount"] - len(host),
            "seconds": probe["totalFreezesDuration"] - sum(host) / 1000.0}


def test_clean(results: Mapping[str, dict[str, Any]]) -> None:
    probe, chrome = _sides(results, "clean")
    # No impairment is not no freeze on a loaded 2-core box: the probe renders at decode time with no
    # playout buffer, so a stall of its own process is a freeze to it (0-2 per 15 s, 190-620 ms), and a
    # stall of the room's shared encoder is a freeze to both (one 236 ms freeze seen by both at once).
    # Measured at load average 5-9 (docs/fidelity.md).
    # The probe's freezes inside a stall of its own process (flagged by the probe) are left out: on this VM
    # an idle process has seen 100-250 ms scheduling gaps (hypervisor), which Chromium's buffer absorbs.
    own = _probe_own_freezes(probe)
    assert own["count"] <= 2 and own["seconds"] <= 1.0, (probe, own)
    assert chrome["freezeCount"] <= 2 and chrome["totalFreezesDuration"] <= 1.0, chrome
    assert probe["sizes"] == chrome["sizes"] == [(640, 360)]
    assert probe["loss_pct"] == 0 and chrome["loss_pct"] == 0
    assert probe["fps"] > 20 and chrome["fps"] > 20


def test_scheduled_freezes(results: Mapping[str, dict[str, Any]]) -> None:
    probe, chrome = _sides(results, "freezes")
    matched: dict[str, list[int]] = {}
    for who, side in (("probe", probe), ("chromium", chrome)):
        # each viewer against its own truth: under load the room's wire gaps differ per viewer by up to
        # ~70 ms, and a stall of the room or of the viewer adds a freeze (docs/fidelity.md)
        gaps = results["freezes"][f"truth_{who}"]["freeze_wire_gaps_ms"]
        raw = results["freezes"]["raw"]
        # the harness runs a scenario again while the room could not keep its schedule (fidelity_report)
        assert len(gaps) == 3, (gaps, raw["attempt"], raw["room_late_ms"])
        long = [ms for ms in side["freezes_ms"] if ms >= LONG_MS]
        assert 3 <= len(long) <= 5, (who, side["freezes_ms"])
        matched[who] = []
        for gap in gaps:
            best = min(long, key=lambda ms, g=gap: abs(ms - g))
            assert abs(best - gap) <= max(0.1 * gap, 150), (who, gap, side["freezes_ms"])
            matched[who].append(best)
    # The two viewers are compared through their own truths: the room's wire gaps can differ per viewer by
    # far more than 10 % (a CI run: 3039 ms to the probe, at least 3.5 s to Chromium, for the same scheduled
    # 3 s freeze), so comparing raw totals would fault the viewers for what the room sent. Each viewer's
    # total as a share of what it was sent must agree within 10 points.
    shares = {}
    for who in ("probe", "chromium"):
        sent = sum(results["freezes"][f"truth_{who}"]["freeze_wire_gaps_ms"])
        shares[who] = sum(matched[who]) / sent
    assert abs(shares["probe"] - shares["chromium"]) <= 0.1, (matched, shares)


def test_resolution_switch(results: Mapping[str, dict[str, Any]]) -> None:
    probe, chrome = _sides(results, "switch")
    assert probe["sizes"] == chrome["sizes"] == [(640, 360), (320, 180)]


@pytest.mark.parametrize(("name", "chrome_undercount_pp"), [("loss2", 0.5), ("loss10", 2.0)])
def test_loss(results: Mapping[str, dict[str, Any]], name: str, chrome_undercount_pp: float) -> None:
    probe, chrome = _sides(results, name)
    truth_p, truth_c = results[name]["truth_probe"], results[name]["truth_chromium"]
    assert abs(probe["loss_pct"] - truth_p["loss_pct"]) <= 0.5
    # Chromium counts a packet recovered by RTX as received (part of them), never more loss than sent
    assert truth_c["loss_pct"] - chrome_undercount_pp <= chrome["loss_pct"] <= truth_c["loss_pct"] + 0.1
    assert probe["fps"] > 15 and chrome["fps"] > 15
    # Both re-request lost retransmissions as libwebrtc does without an RTT estimate (a new gap's NACK lists
    # only the new packets, older ones again every 100 ms), so loss repaired by one retransmission is not a
    # freeze for either. A packet whose retransmission the room dropped twice arrives ~200 ms late: a freeze
    # for both (session 11: Chromium froze in exactly the runs with such a packet of its own). Each viewer
    # has its own drops, so the probe's count of them (the room's ``rtx_dropped_times``, 0-3 in 15 s at
    # 10 %) is allowed for, plus one for a once-repaired loss of a frame's last packet (found a frame later).
    viewer = fidelity._viewer_truth(results[name]["raw"]["truth"], "probe")
    assert viewer is not None
    late = sum(n for times, n in viewer["rtx_dropped_times"].items() if int(times) >= 2)
    assert _probe_own_freezes(probe)["count"] <= chrome["freezeCount"] + late + 1, (
        probe, chrome["freezes_ms"], late)


def _machine_slack_ms(results: Mapping[str, dict[str, Any]], name: str) -> float:
    """The longest stall measured during scenario ``name`` on this machine: of the probe's own process or
    of the room (its late ticks). Chromium shares the machine, so a stall while a reply is due delays its
    reading as well (a CI run on a starved VM: Chromium's RTT 110.6 ms through the 80 ms delay)."""
    raw = results[name]["raw"]
    return max(raw["probe"]["summary"]["host_stalls"]["max_ms"] or 0.0, raw.get("room_late_max_ms") or 0.0)


def test_rtt(results: Mapping[str, dict[str, Any]]) -> None:
    """Both measure the ICE round trip from STUN checks on the nominated pair: under a millisecond or so on
    loopback, and the room's 80 ms added delay (which it applies to its STUN replies too) in both."""
    probe, chrome = _sides(results, "clean")
    assert probe["rtt_ms"] is not None and chrome["rtt_ms"] is not None
    slack = _machine_slack_ms(results, "clean")
    assert probe["rtt_ms"] < 30 + slack and chrome["rtt_ms"] < 30 + slack, (probe["rtt_ms"], chrome["rtt_ms"], slack)
    probe, chrome = _sides(results, "delay")
    # a stall of the probe's own process (or of the machine) while a reply is due delays its reading by up
    # to the stall
    slack = _machine_slack_ms(results, "delay")
    assert 80 <= chrome["rtt_ms"] <= 110 + slack, (chrome["rtt_ms"], slack)
    assert 80 <= probe["rtt_ms"] <= 110 + slack, (probe["rtt_ms"], slack)
    assert abs(probe["rtt_ms"] - chrome["rtt_ms"]) <= 15 + slack, (probe["rtt_ms"], chrome["rtt_ms"], slack)


def test_room_lateness_counts_overlapping_intervals_once() -> None:
    truth = {"encoders": {"360p": {"late": [[1000, 1100], [1050, 1300], [5000, 5060]]},
                          "180p": {"late": [[1200, 1250], [9000, 9500]]}}}  # fmt: skip
    assert fidelity.room_late_ms(truth, 0, 6000) == (360.0, 300.0)
    assert fidelity.room_late_ms(truth, 1100, 9100) == (360.0, 200.0)  # clipped to the window
    assert fidelity.room_late_ms({"encoders": {}}, 0, 1) == (0.0, 0.0)
