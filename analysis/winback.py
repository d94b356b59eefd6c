"""The win-back list: viewers whose session ended in the affected segment during an incident after bad
QoE, with the date their 7-day win-back window closes, and whether they came back (when later events
exist) compared with unaffected leavers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from analysis.aggregates import IdResolver
from analysis.series import Sessions

WINDOW_MS = 7 * 86_400_000


@dataclass(frozen=True)
class WinbackRow:
    viewer_id: str
    session_id: str
    incident_id: str
    left_ms: int
    closes_ms: int
    """left_ms + 7 days: after this, the viewer no longer counts as won back."""
    stall_ratio: float | None
    startup_ms: float | None
    returned: bool | None
    """Came back within 7 days; None when the data does not reach the window's end."""


@dataclass(frozen=True)
class ReturnRates:
    affected: float | None
    """Share of win-back viewers with a later session within 7 days (None: data too short)."""
    unaffected: float | None
    """Same for viewers who left other segments during the incident."""
    n_affected: int
    n_unaffected: int


def returned_within(sessions: Sessions, idx: NDArray[np.int64], data_end_ms: int) -> NDArray[np.float64]:
    """Per session in ``idx``: 1.0 if its viewer started another session within 7 days of its end,
    0.0 if not, NaN if the data stops before the window closes (unknown)."""
    ok = sessions.start_ms >= 0
    order = np.lexsort((sessions.start_ms[ok], sessions.viewer[ok]))
    v_sorted = sessions.viewer[ok][order]
    t_sorted = sessions.start_ms[ok][order]
    end = sessions.end_ms[idx]
    v = sessions.viewer[idx]
    # the first session of the same viewer starting after this one's end; one int64 key per
    # (viewer, time), exact (a float key loses milliseconds once viewer codes pass a few hundred)
    t_lo = int(min(t_sorted.min(), end.min())) if t_sorted.size and end.size else 0
    span = int(max(t_sorted.max(), end.max())) - t_lo + 1 if t_sorted.size and end.size else 1
    key_v = v_sorted * span + (t_sorted - t_lo)
    pos = np.searchsorted(key_v, v * span + (end - t_lo), side="right")
    nxt_ok = pos < v_sorted.size
    pos_c = np.minimum(pos, max(v_sorted.size - 1, 0))
    same = nxt_ok & (v_sorted[pos_c] == v) if v_sorted.size else np.zeros(idx.size, bool)
    came = same & (t_sorted[pos_c] - end <= WINDOW_MS) if v_sorted.size else same
    out = came.astype(np.float64)
    out[~came & (end + WINDOW_MS > data_end_ms)] = np.nan
    return out


def winback(
    sessions: Sessions,
    affected_leaf: NDArray[np.bool_],
    start_ms: int,
    end_ms: int,
    incident_id: str,
    resolve_ids: IdResolver,
    data_end_ms: int,
    *,
    bad_stall_ratio: float = 0.05,
    grace_ms: int = 5 * 60_000,
) -> tuple[list[WinbackRow], ReturnRates]:
    """Viewers to win back and the return rates; bad QoE = session stall ratio ≥ ``bad_stall_ratio`` or
    startup > 2 s; a session counts when it left between ``start_ms`` and ``end_ms + grace_ms``."""
    leaf = sessions.leaf
    ended = (
        sessions.left & (sessions.end_ms >= start_ms) & (sessions.end_ms < end_ms + grace_ms) & (leaf >= 0)
    )
    in_s = np.zeros(leaf.size, dtype=bool)
    in_s[leaf >= 0] = affected_leaf[leaf[leaf >= 0]]
    ratio = np.where(sessions.play_ms > 0, sessions.stall_ms / np.maximum(sessions.play_ms, 1.0), np.nan)
    bad = (np.nan_to_num(ratio) >= bad_stall_ratio) | (np.nan_to_num(sessions.startup_ms) > 2000.0)
    aff = np.flatnonzero(ended & in_s & bad)
    una = np.flatnonzero(ended & ~in_s)
    r_aff = returned_within(sessions, aff, data_end_ms)
    r_una = returned_within(sessions, una, data_end_ms)
    viewer_ids, session_ids = resolve_ids(aff)
    rows = [
        WinbackRow(
            vid,
            sid,
            incident_id,
            int(sessions.end_ms[i]),
            int(sessions.end_ms[i]) + WINDOW_MS,
            None if np.isnan(ratio[i]) else float(ratio[i]),
            None if np.isnan(sessions.startup_ms[i]) else float(sessions.startup_ms[i]),
            None if np.isnan(r) else bool(r),
        )
        for i, r, vid, sid in zip(aff, r_aff, viewer_ids, session_ids, strict=True)
    ]
    # session codes depend on the loader; the list's order must not
    rows.sort(key=lambda w: (w.left_ms, w.viewer_id, w.session_id))

    def rate(r: NDArray[np.float64]) -> float | None:
        k = r[~np.isnan(r)]
        return float(k.mean()) if k.size else None

    return rows, ReturnRates(rate(r_aff), rate(r_una), int(aff.size), int(una.size))
