"""Stalls of the probe's own process, so a freeze the probe caused is not blamed on the stream.

A probe that cannot run (its host is overloaded, the hypervisor steals its CPU, a fleet packs too many
sessions into one process) handles packets late and sees frames arrive in a burst after a gap: a W3C
freeze that no viewer had. The probe cannot tell that from a real freeze by looking at frames, but it
can see that it could not run. :class:`LoopMonitor` measures exactly that: a timer on the event loop that
every session's receive path runs on, asking to wake every ``TICK_S``; a wake-up later than
``THRESHOLD_MS`` is a **host stall** from when the timer was due to when it ran.

One monitor serves every session on a loop (a fleet process runs hundreds of sessions; one timer costs
~50 wake-ups per second in total, not per session). Sessions read the stalls inside their own window.
The loop cannot see a thread of its own process starve while it runs: the decode path records those
episodes itself (``probe.tap.DecodeLag``: a video frame held ≥ ``THRESHOLD_MS`` from leaving the jitter
buffer complete to its decoded picture reaching the session), and :func:`merge` joins both sources into
one list of host stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import Callable

TICK_S = 0.02
"""How often the monitor asks to wake."""
THRESHOLD_MS = 100.0
"""A wake-up at least this late is a host stall (a W3C freeze needs a gap of ≥ 150 ms over the average)."""
KEEP = 10_000
"""Stalls kept per loop (a session only reads those inside its own window)."""


class LoopMonitor:
    """Host stalls of one event loop, as (start, end) on ``clock`` (seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.stalls: deque[tuple[float, float]] = deque(maxlen=KEEP)
        self._users = 0
        self._task: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self._users += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        threshold = THRESHOLD_MS / 1000.0
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                due = self.clock() + TICK_S
                await asyncio.sleep(TICK_S)
                late = self.clock() - due
                if late >= threshold:
                    self.stalls.append((due, due + late))

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        """Stalls that overlap [start, end] (clock seconds)."""
        return [(s, e) for s, e in self.stalls if e > start and s < end]


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMonitor] = weakref.WeakKeyDictionary()


def monitor_for_loop(clock: Callable[[], float] = time.monotonic) -> LoopMonitor:
    """The running loop's monitor (created on first use; sessions ``acquire``/``release`` it)."""
    loop = asyncio.get_running_loop()
    mon = _monitors.get(loop)
    if mon is None or mon.clock is not clock:
        mon = _monitors[loop] = LoopMonitor(clock)
    return mon


def merge(sources: dict[str, list[tuple[float, float]]]) -> list[tuple[float, float, tuple[str, ...]]]:
    """Intervals from several sources (e.g. ``loop``, ``decoder``) as one sorted list of disjoint
    (start, end, sources) intervals: overlapping or touching intervals become one, naming every source."""
    tagged = sorted((s, e, name) for name, intervals in sources.items() for s, e in intervals)
    out: list[tuple[float, float, tuple[str, ...]]] = []
    for s, e, name in tagged:
        if out and s <= out[-1][1]:
            start, end, names = out[-1]
            out[-1] = (start, max(end, e), names if name in names else tuple(sorted((*names, name))))
        else:
            out.append((s, e, (name,)))
    return out


def cpu_steal_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs since boot, from the ``cpu`` line of /proc/stat; (0, 0) where
    there is none. Between two readings, steal / total is the hypervisor's share of this VM's CPU time."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7], sum(fields)) if len(fields) == 8 else (0, 0)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The hypervisor's share of the CPU time between two :func:`cpu_steal_ticks` readings (None if no time
    was counted between them)."""
    return (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None


def cpu_model() -> str:
    """The host CPU's model name and clock from /proc/cpuinfo (e.g. ``AMD EPYC @ 2596 MHz``), "" where none.

    Benchmarks print it: the same code on another VM host gives other numbers, and a reader comparing runs
    across days needs to know whether the machine changed."""
    model = mhz = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and not model:
                    model = value
                elif key == "cpu MHz" and not mhz:
                    mhz = value
                if model and mhz:
                    break
    except OSError:
        return ""
    if mhz:
        try:
            return f"{model} @ {float(mhz):.0f} MHz"
        except ValueError:
            pass
    return model
