"""Reading viewer events into an :class:`EventTable`: an NDJSON export, or a collector DuckDB file.

``streamqoe analyze --db`` does not load events: :mod:`analysis.sql_aggregate` computes the sums the
analysis needs inside DuckDB (3× less CPU than loading events). :func:`from_duckdb` loads every event (ids hashed and
dimensions encoded in SQL, columns as numpy arrays) for tests and for checking that both paths agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.events_table import UNKNOWN, EventTable, empty_table
from collector.events import DIMENSIONS, EVENT_TYPES, event_from_dict

DAY_MS = 86_400_000


class LoadError(Exception):
    """The source cannot be read; the message says why."""


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def connect(path: Path) -> Any:
    """A read-only connection to a collector DuckDB file with a ``viewer_events`` table."""
    import duckdb

    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except Exception as e:  # duckdb raises its own exception types for locked / corrupt files
        raise LoadError(f"{path}: cannot open as DuckDB ({e})") from None
    con.execute("SET enable_progress_bar = false")
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "viewer_events" not in tables:
        con.close()
        raise LoadError(f"{path}: no viewer_events table (is this a streamqoe collector database?)")
    return con


def from_duckdb(path: Path, from_ms: int, to_ms: int, lookahead_ms: int = 7 * DAY_MS) -> EventTable:
    """Events with ``from_ms ≤ t_ms < to_ms + lookahead_ms`` from the collector's ``viewer_events``."""
    import duckdb

    con = connect(path)
    try:
        hi = to_ms + lookahead_ms
        where = f"t_ms >= {int(from_ms)} AND t_ms < {int(hi)}"
        vocab: list[list[str]] = []
        for d in DIMENSIONS:
            vals = con.execute(
                f"SELECT DISTINCT coalesce({d}, '{UNKNOWN}') FROM viewer_events WHERE {where} ORDER BY 1"
            ).fetchall()
            vocab.append([str(v[0]) for v in vals])
        dim_sql = (
            ", ".join(
                f"CAST(list_position({_sql_list(v)}, coalesce({d}, '{UNKNOWN}')) - 1 AS INTEGER) AS d_{d}"
                for d, v in zip(DIMENSIONS, vocab, strict=True)
            )
            if all(vocab)
            else ""
        )
        types = _sql_list(list(EVENT_TYPES))
        q = f"""
            SELECT t_ms, CAST(list_position({types}, type) - 1 AS TINYINT) AS etype,
                   hash(session_id) AS sh, hash(viewer_id) AS vh{", " + dim_sql if dim_sql else ""},
                   startup_ms, stall_ms, watch_ms, CAST(height AS DOUBLE) AS height
            FROM viewer_events WHERE {where}"""
        cols = con.execute(q).fetchnumpy()
        if len(cols["t_ms"]) == 0:
            return empty_table()
        vmap = con.execute(
            f"SELECT DISTINCT hash(viewer_id), viewer_id FROM viewer_events WHERE {where}"
        ).fetchnumpy()
        smap = con.execute(
            f"SELECT DISTINCT hash(session_id), session_id FROM viewer_events WHERE {where}"
        ).fetchnumpy()
    except duckdb.Error as e:
        raise LoadError(f"{path}: query failed ({e})") from None
    finally:
        con.close()
    return _assemble(cols, vocab, vmap, smap)


def _as_float(a: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(a, np.ma.MaskedArray):
        return np.asarray(np.ma.filled(a.astype(np.float64), np.nan), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def _assemble(
    cols: dict[str, Any], vocab: list[list[str]], vmap: dict[str, Any], smap: dict[str, Any]
) -> EventTable:
    s_keys = np.asarray(smap[next(iter(smap))], dtype=np.uint64)
    s_names = list(smap[list(smap)[1]])
    v_keys = np.asarray(vmap[next(iter(vmap))], dtype=np.uint64)
    v_names = list(vmap[list(vmap)[1]])
    s_order = np.argsort(s_keys)
    v_order = np.argsort(v_keys)
    sess = s_order[np.searchsorted(s_keys[s_order], np.asarray(cols["sh"], dtype=np.uint64))]
    view = v_order[np.searchsorted(v_keys[v_order], np.asarray(cols["vh"], dtype=np.uint64))]
    dims = np.stack([np.asarray(cols[f"d_{d}"], dtype=np.int32) for d in DIMENSIONS], axis=1)
    return EventTable(
        np.asarray(cols["t_ms"], dtype=np.int64),
        np.asarray(cols["etype"], dtype=np.int8),
        sess.astype(np.int64),
        view.astype(np.int64),
        dims,
        DIMENSIONS,
        vocab,
        [str(v) for v in v_names],
        [str(s) for s in s_names],
        _as_float(cols["startup_ms"]),
        _as_float(cols["stall_ms"]),
        _as_float(cols["watch_ms"]),
        _as_float(cols["height"]),
    )


def from_ndjson(path: Path) -> EventTable:
    """All events of an NDJSON export (one wire event per line, validated by ``event_from_dict``)."""
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(event_from_dict(json.loads(line)))
            except (ValueError, json.JSONDecodeError) as e:
                raise LoadError(f"{path}:{i}: {e}") from None
    if not rows:
        return empty_table()
    vid: dict[str, int] = {}
    sid: dict[str, int] = {}
    vocab: list[dict[str, int]] = [{} for _ in DIMENSIONS]
    n = len(rows)
    dims = np.empty((n, len(DIMENSIONS)), dtype=np.int32)
    for i, ev in enumerate(rows):
        for j, d in enumerate(DIMENSIONS):
            v = getattr(ev, d) or UNKNOWN
            dims[i, j] = vocab[j].setdefault(v, len(vocab[j]))

    def col(name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array([np.nan if getattr(e, name) is None else float(getattr(e, name)) for e in rows])

    return EventTable(
        np.array([e.t_ms for e in rows], dtype=np.int64),
        np.array([EVENT_TYPES.index(e.type) for e in rows], dtype=np.int8),
        np.array([sid.setdefault(e.session_id, len(sid)) for e in rows], dtype=np.int64),
        np.array([vid.setdefault(e.viewer_id, len(vid)) for e in rows], dtype=np.int64),
        dims,
        DIMENSIONS,
        [list(v) for v in vocab],
        list(vid),
        list(sid),
        col("startup_ms"),
        col("stall_ms"),
        col("watch_ms"),
        col("height"),
    )


VIEWER_EVENTS_DDL = """CREATE TABLE IF NOT EXISTS viewer_events(event_id VARCHAR, viewer_id VARCHAR,
 session_id VARCHAR, room VARCHAR, t_ms BIGINT, type VARCHAR, region VARCHAR, isp VARCHAR, cdn VARCHAR,
 device VARCHAR, app_version VARCHAR, startup_ms DOUBLE, stall_count INTEGER, stall_ms DOUBLE,
 watch_ms DOUBLE, height INTEGER, bitrate_kbps DOUBLE, received_ms BIGINT)"""
"""The collector's table, as the contract describes it (for tests, benches and offline files)."""

INCIDENTS_DDL = """CREATE TABLE IF NOT EXISTS incidents(incident_id VARCHAR, start_ms BIGINT, end_ms BIGINT,
 segment JSON, summary VARCHAR)"""
