"""Regression detection: minutes where some segment's QoE left its own baseline, grouped into incidents.

For a ratio metric (stall ratio = stall / play time, slow-start share = slow joins / joins) each leaf's
baseline ratio comes from the baseline minutes; each later minute is scanned for the slice with the
largest likelihood-ratio gain (``analysis.localize``) — the peers of a slice are the leaves outside it,
whose common drift is factored out. False-alarm control is a calibrated threshold: the same scan run on
every baseline minute (each against the others) gives the gains that noise alone produces; a minute is
flagged only when its gain exceeds ``margin`` × the largest of them, *and* the slice's ratio moved by at
least the minimum effect (relative and absolute), *and* the flag persists ``min_minutes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from analysis.localize import Scanner, Slice

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class MetricSpec:
    """A ratio metric to watch, with its minimum effect size."""

    name: str
    min_rel: float
    """Minimum ratio / baseline ratio within the slice (e.g. 1.5)."""
    min_abs: float
    """Minimum absolute increase of the ratio within the slice (e.g. 0.02 = 2 points)."""


STALL = MetricSpec("stall_ratio", 1.5, 0.02)
SLOW_START = MetricSpec("slow_start_share", 1.5, 0.05)


@dataclass
class Flagged:
    """A run of flagged minutes for one metric."""

    metric: str
    start: int
    """First flagged minute (index)."""
    end: int
    """One past the last flagged minute."""
    peak_gain: float
    threshold: float
    top_slice: Slice


def leaf_baseline(num: FloatArray, den: FloatArray, prior: float = 20.0) -> FloatArray:
    """Per-leaf ratio over the given minutes, shrunk toward the all-leaves ratio with ``prior`` weight."""
    sn, sd = num.sum(axis=1), den.sum(axis=1)
    tot = float(sd.sum())
    p_all = float(sn.sum()) / tot if tot > 0 else 0.0
    return np.asarray((sn + prior * p_all) / (sd + prior), dtype=np.float64)


def calibrate(scanner: Scanner, num: FloatArray, den: FloatArray, base: NDArray[np.int64]) -> float:
    """Largest single-slice gain over the baseline minutes, each scanned against the others."""
    best = 0.0
    for b in base:
        others = base[base != b]
        p = leaf_baseline(num[:, others], den[:, others])
        g, _ = scanner.top(num[:, b], den[:, b] * p)
        best = max(best, g)
    return best


def flag_minutes(
    scanner: Scanner,
    num: FloatArray,
    den: FloatArray,
    base: NDArray[np.int64],
    spec: MetricSpec,
    *,
    margin: float = 1.5,
    min_minutes: int = 2,
    max_gap: int = 1,
) -> list[Flagged]:
    """Runs of minutes after the baseline whose top slice beats the calibrated threshold.

    ``num``/``den``: (n_leaves, n_minutes); ``base``: baseline minute indices (all before the scan).
    """
    thr = margin * max(calibrate(scanner, num, den, base), 1.0)
    p = leaf_baseline(num[:, base], den[:, base])
    first = int(base.max()) + 1
    hits: list[tuple[int, float, Slice]] = []
    gains, slices = scanner.top_many(num[:, first:], den[:, first:] * p[:, None])
    for t in range(first, num.shape[1]):
        exp = den[:, t] * p
        g, sl = float(gains[t - first]), slices[t - first]
        if sl is None or g <= thr:
            continue
        m = sl.mask(scanner.codes)
        d = float(den[m, t].sum())
        if d <= 0:
            continue
        r_now = float(num[m, t].sum()) / d
        r_base = float(exp[m].sum()) / d
        if r_now >= spec.min_rel * r_base and r_now - r_base >= spec.min_abs:
            hits.append((t, g, sl))
    runs: list[Flagged] = []
    i = 0
    while i < len(hits):
        j = i
        while j + 1 < len(hits) and hits[j + 1][0] - hits[j][0] <= max_gap + 1:
            j += 1
        run = hits[i : j + 1]
        if run[-1][0] - run[0][0] + 1 >= min_minutes:
            peak = max(run, key=lambda h: h[1])
            runs.append(Flagged(spec.name, run[0][0], run[-1][0] + 1, peak[1], thr, peak[2]))
        i = j + 1
    return runs
