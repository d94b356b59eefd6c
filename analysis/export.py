"""Writing an :class:`EventTable` out: NDJSON (the wire format, one event per line) or a DuckDB file
with the collector's ``viewer_events`` schema (for offline analysis, tests and benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.audience import iter_wire_events
from analysis.events_table import EventTable
from analysis.load import INCIDENTS_DDL, VIEWER_EVENTS_DDL, _sql_list
from collector.events import EVENT_TYPES


def write_ndjson(table: EventTable, path: Path) -> int:
    """Write every event as a wire dict per line; returns the number written."""
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for d in iter_wire_events(table):
            f.write(json.dumps(d, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_duckdb(table: EventTable, path: Path, chunk: int = 2_000_000) -> None:
    """Append the events to ``viewer_events`` in a DuckDB file (created with the collector's DDL).
    Strings are built inside DuckDB from integer codes, so no Python loop over events."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute(VIEWER_EVENTS_DDL)
        con.execute(INCIDENTS_DDL)
        vid = np.array(table.viewer_ids, dtype=object)
        sid = np.array(table.session_ids, dtype=object)
        dim_expr = []
        for j, d in enumerate(table.dim_names):
            dim_expr.append(f"{_sql_list(table.vocab[j])}[d{j} + 1] AS {d}")
        missing = [
            d for d in ("region", "isp", "cdn", "device", "app_version", "room") if d not in table.dim_names
        ]
        for d in missing:
            dim_expr.append(("'main'" if d == "room" else "NULL") + f" AS {d}")
        types = _sql_list(list(EVENT_TYPES))
        for lo in range(0, table.n, chunk):
            sl = slice(lo, min(lo + chunk, table.n))
            s = table.session[sl]
            # session / viewer names are looked up in Python once per distinct id, not per event
            us, inv_s = np.unique(s, return_inverse=True)
            uv, inv_v = np.unique(table.viewer[sl], return_inverse=True)
            params: list[object] = [
                table.t_ms[sl],
                table.etype[sl].astype(np.int64),
                inv_s.astype(np.int64),
                [str(x) for x in sid[us]],
                inv_v.astype(np.int64),
                [str(x) for x in vid[uv]],
            ]
            params += [table.dims[sl, j].astype(np.int64) for j in range(len(table.dim_names))]
            params += [table.startup_ms[sl], table.stall_ms[sl], table.watch_ms[sl], table.height[sl]]
            nd = len(table.dim_names)
            unn = ", ".join(
                ["unnest($1::BIGINT[]) AS t_ms", "unnest($2::BIGINT[]) AS et", "unnest($3::BIGINT[]) AS si"]
                + ["unnest($5::BIGINT[]) AS vi"]
                + [f"unnest(${7 + j}::BIGINT[]) AS d{j}" for j in range(nd)]
                + [
                    f"unnest(${7 + nd + k}::DOUBLE[]) AS {c}"
                    for k, c in enumerate(("startup_ms", "stall_ms", "watch_ms", "height"))
                ]
            )
            con.execute(
                f"""INSERT INTO viewer_events BY NAME
                SELECT si::VARCHAR || '.' || t_ms::VARCHAR || '.' || et::VARCHAR AS event_id,
                       $6[vi + 1] AS viewer_id, $4[si + 1] AS session_id, {", ".join(dim_expr)},
                       t_ms, {types}[et + 1] AS type,
                       CASE WHEN isnan(startup_ms) THEN NULL ELSE startup_ms END AS startup_ms,
                       CASE WHEN isnan(stall_ms) THEN NULL ELSE ceil(stall_ms / 2000)::INTEGER END
                         AS stall_count,
                       CASE WHEN isnan(stall_ms) THEN NULL ELSE stall_ms END AS stall_ms,
                       CASE WHEN isnan(watch_ms) THEN NULL ELSE watch_ms END AS watch_ms,
                       CASE WHEN isnan(height) THEN NULL ELSE height::INTEGER END AS height,
                       NULL::DOUBLE AS bitrate_kbps, t_ms AS received_ms
                FROM (SELECT {unn})""",
                params,
            )
    finally:
        con.close()
