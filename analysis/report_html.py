"""The report directory: ``report.html`` (self-contained, inline SVG, no external assets),
``report.json`` (the same facts) and ``winback.csv``."""

from __future__ import annotations

import csv
import html
import json
from datetime import UTC, datetime
from pathlib import Path

from analysis.pipeline import AnalysisResult


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def svg_line(
    values: list[float | None],
    title: str,
    *,
    marks: list[tuple[int, int]] = (),  # type: ignore[assignment]
    w: int = 640,
    h: int = 140,
    pct: bool = False,
) -> str:
    """A small inline SVG line chart; ``marks`` are (start, end) minute ranges shaded red."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    n = max(len(values) - 1, 1)
    hi = max((v for _, v in pts), default=1.0) or 1.0
    sx = (w - 50) / n
    sy = (h - 30) / hi
    shade = "".join(
        f'<rect x="{40 + a * sx:.1f}" y="10" width="{max((b - a) * sx, 1):.1f}" height="{h - 30}" '
        f'fill="#f8d0d0"/>'
        for a, b in marks
    )
    path = " ".join(
        f"{'M' if k == 0 else 'L'}{40 + i * sx:.1f},{h - 20 - v * sy:.1f}" for k, (i, v) in enumerate(pts)
    )
    top = f"{hi:.1%}" if pct else f"{hi:.3g}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="{html.escape(title)}">'
        f'{shade}<text x="40" y="9" font-size="10">{html.escape(title)} (max {top})</text>'
        f'<line x1="40" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" stroke="#999"/>'
        f'<path d="{path}" fill="none" stroke="#2060c0" stroke-width="1.5"/>'
        f'<text x="40" y="{h - 5}" font-size="10">minute 0</text>'
        f'<text x="{w - 60}" y="{h - 5}" font-size="10">minute {n}</text></svg>'
    )


def _probe_section(result: AnalysisResult) -> list[str]:
    """Probe QoE and probe-detected regressions, labelled as synthetic measurements."""
    parts = ["<h2>Synthetic probes</h2>"]
    if not result.probe_reports:
        parts.append("<p>No probe reports in this window (only viewers' beacons were analysed).</p>")
        return parts
    parts.append(
        f"<p>These numbers come from <b>synthetic probes</b> — {result.probe_reports} probe sessions run by "
        "streamqoe probes, not from viewers' beacons. They are shown beside the viewers' QoE, never mixed in.</p>"
    )
    if result.probe_host_stall_sessions:
        parts.append(
            f"<p>{result.probe_host_stall_sessions} probe sessions froze while the probe's own process could not "
            "run (a host stall, <code>summary.host_stalls</code>); that frozen time is left out of their stall "
            "ratio.</p>"
        )
    parts.append(f"<h3>Regressions seen by probes ({len(result.probe_incidents)})</h3>")
    if not result.probe_incidents:
        parts.append("<p>No segment's probes degraded beyond their peers and their own history.</p>")
    p_marks = [
        ((pi.start_ms - result.t0_ms) // 60_000, (pi.end_ms - result.t0_ms) // 60_000 + 1)
        for pi in result.probe_incidents
    ]
    for pi in result.probe_incidents:
        parts.append(f"<h4>{html.escape(pi.incident_id)}: {html.escape(pi.summary)}</h4>")
        seen = (
            f" Viewers' beacons saw it too: {html.escape(', '.join(pi.corroborated_by))}."
            if pi.corroborated_by
            else " No viewer incident in a consistent segment at this time."
        )
        parts.append(
            f"<p>{_iso(pi.start_ms)} – {_iso(pi.end_ms)} ({(pi.end_ms - pi.start_ms) / 1000:.0f} s); "
            f"degraded: {html.escape(', '.join(pi.detected_by))}; {pi.reports} probe sessions in the segment."
            f"{seen}</p>"
        )
        parts.append(
            "<table><tr><th>probe metric (in segment)</th><th>before</th><th>peers, same minutes</th>"
            "<th>during</th><th>change</th></tr>"
        )

        def cell(v: float | None) -> str:
            return "–" if v is None else f"{v:.4g}"

        for name, m in pi.metrics.items():
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td>{cell(m['before'])}</td><td>{cell(m['peers'])}</td>"
                f"<td>{cell(m['during'])}</td><td>{cell(m['change'])}</td></tr>"
            )
        parts.append("</table>")
    # the probes may cover a few minutes of a long window: chart only those minutes
    counts = result.probe_series.get("all", {}).get("reports", [])
    with_reports = [i for i, c in enumerate(counts) if c]
    lo, hi = (max(with_reports[0] - 1, 0), with_reports[-1] + 2) if with_reports else (0, len(counts))
    shifted = [(max(a - lo, 0), max(b - lo, 0)) for a, b in p_marks if b > lo and a < hi]
    parts.append(
        f"<h3>Probe QoE per segment and minute</h3><p>Minutes {lo}–{hi - 1} of the window "
        f"({_iso(result.t0_ms + lo * 60_000)} – {_iso(result.t0_ms + hi * 60_000)}); shaded: probe incidents.</p>"
    )
    for seg, ser in result.probe_series.items():
        parts.append(f"<h4>probes, {html.escape(seg)}</h4>")
        for metric, pct in (
            ("stall_ratio", True),
            ("loss_pct", False),
            ("ttff_p50_ms", False),
            ("ttff_p95_ms", False),
            ("join_failure_share", True),
            ("hd_share", True),
        ):
            vals = ser.get(metric, [])[lo:hi]
            if any(v is not None for v in vals):
                parts.append(svg_line(vals, f"probe {metric}", marks=shifted, pct=pct))
    return parts


def write_report(result: AnalysisResult, out_dir: Path) -> None:
    """Write report.html, report.json and winback.csv into ``out_dir`` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(
        json.dumps(result.to_json(), indent=1, default=str), encoding="utf-8"
    )
    with (out_dir / "winback.csv").open("w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(
            [
                "viewer_id",
                "session_id",
                "incident_id",
                "left_at",
                "winback_closes_at",
                "stall_ratio",
                "startup_ms",
                "returned",
            ]
        )
        for r in result.winback_rows:
            wr.writerow(
                [
                    r.viewer_id,
                    r.session_id,
                    r.incident_id,
                    _iso(r.left_ms),
                    _iso(r.closes_ms),
                    "" if r.stall_ratio is None else f"{r.stall_ratio:.4f}",
                    "" if r.startup_ms is None else f"{r.startup_ms:.0f}",
                    "" if r.returned is None else int(r.returned),
                ]
            )
    marks = [
        ((i.start_ms - result.t0_ms) // 60_000, (i.end_ms - result.t0_ms) // 60_000) for i in result.incidents
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>streamqoe analysis</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}</style></head><body>",
        f"<h1>streamqoe analysis {html.escape(_iso(result.from_ms))} – {html.escape(_iso(result.to_ms))}</h1>",
        f"<p>{result.totals['sessions']:.0f} sessions, {result.totals['leaves']:.0f} leaves, "
        f"{result.totals['watch_hours']:.1f} watch hours; baseline: first {result.baseline_minutes} minutes.</p>",
        f"<h2>Incidents ({len(result.incidents)})</h2>",
    ]
    if not result.incidents:
        parts.append("<p>No QoE regression beat the calibrated threshold.</p>")
    for inc in result.incidents:
        im = inc.impact
        rr = inc.return_rates
        parts.append(f"<h3>{html.escape(inc.incident_id)}: {html.escape(inc.summary)}</h3>")
        parts.append(
            f"<p>{_iso(inc.start_ms)} – {_iso(inc.end_ms)}; detected by {', '.join(inc.detected_by)}.</p>"
        )
        if inc.corroborated_by:
            parts.append(
                "<p><b>Corroborated by synthetic probes</b>: the probes also saw a regression in this segment "
                f"at this time ({html.escape(', '.join(inc.corroborated_by))}, below).</p>"
            )
        parts.append(
            "<table><tr><th>metric (in segment)</th><th>baseline</th><th>during</th><th>change</th></tr>"
        )
        for name, m in inc.metrics.items():
            parts.append(
                "<tr><td>{}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:+.4g}</td></tr>".format(
                    html.escape(name), m["baseline"] or 0.0, m["during"] or 0.0, m["change"] or 0.0
                )
            )
        parts.append("</table>")
        parts.append(
            f"<p>Viewers lost: <b>{im.viewers_lost:.0f}</b> (95% CI {im.ci_low:.0f}–{im.ci_high:.0f}); "
            f"observed leaves {im.observed_leaves:.0f} vs counterfactual {im.expected_leaves:.0f}; "
            f"{im.share_of_all_leaves:.1%} of all leaves during the incident. Win-back list: {inc.winback_n} "
            f"viewers. Return within 7 days: affected "
            f"{'n/a' if rr.affected is None else f'{rr.affected:.1%}'} vs unaffected leavers "
            f"{'n/a' if rr.unaffected is None else f'{rr.unaffected:.1%}'}.</p>"
        )
        if inc.alternatives:
            alt = "; ".join(
                " or ".join(",".join(f"{k}={v}" for k, v in s.items()) for s in a) for a in inc.alternatives
            )
            parts.append(f"<p>Other candidate explanations (ranked): {html.escape(alt)}</p>")
        ser = result.series.get(f"incident {inc.incident_id}", {})
        for metric, pct in (("stall_ratio", True), ("leave_rate", True), ("concurrent", False)):
            if metric in ser:
                parts.append(svg_line(ser[metric], f"segment {metric}", marks=marks, pct=pct))
    parts.append("<h2>All viewers</h2>")
    allser = result.series["all"]
    for metric, pct in (
        ("concurrent", False),
        ("joins", False),
        ("leave_rate", True),
        ("stall_ratio", True),
        ("hd_share", True),
        ("startup_p50_ms", False),
        ("startup_p95_ms", False),
    ):
        parts.append(svg_line(allser[metric], metric, marks=marks, pct=pct))
    parts.extend(_probe_section(result))
    parts.append("</body></html>")
    (out_dir / "report.html").write_text("\n".join(parts), encoding="utf-8")
