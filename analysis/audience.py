"""The audience model: a seeded generator of realistic viewer events, with an injectable incident and
the ground truth of which leaves the incident caused.

Model (per session, vectorised over all sessions with numpy):

* Arrivals: a Poisson process per minute with rate ``arrivals_per_min × diurnal(t) × promotion(t)``,
  the diurnal factor ``1 + a·sin(2π·(hour−6)/24)`` and an optional promotion ramp (linear from 1 to
  ``promo_factor`` over ``promo_ramp_min`` minutes from ``promo_at_min``). Arrival times uniform within
  the minute.
* Dimensions: drawn independently per viewer from ``dims`` (value → probability).
* Startup time: log-normal (median ``startup_median_ms``, σ 0.5) plus the incident's ``startup_add_ms``.
  Abandonment before playback: none below 2 s, then 5.8 % more per further second (Krishnan &
  Sitaraman, IMC 2012), capped at 90 %.
* Playback in one-minute steps (a ``qoe`` beacon per step, a ``heartbeat`` half-way if enabled). Each
  step has a baseline stall ratio (with probability 0.1 a stall of U(0, 5 %) of the step), plus the
  incident's ``stall_ratio_add`` when the viewer is in the incident's segment and the step overlaps it.
* Leave hazard per step: ``h = min(0.9, h0 · exp(β · stall_ratio))`` with ``h0 = 1 / mean_watch_min``
  and β = 16.5: one percentage point more buffering shortens the expected watch time by ~15 %, the
  order of the effect Dobrian et al. (SIGCOMM 2011) report for live (buffering ratio has the largest
  effect on engagement for live; 1 % more ≈ 3 minutes less of a ~20-minute view).
* Ground truth by common random numbers: a step's leave is *caused by the incident* when the uniform
  draw falls between the counterfactual hazard (same step, no incident) and the actual one; likewise
  for abandonment at startup. ``AudienceTruth.caused`` marks those sessions.
* Returns: a viewer whose session ended comes back ``U(0.5, 10)`` days later with probability 0.4
  (0.25 after a session whose stall ratio exceeded 5 %), as a short session (join, one beacon, leave),
  so return rates within the 7-day win-back window are measurable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.events_table import HEARTBEAT, JOIN, LEAVE, QOE, EventTable
from collector.events import DIMENSIONS, EVENT_TYPES, format_t_ms

STEP_MS = 60_000
BETA_STALL = 16.5
DAY_MS = 86_400_000

DEFAULT_DIMS: dict[str, dict[str, float]] = {
    "region": {"eu": 0.4, "us": 0.3, "asia": 0.2, "sa": 0.1},
    "isp": {"isp-a": 0.35, "isp-b": 0.3, "isp-c": 0.2, "isp-d": 0.15},
    "cdn": {"cdn-a": 0.5, "cdn-b": 0.3, "cdn-c": 0.2},
    "device": {"web": 0.35, "android": 0.3, "ios": 0.25, "tv": 0.1},
    "app_version": {"3.1": 0.2, "3.2": 0.5, "3.3": 0.3},
    "room": {"main": 1.0},
}


@dataclass(frozen=True)
class IncidentSpec:
    """A QoE degradation for the viewers matching ``segment`` between ``start_ms`` and ``end_ms``."""

    segment: Mapping[str, str]
    """Dimension → value, e.g. ``{"cdn": "cdn-b", "region": "eu"}`` (all must match)."""
    start_ms: int
    end_ms: int
    stall_ratio_add: float = 0.12
    """Added to each affected one-minute step's stall ratio (0.12 = 12 % of the time stalled)."""
    startup_add_ms: float = 0.0
    """Added to the startup time of sessions joining during the incident."""
    height: int | None = 360
    """Resolution the affected viewers drop to (None: unchanged)."""


@dataclass(frozen=True)
class AudienceConfig:
    """Parameters of the generator; every default is documented in the module docstring."""

    start_ms: int
    minutes: int
    seed: int = 0
    arrivals_per_min: float = 200.0
    diurnal_amplitude: float = 0.3
    promo_at_min: int | None = None
    promo_ramp_min: int = 10
    promo_factor: float = 2.0
    mean_watch_min: float = 12.0
    startup_median_ms: float = 900.0
    heartbeats: bool = True
    returns: bool = True
    dims: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: DEFAULT_DIMS)
    incident: IncidentSpec | None = None


