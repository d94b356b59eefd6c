""":class:`Aggregates` computed inside DuckDB from the collector's ``viewer_events`` table.

The analysis needs per-session facts and per-leaf, per-minute sums, not raw events; DuckDB computes
them in parallel where the data lives, and Python receives a few numpy columns (one row per session,
one per leaf-minute). Strings never cross into Python except the dimension values (hundreds) and the
ids of the sessions on a win-back list.

Ids are grouped by DuckDB's 64-bit ``hash()``: with n sessions the chance of any collision is about
n² / 2⁶⁵ (6·10⁻⁸ for a million sessions); a collision would merge two sessions' facts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.aggregates import Aggregates
from analysis.events_table import UNKNOWN
from analysis.load import LoadError, connect
from analysis.series import Grid, Sessions, assign_leaves, session_grids, window_minutes
from collector.events import DIMENSIONS

DAY_MS = 86_400_000
MINUTE_MS = 60_000


def _dims_sql() -> str:
    return ", ".join(f"coalesce({d}, '{UNKNOWN}')" for d in DIMENSIONS)


def default_window(path: Path, from_ms: int | None = None) -> tuple[int, int] | None:
    """(first event ms, end of the first contiguous stretch of events + 1 ms), both at or after
    ``from_ms`` when given — a gap > 30 min ends the stretch: later events are viewers returning days
    later. None when there are no such events.

    Computed from per-minute first/last times, which gives the same gaps as sorting every event (a gap
    > 30 min cannot lie inside one minute)."""
    con = connect(path)
    try:
        where = "" if from_ms is None else f"WHERE t_ms >= {int(from_ms)}"
        r = con.execute(
            f"SELECT min(t_ms), max(t_ms) FROM viewer_events {where} GROUP BY t_ms // {MINUTE_MS} ORDER BY 1"
        ).fetchnumpy()
    finally:
        con.close()
    lo = np.asarray(r["min(t_ms)"], dtype=np.int64)
    hi = np.asarray(r["max(t_ms)"], dtype=np.int64)
    if lo.size == 0:
        return None
    gaps = np.flatnonzero(lo[1:] - hi[:-1] > 30 * MINUTE_MS)
    return int(lo[0]), int(hi[gaps[0]] if gaps.size else hi[-1]) + 1


def aggregate_duckdb(path: Path, from_ms: int, to_ms: int, lookahead_ms: int = 7 * DAY_MS) -> Aggregates:
    """Aggregates of the events with ``from_ms ≤ t_ms < to_ms`` (+ ``lookahead_ms`` for sessions' facts
    and returns) in the collector's ``viewer_events``."""
    import duckdb

    con = connect(path)
    hi = to_ms + lookahead_ms
    win = f"t_ms >= {int(from_ms)} AND t_ms < {int(to_ms)}"
    t0, m_n = window_minutes(from_ms, to_ms)
    dims = _dims_sql()
    try:
        # one pass; the type tests and the dimension hash are computed once per event
        con.execute(
            f"""CREATE TEMP TABLE s AS
            SELECT sh, hash(first(viewer_id)) AS vh, min(t_ms) AS s0, max(t_ms) AS s1, bool_or(lv) AS lft,
                   min(dh) AS dh, min(dh) <> max(dh) AS mixed,
                   max(CASE WHEN jn THEN startup_ms END) AS su,
                   sum(CASE WHEN qo THEN st ELSE 0 END) AS st, sum(CASE WHEN qo THEN pl ELSE 0 END) AS pl
            FROM (SELECT hash(session_id) AS sh, viewer_id, t_ms, type = 'leave' AS lv, type = 'join' AS jn,
                         type = 'qoe' AS qo, hash({dims}) AS dh, startup_ms,
                         coalesce(stall_ms, 0) AS st, coalesce(stall_ms, 0) + coalesce(watch_ms, 0) AS pl
                  FROM viewer_events WHERE t_ms >= {int(from_ms)} AND t_ms < {int(hi)})
            GROUP BY sh"""
        )
        mixed = int(con.execute("SELECT count(*) FROM s WHERE mixed").fetchone()[0])
        if mixed:
            # rare: some session's events disagree on a dimension; take its first event's
            con.execute(
                f"""UPDATE s SET dh = f.dh FROM (
                    SELECT hash(session_id) AS sh, arg_min(hash({dims}), t_ms) AS dh FROM viewer_events
                    WHERE t_ms >= {int(from_ms)} AND t_ms < {int(hi)} GROUP BY sh) AS f
                WHERE s.sh = f.sh AND s.mixed"""
            )
        s = con.execute("SELECT sh, vh, s0, s1, lft, dh, su, st, pl FROM s").fetchnumpy()
        combos = con.execute(f"SELECT DISTINCT hash({dims}) AS dh, {dims} FROM viewer_events WHERE {win}").fetchall()
        # a session's dimensions are those of its first event; when no session changes them, every
        # event's own dimensions are its session's and no join is needed
        ev_dh = f"hash({dims})" if mixed == 0 else "s.dh"
        src = "viewer_events" if mixed == 0 else "viewer_events JOIN s ON s.sh = hash(viewer_events.session_id)"
        g = con.execute(
            f"""SELECT dh, m, count(*) AS n,
                   sum(CASE WHEN qo THEN st ELSE 0 END) AS st, sum(CASE WHEN qo THEN pl ELSE 0 END) AS pl,
                   sum(CASE WHEN qo AND low THEN pl ELSE 0 END) AS low,
                   count(*) FILTER (WHERE jn) AS j,
                   count(*) FILTER (WHERE jn AND coalesce(startup_ms, 0) > 2000) AS slow
            FROM (SELECT {ev_dh} AS dh, (t_ms - {t0}) // {MINUTE_MS} AS m, type = 'join' AS jn, type = 'qoe' AS qo,
                         startup_ms, coalesce(stall_ms, 0) AS st, coalesce(stall_ms, 0) + coalesce(watch_ms, 0) AS pl,
                         coalesce(height < 720, false) AS low
                  FROM {src} WHERE {win})
            GROUP BY dh, m"""
        ).fetchnumpy()
        q = con.execute(
            f"""SELECT (t_ms - {t0}) // {MINUTE_MS} AS m, quantile_cont(startup_ms, 0.5) AS p50,
                   quantile_cont(startup_ms, 0.95) AS p95
            FROM viewer_events WHERE {win} AND type = 'join' AND startup_ms IS NOT NULL GROUP BY m"""
        ).fetchnumpy()
    except duckdb.Error as e:
        raise LoadError(f"{path}: query failed ({e})") from None
    finally:
        con.close()
    return _assemble(path, from_ms, to_ms, hi, s, combos, g, q, t0, m_n)


