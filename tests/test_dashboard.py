"""The dashboard in real headless Chromium: renders the seeded data, marks incidents, no script errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest

from tests.collector_helpers import (
    ANALYSIS,
    PLATFORM,
    PROBE_ANY,
    READER,
    T0_MS,
    auth,
    collector_process,
    event,
    free_port,
    report,
    write_config,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOT_DIR = Path(os.environ.get("STREAMQOE_SCREENSHOT_DIR", tempfile.gettempdir()))


async def _seed(base: str) -> None:
    reps = []
    evs = []
    for m in range(30):
        for region, bad in (("eu-west", 10 <= m < 18), ("us-east", False)):
            reps.append(
                report(
                    region,
                    started_ms=T0_MS + m * 60_000,
                    ttff_ms=2500.0 if bad else 700.0 + 10 * m,
                    stall_ratio=0.12 if bad else 0.01,
                )
            )
            for v in range(20 if not bad else 8):
                sid = f"{region}-{v}"
                evs.append(
                    event(
                        v,
                        type="qoe",
                        t_ms=T0_MS + m * 60_000 + v,
                        session=sid,
                        viewer=sid,
                        region=region,
                        stall_ms=900.0 if bad else 100.0,
                        watch_ms=9000.0,
                        height=720,
                    )
                )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/reports", json=reps, headers=auth(PROBE_ANY)) as r:
            assert r.status == 200
        async with s.post(f"{base}/v1/events", json=evs, headers=auth(PLATFORM)) as r:
            assert r.status == 200, await r.text()
        inc = {
            "incident_id": "inc-eu",
            "start_ms": T0_MS + 600_000,
            "end_ms": T0_MS + 1_080_000,
            "segment": {"region": "eu-west"},
            "summary": "stalls in eu-west (edge-1)",
        }
        async with s.post(f"{base}/v1/incidents", json=inc, headers=auth(ANALYSIS)) as r:
            assert r.status == 200


@pytest.mark.chromium
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium missing (Debian package chromium)")
@pytest.mark.timeout(180)
async def test_dashboard_renders_in_chromium(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.duckdb", port)
    with collector_process(cfg, port, tmp_path / "collector.log"):
        base = f"http://127.0.0.1:{port}"
        await _seed(base)
        url = f"{base}/dashboard#token={READER}&from_ms={T0_MS}&to_ms={T0_MS + 1_800_000}&bucket_s=60"
        shot = SHOT_DIR / "streamqoe-dashboard.png"
        common = [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--window-size=1280,1000",
        ]
        dom = await asyncio.to_thread(
            subprocess.run, [*common, "--dump-dom", url], capture_output=True, text=True, timeout=90
        )
        await asyncio.to_thread(subprocess.run, [*common, f"--screenshot={shot}", url], capture_output=True, timeout=90)
    html = dom.stdout
    assert 'data-loaded="1"' in html, html[-3000:] + dom.stderr[-2000:]
    assert "data-errors=" not in html and "error:" not in html.split("<script>")[0]
    assert html.count('class="series"') >= 7  # 2 regions × 3 QoE charts + concurrent viewers
    assert 'data-name="eu-west"' in html and 'data-name="us-east"' in html
    assert html.count('class="incident"') == 4  # the incident band on each chart
    assert "stalls in eu-west (edge-1)" in html
    assert "60 probe reports" in html
    assert shot.exists() and shot.stat().st_size > 10_000
