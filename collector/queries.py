"""SQL for the read API: QoE series by segment and time bucket, audience series.

Pure functions that build (sql, params) from validated arguments; ``collector.readapi`` runs them.
Segment dimensions are whitelisted (or, for probe labels, checked against the label-key pattern)
before they reach the SQL text; every value is a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VIEWER_DIMS = ("region", "isp", "cdn", "device", "app_version", "room")
PROBE_COLUMNS_DIMS = ("region", "room", "target_url", "probe_id", "signaling", "mode")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Window:
    """[from_ms, to_ms) cut into buckets of ``bucket_ms``; ``from_ms`` is aligned down to a bucket."""

    from_ms: int
    to_ms: int
    bucket_ms: int


def make_window(from_ms: int, to_ms: int, bucket_ms: int) -> Window:
    """Validate and align; ``ValueError`` naming the parameter."""
    if bucket_ms < 1000:
        raise ValueError("bucket_s: must be at least 1")
    if to_ms <= from_ms:
        raise ValueError("to_ms: must be after from_ms")
    start = from_ms - from_ms % bucket_ms
    if (to_ms - start) // bucket_ms > MAX_BUCKETS:
        raise ValueError(f"bucket_s: more than {MAX_BUCKETS} buckets in the window; use a larger bucket")
    return Window(start, to_ms, bucket_ms)


def probe_dim_sql(dim: str) -> str:
    """SQL for one probe segment dimension: a column, or a label (``isp``, ``cdn``, …) from ``labels``."""
    if dim in PROBE_COLUMNS_DIMS:
        return dim
    name = dim.removeprefix("label.")
    if not _LABEL_KEY.match(name):
        raise ValueError(f"by: unknown dimension {dim[:40]!r}")
    return f"json_extract_string(labels, '$.{name}')"


def viewer_dim_sql(dim: str) -> str:
    if dim not in VIEWER_DIMS:
        raise ValueError(f"by: unknown dimension {dim[:40]!r}; one of {', '.join(VIEWER_DIMS)}")
    return dim


def _select_dims(exprs: Sequence[str]) -> str:
    return "".join(f"{e} AS d{i}, " for i, e in enumerate(exprs))


def probe_qoe_sql(by: Sequence[str], w: Window) -> tuple[str, list[Any]]:
    """Per segment and bucket of ``started_ms``: reports, failures, TTFF p50/p95 (ms), mean stall ratio,
    mean video loss %, mean HD share, median latency (ms)."""
    exprs = [probe_dim_sql(d) for d in by]
    sql = f"""
        SELECT {_select_dims(exprs)}
               started_ms - (started_ms - ?) % ? AS t_ms,
               count(*) AS reports,
               count(failure) AS failures,
               quantile_cont(ttff_ms, 0.5) AS ttff_p50_ms,
               quantile_cont(ttff_ms, 0.95) AS ttff_p95_ms,
               avg(stall_ratio) AS stall_ratio,
               avg(loss_pct) AS loss_pct,
               avg(hd_share) AS hd_share,
               quantile_cont(latency_p50_ms, 0.5) AS latency_p50_ms
        FROM probe_reports
        WHERE started_ms >= ? AND started_ms < ?
        GROUP BY ALL ORDER BY ALL
    """
    return sql, [w.from_ms, w.bucket_ms, w.from_ms, w.to_ms]


def viewer_qoe_sql(by: Sequence[str], w: Window) -> tuple[str, list[Any]]:
    """Per segment and bucket of viewers' beacons: sessions, startup p50/p95 (ms),
    stall ratio = Σ stall_ms / (Σ watch_ms + Σ stall_ms), stalls, HD share (watch-time weighted), bitrate."""
    exprs = [viewer_dim_sql(d) for d in by]
    sql = f"""
        SELECT {_select_dims(exprs)}
               t_ms - (t_ms - ?) % ? AS t_ms,
               count(*) FILTER (WHERE type = 'qoe') AS beacons,
               count(DISTINCT session_id) AS sessions,
               quantile_cont(startup_ms, 0.5) AS startup_p50_ms,
               quantile_cont(startup_ms, 0.95) AS startup_p95_ms,
               sum(stall_ms) / nullif(coalesce(sum(watch_ms), 0) + sum(stall_ms), 0) AS stall_ratio,
               sum(stall_count) AS stalls,
               sum(watch_ms) FILTER (WHERE height >= 720)
                   / nullif(sum(watch_ms) FILTER (WHERE height IS NOT NULL), 0) AS hd_share,
               avg(bitrate_kbps) AS bitrate_kbps
        FROM viewer_events
        WHERE t_ms >= ? AND t_ms < ? AND type IN ('qoe', 'join')
        GROUP BY ALL ORDER BY ALL
    """
    return sql, [w.from_ms, w.bucket_ms, w.from_ms, w.to_ms]


def audience_concurrency_sql(by: Sequence[str], w: Window, timeout_ms: int) -> tuple[str, list[Any]]:
    """Concurrent viewers per bucket: distinct viewers with a session active at some time in the bucket.

    A session is active from its first event to its ``leave`` (or, without one, to its last event +
    the heartbeat timeout). Its segment is that of its first event in the window.
    """
    exprs = [viewer_dim_sql(d) for d in by]
    dims_first = "".join(f"arg_min({e}, t_ms) AS d{i}, " for i, e in enumerate(exprs))
    group_dims = "".join(f"d{i}, " for i in range(len(exprs)))
    sql = f"""
        WITH sess AS (
            SELECT session_id, {dims_first}
                   arg_min(viewer_id, t_ms) AS viewer_id,
                   min(t_ms) AS s_ms,
                   coalesce(min(t_ms) FILTER (WHERE type = 'leave'), max(t_ms) + ?) AS e_ms
            FROM viewer_events
            WHERE t_ms >= ? AND t_ms < ?
            GROUP BY session_id
        ),
        b AS (SELECT unnest(range(?::BIGINT, ?::BIGINT, ?::BIGINT)) AS t_ms)
        SELECT {group_dims} b.t_ms AS t_ms, count(DISTINCT viewer_id) AS concurrent_viewers
        FROM b JOIN sess ON sess.s_ms < b.t_ms + ? AND sess.e_ms >= b.t_ms
        GROUP BY ALL ORDER BY ALL
    """
    return sql, [timeout_ms, w.from_ms - timeout_ms, w.to_ms, w.from_ms, w.to_ms, w.bucket_ms, w.bucket_ms]


def audience_flow_sql(by: Sequence[str], w: Window) -> tuple[str, list[Any]]:
    """Joins and leaves (events) per segment and bucket."""
    exprs = [viewer_dim_sql(d) for d in by]
    sql = f"""
        SELECT {_select_dims(exprs)}
               t_ms - (t_ms - ?) % ? AS t_ms,
               count(*) FILTER (WHERE type = 'join') AS joins,
               count(*) FILTER (WHERE type = 'leave') AS leaves
        FROM viewer_events
        WHERE t_ms >= ? AND t_ms < ? AND type IN ('join', 'leave')
        GROUP BY ALL ORDER BY ALL
    """
    return sql, [w.from_ms, w.bucket_ms, w.from_ms, w.to_ms]


def to_series(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Rows with ``d0..dn`` + ``t_ms`` + metrics → ``[{"segment": {...}, "points": [...]}]``."""
    series: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = tuple(r.get(f"d{i}") for i in range(len(by)))
        s = series.get(key)
        if s is None:
            s = series[key] = {"segment": dict(zip(by, key, strict=True)), "points": []}
        s["points"].append({k: _jsonable(v) for k, v in r.items() if not (k[0] == "d" and k[1:].isdigit())})
    return list(series.values())


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN never reaches JSON
        return None
    if hasattr(v, "item"):  # numpy / Decimal-like scalars
        return v.item()
    return v
