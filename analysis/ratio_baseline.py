"""Per-leaf baselines for ratio metrics (stalled / total) and the calibrated localization threshold.

Pure numpy. The input is a leaf × minute grid: ``num[leaf, minute]`` (e.g. viewers stalling) and
``den[leaf, minute]`` (viewers), with the anomalous minute(s) and the baseline minutes chosen by index.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from analysis.localize import IntArray, max_scan_gain

FloatArray = NDArray[np.float64]


def expected_counts(
    num_base: FloatArray, den_base: FloatArray, den_now: FloatArray, prior_weight: float = 20.0
) -> FloatArray:
    """Expected numerator of each leaf now: ``den_now × p̂``, p̂ the leaf's baseline ratio.

    ``num_base``/``den_base``: (n_leaves, n_minutes) baseline grid; p̂ = (Σnum + w·p_all) / (Σden + w),
    shrunk toward the all-leaves ratio ``p_all`` with a prior worth ``prior_weight`` viewers so that a
    leaf seen only a few times in the baseline does not get an extreme expectation.
    """
    sn = num_base.sum(axis=1)
    sd = den_base.sum(axis=1)
    total_d = float(sd.sum())
    p_all = float(sn.sum()) / total_d if total_d > 0 else 0.0
    p = (sn + prior_weight * p_all) / (sd + prior_weight)
    return np.asarray(den_now * p, dtype=np.float64)


def calibrated_threshold(
    codes: IntArray,
    num: FloatArray,
    den: FloatArray,
    baseline_idx: NDArray[np.int64],
    *,
    max_order: int = 3,
    last: int = 6,
    margin: float = 1.0,
    floor: float = 10.0,
) -> float:
    """Deviance gain a slice must beat: ``margin`` × the largest single-slice gain of the scan run on
    each of the ``last`` baseline minutes (each against the other baseline minutes), at least ``floor``.

    Those minutes have no incident, so whatever the scan finds there is what noise alone produces.
    """
    best = 0.0
    idx = np.asarray(baseline_idx, dtype=np.int64)
    for b in idx[-last:]:
        others = idx[idx != b]
        if others.size == 0:
            continue
        exp = expected_counts(num[:, others], den[:, others], den[:, b])
        best = max(best, max_scan_gain(codes, num[:, b], exp, max_order))
    return max(best * margin, floor)
