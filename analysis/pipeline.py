"""The analysis end to end on an :class:`EventTable`: series → regressions → localization → cost →
win-back. Returns plain data (``AnalysisResult``) that the report writers turn into files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.aggregates import Aggregates, from_events
from analysis.detect import SLOW_START, STALL, Flagged, flag_minutes, leaf_baseline
from analysis.events_table import EventTable
from analysis.impact import Impact, estimate
from analysis.localize import Scanner, localize
from analysis.probe_qoe import ProbeIncident, consistent, detect_probe_incidents, overlaps, probe_series
from analysis.probe_reports import ProbeTable
from analysis.series import MINUTE_MS, slice_series
from analysis.winback import ReturnRates, WinbackRow, winback


class AnalysisError(Exception):
    """Input the analysis cannot work with; the message says what is wrong (no traceback for users)."""


@dataclass
class Incident:
    incident_id: str
    start_ms: int
    end_ms: int
    segment: list[dict[str, str]]
    """The localized cause: a union of slices, each {dimension: value}."""
    metrics: dict[str, dict[str, float | None]]
    """Metric → {"baseline", "during", "change"} inside the segment."""
    detected_by: list[str]
    impact: Impact
    winback_n: int
    return_rates: ReturnRates
    alternatives: list[list[dict[str, str]]] = field(default_factory=list)
    corroborated_by: list[str] = field(default_factory=list)
    """Probe incidents (ids) in a consistent segment at the same time: synthetic probes saw it too."""

    @property
    def summary(self) -> str:
        """One line for dashboards."""
        seg = " or ".join(",".join(f"{k}={v}" for k, v in s.items()) for s in self.segment)
        sr = self.metrics.get("stall_ratio", {})
        return (
            f"{seg}: stall ratio {(sr.get('baseline') or 0):.1%} → {(sr.get('during') or 0):.1%}; "
            f"~{self.impact.viewers_lost:.0f} viewers lost "
            f"(95% CI {self.impact.ci_low:.0f}–{self.impact.ci_high:.0f})"
        )


@dataclass
class AnalysisResult:
    from_ms: int
    to_ms: int
    t0_ms: int
    baseline_minutes: int
    incidents: list[Incident]
    series: dict[str, dict[str, list[float | None]]]
    """Segment label ("all", "cdn=cdn-b", ...) → metric → per-minute values."""
    winback_rows: list[WinbackRow]
    totals: dict[str, float]
    thresholds: dict[str, float]
    probe_reports: int = 0
    """Probe reports (synthetic probe sessions) in the window."""
    probe_series: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    """Segment label → probe metric → per-minute values (same minutes as ``series``)."""
    probe_incidents: list[ProbeIncident] = field(default_factory=list)
    probe_host_stall_sessions: int = 0
    """Probe sessions whose frozen time overlapping the probe's own host stalls was left out of their
    stall ratio (``analysis/probe_reports.py``)."""

    def to_json(self) -> dict[str, Any]:
        """The same facts as the HTML report, for machines."""
        out: dict[str, Any] = {
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "minute0_ms": self.t0_ms,
            "baseline_minutes": self.baseline_minutes,
            "totals": self.totals,
            "thresholds": self.thresholds,
            "incidents": [],
            "series": self.series,
            "winback_count": len(self.winback_rows),
            "probes": {
                "source": "synthetic probes (streamqoe probe sessions run by us), not viewers' beacons",
                "reports": self.probe_reports,
                "host_stall_sessions": self.probe_host_stall_sessions,
                "series": self.probe_series,
                "incidents": [],
            },
        }
        for inc in self.incidents:
            d = asdict(inc)
            d["summary"] = inc.summary
            out["incidents"].append(d)
        for pi in self.probe_incidents:
            d = asdict(pi)
            d["summary"] = pi.summary
            out["probes"]["incidents"].append(d)
        return out


def _minutes_mask(n: int, idx: NDArray[np.int64]) -> NDArray[np.bool_]:
    m = np.zeros(n, dtype=bool)
    m[idx] = True
    return m


def run_analysis(
    source: EventTable | Aggregates,
    from_ms: int,
    to_ms: int,
    *,
    baseline_minutes: int = 30,
    seed: int = 0,
    margin: float = 1.5,
    progress: Callable[[str], None] | None = None,
    probes: ProbeTable | None = None,
) -> AnalysisResult:
    """Analyse the events in [from_ms, to_ms); the first ``baseline_minutes`` are the baseline.

    ``source``: raw events (aggregated here) or :class:`Aggregates` already built for this window (e.g.
    by DuckDB). Events after ``to_ms`` (if loaded) are used only to measure whether affected viewers
    came back. ``probes``: synthetic probe reports of the window, analysed beside the viewers (series,
    their own regressions, corroboration of viewer incidents). Raises :class:`AnalysisError` for an
    empty window or too little baseline.
    """
    say = progress or (lambda _msg: None)
    if to_ms <= from_ms:
        raise AnalysisError("--to must be after --from")
    if isinstance(source, EventTable):
        say(f"sessions from {source.n} events")
        agg = from_events(source, from_ms, to_ms)
    else:
        agg = source
    if agg.n_events == 0:
        raise AnalysisError("no viewer events in the window (check --from/--to and the source)")
    sessions, grid = agg.sessions, agg.grid
    n_m = grid.n_minutes
    base = np.arange(min(baseline_minutes, n_m), dtype=np.int64)
    play_base = grid.play_ms[:, base].sum(axis=0)
    if (play_base > 0).sum() < 10 or n_m - base.size < 2:
        raise AnalysisError(
            f"too little baseline: need ≥ 10 baseline minutes with playback and ≥ 2 minutes after them "
            f"(window has {n_m} minutes, baseline {base.size}, {(play_base > 0).sum()} with playback)"
        )
    varying = [j for j in range(grid.leaves.shape[1]) if np.unique(grid.leaves[:, j]).size > 1]
    codes = grid.leaves[:, varying] if varying else np.zeros((grid.leaves.shape[0], 1), np.int64)
    dim_map = varying or [0]
    scanner = Scanner(codes, max_order=3)
    say(f"scanning {n_m} minutes × {codes.shape[0]} leaves")
    metrics = {
        "stall_ratio": (grid.stall_ms / 1000.0, grid.play_ms / 1000.0, STALL),
        "slow_start_share": (grid.slow_starts, grid.joins, SLOW_START),
    }
    flags: list[Flagged] = []
    thresholds: dict[str, float] = {}
    for name, (num, den, spec) in metrics.items():
        runs = flag_minutes(scanner, num, den, base, spec, margin=margin)
        flags.extend(runs)
        thresholds[name] = runs[0].threshold if runs else float("nan")
    flags.sort(key=lambda f: f.start)
    merged: list[list[Flagged]] = []
    for f in flags:
        if merged and f.start <= max(g.end for g in merged[-1]):
            merged[-1].append(f)
        else:
            merged.append([f])
    rng = np.random.default_rng(seed)
    incidents: list[Incident] = []
    rows: list[WinbackRow] = []
    data_end = agg.data_end_ms
    for k, group in enumerate(merged):
        lead = max(group, key=lambda f: f.peak_gain)
        # a beacon's stall_ms covers the interval since the previous beacon (≤ 1 minute), so the
        # degradation began up to a minute before the first flagged minute
        start = max(min(f.start for f in group) - 1, int(base[-1]) + 1)
        end = max(f.end for f in group)
        inc_idx = np.arange(start, end, dtype=np.int64)
        num, den, _ = metrics[lead.metric]
        p = leaf_baseline(num[:, base], den[:, base])
        ranked = localize(
            codes,
            num[:, inc_idx].sum(1),
            (den[:, inc_idx] * p[:, None]).sum(1),
            threshold=lead.threshold,
            totals=den[:, inc_idx].sum(1),
            require_first=True,
        )
        if not ranked:
            continue

        def label(items: tuple[tuple[int, int], ...]) -> dict[str, str]:
            return grid.label(tuple((dim_map[d], v) for d, v in items))

        segment = [label(e.slice.items) for e in ranked[0].slices]
        mask = np.zeros(codes.shape[0], dtype=bool)
        for e in ranked[0].slices:
            mask |= e.slice.mask(codes)
        start_ms, end_ms = grid.t0_ms + start * MINUTE_MS, grid.t0_ms + end * MINUTE_MS
        impact = estimate(
            grid.leaves_n[mask].sum(0),
            grid.at_risk[mask].sum(0),
            grid.leaves_n[~mask].sum(0),
            grid.at_risk[~mask].sum(0),
            base,
            inc_idx,
            rng=rng,
        )
        inc_id = f"inc-{start_ms // 1000}-{k + 1}"
        ss = slice_series(grid, mask)
        moved: dict[str, dict[str, float | None]] = {}
        bm, im = _minutes_mask(n_m, base), _minutes_mask(n_m, inc_idx)
        for name, (num_, den_, _) in metrics.items():
            b = float(num_[mask][:, bm].sum()) / max(float(den_[mask][:, bm].sum()), 1e-9)
            d = float(num_[mask][:, im].sum()) / max(float(den_[mask][:, im].sum()), 1e-9)
            moved[name] = {"baseline": b, "during": d, "change": d - b}
        lr_b = float(grid.leaves_n[mask][:, bm].sum()) / max(float(grid.at_risk[mask][:, bm].sum()), 1e-9)
        moved["leave_rate_per_min"] = {
            "baseline": lr_b,
            "during": impact.hazard_affected,
            "change": impact.hazard_affected - lr_b,
        }
        hd = ss["hd_share"]
        hb = [v for i, v in enumerate(hd) if bm[i] and v is not None]
        hi = [v for i, v in enumerate(hd) if im[i] and v is not None]
        if hb and hi:
            moved["hd_share"] = {
                "baseline": float(np.mean(hb)),
                "during": float(np.mean(hi)),
                "change": float(np.mean(hi) - np.mean(hb)),
            }
        wb, rates = winback(
            sessions,
            mask,
            start_ms,
            end_ms,
            inc_id,
            agg.resolve_ids,
            data_end,
        )
        rows.extend(wb)
        incidents.append(
            Incident(
                inc_id,
                start_ms,
                end_ms,
                segment,
                moved,
                sorted({f.metric for f in group}),
                impact,
                len(wb),
                rates,
                [[label(e.slice.items) for e in r.slices] for r in ranked[1:]],
            )
        )
        say(f"incident {inc_id}: {incidents[-1].summary}")
    series: dict[str, dict[str, list[float | None]]] = {}
    allmask = np.ones(grid.leaves.shape[0], dtype=bool)
    series["all"] = slice_series(grid, allmask)
    series["all"]["startup_p50_ms"] = agg.startup_p50_ms
    series["all"]["startup_p95_ms"] = agg.startup_p95_ms
    for j in varying:
        for v in np.unique(grid.leaves[:, j]):
            series[f"{grid.dim_names[j]}={grid.vocab[j][v]}"] = slice_series(grid, grid.leaves[:, j] == v)
    for inc in incidents:
        m = np.zeros(grid.leaves.shape[0], dtype=bool)
        for s in inc.segment:
            mm = np.ones_like(m)
            for dname, val in s.items():
                j = grid.dim_names.index(dname)
                mm &= grid.leaves[:, j] == grid.vocab[j].index(val)
            m |= mm
        series[f"incident {inc.incident_id}"] = slice_series(grid, m)
    totals = {
        "sessions": float((sessions.leaf >= 0).sum()),
        "leaves": float(grid.leaves_n.sum()),
        "watch_hours": float(grid.play_ms.sum() / 3.6e6),
        "minutes": float(n_m),
    }
    p_series: dict[str, dict[str, list[float | None]]] = {}
    p_incidents: list[ProbeIncident] = []
    if probes is not None and probes.n:
        say(f"probe reports: {probes.n}")
        p_series = probe_series(probes, grid.t0_ms, n_m)
        p_incidents = detect_probe_incidents(probes, grid.t0_ms, n_m)
        for pi in p_incidents:
            for inc in incidents:
                if consistent(inc.segment, pi.segment) and overlaps(inc.start_ms, inc.end_ms, pi.start_ms, pi.end_ms):
                    inc.corroborated_by.append(pi.incident_id)
                    pi.corroborated_by.append(inc.incident_id)
            say(f"probe incident {pi.incident_id}: {pi.summary}")
    return AnalysisResult(
        from_ms,
        to_ms,
        grid.t0_ms,
        int(base.size),
        incidents,
        series,
        rows,
        totals,
        thresholds,
        probes.n if probes is not None else 0,
        p_series,
        p_incidents,
        probes.host_stall_sessions if probes is not None else 0,
    )
