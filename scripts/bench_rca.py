#!/usr/bin/env python3
"""Root-cause localization on the RS live-streaming stall benchmark (135 real incidents).

    scripts/bench_rca.py [--data ../shared/datasets/rs-live-stalls] [--split all|even|odd]

Reads the data in place (never copies it). Scoring as in the localization literature (README of the
data set): a predicted slice counts only if its attribute combination equals a true slice exactly;
micro precision / recall / F1 over slices of the top-1 set; top-k exact-set accuracy; time per incident.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.localize import localize
from analysis.ratio_baseline import calibrated_threshold, expected_counts

REFERENCE = {
    "RobustSpot (RiskLoc harness)": {"f1": 0.418, "p": 0.276, "r": 0.860},
    "RobustSpot (own results)": {"top1": 0.563, "top3": 0.652, "top5": 0.711},
    "Adtributor": {"f1": 0.274},
}


@dataclass
class Incident:
    name: str
    timestamp: int
    causes: list[dict[str, str]]


def load_labels(path: Path) -> list[Incident]:
    """Parse anomaly.yaml (a flat list; parsed by hand to avoid a YAML dependency)."""
    out: list[Incident] = []
    cur: dict[str, Any] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("- data:"):
            if cur:
                out.append(_incident(cur))
            cur = {"data": line.split(":", 1)[1].strip()}
        elif line.startswith("timestamp:"):
            cur["timestamp"] = int(line.split(":", 1)[1])
        elif line.startswith("cause:"):
            cur["cause"] = ast.literal_eval(line.split(":", 1)[1].strip())
    if cur:
        out.append(_incident(cur))
    return out


def _incident(d: dict[str, Any]) -> Incident:
    cause = d["cause"]
    causes = cause if isinstance(cause, list) else [cause]
    return Incident(d["data"], d["timestamp"], [{k: str(v) for k, v in c.items()} for c in causes])


@dataclass
class Grid:
    attrs: list[str]
    values: list[list[str]]  # per attribute: code -> string
    codes: np.ndarray  # (n_leaves, n_attrs)
    minutes: np.ndarray  # (n_minutes,)
    num: np.ndarray  # (n_leaves, n_minutes)
    den: np.ndarray


def load_grid(path: Path) -> Grid:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    attrs = [h for h in header if h not in ("min", "value", "cnt")]
    ai = [header.index(a) for a in attrs]
    body = rows[1:]
    mins = np.array([int(r[header.index("min")]) for r in body], dtype=np.int64)
    val = np.array([float(r[header.index("value")]) for r in body])
    cnt = np.array([float(r[header.index("cnt")]) for r in body])
    values: list[list[str]] = []
    cols = []
    for j in ai:
        col = [r[j] for r in body]
        uniq, inv = np.unique(np.array(col), return_inverse=True)
        values.append([str(u) for u in uniq])
        cols.append(inv)
    leafkey = np.stack(cols, axis=1).astype(np.int64)
    leaves, leaf_of = np.unique(leafkey, axis=0, return_inverse=True)
    minutes, min_of = np.unique(mins, return_inverse=True)
    num = np.zeros((leaves.shape[0], minutes.size))
    den = np.zeros_like(num)
    np.add.at(num, (leaf_of.ravel(), min_of), val)
    np.add.at(den, (leaf_of.ravel(), min_of), cnt)
    return Grid(attrs, values, leaves, minutes, num, den)


def predict(grid: Grid, timestamp: int, top_k: int = 5) -> list[list[dict[str, str]]]:
    """Ranked predicted sets of slices, each slice as {attribute: value}."""
    t = int(np.searchsorted(grid.minutes, timestamp))
    base = np.arange(t, dtype=np.int64)
    present = grid.den[:, t] > 0
    codes = grid.codes[present]
    num, den = grid.num[present], grid.den[present]
    exp = expected_counts(num[:, base], den[:, base], den[:, t])
    thr = calibrated_threshold(codes, num, den, base)
    ranked = localize(codes, num[:, t], exp, threshold=thr, top_k=top_k, require_first=True, totals=den[:, t])
    out = []
    for rs in ranked:
        out.append([{grid.attrs[d]: grid.values[d][v] for d, v in eff.slice.items} for eff in rs.slices])
    return out


def _key(s: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(s.items())


DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "rs-live-stalls"
"""The dataset where the workplace keeps it: shared/ beside the repository (never copied into it)."""


def evaluate(data: Path, incidents: list[Incident], verbose: bool = False) -> dict[str, float]:
    """Micro precision/recall/F1 of the top-ranked set, top-k exact-set accuracy, seconds per incident."""
    tp = fp = fn = 0
    hits = {1: 0, 3: 0, 5: 0}
    times: list[float] = []
    for inc in incidents:
        grid = load_grid(data / f"{inc.name}.csv")
        t0 = time.perf_counter()
        ranked = predict(grid, inc.timestamp)
        times.append(time.perf_counter() - t0)
        truth = {_key(c) for c in inc.causes}
        pred = {_key(s) for s in ranked[0]} if ranked else set()
        tp += len(truth & pred)
        fp += len(pred - truth)
        fn += len(truth - pred)
        for k in hits:
            if any({_key(s) for s in r} == truth for r in ranked[:k]):
                hits[k] += 1
        if verbose:
            ok = "OK " if pred == truth else "-- "
            rank = next((i for i, r in enumerate(ranked) if {_key(x) for x in r} == truth), None)
            print(ok, rank, inc.name[:28], "truth", inc.causes, "pred", ranked[:3])
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    n = max(len(incidents), 1)
    return {"n": len(incidents), "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "top1": hits[1] / n, "top3": hits[3] / n, "top5": hits[5] / n,
            "mean_s": float(np.mean(times)) if times else 0.0, "max_s": max(times, default=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", choices=["all", "even", "odd"], default="all")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    labels_path = args.data / "anomaly.yaml"
    if not labels_path.is_file():
        print(f"error: {labels_path} not found (is --data the rs-live-stalls directory?)", file=sys.stderr)
        return 2
    incidents = load_labels(labels_path)
    if args.split != "all":
        incidents = incidents[(0 if args.split == "even" else 1) :: 2]
    m = evaluate(args.data, incidents, args.verbose)
    p, r, f1, n = m["precision"], m["recall"], m["f1"], len(incidents)
    hits = {k: m[f"top{k}"] * n for k in (1, 3, 5)}
    ts = np.array([m["mean_s"], m["max_s"]])
    print(f"RS live stalls: {n} incidents (split={args.split})")
    print(
        f"{'method':34s} {'F1':>6s} {'P':>6s} {'R':>6s} {'top1':>6s} {'top3':>6s} {'top5':>6s} {'s/inc':>14s}"
    )
    print(
        f"{'streamqoe scan (this repo)':34s} {f1:6.3f} {p:6.3f} {r:6.3f} "
        f"{hits[1] / n:6.1%} {hits[3] / n:6.1%} {hits[5] / n:6.1%} "
        f"{ts[0]:.3f} (max {ts[1]:.2f})"
    )
    print(
        f"{'RobustSpot (RiskLoc harness)':34s} {0.418:6.3f} {0.276:6.3f} {0.860:6.3f} {'':>6s} {'':>6s} {'':>6s}"
    )
    print(
        f"{'RobustSpot (published results)':34s} {'':>6s} {'':>6s} {'':>6s} {0.563:6.1%} {0.652:6.1%} {0.711:6.1%}"
    )
    print(f"{'Adtributor (RiskLoc harness)':34s} {0.274:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