@dataclass
class AudienceTruth:
    """What really happened (for scoring the analysis)."""

    caused: NDArray[np.bool_]
    """Per generated session (code): its leave was caused by the incident."""
    affected: NDArray[np.bool_]
    """Per session: in the incident's segment and active during it."""
    n_sessions: int
    """Sessions in the window (returns excluded)."""

    @property
    def viewers_lost(self) -> int:
        """Leaves the incident caused (sessions that would have continued without it)."""
        return int(self.caused.sum())


def _arrivals(cfg: AudienceConfig, rng: np.random.Generator) -> NDArray[np.int64]:
    m = np.arange(cfg.minutes)
    hour = ((cfg.start_ms // 60_000 + m) % 1440) / 60.0
    rate = cfg.arrivals_per_min * (1.0 + cfg.diurnal_amplitude * np.sin(2 * np.pi * (hour - 6.0) / 24.0))
    if cfg.promo_at_min is not None:
        ramp = np.clip((m - cfg.promo_at_min) / max(cfg.promo_ramp_min, 1), 0.0, 1.0)
        rate = rate * (1.0 + (cfg.promo_factor - 1.0) * ramp)
    counts = rng.poisson(np.maximum(rate, 0.0))
    minute = np.repeat(m, counts)
    t = cfg.start_ms + minute * 60_000 + rng.integers(0, 60_000, size=minute.size)
    return np.sort(t).astype(np.int64)


def generate(cfg: AudienceConfig) -> tuple[EventTable, AudienceTruth]:
    """All events of the window (and later returns), sorted by time, with the ground truth."""
    rng = np.random.default_rng(cfg.seed)
    dim_names = tuple(d for d in DIMENSIONS if d in cfg.dims)
    start = _arrivals(cfg, rng)
    n = start.size
    end_window = cfg.start_ms + cfg.minutes * 60_000
    vocab = [list(cfg.dims[d].keys()) for d in dim_names]
    dims = np.empty((n, len(dim_names)), dtype=np.int32)
    for j, d in enumerate(dim_names):
        p = np.array(list(cfg.dims[d].values()), dtype=float)
        dims[:, j] = rng.choice(p.size, size=n, p=p / p.sum())
    inc = cfg.incident
    in_seg = np.zeros(n, dtype=bool)
    if inc is not None:
        in_seg[:] = True
        for dname, val in inc.segment.items():
            if dname not in dim_names or val not in vocab[dim_names.index(dname)]:
                raise ValueError(f"incident segment: unknown {dname}={val}")
            in_seg &= dims[:, dim_names.index(dname)] == vocab[dim_names.index(dname)].index(val)

    # startup and abandonment
    startup = cfg.startup_median_ms * np.exp(0.5 * rng.standard_normal(n))
    joins_in_inc = (
        in_seg
        & (inc is not None)
        & (start >= (inc.start_ms if inc else 0))
        & (start < (inc.end_ms if inc else 0))
    )
    startup_cf = startup.copy()
    if inc is not None and inc.startup_add_ms:
        startup = startup + np.where(joins_in_inc, inc.startup_add_ms, 0.0)
    u0 = rng.random(n)

    def p_abandon(s_ms: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.clip(0.058 * (s_ms / 1000.0 - 2.0), 0.0, 0.9), dtype=np.float64)

    abandon = u0 < p_abandon(startup)
    caused = abandon & (u0 >= p_abandon(startup_cf))
    affected = joins_in_inc.copy()

    h0 = 1.0 / cfg.mean_watch_min
    heights = np.array([1080, 720, 480])
    sess_height = heights[rng.choice(3, size=n, p=[0.5, 0.35, 0.15])]
    # per step records
    rec_sess: list[NDArray[np.int64]] = []
    rec_t: list[NDArray[np.int64]] = []
    rec_ratio: list[NDArray[np.float64]] = []
    rec_height: list[NDArray[np.int64]] = []
    rec_dur: list[NDArray[np.int64]] = []
    stall_sum = np.zeros(n)
    play_sum = np.zeros(n)
    active = ~abandon
    left_at = np.where(abandon, start + np.minimum(startup, 30_000).astype(np.int64), -1)
    play0 = start + startup.astype(np.int64)
    k = 0
    while active.any() and k < 240:
        idx = np.flatnonzero(active)
        ts = play0[idx] + k * STEP_MS
        ended = ts >= end_window
        active[idx[ended]] = False
        idx, ts = idx[~ended], ts[~ended]
        if idx.size == 0:
            break
        base_ratio = np.where(rng.random(idx.size) < 0.1, rng.random(idx.size) * 0.05, 0.0)
        ratio = base_ratio.copy()
        h_now = sess_height[idx].copy()
        if inc is not None:
            hit = in_seg[idx] & (ts >= inc.start_ms) & (ts < inc.end_ms)
            noise = np.clip(1.0 + 0.3 * rng.standard_normal(idx.size), 0.2, 2.0)
            ratio = np.where(hit, np.clip(base_ratio + inc.stall_ratio_add * noise, 0.0, 0.95), base_ratio)
            if inc.height is not None:
                h_now = np.where(hit, np.minimum(h_now, inc.height), h_now)
            affected[idx[hit]] = True
        u = rng.random(idx.size)
        h_act = np.minimum(0.9, h0 * np.exp(BETA_STALL * ratio))
        h_cf = np.minimum(0.9, h0 * np.exp(BETA_STALL * base_ratio))
        leave = u < h_act
        caused[idx[leave & (u >= h_cf)]] = True
        # a leave happens part-way through the step; the step's beacon is sent at the leave
        dur = np.where(leave, rng.integers(5_000, STEP_MS, size=idx.size), STEP_MS)
        dur = np.minimum(dur, end_window - ts)
        rec_sess.append(idx)
        rec_t.append(ts + dur)
        rec_ratio.append(ratio)
        rec_height.append(h_now)
        rec_dur.append(dur)
        stall_sum[idx] += ratio * dur
        play_sum[idx] += dur
        left_idx = idx[leave & (ts + dur < end_window)]
        left_at[left_idx] = (ts + dur)[leave & (ts + dur < end_window)] + 1
        active[idx[leave]] = False
        k += 1

    viewer = np.arange(n, dtype=np.int64)
    # returns, days later
    ret_sess = np.zeros(0, dtype=np.int64)
    ret_t = np.zeros(0, dtype=np.int64)
    if cfg.returns:
        ended = left_at > 0
        bad = (stall_sum / np.maximum(play_sum, 1.0) > 0.05) | caused
        p_ret = np.where(bad, 0.25, 0.4)
        back = ended & (rng.random(n) < p_ret)
        ret_sess = np.flatnonzero(back)
        ret_t = left_at[ret_sess] + (rng.uniform(0.5, 10.0, size=ret_sess.size) * DAY_MS).astype(np.int64)

    return _assemble(
        cfg,
        dim_names,
        vocab,
        dims,
        viewer,
        start,
        startup,
        left_at,
        sess_height,
        rec_sess,
        rec_t,
        rec_ratio,
        rec_height,
        rec_dur,
        ret_sess,
        ret_t,
        rng,
    ), AudienceTruth(caused, affected, n)


def _assemble(
    cfg: AudienceConfig,
    dim_names: tuple[str, ...],
    vocab: list[list[str]],
    dims: NDArray[np.int32],
    viewer: NDArray[np.int64],
    start: NDArray[np.int64],
    startup: NDArray[np.float64],
    left_at: NDArray[np.int64],
    sess_height: NDArray[np.int64],
    rec_sess: list[NDArray[np.int64]],
    rec_t: list[NDArray[np.int64]],
    rec_ratio: list[NDArray[np.float64]],
    rec_height: list[NDArray[np.int64]],
    rec_dur: list[NDArray[np.int64]],
    ret_sess: NDArray[np.int64],
    ret_t: NDArray[np.int64],
    rng: np.random.Generator,
) -> EventTable:
    n = start.size
    nan = np.nan
    q_sess = np.concatenate(rec_sess) if rec_sess else np.zeros(0, np.int64)
    q_t = np.concatenate(rec_t) if rec_t else np.zeros(0, np.int64)
    q_ratio = np.concatenate(rec_ratio) if rec_ratio else np.zeros(0)
    q_h = np.concatenate(rec_height) if rec_height else np.zeros(0, np.int64)
    q_dur = np.concatenate(rec_dur) if rec_dur else np.zeros(0, np.int64)
    q_stall = np.round(q_ratio * q_dur)
    left = np.flatnonzero(left_at > 0)
    n_ret = ret_sess.size
    ret_code = n + np.arange(n_ret, dtype=np.int64)  # a return is a new session of the same viewer
    parts_t = [start, q_t, left_at[left], ret_t, ret_t + 60_000, ret_t + 60_001]
    parts_type = [
        np.full(n, JOIN),
        np.full(q_t.size, QOE),
        np.full(left.size, LEAVE),
        np.full(n_ret, JOIN),
        np.full(n_ret, QOE),
        np.full(n_ret, LEAVE),
    ]
    parts_sess = [np.arange(n), q_sess, left, ret_code, ret_code, ret_code]
    parts_src = [np.arange(n), q_sess, left, ret_sess, ret_sess, ret_sess]
    parts_startup = [
        startup,
        np.full(q_t.size, nan),
        np.full(left.size, nan),
        cfg.startup_median_ms * np.exp(0.5 * rng.standard_normal(n_ret)),
        np.full(n_ret, nan),
        np.full(n_ret, nan),
    ]
    parts_stall = [
        np.full(n, nan),
        q_stall,
        np.full(left.size, nan),
        np.full(n_ret, nan),
        np.zeros(n_ret),
        np.full(n_ret, nan),
    ]
    parts_watch = [
        np.full(n, nan),
        q_dur - q_stall,
        np.full(left.size, nan),
        np.full(n_ret, nan),
        np.full(n_ret, 60_000.0),
        np.full(n_ret, nan),
    ]
    parts_height = [
        np.full(n, nan),
        q_h.astype(float),
        np.full(left.size, nan),
        np.full(n_ret, nan),
        sess_height[ret_sess].astype(float),
        np.full(n_ret, nan),
    ]
    if cfg.heartbeats and q_t.size:
        hb = q_dur > 30_000
        parts_t.append(q_t[hb] - q_dur[hb] + 30_000)
        parts_type.append(np.full(int(hb.sum()), HEARTBEAT))
        parts_sess.append(q_sess[hb])
        parts_src.append(q_sess[hb])
        for lst in (parts_startup, parts_stall, parts_watch, parts_height):
            lst.append(np.full(int(hb.sum()), nan))
    t = np.concatenate(parts_t).astype(np.int64)
    order = np.argsort(t, kind="stable")
    src = np.concatenate(parts_src)[order]
    sess = np.concatenate(parts_sess)[order].astype(np.int64)
    n_all = n + n_ret
    return EventTable(
        t_ms=t[order],
        etype=np.concatenate(parts_type)[order].astype(np.int8),
        session=sess,
        viewer=viewer[src],
        dims=dims[src],
        dim_names=dim_names,
        vocab=vocab,
        viewer_ids=[f"v{cfg.seed}-{i}" for i in range(n)],
        session_ids=[f"s{cfg.seed}-{i}" for i in range(n_all)],
        startup_ms=np.concatenate(parts_startup)[order],
        stall_ms=np.concatenate(parts_stall)[order],
        watch_ms=np.concatenate(parts_watch)[order],
        height=np.concatenate(parts_height)[order],
    )


def iter_wire_events(table: EventTable) -> Iterator[dict[str, Any]]:
    """The events as ``POST /v1/events`` wire dicts (``collector.events`` format), in time order."""
    seq = np.zeros(len(table.session_ids), dtype=np.int64)
    for i in range(table.n):
        s = int(table.session[i])
        seq[s] += 1
        d: dict[str, Any] = {
            "event_id": f"{table.session_ids[s]}.{seq[s]}",
            "viewer_id": table.viewer_ids[int(table.viewer[i])],
            "session_id": table.session_ids[s],
            "t": format_t_ms(int(table.t_ms[i])),
            "type": EVENT_TYPES[int(table.etype[i])],
        }
        for j, name in enumerate(table.dim_names):
            d[name] = table.vocab[j][int(table.dims[i, j])]
        if "room" not in d:
            d["room"] = "main"
        for name, col in (
            ("startup_ms", table.startup_ms),
            ("stall_ms", table.stall_ms),
            ("watch_ms", table.watch_ms),
        ):
            v = col[i]
            if not np.isnan(v):
                d[name] = round(float(v), 1)
        if not np.isnan(table.height[i]):
            d["height"] = int(table.height[i])
        if "stall_ms" in d:
            d["stall_count"] = int(np.ceil(d["stall_ms"] / 2000.0))
        yield d
