#!/usr/bin/env python3
"""Benchmark: how many probes a core runs, and how many viewers the embedded room serves.

Starts the room (`streamqoe room`, 1280x720@30 VP8 1500 kbps) as its own process, then runs fleets of
probes (decode and --no-decode) in worker processes against it, and prints a table:
CPU % per probe (CPU-seconds / wall-second of the probe workers ÷ probes), fps, freezes (every freeze
is a false freeze: the room freezes nothing in this scenario; `freezes_in_host_stalls` counts those that
overlap a stall of the probe's own process, `freezes_room_late` those, of the rest, inside a time the room's
encoder ran late: real freezes of a starved room), and the room's CPU % while serving.
The room's own capacity (≥ 200 viewers per core) is `scripts/bench_room.py`'s: its viewers only count
packets, so the room, not the viewers' host, is what runs out. `--room-viewers N` adds a row of N full
no-decode probes (2 processes) here; that needs cores for N probes besides the room's, or it measures the
probes' host (on 2 cores with --pin, 200 probes on one core got 14 fps: the row says so in its host stalls).
Reference measured in the same run: one headless Chromium viewer's CPU (whole process group) on the
same stream, when Chromium and scripts/reference_viewer are available.

    .venv/bin/python scripts/bench_probe.py [--duration 20] [--decode 1,6,12] [--nodecode 50,100]
        [--receive fused,direct,aiortc]  # each fleet on each receive path, back to back
        [--pin]                     # room on one core, probes on the other: probes per core, measured
        [--loop-filter on,off]      # decode fleets with and without the deblocking filter, back to back

Loopback only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe.hoststalls import cpu_model, cpu_steal_ticks, steal_share  # noqa: E402
from probe.load import run_fleet  # noqa: E402
from room.truth import classify_freezes  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its threads, seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_room(port: int, spec: str, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen([sys.executable, "-m", "streamqoe", "--log-level", "warning", "room", "--port",
                             str(port), "--room", spec], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pin)
    for _ in range(200):
        try:
            get_json(f"http://127.0.0.1:{port}/rooms")
            return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("room did not start")


def fleet_row(url: str, room_pid: int, room_truth_url: str, probes: int, processes: int, duration: float,
              decode: bool, receive: str = "fused", skip_loop_filter: bool = False) -> dict[str, Any]:
    before = get_json(room_truth_url)
    skipped0 = sum(e.get("ticks_skipped", 0) for e in before["encoders"].values())
    room_cpu0, t0 = cpu_seconds(room_pid), time.monotonic()
    load0 = os.getloadavg()[0]
    summary = run_fleet(url, probes, processes, duration, decode=decode, fast_receive=receive != "aiortc",
                        fused_receive=receive == "fused", skip_loop_filter=skip_loop_filter, stagger_s=0.02)
    room_cpu = (cpu_seconds(room_pid) - room_cpu0) / (time.monotonic() - t0)
    after = get_json(room_truth_url)
    skipped = sum(e.get("ticks_skipped", 0) for e in after["encoders"].values()) - skipped0

    def video_stat(truth: dict[str, Any], key: str) -> int:
        return sum(e.get(key, 0) for e in truth["encoders"].values() if e.get("kind") == "video")

    def pli(truth: dict[str, Any]) -> int:
        return sum(e.get("keyframe_requests", {}).get("pli", 0) for e in truth["encoders"].values())
    return {
        "mode": summary["mode"], "receive": receive, "probes": probes,
        "processes": processes, "joined": summary["joined"],
        "cpu_pct_per_probe": summary["cpu_pct_per_probe"],
        "cpu_steady": summary["cpu_pct_per_probe_steady"], "fps_mean": summary["fps_mean"],
        "false_freezes": summary["freezes_total"], "probes_with_freezes": summary["probes_with_freezes"],
        "freezes_in_host_stalls": summary["freezes_during_host_stalls"],
        "freezes_room_late": sum(len(classify_freezes(r, after)["room_late"]) for r in summary["reports"]),
        "host_stall_s_max": summary["host_stall_s_max"],
        "ttff_p50_ms": summary["ttff_p50_ms"], "loss_pct": summary["loss_pct_mean"],
        "room_cpu_pct": round(100 * room_cpu, 1), "room_ticks_skipped": skipped,
        "room_keyframes": video_stat(after, "keyframes") - video_stat(before, "keyframes"),
        "pli_received": pli(after) - pli(before),
        "failures": summary["failures"], "load_1m": f"{load0:.1f}→{os.getloadavg()[0]:.1f}",
    }


def _chromium_cpu_s() -> float:
    """CPU seconds so far of every process of the reference viewer's Chromium (its profile dir is
    named sq-chromium-*), from /proc."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"sq-chromium-" in (d / "cmdline").read_bytes():
                total += cpu_seconds(int(d.name))
        except OSError:
            continue  # the process ended meanwhile
    return total


