"""Fidelity: the probe and headless Chromium watch the same room scenario; compare them with the room's truth.

    scripts/fidelity_report [--duration 14] [--out docs/fidelity.md] [--json results.json]

Needs root (a loopback-only network namespace holds the room, the probe and Chromium, so the browser
reaches nothing but loopback) and /usr/bin/chromium. For each scenario, one room server (``streamqoe
room --scenario``) serves every scenario as its own room; the probe CLI and scripts/reference_viewer
join it at the same time (impairments are scheduled from each viewer's own join, ``at_ms``), and the
room's ``/rooms/<room>/truth`` records what it sent to each. tests/test_fidelity.py runs the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
STREAMQOE = [PYTHON, "-m", "streamqoe.cli"]
REFERENCE_VIEWER = [PYTHON, str(ROOT / "scripts" / "reference_viewer.py")]
PORT = 8080

R360 = {"name": "360p", "width": 640, "height": 360, "fps": 30, "kbps": 800}
R180 = {"name": "180p", "width": 320, "height": 180, "fps": 30, "kbps": 300}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    impairments: list[dict[str, Any]] = field(default_factory=list)
    renditions: list[dict[str, Any]] = field(default_factory=lambda: [R360])


SCENARIOS = [
    Scenario("clean", "no impairment"),
    Scenario("loss2", "2 % random loss on every packet the room sends", [{"loss_pct": 2}]),
    Scenario("loss10", "10 % random loss", [{"loss_pct": 10}]),
    Scenario("freezes", "scheduled freezes of 300 ms, 1 s and 3 s (at 2.5 s, 5 s, 8 s after the join)",
             [{"at_ms": 2500, "freeze_ms": 300}, {"at_ms": 5000, "freeze_ms": 1000},
              {"at_ms": 8000, "freeze_ms": 3000}]),
    Scenario("switch", "resolution switch 640x360 → 320x180 at 5 s", [{"at_ms": 5000, "rendition": "180p"}],
             [R360, R180]),
    Scenario("delay", "80 ms added delay on every packet the room sends (RTP and STUN)", [{"delay_ms": 80}]),
]


def scenario_file(scenarios: list[Scenario]) -> dict[str, Any]:
    return {"version": 1, "seed": 7, "rooms": [
        {"name": s.name, "renditions": s.renditions, "impairments": s.impairments, "keyframe_interval_s": 2,
         "description": s.description} for s in scenarios]}


class Netns:
    """A loopback-only network namespace (deleted on close)."""

    def __init__(self) -> None:
        self.name = f"sqfid{os.getpid() % 10000}{random.randrange(1000):03d}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        for pid in subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True).stdout.split():
            subprocess.run(["kill", pid], capture_output=True)  # our own leftovers only: the ns is ours
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _get_json(ns: Netns, url: str) -> dict[str, Any]:
    code = f"import json,urllib.request;print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    out = subprocess.run(ns.argv([PYTHON, "-c", code]), capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run_scenario(ns: Netns, work: Path, sc: Scenario, duration_s: float) -> dict[str, Any]:
    """Probe and Chromium concurrently on room ``sc.name``; {probe, chromium, truth, t_wall}."""
    base = f"http://127.0.0.1:{PORT}/whep/{sc.name}"
    probe_out, chrome_out = work / f"{sc.name}.probe.json", work / f"{sc.name}.chromium.json"
    probe_cmd = ns.argv([*STREAMQOE, "probe", f"{base}?who=probe", "--duration", str(duration_s),
                         "--json", str(probe_out), "--ice-addr", "127.0.0.1"])
    chrome_cmd = ns.argv([*REFERENCE_VIEWER, f"{base}?who=chromium", "--duration", str(duration_s),
                          "--out", str(chrome_out)])
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True,
                            timeout=duration_s + 90) for cmd in (probe_cmd, chrome_cmd)]
        procs = [f.result() for f in futs]
    result: dict[str, Any] = {"scenario": sc.name, "description": sc.description}
    for key, path, proc in (("probe", probe_out, procs[0]), ("chromium", chrome_out, procs[1])):
        result[key] = json.loads(path.read_text()) if path.exists() else {"error": proc.stderr[-2000:]}
    time.sleep(0.5)  # the room records the leave
    result["truth"] = _get_json(ns, f"http://127.0.0.1:{PORT}/rooms/{sc.name}/truth")
    return result


ATTEMPTS = 3
ROOM_LATE_RETRY_MS = 150.0
"""A scenario is run again (up to ``ATTEMPTS`` times) when the room itself could not run on time for this
long in all during it (its encoders' late ticks): a starved room does not carry out its schedule (a CI run
on a starved VM lost the 300 ms freeze entirely and stretched the 1 s one to 1.2 s), so the comparison
would measure the machine, not the viewers. Every attempt's lateness is in the result."""


