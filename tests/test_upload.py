"""probe/spool.py and probe/upload.py against the real collector app and a scripted flaky server."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from aiohttp import web

from collector.app import create_app
from collector.state import STORE
from probe.spool import Spool
from probe.upload import RetryPolicy, deliver, flush_spool
from tests.collector_helpers import PLATFORM, PROBE_EU, config, free_port, report


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


def test_spool_write_is_atomic_and_listed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    r = report("eu-west")
    p = sp.write(r)
    assert p.name == f"{r['report_id']}.json"
    assert json.loads(p.read_text()) == r
    assert sp.pending() == [p]
    assert not list((tmp_path / "spool").glob(".*.tmp"))
    sp.delete(p)
    assert sp.pending() == []


async def test_deliver_to_collector_then_resend_is_duplicate(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(config()))
    url = str(client.make_url("/"))
    r = report("eu-west")
    res = await deliver(r, spool_dir=tmp_path, collector_url=url, token=PROBE_EU, sleep=Sleeps())
    assert res.status == "delivered" and res.attempts == 1 and not res.duplicate
    assert Spool(tmp_path).pending() == []
    res = await deliver(r, spool_dir=tmp_path, collector_url=url, token=PROBE_EU, sleep=Sleeps())
    assert res.status == "delivered" and res.duplicate
    assert client.server.app[STORE].count("probe_reports") == 1


async def test_4xx_is_final_and_kept_aside(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(config()))
    url = str(client.make_url("/"))
    sleeps = Sleeps()
    res = await deliver(report("eu-west"), spool_dir=tmp_path, collector_url=url, token=PLATFORM, sleep=sleeps)
    assert res.status == "rejected" and res.http_status == 403 and res.attempts == 1
    assert "role" in (res.message or "")
    assert sleeps.delays == []
    sp = Spool(tmp_path)
    assert sp.pending() == [] and [p.name for p in sp.rejected()] == [res.path.name if res.path else ""]
    assert "HTTP 403" in (tmp_path / "rejected" / (res.path.stem + ".reason.txt")).read_text()  # type: ignore[union-attr]


async def test_retries_on_5xx_and_429_with_backoff(aiohttp_client: Any, tmp_path: Path) -> None:
    statuses = [503, 429, 500, 200]
    seen: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        seen.append((await request.json())["report_id"])
        st = statuses.pop(0)
        if st == 200:
            return web.json_response({"accepted": 1, "new": 1, "duplicate": 0})
        return web.json_response({"error": "busy"}, status=st, headers={"Retry-After": "2"} if st == 429 else {})

    app = web.Application()
    app.router.add_post("/v1/reports", flaky)
    client = await aiohttp_client(app)
    sleeps = Sleeps()
    r = report("eu-west")
    res = await deliver(
        r,
        spool_dir=tmp_path,
        collector_url=str(client.make_url("/")),
        token="t" * 20,
        sleep=sleeps,
        rng=random.Random(1),
        base_delay_s=0.5,
        max_delay_s=30,
    )
    assert res.status == "delivered" and res.attempts == 4
    assert seen == [r["report_id"]] * 4
    assert len(sleeps.delays) == 3
    assert 0 <= sleeps.delays[0] <= 0.5
    assert sleeps.delays[1] >= 2.0  # Retry-After honoured
    assert 0 <= sleeps.delays[2] <= 2.0
    assert Spool(tmp_path).pending() == []


def test_backoff_is_capped_full_jitter() -> None:
    p = RetryPolicy(attempts=20, base_delay_s=1, max_delay_s=8)
    rng = random.Random(7)
    for attempt in range(1, 20):
        assert 0 <= p.delay(attempt, rng) <= min(8, 2 ** (attempt - 1))


async def test_unreachable_collector_keeps_report_then_flush(aiohttp_client: Any, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sleeps = Sleeps()
    r = report("eu-west")
    res = await deliver(r, spool_dir=tmp_path, collector_url=dead, token=PROBE_EU, attempts=3, sleep=sleeps)
    assert res.status == "spooled" and res.attempts == 3 and res.http_status is None
    assert "Error" in (res.message or "") and len(sleeps.delays) == 2
    assert len(Spool(tmp_path).pending()) == 1
    (tmp_path / "garbage.json").write_text("{not json")
    client = await aiohttp_client(create_app(config()))
    results = await flush_spool(
        spool_dir=tmp_path, collector_url=str(client.make_url("/")), token=PROBE_EU, sleep=Sleeps()
    )
    assert sorted(x.status for x in results) == ["delivered", "rejected"]
    assert Spool(tmp_path).pending() == []
    assert client.server.app[STORE].count("probe_reports") == 1
