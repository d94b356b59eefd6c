"""What the analysis reads: per-session facts and leaf × minute sums of one window, not raw events.

Two builders give the same :class:`Aggregates`: :func:`from_events` (numpy, from an in-memory
:class:`EventTable`) and :func:`analysis.sql_aggregate.aggregate_duckdb` (the sums computed inside
DuckDB from the collector's file, so millions of events never become Python objects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from analysis.events_table import EventTable
from analysis.series import Grid, Sessions, build_grid, sessions_of, startup_quantiles

IdResolver = Callable[[NDArray[np.int64]], tuple[list[str], list[str]]]
"""Session codes → (viewer ids, session ids), in the same order."""


@dataclass
class Aggregates:
    """Everything the pipeline needs about viewer events in [from_ms, to_ms) (+ the look-ahead)."""

    sessions: Sessions
    grid: Grid
    startup_p50_ms: list[float | None]
    """Per minute of the grid: median startup (TTFF) of joins, ms; None without joins."""
    startup_p95_ms: list[float | None]
    data_end_ms: int
    """Time of the last event loaded (look-ahead included): return rates are unknown past it."""
    n_events: int
    """Events inside [from_ms, to_ms)."""
    resolve_ids: IdResolver


def from_events(table: EventTable, from_ms: int, to_ms: int) -> Aggregates:
    """Aggregates of an in-memory event table (events outside the window count only for sessions'
    facts and returns)."""
    n_in = int(((table.t_ms >= from_ms) & (table.t_ms < to_ms)).sum())
    sessions = sessions_of(table)
    grid = build_grid(table, sessions, from_ms, to_ms)
    p50, p95 = startup_quantiles(table, grid.t0_ms, grid.n_minutes)

    def resolve(codes: NDArray[np.int64]) -> tuple[list[str], list[str]]:
        return (
            [table.viewer_ids[int(sessions.viewer[c])] for c in codes],
            [table.session_ids[int(c)] for c in codes],
        )

    data_end = int(table.t_ms.max()) if table.n else 0
    return Aggregates(sessions, grid, p50, p95, data_end, n_in, resolve)