def room_late_ms(truth: dict[str, Any], from_ms: float, to_ms: float) -> tuple[float, float]:
    """(total, longest) ms in [from_ms, to_ms] during which the room's encoders ran late (``late``)."""
    spans = [(max(a, from_ms), min(b, to_ms)) for enc in truth.get("encoders", {}).values()
             for a, b in enc.get("late", ()) if b > from_ms and a < to_ms]  # fmt: skip
    merged: list[list[float]] = []  # the encoders' intervals may overlap each other: count time once
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    total = sum(b - a for a, b in merged)
    longest = max((b - a for a, b in merged), default=0.0)
    return round(total, 1), round(longest, 1)


def run_all(scenarios: list[Scenario] = SCENARIOS, duration_s: float = 15.0) -> list[dict[str, Any]]:
    ns = Netns()
    work = Path(tempfile.mkdtemp(prefix="sq-fidelity-"))
    room = None
    try:
        (work / "scenario.json").write_text(json.dumps(scenario_file(scenarios)))
        room = subprocess.Popen(ns.argv([*STREAMQOE, "room", "--port", str(PORT), "--scenario",
                                         str(work / "scenario.json")]), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=open(work / "room.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            try:
                _get_json(ns, f"http://127.0.0.1:{PORT}/rooms/{scenarios[0].name}/truth")
                break
            except (ValueError, subprocess.TimeoutExpired):
                if room.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("room did not start: " + (work / "room.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        results = []
        for sc in scenarios:
            for attempt in range(1, ATTEMPTS + 1):
                t0 = time.time() * 1000.0
                result = run_scenario(ns, work, sc, duration_s)
                total, longest = room_late_ms(result["truth"], t0, time.time() * 1000.0)
                result |= {"attempt": attempt, "room_late_ms": total, "room_late_max_ms": longest,
                           "window_ms": [t0, time.time() * 1000.0]}
                if total < ROOM_LATE_RETRY_MS:
                    break
            results.append(result)
        return results
    finally:
        if room is not None and room.poll() is None:
            room.terminate()
            try:
                room.wait(10)
            except subprocess.TimeoutExpired:
                room.kill()
        ns.close()


# --- comparison -------------------------------------------------------------------------------
def _viewer_truth(truth: dict[str, Any], who: str) -> dict[str, Any] | None:
    for v in reversed(truth.get("viewers", [])):  # the last: a scenario run again has one per attempt
        if v.get("labels", {}).get("who") == who:
            return v  # type: ignore[no-any-return]
    return None


def summarize(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Comparable numbers per side: truth (for the probe's and Chromium's viewer), probe, chromium."""
    out: dict[str, dict[str, Any]] = {}
    for who in ("probe", "chromium"):
        t = _viewer_truth(result["truth"], who)
        if t is None:
            out[f"truth_{who}"] = {}
            continue
        video = t.get("video", {})
        sent, dropped = video.get("packets_sent", 0), video.get("packets_dropped", 0)
        freezes = [f for f in t.get("freezes", []) if f.get("duration_ms") is not None]
        out[f"truth_{who}"] = {
            "loss_pct": round(100.0 * dropped / (sent + dropped), 3) if sent + dropped else None,
            "freezes_scheduled": len(t.get("freezes", [])),
            "freeze_wire_gaps_ms": [round(f["duration_ms"]) for f in freezes],
            "resolution_changes": [(c["width"], c["height"]) for c in t.get("resolution_changes") or []],
        }
    p = result["probe"]
    if p.get("summary") and p["summary"].get("video"):
        v = p["summary"]["video"]
        stream = next((s for s in p["summary"]["streams"] if s["kind"] == "video"), {})
        out["probe"] = {
            "failure": p.get("failure"),
            "ttff_ms": p["summary"]["join"]["ttff_ms"],
            "fps": v["fps_mean"],
            "freezeCount": v["freezeCount"],
            "totalFreezesDuration": v["totalFreezesDuration"],
            "pauseCount": v["pauseCount"],
            "freezes_ms": [round(e["detail"]["duration_ms"]) for e in p.get("events", [])
                           if e["type"] == "freeze_end"],
            # freezes that overlapped a stall of the probe's own process (its loop or decoder thread): the
            # probe could not run then, so they say nothing about the stream (docs/metrics.md)
            "host_freezes_ms": [round(e["detail"]["duration_ms"]) for e in p.get("events", [])
                                if e["type"] == "freeze_start" and e["detail"].get("host_stall")],
            "sizes": [(r["width"], r["height"]) for r in v["resolution_timeline"]],
            "switch_t_s": [r["t_s"] for r in v["resolution_timeline"]],
            "loss_pct": stream.get("loss_pct"),
            "residual_loss_pct": stream.get("residual_loss_pct"),
            "nackCount": stream.get("nackCount"),
            "rtt_ms": p["summary"].get("rtt_ms"),
        }
    else:
        out["probe"] = {"failure": p.get("failure") or p.get("error"), "message": p.get("failure_message")}
    c = result["chromium"]
    f = c.get("final")
    if f:
        lost, received = f.get("packetsLost", 0), f.get("packetsReceived", 0)
        dur = c.get("duration_s") or 0
        watch = dur - (c.get("ttff_ms") or 0) / 1000.0
        out["chromium"] = {
            "error": c.get("error"),
            "ttff_ms": c.get("ttff_ms"),
            "fps": round(f.get("framesDecoded", 0) / watch, 2) if watch > 0 else None,
            "freezeCount": f.get("freezeCount"),
            "totalFreezesDuration": f.get("totalFreezesDuration"),
            "pauseCount": f.get("pauseCount"),
            "freezes_ms": _chromium_freezes_ms(c.get("samples", [])),
            "sizes": [(w, h) for _, w, h in c.get("resolution_timeline", [])],
            "switch_t_s": [t for t, _, _ in c.get("resolution_timeline", [])],
            "loss_pct": round(100.0 * lost / (lost + received), 3) if lost + received else None,
            "nackCount": f.get("nackCount"),
            "framesDropped": f.get("framesDropped"),
            "rtt_ms": _chromium_rtt_ms(c.get("ice_pair") or {}),
        }
    else:
        out["chromium"] = {"error": c.get("error") or "no stats"}
    return out


def _chromium_rtt_ms(pair: dict[str, Any]) -> float | None:
    """Mean STUN round-trip time of Chromium's nominated candidate pair, ms (totalRoundTripTime /
    responsesReceived: every check and consent response of the session, as the probe's median covers its)."""
    n = pair.get("responsesReceived") or 0
    return round(1000.0 * pair["totalRoundTripTime"] / n, 2) if n and "totalRoundTripTime" in pair else None


def _chromium_freezes_ms(samples: list[dict[str, Any]]) -> list[int]:
    """Each freeze's duration, ms, from the 250 ms getStats samples (freezeCount steps and the total's growth;
    two freezes within one sample interval share the growth equally)."""
    out: list[int] = []
    count, total = 0, 0.0
    for s in samples:
        n, d = s.get("freezeCount", 0), s.get("totalFreezesDuration", 0.0)
        if n > count:
            out += [round(1000 * (d - total) / (n - count))] * (n - count)
            count, total = n, d
    return out


def _fmt(v: Any) -> str:
    if v is None or v == []:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        if v and all(isinstance(x, list | tuple) and len(x) == 2 for x in v):
            return " → ".join(f"{w}x{h}" for w, h in v)
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def render_markdown(results: list[dict[str, Any]], duration_s: float, chromium: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    date = next((r["chromium"]["started_at"] for r in results if r["chromium"].get("started_at")),
                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    lines = [
        "## Measured (generated by scripts/fidelity_report)",
        "",
        f"Commit `{commit}`, run {date}, {chromium}, {duration_s:g} s sessions, probe and Chromium joining "
        "at the same time, 640x360@30 VP8 800 kbps (switch: → 320x180 300 kbps). `truth` is the room's "
        "record for the probe's own viewer (Chromium's truth is alike: same schedule, its own random drops).",
        "",
        "| scenario | side | TTFF ms | fps | freezeCount | totalFreezesDuration s | each freeze ms | pauses "
        "| resolution timeline | loss % | residual loss % | NACKs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = summarize(r)
        tp, tc = s.get("truth_probe", {}), s.get("truth_chromium", {})
        gaps = tp.get("freeze_wire_gaps_ms") or []
        lines.append(
            f"| {r['scenario']} | truth | | | {len(gaps) if gaps else 0} scheduled | "
            f"{round(sum(gaps) / 1000, 3) if gaps else '–'} | {_fmt(gaps) if gaps else '–'} (wire gaps) | | "
            f"{_fmt(tp.get('resolution_changes'))} | "
            f"{_fmt(tp.get('loss_pct'))} (chromium's: {_fmt(tc.get('loss_pct'))}) | | |")
        for side in ("probe", "chromium"):
            x = s[side]
            if x.get("failure") or (side == "chromium" and x.get("error")):
                lines.append(f"| {r['scenario']} | {side} | failed: {x.get('failure') or x.get('error')} "
                             "| | | | | | | | | |")
                continue
            lines.append(
                f"| {r['scenario']} | {side} | {_fmt(x.get('ttff_ms'))} | {_fmt(x.get('fps'))} | "
                f"{_fmt(x.get('freezeCount'))} | {_fmt(x.get('totalFreezesDuration'))} | {_fmt(x.get('freezes_ms'))} | "
                f"{_fmt(x.get('pauseCount'))} | "
                f"{_fmt(x.get('sizes'))} | {_fmt(x.get('loss_pct'))} | {_fmt(x.get('residual_loss_pct'))} | "
                f"{_fmt(x.get('nackCount'))} |")
    return "\n".join(lines) + "\n"


MARKER = "## Measured (generated by scripts/fidelity_report)"


def write_doc(path: Path, table: str) -> None:
    """Replace the generated section of ``path`` (from MARKER to the end), keeping the prose above it."""
    text = path.read_text() if path.exists() else "# Fidelity: the probe against Chromium\n\n"
    head = text.split(MARKER)[0].rstrip() + "\n\n"
    path.write_text(head + table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "fidelity.md"))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
    parser.add_argument("--from-json", default=None, help="render results saved by --json (or by "
                        "tests/test_fidelity.py in $TMPDIR/streamqoe-test-out/fidelity.json) instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        args.duration = results[0]["chromium"].get("duration_s") or args.duration
    elif os.geteuid() != 0:
        print("fidelity_report: needs root (loopback-only network namespace for Chromium)", file=sys.stderr)
        return 2
    else:
        scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
        results = run_all(scenarios, args.duration)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    chromium = next((r["chromium"].get("chromium") for r in results if r["chromium"].get("chromium")), "Chromium")
    table = render_markdown(results, args.duration, chromium)
    write_doc(Path(args.out), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
