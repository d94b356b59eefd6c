"""QoE seen by synthetic probes, per segment and minute, and the regressions the probes detect.

Probes are identical instruments run in every region, so at any minute the probes of the *other*
segments are the control: a problem of the platform moves them too, a problem of one region moves
only that region's probes. Per report, four degradation indicators (each a yes/no per probe session):

* ``join_failure``: the probe could not join or receive media (over all reports);
* ``slow_start``: time to first frame > 2 s (the abandonment knee, Krishnan & Sitaraman 2012);
* ``stalled``: stall ratio ≥ 5 % (the win-back list's "bad QoE");
* ``lossy``: video packet loss ≥ 2 %.

A minute is flagged for a segment (a region, or an isp / cdn label value) and an indicator when the
segment's share of degraded reports exceeds its peers' (the other segments' reports in the same minute)
by at least 30 points with a one-sided Fisher exact test at α = 5 % divided by the number of tests that
minute (Bonferroni), with at least 2 degraded reports, and — when the segment has an earlier,
unflagged past — exceeds that past by 30 points too (a chronic condition is not a regression). Flagged
minutes of a segment (1-minute gaps bridged, any indicator) form a probe incident. The test runs on the
minute grid and on a grid offset by 30 s, so a short regression straddling a minute boundary is seen
whole on one of them (``detect_probe_incidents``). All probes together
have no concurrent control: they are tested against their own past, for join failures and loss only,
and the run must span 2 minutes. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from analysis.probe_reports import ProbeTable
from analysis.series import MINUTE_MS

ALPHA = 0.05
MIN_EFFECT = 0.30
MIN_DEGRADED = 2
CORROBORATION_SLACK_MS = 2 * MINUTE_MS
"""Viewer incidents are minute-aligned and a beacon reports the minute before it; probe sessions are
seconds long. Two incidents this close in time are the same event seen twice."""

ALL_INDICATORS = ("join_failure", "lossy")
"""Indicators tested on all probes together. Stalls and slow first frames are left out there: probes
that share a loaded host freeze and start slowly together (seen in the demo), which looks the same as a
platform-wide regression when there is no concurrent control."""
ALL_MIN_MINUTES = 2
"""A platform-wide run has no concurrent control (every probe is in it), and probes on one platform
share its hiccups at the same moments (their sessions are not independent samples), so it must last
this many minutes."""
INDICATORS = ("join_failure", "slow_start", "stalled", "lossy")
PROBE_METRICS = (
    "reports",
    "join_failure_share",
    "ttff_p50_ms",
    "ttff_p95_ms",
    "stall_ratio",
    "hd_share",
    "loss_pct",
)
MOVED = {"join_failure_share": 0.05, "ttff_p50_ms": 250.0, "stall_ratio": 0.02, "loss_pct": 0.5, "hd_share": 0.05}
"""Smallest change of a probe metric worth naming in an incident's summary."""


@dataclass
class ProbeIncident:
    """A QoE regression seen by synthetic probes in one segment."""

    incident_id: str
    start_ms: int
    """Start of the first degraded probe session in the segment."""
    end_ms: int
    """End of the last degraded probe session in the segment."""
    segment: dict[str, str]
    detected_by: list[str]
    """Indicators that flagged (join_failure, slow_start, stalled, lossy)."""
    metrics: dict[str, dict[str, float | None]]
    """Metric → {"during", "peers" (other segments, same minutes), "before" (segment, earlier), "change"}."""
    reports: int
    """Probe sessions in the segment during the incident."""
    corroborated_by: list[str] = field(default_factory=list)
    """Viewer incidents (ids) in a consistent segment at the same time."""
    source: str = "synthetic probes"

    @property
    def summary(self) -> str:
        """One line for dashboards."""
        seg = ",".join(f"{k}={v}" for k, v in self.segment.items())
        moved = []
        for name, m in self.metrics.items():
            d, ref = m.get("during"), m.get("before") if m.get("before") is not None else m.get("peers")
            if d is not None and ref is not None and abs(d - ref) >= MOVED.get(name, 0.0):
                moved.append(f"{name} {ref:.3g} → {d:.3g}")
        return f"[probes] {seg}: {', '.join(moved)} ({self.reports} probe sessions)"


