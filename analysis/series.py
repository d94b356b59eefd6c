"""Per-segment, per-minute series from viewer events: QoE (stall ratio, startup, resolution) and
audience (concurrent viewers, joins, leaves, leave rate, watch time). Pure numpy.

A *leaf* is one combination of all dimension values; every other segment is a sum of leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from analysis.events_table import JOIN, LEAVE, QOE, EventTable

MINUTE_MS = 60_000


@dataclass
class Sessions:
    """One row per session code."""

    start_ms: NDArray[np.int64]
    """First event of the session (its join), ms since the epoch; -1 if the session has no events."""
    end_ms: NDArray[np.int64]
    """Last event of the session."""
    left: NDArray[np.bool_]
    """The session ended with a ``leave`` event."""
    viewer: NDArray[np.int64]
    leaf: NDArray[np.int64]
    """Leaf code (row of ``Grid.leaves``); -1 for sessions outside the window."""
    startup_ms: NDArray[np.float64]
    """Largest startup_ms of the session's joins; NaN without one."""
    stall_ms: NDArray[np.float64]
    """Σ stall_ms of the session's beacons."""
    play_ms: NDArray[np.float64]
    """Σ (watch_ms + stall_ms) of the session's beacons."""


@dataclass
class Grid:
    """Leaf × minute sums over the analysis window."""

    t0_ms: int
    """Start of minute 0 (ms since the epoch)."""
    leaves: NDArray[np.int64]
    """(n_leaves, n_dims) dimension value codes."""
    dim_names: tuple[str, ...]
    vocab: list[list[str]]
    stall_ms: NDArray[np.float64]
    play_ms: NDArray[np.float64]
    """Σ (watch_ms + stall_ms) of qoe beacons; stall ratio = stall_ms / play_ms."""
    joins: NDArray[np.float64]
    slow_starts: NDArray[np.float64]
    """Joins with startup_ms > 2000 (the abandonment knee, Krishnan & Sitaraman 2012)."""
    leaves_n: NDArray[np.float64]
    """Sessions that left in the minute."""
    at_risk: NDArray[np.float64]
    """Sessions active at some point in the minute (concurrent viewers, and the leave-hazard denominator)."""
    low_res_ms: NDArray[np.float64]
    """Play time of beacons with height < 720 (HD share = 1 − low_res_ms / play_ms)."""

    @property
    def n_minutes(self) -> int:
        """Minutes in the window."""
        return int(self.stall_ms.shape[1])

    def label(self, items: tuple[tuple[int, int], ...]) -> dict[str, str]:
        """A slice's (dimension index, value code) items as {dimension: value}."""
        return {self.dim_names[d]: self.vocab[d][v] for d, v in items}


def sessions_of(table: EventTable) -> Sessions:
    """Per-session facts from the events (vectorised, no Python loop over events)."""
    s = table.session
    n = int(s.max()) + 1 if s.size else 0
    start = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)
    np.minimum.at(start, s, table.t_ms)
    np.maximum.at(end, s, table.t_ms)
    start[start == np.iinfo(np.int64).max] = -1
    left = np.bincount(s, weights=(table.etype == LEAVE), minlength=n) > 0
    viewer = np.full(n, -1, dtype=np.int64)
    viewer[s] = table.viewer
    # the worst startup of the session's joins (a reconnect joins again)
    startup = np.full(n, -np.inf)
    j = (table.etype == JOIN) & ~np.isnan(table.startup_ms)
    np.maximum.at(startup, s[j], table.startup_ms[j])
    startup[np.isneginf(startup)] = np.nan
    q = table.etype == QOE
    st = np.nan_to_num(table.stall_ms)
    wa = np.nan_to_num(table.watch_ms)
    stall = np.bincount(s[q], weights=st[q], minlength=n).astype(np.float64)
    play = np.bincount(s[q], weights=st[q] + wa[q], minlength=n).astype(np.float64)
    return Sessions(start, end, left, viewer, np.full(n, -1, dtype=np.int64), startup, stall, play)


