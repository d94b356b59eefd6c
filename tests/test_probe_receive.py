"""The probe's receive path against a known truth: a stall of the probe's own host is not network jitter.

The room runs as its own process, so its sending is unaffected; the probe's event loop is blocked for
200 ms every 400 ms (a probe host busy with other probes). Packets that arrive during a stall wait in
the socket buffer. aiortc's own path dates a packet when its task gets to it, so those waits show up
as jitter; the direct receive path dates it with the kernel's receive time (``SO_TIMESTAMPNS``), so
the jitter it reports stays what the network (here: loopback) did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from probe.report import Report
from probe.session import ProbeOptions, Session
from tests.test_probe_cli import room_process

pytestmark = [pytest.mark.slow, pytest.mark.realtime]

STALL_S, EVERY_S = 0.200, 0.400


@pytest.fixture(scope="module")
def room_url() -> Iterator[str]:
    with room_process("recv") as url:
        yield url


async def _session(url: str, *, fast_receive: bool, stall: bool) -> tuple[Report, Session]:
    session = Session(ProbeOptions(url=url, duration_s=6, fast_receive=fast_receive, decode=False))

    async def staller() -> None:
        while True:
            await asyncio.sleep(EVERY_S)
            time.sleep(STALL_S)  # noqa: ASYNC251 - blocking the event loop is the point: the probe host is busy

    task = asyncio.ensure_future(staller()) if stall else None
    try:
        report = await session.run()
    finally:
        if task is not None:
            task.cancel()
    assert report.failure is None, report.failure_message
    return report, session


def _video_jitter(report: Report) -> float:
    video = next(s for s in report.summary.streams if s.kind == "video")
    assert video.jitter_ms is not None
    return float(video.jitter_ms)


async def test_probe_host_stalls_do_not_show_as_jitter_with_kernel_timestamps(room_url: str) -> None:
    quiet, _ = await _session(room_url, fast_receive=True, stall=False)
    kernel, session = await _session(room_url, fast_receive=True, stall=True)
    app, _ = await _session(room_url, fast_receive=False, stall=True)
    assert session.direct_receive is not None and session.direct_receive.kernel_timestamps
    j_quiet, j_kernel, j_app = _video_jitter(quiet), _video_jitter(kernel), _video_jitter(app)
    # the stalls are real: dated by the application, they look like many ms of jitter
    assert j_app > 5.0, (j_quiet, j_kernel, j_app)
    # dated by the kernel, most of it is gone (what is left is the room's own pacing on a shared machine,
    # which the quiet session shows: 1.5-2.5 ms here)
    assert j_kernel < j_app / 2, (j_quiet, j_kernel, j_app)
    # nothing was lost on either path: the socket buffer held every packet through each stall
    for report in (kernel, app):
        assert all(s.packetsLost == 0 for s in report.summary.streams)
    # no-decode frames are complete when their last packet arrived (docs/metrics.md, "Rendered frame"):
    # with kernel times the 200 ms stalls of the probe's own loop leave no freeze; dated by the application
    # they make frame gaps of ~230 ms, over the freeze threshold
    freezes = {name: r.summary.video.freezeCount for name, r in (("kernel", kernel), ("app", app))
               if r.summary.video is not None}
    assert freezes.get("app", 0) >= 3, freezes
    assert freezes.get("kernel") == 0, freezes
