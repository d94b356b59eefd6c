"""``streamqoe load``: a fleet of probes in several processes, for pre-promotion load checks.

N sessions are spread over P worker processes (each an asyncio loop running its share concurrently,
joins staggered); every session produces a normal report. The fleet summary gives joins by outcome,
TTFF percentiles, freezes, fps, and the CPU each process used (CPU-seconds per wall-second, from
``resource.getrusage`` of the worker), so capacity is measured, not guessed: ``cpu_pct_per_probe``
over the whole run (joins and leaves included) and ``cpu_pct_per_probe_steady`` over the window in
which every session is joined (what a long monitoring session costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.videostats import percentile


@dataclass(frozen=True)
class WorkerResult:
    reports: list[dict[str, Any]]
    cpu_s: float
    """User + system CPU seconds this worker process used while its sessions ran."""
    wall_s: float
    steady_cpu_s: float | None = None
    """CPU seconds over the steady window (all joined, none leaving), None if the sessions are too short."""
    steady_wall_s: float | None = None


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run_many(url: str, n: int, duration_s: float, stagger_s: float, labels: dict[str, str],
                    first_index: int, options: dict[str, Any]) -> list[dict[str, Any]]:
    from probe.session import ProbeOptions, run_session

    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(i * stagger_s)
        opts = ProbeOptions(url=url, duration_s=duration_s, labels=dict(labels), probe_id=f"load-{first_index + i}",
                            **options)
        return (await run_session(opts)).to_dict()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _steady_window(n: int, duration_s: float, stagger_s: float) -> tuple[float, float] | None:
    """CPU and wall seconds between "every session has joined (+3 s)" and "1 s before the first leaves"."""
    start = (n - 1) * stagger_s + 3.0
    end = duration_s - 1.0
    if end - start < 2.0:
        return None
    await asyncio.sleep(start)
    c0, t0 = _cpu(), time.monotonic()
    await asyncio.sleep(end - start)
    return _cpu() - c0, time.monotonic() - t0


async def _run_with_steady(url: str, n: int, duration_s: float, stagger_s: float, labels: dict[str, str],
                           first_index: int, options: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    steady = asyncio.ensure_future(_steady_window(n, duration_s, stagger_s))
    reports = await _run_many(url, n, duration_s, stagger_s, labels, first_index, options)
    return reports, await steady


def _worker(url: str, n: int, duration_s: float, stagger_s: float, labels: dict[str, str], first_index: int,
            options: dict[str, Any]) -> WorkerResult:
    import logging

    logging.disable(logging.WARNING)  # a fleet's per-session warnings would drown the summary
    c0, t0 = _cpu(), time.monotonic()
    reports, steady = asyncio.run(_run_with_steady(url, n, duration_s, stagger_s, labels, first_index, options))
    cpu = _cpu() - c0
    return WorkerResult(reports, cpu, time.monotonic() - t0, *(steady or (None, None)))


def run_fleet(url: str, probes: int, processes: int, duration_s: float, *, decode: bool = True,
              fast_receive: bool = True, skip_loop_filter: bool = False, stagger_s: float = 0.05,
              labels: dict[str, str] | None = None, fused_receive: bool = True) -> dict[str, Any]:
    """Run ``probes`` sessions over ``processes`` workers; returns the fleet summary with all reports."""
    from probe.session import ProbeOptions

    options: dict[str, Any] = {"decode": decode, "fast_receive": fast_receive, "skip_loop_filter": skip_loop_filter,
                               "fused_receive": fused_receive}
    processes = max(1, min(processes, probes))
    shares = [probes // processes + (1 if i < probes % processes else 0) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")  # no aiortc threads or loops inherited by fork
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        futures = []
        first = 0
        for share in shares:
            futures.append(pool.submit(_worker, url, share, duration_s, stagger_s, labels or {}, first, options))
            first += share
        results = [f.result() for f in futures]
    wall = time.monotonic() - t0
    return summarize(results, probes=probes, wall_s=wall, mode=ProbeOptions(url=url, **options).mode)


def summarize(results: list[WorkerResult], *, probes: int, wall_s: float, mode: str) -> dict[str, Any]:
    """Fleet summary: joins by outcome, TTFF p50/p95 (ms), freezes, fps, CPU % per probe."""
    reports = [r for w in results for r in w.reports]
    ok = [r for r in reports if r["failure"] is None]
    failures: dict[str, int] = {}
    for r in reports:
        if r["failure"]:
            failures[r["failure"]] = failures.get(r["failure"], 0) + 1
    ttff = [r["summary"]["join"]["ttff_ms"] for r in ok if r["summary"]["join"]["ttff_ms"] is not None]
    videos = [r["summary"]["video"] for r in ok if r["summary"]["video"]]
    cpu_s = sum(w.cpu_s for w in results)
    session_wall = max((w.wall_s for w in results), default=0.0)
    return {
        "probes": probes,
        "processes": len(results),
        "mode": mode,
        "joined": len(ok),
        "failures": failures,
        "ttff_p50_ms": percentile(ttff, 50),
        "ttff_p95_ms": percentile(ttff, 95),
        "fps_mean": sum(v["fps_mean"] or 0 for v in videos) / len(videos) if videos else None,
        "freezes_total": sum(v["freezeCount"] for v in videos),
        "probes_with_freezes": sum(1 for v in videos if v["freezeCount"]),
        # freezes that overlap a stall of the probe's own process: the fleet, not the stream, is the suspect
        "freezes_during_host_stalls": sum((r["summary"].get("host_stalls") or {}).get("freezes_during", 0)
                                          for r in ok),
        "host_stall_s_max": max(((r["summary"].get("host_stalls") or {}).get("stalled_s", 0.0) for r in ok),
                                default=None),
        "loss_pct_mean": _mean([s["loss_pct"] for r in ok for s in r["summary"]["streams"]
                                if s["kind"] == "video" and s["loss_pct"] is not None]),
        "cpu_s": round(cpu_s, 2),
        "session_wall_s": round(session_wall, 2),
        "cpu_pct_per_probe": round(100.0 * cpu_s / session_wall / probes, 2) if session_wall and probes else None,
        "cpu_pct_per_probe_steady": _steady_pct(results, probes),
        "wall_s": round(wall_s, 2),
        "reports": reports,
    }


def _steady_pct(results: list[WorkerResult], probes: int) -> float | None:
    """CPU % of a core per probe while all sessions are joined: Σ worker CPU / mean window / probes."""
    if not probes or any(w.steady_cpu_s is None or not w.steady_wall_s for w in results):
        return None
    cpu = sum(w.steady_cpu_s or 0.0 for w in results)
    wall = sum(w.steady_wall_s or 0.0 for w in results) / len(results)
    return round(100.0 * cpu / wall / probes, 2)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="WHEP URL every probe joins")
    p.add_argument("--probes", type=int, default=10, help="number of concurrent sessions (default 10)")
    p.add_argument("--processes", type=int, default=multiprocessing.cpu_count(), help="worker processes")
    p.add_argument("--duration", type=float, default=20.0, help="session length, seconds")
    p.add_argument("--no-decode", action="store_true", help="probes count frames without decoding")
    p.add_argument("--no-loop-filter", dest="skip_loop_filter", action="store_true",
                   help="probes decode without the deblocking filter (see streamqoe probe --help)")
    p.add_argument("--no-fast-receive", dest="fast_receive", action="store_false",
                   help="probes take aiortc's own receive path (see streamqoe probe --help)")
    p.add_argument("--stagger", type=float, default=0.05, help="seconds between joins within a worker")
    p.add_argument("--json", metavar="FILE", help="write the summary with every report here")


def run(args: argparse.Namespace) -> int:
    if args.probes < 1 or args.processes < 1:
        print("streamqoe load: --probes and --processes must be ≥ 1", file=sys.stderr)
        return 2
    if args.no_decode and args.skip_loop_filter:
        print("streamqoe load: --no-loop-filter is a decoding mode; it cannot go with --no-decode", file=sys.stderr)
        return 2
    summary = run_fleet(args.url, args.probes, args.processes, args.duration, decode=not args.no_decode,
                        fast_receive=args.fast_receive, skip_loop_filter=args.skip_loop_filter,
                        stagger_s=args.stagger)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    brief = {k: v for k, v in summary.items() if k != "reports"}
    print(json.dumps(brief, indent=1))
    warning = overload_warning(summary, args.duration)
    if warning:
        print(f"streamqoe load: {warning}", file=sys.stderr)
    return 0 if summary["joined"] == args.probes else 1


OVERLOADED_SHARE = 0.05
"""A fleet whose busiest probe could not run this share of its session measured its own host."""


def overload_warning(summary: dict[str, Any], duration_s: float) -> str | None:
    """A warning when the fleet's own processes stalled enough to distort what it measured, else None."""
    worst = summary.get("host_stall_s_max")
    if worst is None or duration_s <= 0 or worst < OVERLOADED_SHARE * duration_s:
        return None
    return (f"WARNING: a probe's process could not run for {worst:.1f} s of its {duration_s:g} s session "
            f"({summary['freezes_during_host_stalls']} freezes fell inside such stalls). This host is too small "
            "for this fleet: use fewer probes per process (--processes) or per host, or --no-decode; its TTFF, "
            "freezes and latency measure the host, not the stream.")
