"""``streamqoe demo``: the whole system on one machine, with an injected incident, in a few minutes.

What runs (each a real ``streamqoe`` process, as a user would start them):
1. the collector (DuckDB file, one token per probe region, a platform token, a reader token);
2. the embedded room ``live`` (640x360@30 VP8), whose scenario degrades viewers labelled
   ``region=eu`` for a window: 8 % packet loss and a freeze of 1.5 s every 6 s;
3. scheduled probes in three regions (``eu``, ``us``, ``ap``), a session every 10 s, each report spooled
   and delivered to the collector;
4. the audience model: a simulated 3-hour promotion (compressed: generated at once, timestamps ending
   now) with an incident in region ``eu`` for its last 30 minutes, posted to the collector as viewer
   events by the platform token;
5. the analysis on the collector's database: regressions, the segment at fault, viewers lost with a
   95 % interval, the win-back list; report directory printed at the end.
Probe time is real (a couple of minutes); audience time is simulated (docs/analysis.md explains).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe.hoststalls import cpu_steal_ticks, steal_share

REGIONS = ("eu", "us", "ap")
LOAD_NICE = 10
"""Niceness of the demo's load (collector, audience model) below the room and probes it must not starve."""
INCIDENT_REGION = "eu"
STARVED_STEAL_PCT = 20.0
"""CPU steal at or above which the demo says the machine was starved (the VM this was built on has shown
10-25 % at idle and 50-73 % in its worst hours)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="directory for the run (a subdirectory per run)")
    p.add_argument("--probe-minutes", type=float, default=2.0, help="how long the probes run (real time)")
    p.add_argument("--seed", type=int, default=1, help="audience model seed")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the collector running afterwards (dashboard at /dashboard) until Ctrl-C")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_arg(token: str) -> str:
    """``--token=TOKEN`` in one argument: argparse takes a separate value that begins with "-" for an
    option (a generated token did, once: the demo's audience model refused its command line)."""
    return f"--token={token}"


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamqoe", "--log-level", "warning", *args]


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:g} s")


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_configs(run: Path, probe_s: float) -> tuple[Path, Path, dict[str, str]]:
    # url-safe base64 may begin with "-": a prefix keeps every token an ordinary word
    tokens = {name: "sq-" + secrets.token_urlsafe(24) for name in (*REGIONS, "platform", "reader")}
    lines = [f'db_path = "{run / "streamqoe.duckdb"}"', 'listen_host = "127.0.0.1"']
    for region in REGIONS:
        lines += ["[[tokens]]", f'name = "probe-{region}"', 'role = "probe"', f'regions = ["{region}"]',
                  f'secret = "{tokens[region]}"']
    lines += ["[[tokens]]", 'name = "platform"', 'role = "platform"', f'secret = "{tokens["platform"]}"',
              "[[tokens]]", 'name = "reader"', 'role = "reader"', f'secret = "{tokens["reader"]}"']
    collector_cfg = run / "collector.toml"
    collector_cfg.write_text("\n".join(lines) + "\n")
    # the probe incident: from 30 % to 75 % of the probe run, for eu viewers only
    start_ms, end_ms = int(probe_s * 300), int(probe_s * 750)
    freezes = [{"match": {"region": [INCIDENT_REGION]}, "room_at_ms": t, "freeze_ms": 1500}
               for t in range(start_ms, end_ms - 1500, 6000)]
    scenario = {
        "description": "streamqoe demo: eu viewers suffer loss and freezes in the middle of the run",
        "rooms": [{"name": "live", "renditions": [{"name": "360p", "width": 640, "height": 360, "fps": 30,
                                                   "kbps": 800}]}],
        "impairments": [{"match": {"region": [INCIDENT_REGION]}, "room_at_ms": start_ms,
                         "duration_ms": end_ms - start_ms, "loss_pct": 8}, *freezes],
    }
    scenario_file = run / "scenario.json"
    scenario_file.write_text(json.dumps(scenario, indent=1))
    return collector_cfg, scenario_file, tokens


