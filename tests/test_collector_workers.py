"""Ingest with ``ingest_workers`` > 0: the same responses as inline parsing, through the real app."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from collector.app import create_app
from collector.state import CONFIG, PARSE_POOL, STORE
from tests.collector_helpers import PLATFORM, T0_MS, auth, config, event

JSON = {**auth(PLATFORM), "Content-Type": "application/json"}


@pytest.fixture(params=[(0, False), (1, False), (1, True)], ids=["inline", "workers", "workers+store-process"])
async def client(request: Any, aiohttp_client: Any, tmp_path: Path) -> Any:
    """With a store process too, the columns go from the parse worker to the store process packed."""
    workers, store_process = request.param
    cfg = config(str(tmp_path / "c.duckdb"), ingest_workers=workers, max_batch_items=100,
                 store_process=store_process)  # fmt: skip
    return await aiohttp_client(create_app(cfg, wall_ms=lambda: T0_MS))


async def _post(client: Any, body: bytes, headers: dict[str, str] = JSON) -> tuple[int, Any]:
    r = await client.post("/v1/events", data=body, headers=headers)
    return r.status, await r.json()


async def test_same_answers_with_and_without_workers(client: Any) -> None:
    items = [event(i, type="qoe", stall_ms=1.5 * i, height=720) if i % 2 else event(i) for i in range(20)]
    items[3]["region"] = None
    body = json.dumps(items).encode()
    assert await _post(client, body) == (200, {"accepted": 20, "new": 20, "duplicate": 0})
    assert await _post(client, body) == (200, {"accepted": 20, "new": 0, "duplicate": 20})
    gz = {**JSON, "Content-Encoding": "gzip"}
    assert await _post(client, gzip.compress(json.dumps([items[0], event(99)]).encode()), gz) == (
        200, {"accepted": 2, "new": 1, "duplicate": 1})  # fmt: skip
    rows = client.server.app[STORE].query("SELECT region, height, stall_ms FROM viewer_events WHERE event_id = ?",
                                          [items[3]["event_id"]])  # fmt: skip
    assert rows == [{"region": None, "height": 720, "stall_ms": 4.5}]

    bad = [event(0), {**event(1), "stall_ms": "x"}]
    status, reply = await _post(client, json.dumps(bad).encode())
    assert status == 400 and (reply["item"], reply["field"]) == (1, "stall_ms")
    assert reply["error"] == "item 1: stall_ms: must be a number; nothing of this batch was stored"
    ndjson = {**auth(PLATFORM), "Content-Type": "application/x-ndjson"}
    status, reply = await _post(client, json.dumps(event(0)).encode() + b"\n{oops\n", ndjson)
    assert status == 400 and reply["error"].startswith("line 2: invalid JSON")
    status, reply = await _post(client, json.dumps([event(i) for i in range(101)]).encode())
    assert status == 413
    assert client.server.app[STORE].count("viewer_events") == 21


async def test_pool_started_only_when_configured(client: Any) -> None:
    app = client.server.app
    assert (PARSE_POOL in app) == (app[CONFIG].ingest_workers > 0)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                out.append(int(stat.parent.name))
        except OSError:
            continue
    return out


def test_workers_exit_when_the_collector_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the pool no chance to shut down: the workers notice the parent is gone and exit."""
    import os
    import signal
    import time
    import urllib.request

    from tests.collector_helpers import collector_process, free_port, write_config

    port = free_port()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.duckdb", port, ingest_workers=1)
    with collector_process(cfg, port, tmp_path / "log") as proc:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=json.dumps([event(1)]).encode(),
                                     headers=JSON)  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["new"] == 1
        children = _children(proc.pid)
        assert children, "no worker processes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    assert not [c for c in children if Path(f"/proc/{c}").exists()]


async def test_a_dead_worker_is_replaced(aiohttp_client: Any, tmp_path: Path) -> None:
    import asyncio
    import os
    import signal

    app = create_app(config(str(tmp_path / "c.duckdb"), ingest_workers=1), wall_ms=lambda: T0_MS)
    client = await aiohttp_client(app)
    before = set(_children(os.getpid()))
    pool = app[PARSE_POOL]
    workers = [p.pid for p in pool._pool._processes.values()]  # the executor's own record of its workers
    assert workers and set(workers) <= before
    os.kill(workers[0], signal.SIGKILL)
    await asyncio.sleep(0.5)  # the executor notices and marks itself broken
    with structlog.testing.capture_logs() as logs:
        for i in range(3):  # the first request is parsed inline while the pool is replaced
            reply = await _post(client, json.dumps([event(i)]).encode())
            assert reply == (200, {"accepted": 1, "new": 1, "duplicate": 0})
    assert [e["event"] for e in logs if e["event"] == "parse_pool_broken"] == ["parse_pool_broken"]
    assert [p.pid for p in pool._pool._processes.values()] != workers