def chromium_reference(url: str, duration: float) -> dict[str, Any] | None:
    """One headless Chromium viewer (scripts/reference_viewer) on the same stream: its CPU % of a core
    over the steady part of the session (all its processes, sampled from /proc), fps and freezes."""
    viewer = ROOT / "scripts" / "reference_viewer"
    if not viewer.exists() or shutil.which("chromium") is None:
        return None
    out = Path("/tmp") / f"bench_chromium_{os.getpid()}.json"
    proc = subprocess.Popen([str(viewer), url, "--duration", str(duration), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(min(5.0, duration / 3))  # Chromium starts and joins
    c0, t0 = _chromium_cpu_s(), time.monotonic()
    time.sleep(max(1.0, duration - min(5.0, duration / 3) - 2.0))
    c1, t1 = _chromium_cpu_s(), time.monotonic()
    try:
        _, err = proc.communicate(timeout=duration + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "reference viewer did not finish"}
    if proc.returncode != 0 or not out.exists():
        return {"error": err.decode()[-300:]}
    data = json.loads(out.read_text())
    final = data.get("final") or {}
    frames = final.get("framesDecoded")
    return {"cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 2), "framesDecoded": frames,
            "fps": round(frames / duration, 2) if frames else None, "freezeCount": final.get("freezeCount"),
            "ttff_ms": data.get("ttff_ms"), "chromium": data.get("chromium")}


def with_steal(run: Any, *args: Any) -> dict[str, Any]:
    """``run(*args)``'s row, with the hypervisor's share of the machine's CPU time while it ran
    (``cpu_steal_pct``, /proc/stat): a row measured while the VM was starved says so."""
    before = cpu_steal_ticks()
    row: dict[str, Any] = run(*args)
    share = steal_share(before, cpu_steal_ticks())
    row["cpu_steal_pct"] = None if share is None else round(100 * share, 1)
    return row


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--decode", default="1,6,12", help="decode fleet sizes (one worker process each)")
    ap.add_argument("--nodecode", default="50,100", help="no-decode fleet sizes per worker process")
    ap.add_argument("--room-viewers", type=int, default=0,
                    help="add a row of N no-decode probes in 2 processes (needs cores for them; room capacity "
                         "itself: scripts/bench_room.py)")
    ap.add_argument("--spec", default="bench:1280x720@30:vp8:1500")
    ap.add_argument("--pin", action="store_true",
                    help="room on all CPUs but the last, probes (and Chromium) on the last one: how many probes one "
                         "core carries, with the room unable to take that core's time")
    ap.add_argument("--receive", default="fused",
                    help="receive paths to run each fleet with, in turn (e.g. fused,direct): fused (default: the "
                         "direct path with one handler per packet, probe/rtphandler.py), direct (the direct path "
                         "driving aiortc's receiver coroutines), aiortc (aiortc's own path)")
    ap.add_argument("--loop-filter", default="on",
                    help="decode fleets with the deblocking filter on (default), off (--no-loop-filter), or on,off")
    ap.add_argument("--processes", default="1",
                    help="worker processes to split each fleet over, in turn (e.g. 1,3): one process runs its "
                         "probes on one event loop and one GIL; several on one core trade that contention for "
                         "context switches")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    port = free_port()
    room_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        room_cpus = set(cpus[:-1])
        # this process, and so every probe worker and the Chromium reference it starts, on the last CPU
        os.sched_setaffinity(0, {cpus[-1]})
    room = start_room(port, args.spec, room_cpus)
    name = args.spec.split(":")[0]
    url = f"http://127.0.0.1:{port}/whep/{name}"
    truth_url = f"http://127.0.0.1:{port}/rooms/{name}/truth"
    rows: list[dict[str, Any]] = []
    try:
        paths = [p.strip() for p in args.receive.split(",") if p.strip()]
        if not set(paths) <= {"fused", "direct", "aiortc"}:
            raise SystemExit(f"--receive: fused, direct or aiortc, not {args.receive!r}")
        skips = [p.strip() == "off" for p in args.loop_filter.split(",") if p.strip()]
        process_counts = [int(p) for p in args.processes.split(",") if p.strip()]
        for decode, sizes in ((True, args.decode), (False, args.nodecode)):
            for n in [int(x) for x in sizes.split(",") if x]:
                for skip in skips if decode else [False]:
                    for path in paths:  # back to back, so every variant sees the same machine
                        for procs in process_counts:
                            rows.append(with_steal(fleet_row, url, room.pid, truth_url, n, procs, args.duration,
                                                   decode, path, skip))
                            print(json.dumps(rows[-1]), file=sys.stderr)
        if args.room_viewers:
            rows.append(with_steal(fleet_row, url, room.pid, truth_url, args.room_viewers, 2, args.duration, False))
            print(json.dumps(rows[-1]), file=sys.stderr)
        reference = chromium_reference(url, args.duration)
    finally:
        room.terminate()
        room.wait(10)
    cols = ["mode", "receive", "probes", "processes", "joined", "cpu_pct_per_probe", "cpu_steady", "fps_mean",
            "false_freezes", "probes_with_freezes", "freezes_in_host_stalls", "freezes_room_late", "host_stall_s_max",
            "ttff_p50_ms",
            "loss_pct", "room_cpu_pct", "room_ticks_skipped",
            "room_keyframes", "pli_received", "load_1m", "cpu_steal_pct"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    if reference is not None:
        print(f"\nreference: headless Chromium, 1 viewer, same stream: {json.dumps(reference)}")
    else:
        print("\nreference: headless Chromium not available (scripts/reference_viewer or /usr/bin/chromium missing)")
    pinned = f"; room on CPUs {sorted(room_cpus)}, probes on CPU {sorted(os.sched_getaffinity(0))}" if room_cpus else ""
    model = cpu_model() or "CPU model unknown"
    print(f"machine: {os.cpu_count()} cores ({model}), load average {os.getloadavg()[0]:.2f} at the end{pinned}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "reference": reference}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
