"""Flatten a validated probe ``Report`` into a ``probe_reports`` row (the columns analysis scans)."""

from __future__ import annotations

import json
from typing import Any

from probe.report import Report, parse_utc

REPORT_COLUMNS: tuple[str, ...] = (
    "report_id", "probe_id", "probe_version", "region", "room", "target_url", "signaling",
    "started_ms", "duration_s", "failure", "failure_message", "labels", "mode",
    "ttff_ms", "stall_ratio", "freeze_count", "total_freezes_s", "loss_pct", "hd_share",
    "fps_mean", "latency_p50_ms", "rtt_ms", "body",
)  # fmt: skip
"""Column order of ``report_row`` (``received_ms`` is added by the store at commit)."""


def video_loss_pct(report: Report) -> float | None:
    """RFC 3550 loss % of the first video stream, None if there is none or it was not measured."""
    for s in report.summary.streams:
        if s.kind == "video":
            return s.loss_pct
    return None


def report_row(report: Report) -> tuple[Any, ...]:
    """The ``probe_reports`` values of ``report`` in ``REPORT_COLUMNS`` order."""
    v = report.summary.video
    started_ms = round(parse_utc(report.started_at, "started_at").timestamp() * 1000)
    return (
        report.report_id,
        report.probe_id,
        report.probe_version,
        report.region,
        report.target.room,
        report.target.url,
        report.target.signaling,
        started_ms,
        float(report.duration_s),
        report.failure,
        report.failure_message,
        json.dumps(dict(report.labels), sort_keys=True),
        report.summary.mode,
        _f(report.summary.join.ttff_ms),
        _f(v.stall_ratio) if v else None,
        v.freezeCount if v else None,
        _f(v.totalFreezesDuration) if v else None,
        _f(video_loss_pct(report)),
        _f(v.hd_share) if v else None,
        _f(v.fps_mean) if v else None,
        _f(v.latency_p50_ms) if v else None,
        _f(report.summary.rtt_ms),
        json.dumps(report.to_dict(), separators=(",", ":")),
    )


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)
