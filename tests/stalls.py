"""Process stalls, recorded so a timing test can tell a probe's real finding from a starved machine.

A room and a probe sharing one process (as the in-process tests run them) freeze together when that
process cannot run: the room sends nothing, so the probe sees a real freeze. Such a freeze says nothing
about the probe. :class:`LoopStalls` records, in wall-clock ms, every interval in which the event loop
ran late by more than a threshold (CPU steal, other processes, a thread holding the GIL), so a test can
require that every freeze it did not schedule overlaps one of them (or a time the room's own encoder
ran late, which the room records in its truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from room.truth import classify_freezes


class LoopStalls:
    """Wall-clock intervals in which this process's event loop could not run for ``threshold_ms`` or more."""

    def __init__(self, threshold_ms: float = 60.0, tick_ms: float = 5.0) -> None:
        self.threshold_ms = threshold_ms
        self.tick_ms = tick_ms
        self.intervals: list[tuple[float, float]] = []
        self.truth: dict[str, Any] = {"encoders": {}}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            before = time.time() * 1000.0
            await asyncio.sleep(self.tick_ms / 1000.0)
            after = time.time() * 1000.0
            if after - before - self.tick_ms >= self.threshold_ms:
                self.intervals.append((before, after))

    def overlaps(self, start_ms: float, end_ms: float, margin_ms: float = 50.0) -> bool:
        """True if a recorded stall overlaps [start_ms - margin, end_ms + margin] (wall clock, ms)."""
        return any(s < end_ms + margin_ms and e > start_ms - margin_ms for s, e in self.intervals)

    def stalled_ms(self, start_ms: float, end_ms: float) -> float:
        """How long this process was seen stalled within [start_ms, end_ms] (wall ms): stalls nobody here caused
        (a busy machine, the hypervisor taking the CPU), which a measurement may absorb."""
        return sum(max(0.0, min(e, end_ms) - max(s, start_ms)) for s, e in self.intervals)

    def add_room_truth(self, truth: dict[str, Any]) -> None:
        """Count the times the room's encoders ran late (``late`` in its truth) as stalls too."""
        self.truth = truth
        self.intervals.extend((s, e) for enc in truth["encoders"].values() for s, e in enc["late"])

    def unexplained_freezes(self, report: Any) -> list[Any]:
        """The report's ``freeze_start`` events that nothing explains (``room.truth.classify_freezes``: not
        the probe's own host stalls, not the room's late ticks, not a stall of this process)."""
        got = classify_freezes(report.to_dict(), self.truth, seen=self.intervals)["unexplained"]
        times = {e["t_s"] for e in got}
        return [e for e in report.events if e.type == "freeze_start" and e.t_s in times]


def room_truth(whep_url: str) -> dict[str, Any]:
    """The truth record of the room behind ``whep_url`` (``http://host:port/whep/<room>``), over HTTP."""
    import json
    import urllib.request

    base, room = whep_url.rsplit("/whep/", 1)
    with urllib.request.urlopen(f"{base}/rooms/{room}/truth", timeout=10) as resp:
        truth: dict[str, Any] = json.loads(resp.read())
    return truth

