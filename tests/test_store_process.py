"""The store in a process of its own (``store_process = true``): the same answers as in-process, through
the real app; a killed store process is replaced without losing what was acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from collector.app import create_app
from collector.state import STORE
from collector.store_process import StoreClient
from tests.collector_helpers import PLATFORM, PROBE_EU, READER, T0_MS, auth, config, event, report

JSON = {**auth(PLATFORM), "Content-Type": "application/json"}


async def _session(client: Any, items: list[dict[str, Any]], extra: list[dict[str, Any]],
                   rep: dict[str, Any]) -> list[Any]:  # fmt: skip
    """Writes, retries, a bad batch, reads and an export; every status and body, in order."""
    out: list[Any] = []

    async def rec(resp: Any) -> None:
        text = await resp.text()
        out.append((resp.status, json.loads(text) if resp.content_type == "application/json" else text))

    await rec(await client.post("/v1/events", data=json.dumps(items), headers=JSON))
    await rec(await client.post("/v1/events", data=json.dumps(items[:10] + extra[:1]), headers=JSON))
    await rec(await client.post("/v1/events", data=json.dumps(extra[1:]), headers=JSON))
    for _ in range(2):
        await rec(await client.post("/v1/reports", json=rep, headers=auth(PROBE_EU)))
    reader = auth(READER)
    window = f"from={T0_MS - 3_600_000}&to={T0_MS + 3_600_000}"
    await rec(await client.get(f"/v1/events?{window}", headers=reader))
    await rec(await client.get(f"/v1/reports?{window}", headers=reader))
    await rec(await client.get(f"/v1/audience?{window}&by=region", headers=reader))
    await rec(await client.get("/healthz"))
    return out


@pytest.mark.timeout(120)
async def test_same_answers_as_the_in_process_store(aiohttp_client: Any, tmp_path: Path) -> None:
    items = [event(i, type="qoe", stall_ms=1.5 * i, height=720) if i % 2 else event(i) for i in range(300)]
    extra = [event(500), event(600), {**event(601), "stall_ms": "x"}]
    rep = report("eu-west")
    answers = []
    for i, process in enumerate((False, True)):
        cfg = config(str(tmp_path / f"{i}.duckdb"), store_process=process)
        client = await aiohttp_client(create_app(cfg, wall_ms=lambda: T0_MS))
        assert isinstance(client.server.app[STORE], StoreClient) == process
        answers.append(await _session(client, items, extra, rep))
        await client.close()
    assert [a[0] for a in answers[1]] == [200, 200, 400, 200, 200, 200, 200, 200, 200]
    assert answers[1] == answers[0]
    assert answers[1][1][1] == {"accepted": 11, "new": 1, "duplicate": 10}
    assert answers[1][4][1]["duplicate"] == 1
    assert len(answers[1][5][1].splitlines()) == 300 + 1  # the export streams every stored event


@pytest.mark.timeout(120)
async def test_checkpoints_run_in_the_store_process(aiohttp_client: Any, tmp_path: Path) -> None:
    cfg = config(str(tmp_path / "c.duckdb"), store_process=True, checkpoint_wal_bytes=1 << 20)
    client = await aiohttp_client(create_app(cfg, wall_ms=lambda: T0_MS))
    for b in range(12):  # ~250 bytes of WAL per event: a checkpoint every ~4,000 events
        batch = [event(b * 1000 + i) for i in range(1000)]
        r = await client.post("/v1/events", data=json.dumps(batch), headers=JSON)
        assert r.status == 200
    deadline = time.monotonic() + 30
    metrics = ""
    while time.monotonic() < deadline:
        metrics = await (await client.get("/metrics", headers=auth(READER))).text()
        name = "streamqoe_store_checkpoint_duration_seconds_count"
        line = next(x for x in metrics.splitlines() if x.startswith(name))
        if float(line.split()[-1]) >= 1:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail(f"no checkpoint reported to /metrics:\n{metrics}")
    assert client.server.app[STORE].count("viewer_events") == 12_000


async def _store_process_app(aiohttp_client: Any, tmp_path: Path) -> tuple[Any, StoreClient]:
    cfg = config(str(tmp_path / "c.duckdb"), store_process=True)
    client = await aiohttp_client(create_app(cfg, wall_ms=lambda: T0_MS))
    store = client.server.app[STORE]
    assert isinstance(store, StoreClient)
    return client, store


@pytest.mark.timeout(120)
async def test_a_killed_store_process_is_replaced_and_nothing_acknowledged_is_lost(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client, store = await _store_process_app(aiohttp_client, tmp_path)
    batch = [event(i) for i in range(150)]
    r = await client.post("/v1/events", data=json.dumps(batch[:100]), headers=JSON)
    assert r.status == 200
    old = store.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while store.alive and time.monotonic() < deadline:  # noqa: ASYNC110 (the client's own thread notices)
        await asyncio.sleep(0.01)
    assert not store.alive
    # the next request starts a new store process, which recovers the file
    r = await client.post("/v1/events", data=json.dumps(batch[50:]), headers=JSON)
    assert r.status == 200, await r.text()
    assert await r.json() == {"accepted": 100, "new": 50, "duplicate": 50}
    assert store.pid != old
    assert store.count("viewer_events") == 150
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics", headers=auth(READER))).text()
    assert "streamqoe_store_process_starts_total 2" in metrics.splitlines()


@pytest.mark.timeout(120)
async def test_a_write_whose_store_process_dies_gets_503_and_its_retry_is_stored_once(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client, store = await _store_process_app(aiohttp_client, tmp_path)
    batch = json.dumps([event(i) for i in range(100)])  # small enough to sit whole in the pipe's buffer
    # The store process is stopped first, so the write reaches it and cannot be committed: no race with
    # the insert. It is killed once the call has been sent whole (sent under the channel's lock, after it is
    # counted in flight).
    os.kill(store.pid, signal.SIGSTOP)
    post = asyncio.ensure_future(client.post("/v1/events", data=batch, headers=JSON))
    deadline = time.monotonic() + 30
    while not store.in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110 (a thread of the client sends)
        await asyncio.sleep(0.005)
    channel = store._channel
    assert store.in_flight() == 1
    with channel.lock:  # the send has finished
        os.kill(store.pid, signal.SIGKILL)
    r = await post
    assert r.status == 503, await r.text()
    body = await r.json()
    assert "nothing of this request was acknowledged" in body["error"]
    assert r.headers["Retry-After"] == "1"
    r = await client.post("/v1/events", data=batch, headers=JSON)  # the client's retry, to a new store process
    assert r.status == 200
    assert await r.json() == {"accepted": 100, "new": 100, "duplicate": 0}
    assert store.count("viewer_events") == 100
