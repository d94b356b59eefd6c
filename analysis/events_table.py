"""Viewer events as columns (numpy arrays): the one in-memory form every analysis step reads.

Built by :mod:`analysis.load` (DuckDB file, NDJSON export) and by :mod:`analysis.audience` (the
generator), so the analysis has a single, vectorised code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from collector.events import DIMENSIONS, EVENT_TYPES

JOIN, LEAVE, HEARTBEAT, QOE = (EVENT_TYPES.index(t) for t in ("join", "leave", "heartbeat", "qoe"))
UNKNOWN = "(none)"
"""Value used for a dimension an event did not carry."""


@dataclass
class EventTable:
    """One row per event. Dimension and id columns are integer codes into the vocabularies."""

    t_ms: NDArray[np.int64]
    """Event time, ms since the Unix epoch (UTC)."""
    etype: NDArray[np.int8]
    """Index into ``collector.events.EVENT_TYPES`` (join, leave, heartbeat, qoe)."""
    session: NDArray[np.int64]
    """Session code, 0..n_sessions-1."""
    viewer: NDArray[np.int64]
    """Viewer code, index into ``viewer_ids``."""
    dims: NDArray[np.int32]
    """(n_events, len(dim_names)) codes into ``vocab[j]``."""
    dim_names: tuple[str, ...]
    vocab: list[list[str]]
    viewer_ids: list[str]
    session_ids: list[str]
    startup_ms: NDArray[np.float64]
    """NaN when not carried."""
    stall_ms: NDArray[np.float64]
    watch_ms: NDArray[np.float64]
    height: NDArray[np.float64]

    @property
    def n(self) -> int:
        """Number of events."""
        return int(self.t_ms.size)

    def subset(self, mask: NDArray[np.bool_]) -> EventTable:
        """The events where ``mask`` holds (vocabularies and codes unchanged)."""
        return EventTable(
            self.t_ms[mask],
            self.etype[mask],
            self.session[mask],
            self.viewer[mask],
            self.dims[mask],
            self.dim_names,
            self.vocab,
            self.viewer_ids,
            self.session_ids,
            self.startup_ms[mask],
            self.stall_ms[mask],
            self.watch_ms[mask],
            self.height[mask],
        )


def empty_table(dim_names: tuple[str, ...] = DIMENSIONS) -> EventTable:
    """A table with no events."""
    z = np.zeros(0)
    return EventTable(
        np.zeros(0, np.int64),
        np.zeros(0, np.int8),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros((0, len(dim_names)), np.int32),
        dim_names,
        [[] for _ in dim_names],
        [],
        [],
        z,
        z,
        z,
        z,
    )
