"""Accuracy over seeds of the audience model (scripts/bench_analysis.py --seeds N runs more)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.audience import AudienceConfig, IncidentSpec, generate
from analysis.pipeline import run_analysis

T0 = 1_790_000_040_000 - 1_790_000_040_000 % 60_000
SEEDS = range(100, 112)


def score(seed: int, with_incident: bool) -> tuple[bool, float | None, bool, int]:
    """(found right, relative error, CI covers, n incidents) for one seed."""
    inc = IncidentSpec({"cdn": "cdn-b", "region": "eu"}, T0 + 60 * 60_000, T0 + 80 * 60_000)
    table, truth = generate(
        AudienceConfig(
            start_ms=T0,
            minutes=110,
            seed=seed,
            arrivals_per_min=120,
            heartbeats=False,
            incident=inc if with_incident else None,
        )
    )
    res = run_analysis(table, T0, T0 + 110 * 60_000, seed=seed)
    if not with_incident:
        return False, None, False, len(res.incidents)
    hit = [
        i
        for i in res.incidents
        if i.segment == [{"region": "eu", "cdn": "cdn-b"}] and abs(i.start_ms - inc.start_ms) <= 60_000
    ]
    if not hit:
        return False, None, False, len(res.incidents)
    im = hit[0].impact
    err = (im.viewers_lost - truth.viewers_lost) / truth.viewers_lost
    return True, err, im.ci_low <= truth.viewers_lost <= im.ci_high, len(res.incidents)


@pytest.mark.slow
def test_accuracy_over_seeds() -> None:
    found, errs, cover = 0, [], 0
    for s in SEEDS:
        ok, err, cov, _ = score(s, True)
        found += ok
        if err is not None:
            errs.append(err)
        cover += cov
    quiet = sum(score(s, False)[3] == 0 for s in SEEDS)
    n = len(SEEDS)
    assert found == n
    assert max(abs(e) for e in errs) <= 0.15, errs
    assert cover / n >= 0.9
    assert quiet / n >= 0.95
    print(f"found {found}/{n}, |err| max {max(np.abs(errs)):.3f}, covered {cover}/{n}, quiet {quiet}/{n}")