def _probe_summary(db: Path, window: tuple[float, float], inside: bool) -> list[dict[str, Any]]:
    """Per region: probe sessions that started inside (or outside) ``window`` (wall ms)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    cond = "BETWEEN ? AND ?" if inside else "NOT BETWEEN ? AND ?"
    try:
        rows = con.execute(
            "SELECT region, count(*), count(failure), avg(ttff_ms), avg(stall_ratio), avg(loss_pct), "
            "sum(freeze_count), "
            "sum(coalesce(CAST(json_extract(body, '$.summary.host_stalls.freezes_during') AS INTEGER), 0)) "
            f"FROM probe_reports WHERE started_ms {cond} GROUP BY region ORDER BY region",
            [window[0], window[1]]).fetchall()
    finally:
        con.close()
    keys = ("region", "sessions", "failed", "ttff_ms", "stall_ratio", "loss_pct", "freezes", "host_freezes")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.out) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    probe_s = max(30.0, args.probe_minutes * 60.0)
    collector_cfg, scenario, tokens = _write_configs(run_dir.resolve(), probe_s)
    procs: list[subprocess.Popen[bytes]] = []
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, argv: list[str], *, nice: int = 0) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)
        procs.append(proc)
        return proc

    c_port, r_port = _free_port(), _free_port()
    collector_url = f"http://127.0.0.1:{c_port}"
    try:
        _say(f"run directory {run_dir}")
        # The room and the probes are what is measured; the collector (ingesting ~700k simulated events) and
        # the audience model are load. On 2 cores that load, at equal priority, starved room and probes
        # into freezes no scenario asked for (stall ratios of 10-30 % in the regions left alone); niced,
        # they take the CPU the measurement leaves (docs/analysis.md, "The demo").
        collector = start("collector", _cmd("collector", "--config", str(collector_cfg), "--port", str(c_port)),
                          nice=LOAD_NICE)
        _wait_http(f"{collector_url}/healthz", collector, "collector")
        room = start("room", _cmd("room", "--port", str(r_port), "--scenario", str(scenario)))
        _wait_http(f"http://127.0.0.1:{r_port}/rooms", room, "room")
        room_t0_ms = time.time() * 1000
        _say(f"collector {collector_url}, room http://127.0.0.1:{r_port}/whep/live")
        probes = [
            start(f"probe-{region}", _cmd(
                "probe", f"http://127.0.0.1:{r_port}/whep/live?region={region}", "--region", region,
                "--label", "cdn=edge-1", "--duration", "8", "--every", "10s", "--no-decode",
                "--collector", collector_url, token_arg(tokens[region]), "--spool", str(run_dir / f"spool-{region}"),
                "--probe-id", f"demo-{region}"))
            for region in REGIONS
        ]
        _say(f"probes running in {', '.join(REGIONS)}; {INCIDENT_REGION} is degraded from "
             f"{0.3 * probe_s:.0f} s to {0.75 * probe_s:.0f} s")
        _say("audience model: 3 h of simulated viewers, incident in region eu for the last 30 min")
        audience = start("audience", _cmd(
            "audience", "--seed", str(args.seed), "--minutes", "180", "--rate", "150", "--batch", "5000",
            "--incident", f"region={INCIDENT_REGION}@150-180:0.15", "--collector", collector_url,
            token_arg(tokens["platform"]), "--truth", str(run_dir / "audience_truth.json")), nice=LOAD_NICE)
        t_end = time.monotonic() + probe_s
        steal0 = cpu_steal_ticks()
        while time.monotonic() < t_end:
            time.sleep(min(15.0, max(0.0, t_end - time.monotonic())))
            _say(f"probing… {max(0.0, t_end - time.monotonic()):.0f} s left")
        share = steal_share(steal0, cpu_steal_ticks())
        if audience.wait(600) != 0:
            raise RuntimeError(f"audience model failed (status {audience.returncode}); see logs/audience.log")
        for p in probes:
            _stop(p, 40)
        _stop(room)
        _stop(collector)
        db = run_dir / "streamqoe.duckdb"
        window = (room_t0_ms + 300 * probe_s, room_t0_ms + 750 * probe_s)
        if share is not None:
            steal = 100 * share
            _say(f"CPU steal while probing: {steal:.0f} % of this machine's CPU time went to the hypervisor"
                 + (" (starved: the regions the demo leaves alone have no impairment, so their freezes come "
                    "from this machine, the room and probes not running on time)" if steal >= STARVED_STEAL_PCT
                    else ""))
        for label, inside in (("during the probe incident window", True), ("outside it", False)):
            _say(f"probe QoE per region, sessions {label}:")
            for row in _probe_summary(db, window, inside):
                print(f"   {row['region']:<3} sessions {row['sessions']:>3}  failed {row['failed']}  "
                      f"TTFF {row['ttff_ms'] or 0:6.0f} ms  stall ratio {100 * (row['stall_ratio'] or 0):5.2f}%  "
                      f"loss {row['loss_pct'] or 0:5.2f}%  freezes {row['freezes'] or 0}"
                      + (f" ({row['host_freezes']} in the probe's own stalls)" if row["host_freezes"] else ""))
        _say("analysing viewer events")
        report_dir = run_dir / "report"
        analysis = subprocess.run(_cmd("analyze", "--db", str(db), "--out", str(report_dir), "--write-incidents"),
                                  capture_output=True, timeout=600)
        print(analysis.stdout.decode().rstrip())
        if analysis.returncode != 0:
            print(analysis.stderr.decode()[-1500:], file=sys.stderr)
            return 1
        truth = json.loads((run_dir / "audience_truth.json").read_text())
        report = json.loads((report_dir / "report.json").read_text())
        found = [i for i in report.get("incidents", []) if {"region": INCIDENT_REGION} in i.get("segment", [])]
        if found:
            imp = found[0]["impact"]
            ci = f"95 % CI {imp['ci_low']:.0f}–{imp['ci_high']:.0f}"
            print(f"   check against the audience model's ground truth: {truth['viewers_lost']} viewers left "
                  f"because of the incident; estimated {imp['viewers_lost']:.0f} ({ci})")
        else:
            print(f"   the analysis did not localize the incident to region={INCIDENT_REGION}; ground truth: "
                  f"{truth['viewers_lost']} viewers lost")
        _say(f"report: {report_dir / 'report.html'}  (also report.json, winback.csv)")
        if args.keep_serving:
            collector = start("collector-2", _cmd("collector", "--config", str(collector_cfg), "--port", str(c_port)))
            _wait_http(f"{collector_url}/healthz", collector, "collector")
            _say(f"dashboard: {collector_url}/dashboard (reader token in {collector_cfg}); Ctrl-C to stop")
            collector.wait()
        return 0
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"streamqoe demo: {e} (logs in {logs})", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            _stop(p, 10)
