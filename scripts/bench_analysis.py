#!/usr/bin/env python3
"""Analysis speed on a large generated audience, and accuracy over many seeds.

    scripts/bench_analysis.py --sessions 1000000 [--db /tmp/bench.duckdb]   # speed
    scripts/bench_analysis.py --seeds 50                                    # accuracy over seeds

Generation (and writing the DuckDB file) is timed separately and excluded from the analysis time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.audience import AudienceConfig, IncidentSpec, generate
from analysis.pipeline import run_analysis

T0 = 1_790_000_040_000 - 1_790_000_040_000 % 60_000


def speed(n_sessions: int, minutes: int, db: Path | None) -> None:
    rate = n_sessions / minutes
    inc = IncidentSpec({"cdn": "cdn-b", "region": "eu"}, T0 + 150 * 60_000, T0 + 170 * 60_000)
    t = time.perf_counter()
    table, truth = generate(AudienceConfig(start_ms=T0, minutes=minutes, seed=1, arrivals_per_min=rate,
                                           mean_watch_min=8.0, heartbeats=False, incident=inc))
    gen = time.perf_counter() - t
    print(f"generated {truth.n_sessions} sessions, {table.n} events in {gen:.1f} s (excluded)")
    t = time.perf_counter()
    res = run_analysis(table, T0, T0 + minutes * 60_000)
    ana = time.perf_counter() - t
    print(f"analysis (in-memory columns): {ana:.2f} s; incidents: {[i.summary for i in res.incidents]}; "
          f"truth lost {truth.viewers_lost}")
    if db is not None:
        from analysis.export import write_duckdb
        from analysis.load import from_duckdb

        db.unlink(missing_ok=True)
        t = time.perf_counter()
        write_duckdb(table, db)
        print(f"wrote DuckDB file in {time.perf_counter() - t:.1f} s (excluded)")
        t = time.perf_counter()
        loaded = from_duckdb(db, T0, T0 + minutes * 60_000)
        load = time.perf_counter() - t
        t = time.perf_counter()
        run_analysis(loaded, T0, T0 + minutes * 60_000)
        ana2 = time.perf_counter() - t
        print(f"from DuckDB: load {load:.2f} s + analysis {ana2:.2f} s = {load + ana2:.2f} s")


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--minutes", type=int, default=240)
    ap.add_argument("--db", type=Path)
    ap.add_argument("--seeds", type=int, default=0)
    a = ap.parse_args()
    if a.sessions:
        speed(a.sessions, a.minutes, a.db)
    if a.seeds:
        accuracy(a.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