def _indicators(p: ProbeTable) -> dict[str, tuple[NDArray[np.bool_], NDArray[np.bool_]]]:
    """Indicator → (degraded, measured) per report."""
    joined = ~p.failed
    with np.errstate(invalid="ignore"):
        return {
            "join_failure": (p.failed, np.ones(p.n, dtype=bool)),
            "slow_start": (joined & (p.ttff_ms > 2000.0), joined & ~np.isnan(p.ttff_ms)),
            "stalled": (joined & (p.stall_ratio >= 0.05), joined & ~np.isnan(p.stall_ratio)),
            "lossy": (joined & (p.loss_pct >= 2.0), joined & ~np.isnan(p.loss_pct)),
        }


def fisher_greater(d1: int, n1: int, d2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that group 1's degraded share (d1/n1) exceeds group 2's."""
    n, k = n1 + n2, d1 + d2
    if n1 == 0 or k == 0:
        return 1.0
    total = math.comb(n, n1)
    hi = min(k, n1)
    return sum(math.comb(k, x) * math.comb(n - k, n1 - x) for x in range(d1, hi + 1)) / total


def segments_of(p: ProbeTable) -> list[tuple[str, str]]:
    """(dimension, value) segments worth testing: dimensions with ≥ 2 values, and "all"."""
    out: list[tuple[str, str]] = []
    for dim, vals in p.dims.items():
        u = sorted(set(vals))
        if len(u) > 1:
            out.extend((dim, v) for v in u)
    return out


def _mask(p: ProbeTable, seg: tuple[str, str] | None) -> NDArray[np.bool_]:
    if seg is None:
        return np.ones(p.n, dtype=bool)
    return np.array([v == seg[1] for v in p.dims[seg[0]]], dtype=bool)


def probe_series(p: ProbeTable, t0_ms: int, n_minutes: int) -> dict[str, dict[str, list[float | None]]]:
    """Segment label ("all", "region=eu", ...) → metric → per-minute values (None without reports).

    Metrics: ``reports`` (probe sessions started in the minute), ``join_failure_share``,
    ``ttff_p50_ms`` / ``ttff_p95_ms`` (joined sessions), ``stall_ratio``, ``hd_share``, ``loss_pct``
    (means over joined sessions that measured them)."""
    minute = (p.started_ms - t0_ms) // MINUTE_MS
    out: dict[str, dict[str, list[float | None]]] = {}
    segs: list[tuple[str, str] | None] = [None, *segments_of(p)]
    for seg in segs:
        m = _mask(p, seg)
        ser: dict[str, list[float | None]] = {k: [] for k in PROBE_METRICS}
        for t in range(n_minutes):
            r = m & (minute == t)
            n = int(r.sum())
            ser["reports"].append(float(n))
            ser["join_failure_share"].append(float(p.failed[r].mean()) if n else None)
            ok = r & ~p.failed
            tt = p.ttff_ms[ok & ~np.isnan(p.ttff_ms)]
            ser["ttff_p50_ms"].append(float(np.quantile(tt, 0.5)) if tt.size else None)
            ser["ttff_p95_ms"].append(float(np.quantile(tt, 0.95)) if tt.size else None)
            for name, col in (("stall_ratio", p.stall_ratio), ("hd_share", p.hd_share), ("loss_pct", p.loss_pct)):
                v = col[ok & ~np.isnan(col)]
                ser[name].append(float(v.mean()) if v.size else None)
        out["all" if seg is None else f"{seg[0]}={seg[1]}"] = ser
    return out


def _summary_metrics(p: ProbeTable, sel: NDArray[np.bool_]) -> dict[str, float | None]:
    ok = sel & ~p.failed

    def mean(col: NDArray[np.float64]) -> float | None:
        v = col[ok & ~np.isnan(col)]
        return float(v.mean()) if v.size else None

    tt = p.ttff_ms[ok & ~np.isnan(p.ttff_ms)]
    return {
        "join_failure_share": float(p.failed[sel].mean()) if sel.any() else None,
        "ttff_p50_ms": float(np.quantile(tt, 0.5)) if tt.size else None,
        "stall_ratio": mean(p.stall_ratio),
        "loss_pct": mean(p.loss_pct),
        "hd_share": mean(p.hd_share),
    }


def detect_probe_incidents(p: ProbeTable, t0_ms: int, n_minutes: int) -> list[ProbeIncident]:
    """Regressions seen by probes (see the module docstring for the test); empty without reports.

    The test runs on the analysis's minute grid and again on a grid offset by half a minute: a
    regression shorter than two minutes that straddles a minute boundary splits its sessions between two
    minutes, too few in either to pass the test (the demo's 54 s probe incident did, in a run of session 6,
    with 4 of 6 and 2 of 4 sessions). An incident of the offset grid is kept when no incident of the
    same segment on the main grid overlaps it. Two looks at the same data can at most double the false
    alarms (measured: docs/performance.md, "Probe detector")."""
    if p.n == 0:
        return []
    main = _detect_on_grid(p, t0_ms, n_minutes)
    shifted = _detect_on_grid(p, t0_ms - GRID_OFFSET_MS, n_minutes + 1)
    extra = [
        i for i in shifted
        if not any(j.segment == i.segment and j.start_ms < i.end_ms and i.start_ms < j.end_ms for j in main)
    ]
    out = sorted(main + extra, key=lambda i: (i.start_ms, str(sorted(i.segment.items()))))
    for k, inc in enumerate(out):
        inc.incident_id = f"probe-{inc.start_ms // 1000}-{k + 1}"
    return out


GRID_OFFSET_MS = MINUTE_MS // 2
"""The second grid's offset (see ``detect_probe_incidents``)."""


def _detect_on_grid(p: ProbeTable, t0_ms: int, n_minutes: int) -> list[ProbeIncident]:
    """The test on the minute grid that starts at ``t0_ms``."""
    p = p.by_start()
    minute = (p.started_ms - t0_ms) // MINUTE_MS
    ind = _indicators(p)
    segs = segments_of(p)
    tested: list[tuple[str, str] | None] = [*segs, None]
    masks = {s: _mask(p, s) for s in tested}
    flagged: dict[tuple[str, str] | None, dict[int, set[str]]] = {s: {} for s in tested}
    for t in range(n_minutes):
        now = minute == t
        if not now.any():
            continue
        n_tests = len(tested) * len(INDICATORS)
        for s in tested:
            m = masks[s]
            for name, (bad, measured) in ind.items():
                cur = now & m & measured
                # the segment's own earlier minutes, except those flagged for this indicator
                earlier = m & measured & (minute < t)
                for ft, names in flagged[s].items():
                    if name in names:
                        earlier &= minute != ft
                peers = now & ~m & measured
                d1, n1 = int(bad[cur].sum()), int(cur.sum())
                if n1 == 0 or d1 < MIN_DEGRADED:
                    continue
                share = d1 / n1
                dh, nh = int(bad[earlier].sum()), int(earlier.sum())
                if s is None:
                    # every probe is in "all": its only control is its own past
                    if name not in ALL_INDICATORS or nh < 3 or share - dh / nh < MIN_EFFECT:
                        continue
                    p_value = fisher_greater(d1, n1, dh, nh)
                else:
                    # the peers are the control (shared noise cancels); the segment's own past only has
                    # to be better by the minimum effect (a chronic condition is not a regression)
                    dp, np_ = int(bad[peers].sum()), int(peers.sum())
                    if np_ < 3 or share - dp / np_ < MIN_EFFECT or (nh >= 3 and share - dh / nh < MIN_EFFECT):
                        continue
                    p_value = fisher_greater(d1, n1, dp, np_)
                if p_value < ALPHA / n_tests:
                    flagged[s].setdefault(t, set()).add(name)
    runs: list[tuple[tuple[str, str] | None, int, int, set[str]]] = []
    signature: dict[tuple[tuple[str, str] | None, int], set[str]] = {}
    for s, mins in flagged.items():
        ts = sorted(mins)
        i = 0
        while i < len(ts):
            j = i
            while j + 1 < len(ts) and ts[j + 1] - ts[j] <= 2:
                j += 1
            hit: set[str] = set().union(*(mins[x] for x in ts[i : j + 1]))
            if s is None and ts[j] - ts[i] + 1 < ALL_MIN_MINUTES:
                i = j + 1
                continue
            runs.append((s, ts[i], ts[j] + 1, hit))
            signature[(s, ts[i])] = set.intersection(*(mins[x] for x in ts[i : j + 1])) or hit
            i = j + 1
    # a platform-wide run ("all") that a segment's run explains is that segment's incident
    seg_runs = [r for r in runs if r[0] is not None]
    runs = seg_runs + [
        r for r in runs if r[0] is None and not any(a < r[2] and r[1] < b for _, a, b, _ in seg_runs)
    ]
    out: list[ProbeIncident] = []
    for k, (s, a, b, names) in enumerate(sorted(runs, key=lambda r: (r[1], str(r[0])))):
        m = masks[s]
        during = m & (minute >= a) & (minute < b)
        bad_any = np.zeros(p.n, dtype=bool)
        for name in names:
            bad_any |= ind[name][0]
        deg = during & bad_any
        # widen to the segment's adjacent sessions (in time order) just outside the flagged minutes
        # that show the incident's signature (every indicator that flagged all its minutes): a
        # regression starting late in an unflagged minute began with its first such session
        sig = np.ones(p.n, dtype=bool)
        for name in signature[(s, a)]:
            sig &= ind[name][0]
        seq = np.flatnonzero(m)  # reports are ordered by start
        pos = np.flatnonzero(deg[seq])
        if pos.size:
            lo_i, hi_i = int(pos[0]), int(pos[-1])
            while lo_i > 0 and sig[seq[lo_i - 1]]:
                lo_i -= 1
            while hi_i + 1 < seq.size and sig[seq[hi_i + 1]]:
                hi_i += 1
            deg[seq[lo_i : hi_i + 1]] |= sig[seq[lo_i : hi_i + 1]]
        ends = p.started_ms + (np.nan_to_num(p.duration_s) * 1000).astype(np.int64)
        start_ms = int(p.started_ms[deg].min()) if deg.any() else t0_ms + a * MINUTE_MS
        end_ms = int(ends[deg].max()) if deg.any() else t0_ms + b * MINUTE_MS
        peers = ~m & (minute >= a) & (minute < b)
        before = m & (minute < a)
        cur, pe, bf = _summary_metrics(p, during), _summary_metrics(p, peers), _summary_metrics(p, before)
        metrics: dict[str, dict[str, float | None]] = {}
        for key in cur:
            d, ref = cur[key], bf[key] if bf[key] is not None else pe[key]
            metrics[key] = {
                "during": d,
                "peers": pe[key],
                "before": bf[key],
                "change": None if d is None or ref is None else d - ref,
            }
        segment = {} if s is None else {s[0]: s[1]}
        out.append(
            ProbeIncident(
                f"probe-{start_ms // 1000}-{k + 1}",
                start_ms,
                end_ms,
                segment,
                sorted(names),
                metrics,
                int(during.sum()),
            )
        )
    return out


def consistent(viewer_segment: list[dict[str, str]], probe_segment: dict[str, str]) -> bool:
    """The probe's segment and one of the viewer incident's slices name the same viewers in at least
    one shared dimension and contradict each other in none (an empty probe segment — all probes —
    is consistent with anything)."""
    if not probe_segment:
        return True
    for sl in viewer_segment:
        shared = set(sl) & set(probe_segment)
        if shared and all(sl[k] == probe_segment[k] for k in shared):
            return True
    return False


def overlaps(a0: int, a1: int, b0: int, b1: int, slack_ms: int = CORROBORATION_SLACK_MS) -> bool:
    """The intervals [a0, a1) and [b0, b1) overlap once each is widened by ``slack_ms``."""
    return a0 <= b1 + slack_ms and b0 <= a1 + slack_ms
