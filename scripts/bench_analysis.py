#!/usr/bin/env python3
"""Analysis speed on a large generated audience, and accuracy over many seeds.

    scripts/bench_analysis.py --sessions 1000000 [--db /tmp/bench.duckdb]   # speed
    scripts/bench_analysis.py --db /tmp/bench.duckdb --reuse-db [--compare]  # speed, existing file
    scripts/bench_analysis.py --seeds 50                                    # accuracy over seeds
    scripts/bench_analysis.py --probe-seeds 200                             # probe detector

Generation (and writing the DuckDB file) is timed separately and excluded from the analysis time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.audience import AudienceConfig, IncidentSpec, generate
from analysis.pipeline import run_analysis
from analysis.report_html import write_report

T0 = 1_790_000_040_000 - 1_790_000_040_000 % 60_000


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> str:
    """Wall and CPU seconds (CPU = all threads of this process, DuckDB's included)."""
    return f"{time.perf_counter() - t[0]:.2f} s (CPU {time.process_time() - t[1]:.2f} s)"


def _differences(x: object, y: object) -> int:
    """Leaves of two JSON trees that differ (floats compared to 1e-9 relative: sums in another order)."""
    if isinstance(x, dict) and isinstance(y, dict):
        return sum(_differences(x[k], y.get(k)) for k in x) + len(set(y) - set(x))
    if isinstance(x, list) and isinstance(y, list):
        return sum(_differences(u, v) for u, v in zip(x, y, strict=False)) + abs(len(x) - len(y))
    if isinstance(x, float) and isinstance(y, float):
        return 0 if math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y)) else 1
    return int(x != y)


def speed(n_sessions: int, minutes: int, db: Path | None, reuse: bool, compare: bool) -> None:
    lo, hi = T0, T0 + minutes * 60_000
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    if not (reuse and db is not None and db.is_file()):
        rate = n_sessions / minutes
        inc = IncidentSpec({"cdn": "cdn-b", "region": "eu"}, T0 + 150 * 60_000, T0 + 170 * 60_000)
        t = _clock()
        table, truth = generate(AudienceConfig(start_ms=T0, minutes=minutes, seed=1, arrivals_per_min=rate,
                                               mean_watch_min=8.0, heartbeats=False, incident=inc))
        print(f"generated {truth.n_sessions} sessions, {table.n} events in {_since(t)} (excluded)")
        t = _clock()
        res = run_analysis(table, lo, hi)
        print(f"analysis (in-memory columns): {_since(t)}; incidents: {[i.summary for i in res.incidents]}; "
              f"truth lost {truth.viewers_lost}")
        if db is not None:
            from analysis.export import write_duckdb

            db.unlink(missing_ok=True)
            t = _clock()
            write_duckdb(table, db)
            print(f"wrote DuckDB file in {_since(t)} (excluded)")
    if db is None:
        return
    from analysis.sql_aggregate import aggregate_duckdb

    t = _clock()
    agg = aggregate_duckdb(db, lo, hi)
    t_agg = _since(t)
    t2 = _clock()
    res = run_analysis(agg, lo, hi)
    print(f"from the DuckDB file ({agg.n_events} events, {int((agg.sessions.leaf >= 0).sum())} sessions in the "
          f"window): aggregate in DuckDB {t_agg} + analysis {_since(t2)} = {_since(t)} total")
    print(f"incidents: {[i.summary for i in res.incidents]}")
    t = _clock()
    with tempfile.TemporaryDirectory() as d:
        write_report(res, Path(d))
    print(f"report files: {_since(t)} (excluded)")
    if compare:
        from analysis.load import from_duckdb

        t = _clock()
        old = run_analysis(from_duckdb(db, lo, hi), lo, hi)
        diffs = _differences(json.loads(json.dumps(old.to_json(), default=str)),
                             json.loads(json.dumps(res.to_json(), default=str)))
        print(f"event-loading path (from_duckdb + run_analysis): {_since(t)}; report.json values that differ "
              f"(beyond 1e-9 relative): {diffs}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def accuracy(seeds: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_analysis_accuracy import score

    found = cover = quiet = 0
    errs: list[float] = []
    for s in range(seeds):
        ok, err, cov, _ = score(1000 + s, True)
        found += ok
        cover += cov
        if err is not None:
            errs.append(err)
        quiet += score(5000 + s, False)[3] == 0
    e = np.abs(np.array(errs))
    print(f"seeds {seeds}: found (segment + start ±1 min) {found}/{seeds}; |relative error| mean {e.mean():.3f} "
          f"max {e.max():.3f}, within ±15% {int((e <= 0.15).sum())}/{e.size}; 95% CI covers truth "
          f"{cover}/{seeds}; no-incident runs quiet {quiet}/{seeds}")


def probe_accuracy(seeds: int) -> None:
    """Probe detector: false alarms on quiet probes with shared noise, and detection of a 2-minute and a
    1-minute loss + stall regression in one region (3 regions, a session every 10 s each)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_analysis_probes import T0 as P0
    from test_analysis_probes import _probes

    from analysis.probe_qoe import detect_probe_incidents

    false = sum(len(detect_probe_incidents(_probes(60, {}, seed=s), P0, 60)) for s in range(seeds))
    # (from, to) minutes; the last straddles a minute boundary: half its sessions in minute 10, half in 11
    spans = {"2-minute": (10.0, 12.0), "1-minute": (10.0, 11.0), "1-minute from 10.5": (10.5, 11.5),
             "50 s from 10.5": (10.5, 10.5 + 50 / 60)}
    found = dict.fromkeys(spans, 0)
    for s in range(seeds):
        for name, (a, b) in spans.items():
            incs = detect_probe_incidents(_probes(20, {"eu": (a, b)}, seed=s), P0, 20)
            ok = [i for i in incs
                  if i.segment == {"region": "eu"} and abs(i.start_ms - (P0 + a * 60_000)) < 60_000]
            found[name] += bool(ok) and len(incs) == 1
    print(f"probes, {seeds} seeds: false incidents in {seeds} × 60 quiet minutes: {false}; eu regression found "
          "(right segment, start ±1 min, nothing else): "
          + ", ".join(f"{name} {n}/{seeds}" for name, n in found.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--minutes", type=int, default=240)
    ap.add_argument("--db", type=Path)
    ap.add_argument("--reuse-db", action="store_true", help="analyse an existing --db file, do not regenerate")
    ap.add_argument("--compare", action="store_true", help="also run the event-loading path and compare")
    ap.add_argument("--seeds", type=int, default=0)
    ap.add_argument("--probe-seeds", type=int, default=0, help="probe detector accuracy over seeds")
    a = ap.parse_args()
    if a.probe_seeds:
        probe_accuracy(a.probe_seeds)
    if a.sessions or a.reuse_db:
        speed(a.sessions, a.minutes, a.db, a.reuse_db, a.compare)
    if a.seeds:
        accuracy(a.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
