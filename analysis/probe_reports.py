"""Probe reports as columns: what synthetic probes measured, one row per probe session.

Read from the collector's ``probe_reports`` table (schema in ``collector/schema.py``). A probe is a
synthetic viewer run by us, not an audience member: its numbers are reported beside the viewers' and
never mixed into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.events_table import UNKNOWN

LABEL_KEYS = ("isp", "cdn")
"""Probe labels that name a segment the viewers' beacons also carry."""


@dataclass
class ProbeTable:
    """One row per probe report (a probe session)."""

    started_ms: NDArray[np.int64]
    """Session start, ms since the Unix epoch (UTC)."""
    duration_s: NDArray[np.float64]
    failed: NDArray[np.bool_]
    """The probe could not join or receive media (``failure`` set)."""
    ttff_ms: NDArray[np.float64]
    """Time to first frame, ms; NaN when not measured (e.g. a failed join)."""
    stall_ratio: NDArray[np.float64]
    """Frozen time / watch time, net of freezes that overlapped a stall of the probe's own process
    (``summary.host_stalls.frozen_s_during``: the probe's host, not the stream, may have caused them);
    NaN when not measured."""
    loss_pct: NDArray[np.float64]
    """Video packets lost, % (RFC 3550); NaN when not measured."""
    hd_share: NDArray[np.float64]
    """Share of time at ≥ 720 lines; NaN when not measured."""
    dims: dict[str, list[str]] = field(default_factory=dict)
    """Segment dimension ("region", "isp", "cdn") → value per report ("(none)" when absent)."""
    host_frozen_s: NDArray[np.float64] | None = None
    """Frozen seconds left out of ``stall_ratio`` as the probe host's own stalls (None: all zero)."""

    @property
    def n(self) -> int:
        """Number of reports."""
        return int(self.started_ms.size)

    def by_start(self) -> ProbeTable:
        """The same reports ordered by session start."""
        o = np.argsort(self.started_ms, kind="stable")
        return ProbeTable(
            self.started_ms[o],
            self.duration_s[o],
            self.failed[o],
            self.ttff_ms[o],
            self.stall_ratio[o],
            self.loss_pct[o],
            self.hd_share[o],
            {k: [v[i] for i in o] for k, v in self.dims.items()},
            None if self.host_frozen_s is None else self.host_frozen_s[o],
        )

    @property
    def host_stall_sessions(self) -> int:
        """Sessions with frozen time left out of ``stall_ratio`` as the probe host's own."""
        return 0 if self.host_frozen_s is None else int((self.host_frozen_s > 0).sum())


def empty_probes() -> ProbeTable:
    """No probe reports."""
    z = np.zeros(0)
    return ProbeTable(np.zeros(0, np.int64), z, np.zeros(0, bool), z, z, z, z, {})