def _f64(a: Any) -> NDArray[np.float64]:
    if isinstance(a, np.ma.MaskedArray):
        return np.asarray(np.ma.filled(a.astype(np.float64), np.nan), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def _assemble(
    path: Path,
    from_ms: int,
    to_ms: int,
    hi: int,
    s: dict[str, Any],
    combos: list[tuple[Any, ...]],
    g: dict[str, Any],
    q: dict[str, Any],
    t0: int,
    m_n: int,
) -> Aggregates:
    n_s = len(s["sh"])
    sh = np.asarray(s["sh"], dtype=np.uint64)
    _, viewer = np.unique(np.asarray(s["vh"], dtype=np.uint64), return_inverse=True)
    sessions = Sessions(
        np.asarray(s["s0"], dtype=np.int64),
        np.asarray(s["s1"], dtype=np.int64),
        np.asarray(s["lft"], dtype=bool),
        viewer.astype(np.int64).ravel(),
        np.full(n_s, -1, dtype=np.int64),
        _f64(s["su"]),
        _f64(s["st"]),
        _f64(s["pl"]),
    )
    # dimension vocabularies, sorted (so leaf order does not depend on the loader), and each
    # combination's codes
    nd = len(DIMENSIONS)
    vocab = [sorted({str(c[1 + j]) for c in combos}) for j in range(nd)]
    index = [{v: i for i, v in enumerate(vs)} for vs in vocab]
    c_hash = np.array([int(c[0]) for c in combos], dtype=np.uint64)
    c_codes = np.array([[index[j][str(c[1 + j])] for j in range(nd)] for c in combos], dtype=np.int64)
    c_codes = c_codes.reshape(len(combos), nd)
    order = np.argsort(c_hash)
    c_hash, c_codes = c_hash[order], c_codes[order]

    def combo_of(h: NDArray[np.uint64]) -> NDArray[np.int64]:
        pos = np.minimum(np.searchsorted(c_hash, h), max(c_hash.size - 1, 0))
        return np.where(c_hash[pos] == h, pos, -1) if c_hash.size else np.full(h.size, -1)

    s_combo = combo_of(np.asarray(s["dh"], dtype=np.uint64))
    sess_dims = np.where(s_combo[:, None] >= 0, c_codes[np.maximum(s_combo, 0)], 0) if n_s else np.zeros((0, nd))
    leaves = assign_leaves(sess_dims.astype(np.int64), sessions, from_ms, to_ms)
    n_l = leaves.shape[0]
    # combination → leaf (a combination whose sessions all started before the window has none)
    leaf_of_combo = np.full(max(c_hash.size, 1), -1, dtype=np.int64)
    in_s = sessions.leaf >= 0
    leaf_of_combo[s_combo[in_s]] = sessions.leaf[in_s]
    g_leaf = leaf_of_combo[np.maximum(combo_of(np.asarray(g["dh"], dtype=np.uint64)), 0)]
    m = np.asarray(g["m"], dtype=np.int64)
    ok = (g_leaf >= 0) & (m >= 0) & (m < m_n)
    key = g_leaf[ok] * m_n + m[ok]
    size = n_l * m_n

    def grid(col: str) -> NDArray[np.float64]:
        if not size:
            return np.zeros((0, m_n))
        return np.bincount(key, weights=_f64(g[col])[ok], minlength=size).reshape(n_l, m_n).astype(np.float64)

    at_risk, leaves_n = session_grids(sessions, n_l, t0, m_n, to_ms)
    grd = Grid(
        t0, leaves, DIMENSIONS, vocab, grid("st"), grid("pl"), grid("j"), grid("slow"), leaves_n, at_risk, grid("low")
    )
    p50: list[float | None] = [None] * m_n
    p95: list[float | None] = [None] * m_n
    for mi, a, b in zip(np.asarray(q["m"], dtype=np.int64), _f64(q["p50"]), _f64(q["p95"]), strict=True):
        if 0 <= mi < m_n:
            p50[mi], p95[mi] = float(a), float(b)

    def resolve(codes: NDArray[np.int64]) -> tuple[list[str], list[str]]:
        if codes.size == 0:
            return [], []
        want = sh[codes]
        con = connect(path)
        try:
            r = con.execute(
                f"""SELECT hash(session_id) AS h, any_value(viewer_id) AS v, any_value(session_id) AS s
                FROM viewer_events WHERE t_ms >= {int(from_ms)} AND t_ms < {int(hi)}
                  AND hash(session_id) IN (SELECT unnest($1::UBIGINT[])) GROUP BY h""",
                [[int(x) for x in np.unique(want)]],
            ).fetchall()
        finally:
            con.close()
        names = {int(h): (str(v), str(sid)) for h, v, sid in r}
        got = [names[int(h)] for h in want]
        return [v for v, _ in got], [sid for _, sid in got]

    n_events = int(np.asarray(g["n"], dtype=np.int64).sum())
    data_end = int(sessions.end_ms.max()) if n_s else 0
    return Aggregates(sessions, grd, p50, p95, data_end, n_events, resolve)