def assign_leaves(sess_dims: NDArray[np.int64], sessions: Sessions, from_ms: int, to_ms: int) -> NDArray[np.int64]:
    """Leaves (unique dimension combinations, sorted by code) of the sessions active in [from_ms, to_ms);
    fills ``sessions.leaf`` (-1 for sessions outside). ``sess_dims``: (n_sessions, n_dims) codes."""
    s_in = (sessions.start_ms >= 0) & (sessions.start_ms < to_ms) & (sessions.end_ms >= from_ms)
    if not s_in.any():
        return np.zeros((0, sess_dims.shape[1]), dtype=np.int64)
    sd = sess_dims[s_in].astype(np.int64)
    radix = sd.max(axis=0) + 1
    key = np.zeros(sd.shape[0], dtype=np.int64)
    for j in range(sd.shape[1]):
        key = key * int(radix[j]) + sd[:, j]
    ukey, inv = np.unique(key, return_inverse=True)
    leaves = np.empty((ukey.size, sd.shape[1]), dtype=np.int64)
    rem = ukey.copy()
    for j in range(sd.shape[1] - 1, -1, -1):
        leaves[:, j] = rem % int(radix[j])
        rem //= int(radix[j])
    sessions.leaf[s_in] = inv.ravel()
    return leaves