def _f64(a: Any) -> NDArray[np.float64]:
    if isinstance(a, np.ma.MaskedArray):
        return np.asarray(np.ma.filled(a.astype(np.float64), np.nan), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def probes_from_duckdb(path: Path, from_ms: int, to_ms: int) -> ProbeTable:
    """Reports whose session started in [from_ms, to_ms); an empty table when the file has no
    ``probe_reports`` table (a viewer-only database) or no reports in the window."""
    from analysis.load import connect

    con = connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "probe_reports" not in tables:
            return empty_probes()
        labels = ", ".join(
            f"coalesce(json_extract_string(labels, '$.{k}'), '{UNKNOWN}') AS l_{k}" for k in LABEL_KEYS
        )
        r = con.execute(
            f"""SELECT started_ms, duration_s, failure IS NOT NULL AS failed, ttff_ms, stall_ratio, loss_pct,
                   hd_share, coalesce(region, '{UNKNOWN}') AS region, {labels}, total_freezes_s,
                   coalesce(TRY_CAST(json_extract(body, '$.summary.host_stalls.frozen_s_during') AS DOUBLE), 0)
                     AS host_frozen_s
            FROM probe_reports WHERE started_ms >= {int(from_ms)} AND started_ms < {int(to_ms)}
            ORDER BY started_ms"""
        ).fetchnumpy()
    finally:
        con.close()
    if len(r["started_ms"]) == 0:
        return empty_probes()
    dims = {"region": [str(x) for x in r["region"]]}
    for k in LABEL_KEYS:
        dims[k] = [str(x) for x in r[f"l_{k}"]]
    stall_ratio, host_frozen_s = net_stall_ratio(_f64(r["stall_ratio"]), _f64(r["total_freezes_s"]),
                                                 _f64(r["host_frozen_s"]))
    return ProbeTable(
        np.asarray(r["started_ms"], dtype=np.int64),
        _f64(r["duration_s"]),
        np.asarray(r["failed"], dtype=bool),
        _f64(r["ttff_ms"]),
        stall_ratio,
        _f64(r["loss_pct"]),
        _f64(r["hd_share"]),
        dims,
        host_frozen_s,
    )


def net_stall_ratio(stall_ratio: NDArray[np.float64], frozen_s: NDArray[np.float64],
                    host_frozen_s: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(stall ratio without the frozen time the probe's own host caused, the seconds left out).

    stall ratio = frozen / watch, so the net ratio is ``stall_ratio · (frozen − host) / frozen``; a
    report without ``host_stalls`` (an older probe) or without freezes keeps its ratio.
    """
    host = np.where(np.isnan(frozen_s) | np.isnan(host_frozen_s), 0.0, np.minimum(host_frozen_s, frozen_s))
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.where(host > 0, (frozen_s - host) / frozen_s, 1.0)
    return stall_ratio * keep, host


def probe_end(path: Path, started_from_ms: int, started_before_ms: int) -> int | None:
    """End (start + duration, ms) of the last probe session started in [started_from_ms,
    started_before_ms); None without any (or without a ``probe_reports`` table)."""
    from analysis.load import connect

    con = connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "probe_reports" not in tables:
            return None
        row = con.execute(
            f"""SELECT max(started_ms + CAST(duration_s * 1000 AS BIGINT)) FROM probe_reports
            WHERE started_ms >= {int(started_from_ms)} AND started_ms < {int(started_before_ms)}"""
        ).fetchone()
    finally:
        con.close()
    return None if row is None or row[0] is None else int(row[0])


def probes_from_ndjson(path: Path, from_ms: int, to_ms: int) -> ProbeTable:
    """Reports (wire format, one JSON object a line, as ``GET /v1/reports`` exports them) whose session
    started in [from_ms, to_ms). A line that is not a report raises ``ValueError`` naming the line."""
    import json
    from datetime import datetime

    rows: list[tuple[Any, ...]] = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                started = int(datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")).timestamp() * 1000)
                s = r["summary"]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: not a probe report ({e})") from None
            if not from_ms <= started < to_ms:
                continue
            video = s.get("video") or {}
            loss = [st.get("loss_pct") for st in s.get("streams", []) if st.get("kind") == "video"]
            labels = r.get("labels") or {}
            host = s.get("host_stalls") or {}
            rows.append((started, r.get("duration_s"), r.get("failure") is not None, s["join"].get("ttff_ms"),
                         video.get("stall_ratio"), loss[0] if loss else None, video.get("hd_share"),
                         r.get("region") or UNKNOWN, *(labels.get(k, UNKNOWN) for k in LABEL_KEYS),
                         video.get("totalFreezesDuration"), host.get("frozen_s_during")))
    if not rows:
        return empty_probes()
    rows.sort(key=lambda row: row[0])
    cols = list(zip(*rows, strict=True))

    def f64(i: int) -> NDArray[np.float64]:
        return np.array([np.nan if v is None else v for v in cols[i]], dtype=np.float64)

    dims = {"region": [str(x) for x in cols[7]]}
    for j, k in enumerate(LABEL_KEYS):
        dims[k] = [str(x) for x in cols[8 + j]]
    n_labels = len(LABEL_KEYS)
    stall_ratio, host_frozen_s = net_stall_ratio(f64(4), f64(8 + n_labels), f64(9 + n_labels))
    return ProbeTable(np.array(cols[0], dtype=np.int64), f64(1), np.array(cols[2], dtype=bool), f64(3), stall_ratio,
                      f64(5), f64(6), dims, host_frozen_s)
