"""The collector's Prometheus series: probe QoE (latest report per region/target) and ingest counters.

Names follow Prometheus conventions (base units: seconds, ratios in [0, 1]); docs/collector.md lists
them and docs/prometheus/alerts.yml uses them.
"""

from __future__ import annotations

import json
from typing import Any

from collector.metrics import Counter, Gauge, Histogram, Registry

_PROBE = ("region", "target")


class CollectorMetrics:
    """Every series /metrics exposes; one instance per app."""

    def __init__(self) -> None:
        r = self.registry = Registry()

        def probe_gauge(name: str, help_text: str) -> Gauge:
            return r.add(Gauge(name, help_text, _PROBE))

        self.ttff = probe_gauge("streamqoe_probe_ttff_seconds",
                                "Time to first frame of the newest probe report per region and target.")
        self.stall_ratio = probe_gauge("streamqoe_probe_stall_ratio",
                                       "Frozen time / watch time of the newest probe report.")
        self.loss = probe_gauge("streamqoe_probe_loss_ratio",
                                "RFC 3550 video packet loss (0-1) of the newest probe report.")
        self.hd_share = probe_gauge("streamqoe_probe_hd_share_ratio",
                                    "Share of watch time at height >= 720 of the newest probe report.")
        self.rtt = probe_gauge("streamqoe_probe_rtt_seconds",
                               "Round-trip time (ICE consent checks, median) of the newest probe report.")
        self.host_stalled = probe_gauge(
            "streamqoe_probe_host_stalled_ratio",
            "Share of the newest probe report's session in which the probe's own process could not run "
            "(host stalls: its freezes may be the probe's doing).",
        )
        self.joined = probe_gauge("streamqoe_probe_join_success",
                                  "1 if the newest probe report joined and received media, else 0.")
        self.last_report = probe_gauge("streamqoe_probe_last_report_timestamp_seconds",
                                       "End (start + duration, Unix seconds) of the newest probe report.")
        self.reports = r.add(
            Counter(
                "streamqoe_probe_reports_total",
                "Probe reports stored (new, not duplicates) since the collector started.",
                _PROBE,
            )
        )
        self.join_failures = r.add(
            Counter(
                "streamqoe_probe_join_failures_total",
                "Probe reports stored with a failure code, by code.",
                (*_PROBE, "failure"),
            )
        )
        self.items = r.add(
            Counter(
                "streamqoe_ingest_items_total",
                "Items received by ingest endpoint and result (accepted, duplicate, rejected).",
                ("endpoint", "result"),
            )
        )
        self.requests = r.add(
            Counter(
                "streamqoe_http_requests_total",
                "HTTP requests by route, method and status code.",
                ("route", "method", "code"),
            )
        )
        self.latency = r.add(
            Histogram(
                "streamqoe_http_request_duration_seconds",
                "Request handling time by route (ingest: until the commit).",
                ("route",),
            )
        )
        self.commit = r.add(
            Histogram(
                "streamqoe_store_commit_duration_seconds",
                "Duration of one group commit (one DuckDB transaction).",
            )
        )
        self.group_rows = r.add(
            Histogram(
                "streamqoe_store_commit_rows",
                "Rows written per group commit.",
                buckets=(1, 10, 100, 1000, 5000, 10_000, 50_000, 100_000),
            )
        )
        self.checkpoint = r.add(
            Histogram(
                "streamqoe_store_checkpoint_duration_seconds",
                "Duration of one checkpoint of the main database (on the maintenance thread, off the ack path).",
            )
        )
        self.diverted = r.add(
            Histogram(
                "streamqoe_store_diverted_seconds",
                "Time the writer committed to staging per checkpoint (the main tables take no commit meanwhile).",
            )
        )
        self.moved_rows = r.add(
            Counter(
                "streamqoe_store_moved_rows_total",
                "Rows committed to staging while the main tables were busy, then moved into them.",
            )
        )
        self.store_starts = r.add(
            Counter(
                "streamqoe_store_process_starts_total",
                "Store processes started (store_process = true): 1, plus one per store process that died.",
            )
        )
        self.journal_backlog = r.add(
            Gauge(
                "streamqoe_journal_backlog_events",
                "Events acknowledged from the journal and not yet loaded into the database (ack_on = journal).",
            )
        )
        self.journal_loaded = r.add(
            Counter("streamqoe_journal_loaded_events_total", "Journaled events loaded into the database.")
        )
        self.journal_loads = r.add(
            Counter("streamqoe_journal_loads_total", "Loader transactions (each loads one or more journal records).")
        )
        self.journal_rejected = r.add(
            Gauge(
                "streamqoe_journal_rejected_records",
                "Journal records the database refused on every attempt, saved beside the journal (should be 0).",
            )
        )
        self._journal_seen = (0, 0)
        self._latest_started: dict[tuple[str, str], int] = {}  # fmt: skip

    def observe_journal(self, backlog: int, loaded: int, loads: int, rejected: int) -> None:
        """Update the journal series from the ``JournaledStore``'s running totals (at each scrape)."""
        self.journal_backlog.set((), backlog)
        self.journal_loaded.inc((), loaded - self._journal_seen[0])
        self.journal_loads.inc((), loads - self._journal_seen[1])
        self._journal_seen = (loaded, loads)
        self.journal_rejected.set((), rejected)

    def observe_report(self, row: dict[str, Any], *, new: bool) -> None:
        """Update the probe series with one stored report (``row``: probe_reports columns).

        Gauges follow the newest report by ``started_ms``; counters count only new reports.
        """
        key = (row["region"] or "", row["target_url"])
        if new:
            self.reports.inc(key)
            if row["failure"]:
                self.join_failures.inc((*key, row["failure"]))
        if row["started_ms"] < self._latest_started.get(key, -1):
            return
        self._latest_started[key] = row["started_ms"]
        self.last_report.set(key, row["started_ms"] / 1000 + row["duration_s"])
        self.joined.set(key, 0.0 if row["failure"] else 1.0)
        for gauge, col, scale in (
            (self.ttff, "ttff_ms", 1e-3),
            (self.stall_ratio, "stall_ratio", 1.0),
            (self.loss, "loss_pct", 1e-2),
            (self.hd_share, "hd_share", 1.0),
            (self.rtt, "rtt_ms", 1e-3),
        ):
            v = row[col]
            if v is None:  # not measured: no sample rather than a made-up 0
                gauge.remove(key)
            else:
                gauge.set(key, v * scale)
        stalled_s = _host_stalled_s(row)
        if stalled_s is None or not row["duration_s"]:
            self.host_stalled.remove(key)
        else:
            self.host_stalled.set(key, min(1.0, stalled_s / row["duration_s"]))


def _host_stalled_s(row: dict[str, Any]) -> float | None:
    """``summary.host_stalls.stalled_s`` of a report row: its own column when the store gives one,
    else read from the stored body; None from a probe that did not measure it."""
    if "host_stalled_s" in row:
        v = row["host_stalled_s"]
    else:
        host = (json.loads(row["body"]).get("summary") or {}).get("host_stalls") or {}
        v = host.get("stalled_s")
    return None if v is None else float(v)