def window_minutes(from_ms: int, to_ms: int) -> tuple[int, int]:
    """(start of minute 0 in ms, number of minutes) of the window [from_ms, to_ms)."""
    t0 = from_ms - from_ms % MINUTE_MS
    return t0, max(1, -(-(to_ms - t0) // MINUTE_MS))


def session_grids(
    sessions: Sessions, n_leaves: int, t0: int, m_n: int, to_ms: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(at-risk, leaves) leaf × minute grids from the sessions with a leaf: a session is at risk from its
    start minute to its end minute (inclusive, clipped to the window) and leaves in its end minute when it
    ended with a ``leave`` before ``to_ms``."""
    sl = sessions.leaf
    si = np.flatnonzero(sl >= 0)
    a = np.clip((sessions.start_ms[si] - t0) // MINUTE_MS, 0, m_n - 1)
    b = np.clip((sessions.end_ms[si] - t0) // MINUTE_MS, 0, m_n - 1)
    width = m_n + 1
    diff = np.bincount(sl[si] * width + a, minlength=n_leaves * width).astype(np.float64)
    diff -= np.bincount(sl[si] * width + b + 1, minlength=n_leaves * width)
    at_risk = np.cumsum(diff.reshape(n_leaves, width), axis=1)[:, :m_n]
    lv = si[sessions.left[si] & (sessions.end_ms[si] < to_ms)]
    key_l = sl[lv] * m_n + (sessions.end_ms[lv] - t0) // MINUTE_MS
    size = n_leaves * m_n
    leaves_n = np.bincount(key_l, minlength=size).reshape(n_leaves, m_n) if size else np.zeros((0, m_n))
    return np.asarray(at_risk, dtype=np.float64), np.asarray(leaves_n, dtype=np.float64)


def build_grid(table: EventTable, sessions: Sessions, from_ms: int, to_ms: int) -> Grid:
    """Leaf × minute sums of the events in [from_ms, to_ms); fills ``sessions.leaf``."""
    t0, m_n = window_minutes(from_ms, to_ms)
    in_win = (table.t_ms >= from_ms) & (table.t_ms < to_ms)
    # a session's dimensions are those of its first event
    n_s = sessions.start_ms.size
    first = np.full(n_s, -1, dtype=np.int64)
    order = np.argsort(table.t_ms, kind="stable")[::-1]
    first[table.session[order]] = order  # the last write wins: the earliest event
    leaves = assign_leaves(table.dims[np.maximum(first, 0)].astype(np.int64), sessions, from_ms, to_ms)
    n_l = leaves.shape[0]
    size = n_l * m_n

    def grid(idx: NDArray[np.int64], w: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        out = np.bincount(idx, weights=w, minlength=size).reshape(n_l, m_n) if size else np.zeros((0, m_n))
        return np.asarray(out, dtype=np.float64)

    ev_leaf = sessions.leaf[table.session]
    ev_min = (table.t_ms - t0) // MINUTE_MS
    ok = in_win & (ev_leaf >= 0)
    q = ok & (table.etype == QOE)
    key_q = ev_leaf[q] * m_n + ev_min[q]
    st = np.nan_to_num(table.stall_ms[q])
    pl = st + np.nan_to_num(table.watch_ms[q])
    low = np.where(np.nan_to_num(table.height[q], nan=1080.0) < 720, pl, 0.0)
    j = ok & (table.etype == JOIN)
    key_j = ev_leaf[j] * m_n + ev_min[j]
    slow = np.nan_to_num(table.startup_ms[j]) > 2000.0
    at_risk, leaves_n = session_grids(sessions, n_l, t0, m_n, to_ms)
    return Grid(
        t0,
        leaves,
        table.dim_names,
        table.vocab,
        grid(key_q, st),
        grid(key_q, pl),
        grid(key_j),
        grid(key_j, slow.astype(float)),
        leaves_n,
        at_risk,
        grid(key_q, low),
    )


def slice_series(grid: Grid, mask: NDArray[np.bool_]) -> dict[str, list[float | None]]:
    """Per-minute series of the leaves in ``mask`` (a segment): QoE and audience.

    ``stall_ratio`` = Σstall / Σplay; ``hd_share`` = 1 − low-res play / play; ``slow_start_share`` =
    joins with startup > 2 s / joins; ``leave_rate`` = leaves / at-risk (the per-minute leave hazard);
    ``concurrent`` = sessions active in the minute; ``watch_min`` = minutes played. None when undefined.
    """

    def s(a: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(a[mask].sum(axis=0), dtype=np.float64)

    play, stall, joins, risk = s(grid.play_ms), s(grid.stall_ms), s(grid.joins), s(grid.at_risk)

    def ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> list[float | None]:
        return [float(x) / float(y) if y > 0 else None for x, y in zip(num, den, strict=True)]

    hd = [None if v is None else 1.0 - v for v in ratio(s(grid.low_res_ms), play)]
    return {
        "stall_ratio": ratio(stall, play),
        "hd_share": hd,
        "slow_start_share": ratio(s(grid.slow_starts), joins),
        "concurrent": [float(x) for x in risk],
        "joins": [float(x) for x in joins],
        "leaves": [float(x) for x in s(grid.leaves_n)],
        "leave_rate": ratio(s(grid.leaves_n), risk),
        "watch_min": [float(x) / 60_000.0 for x in play],
    }


def startup_quantiles(
    table: EventTable, t0_ms: int, n_minutes: int, event_mask: NDArray[np.bool_] | None = None
) -> tuple[list[float | None], list[float | None]]:
    """Per-minute startup (TTFF) p50 and p95 in ms over join events (optionally masked)."""
    m = (table.etype == JOIN) & ~np.isnan(table.startup_ms)
    if event_mask is not None:
        m &= event_mask
    minute = (table.t_ms[m] - t0_ms) // MINUTE_MS
    val = table.startup_ms[m]
    ok = (minute >= 0) & (minute < n_minutes)
    minute, val = minute[ok], val[ok]
    order = np.lexsort((val, minute))
    minute, val = minute[order], val[order]
    bounds = np.searchsorted(minute, np.arange(n_minutes + 1))
    p50: list[float | None] = []
    p95: list[float | None] = []
    for i in range(n_minutes):
        v = val[bounds[i] : bounds[i + 1]]
        p50.append(float(np.quantile(v, 0.5)) if v.size else None)
        p95.append(float(np.quantile(v, 0.95)) if v.size else None)
    return p50, p95
