"""``GET /v1/events`` and ``GET /v1/reports``: NDJSON export through the real app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from collector.app import create_app
from collector.events import event_from_dict
from probe.report import Report
from tests.collector_helpers import ANALYSIS, PLATFORM, PROBE_ANY, READER, T0_MS, auth, config, event, report


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(create_app(config(str(tmp_path / "c.duckdb")), wall_ms=lambda: T0_MS))


async def _post_events(client: Any, items: list[dict[str, Any]]) -> None:
    for i in range(0, len(items), 5000):
        r = await client.post("/v1/events", json=items[i : i + 5000], headers=auth(PLATFORM))
        assert r.status == 200, await r.text()


async def _lines(client: Any, path: str, token: str = READER) -> list[dict[str, Any]]:
    r = await client.get(path, headers=auth(token))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.headers["Transfer-Encoding"] == "chunked"
    text = await r.text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_events_export_is_the_wire_format_in_the_window(client: Any) -> None:
    items = [
        event(0, t_ms=T0_MS - 1),  # before the window
        event(1, t_ms=T0_MS, type="join", startup_ms=850),
        event(2, t_ms=T0_MS + 250, type="qoe", stall_count=2, stall_ms=400.5, watch_ms=9000, height=720,
              bitrate_kbps=1500.25),
        {**event(3, t_ms=T0_MS + 999), "region": None, "isp": None},
        event(4, t_ms=T0_MS + 1000),  # `to` is exclusive
    ]
    del items[3]["cdn"]
    await _post_events(client, items)
    got = sorted(await _lines(client, f"/v1/events?from={T0_MS}&to={T0_MS + 1000}"), key=lambda e: e["t"])
    want = [event_from_dict(e).to_dict() for e in items[1:4]]
    assert got == want  # keys, values and omitted None fields as ViewerEvent.to_dict()
    assert [list(g) for g in got] == [list(w) for w in want]
    assert got[1]["t"].endswith(".250Z") and got[1]["stall_count"] == 2 and got[1]["height"] == 720
    assert "region" not in got[2] and "cdn" not in got[2]


async def test_events_export_streams_many_batches(client: Any) -> None:
    from collector.export import FETCH_ROWS

    n = FETCH_ROWS * 2 + 17
    items = [event(i, t_ms=T0_MS + i) for i in range(n)]
    await _post_events(client, items)
    got = await _lines(client, f"/v1/events?from={T0_MS}&to={T0_MS + n}", token=ANALYSIS)
    assert len(got) == n
    assert sorted(g["event_id"] for g in got) == sorted(e["event_id"] for e in items)


async def test_reports_export_is_the_stored_body(client: Any) -> None:
    reps = [report("eu-west", started_ms=T0_MS + k * 60_000) for k in range(3)]
    for rep in reps:
        r = await client.post("/v1/reports", json=rep, headers=auth(PROBE_ANY))
        assert r.status == 200
    got = await _lines(client, f"/v1/reports?from={T0_MS}&to={T0_MS + 120_000}")
    want = [Report.from_json_obj(rep).to_dict() for rep in reps[:2]]
    assert sorted(got, key=lambda r: r["started_at"]) == want


async def test_empty_window(client: Any) -> None:
    assert await _lines(client, "/v1/events?from=0&to=1") == []
    assert await _lines(client, "/v1/reports?from=0&to=1") == []


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("", "from", "required"),
        (f"?from={T0_MS}", "to", "required"),
        ("?from=yesterday&to=5", "from", "must be an integer"),
        ("?from=1&to=1.5", "to", "must be an integer"),
        ("?from=-1&to=5", "from", "must be in"),
        ("?from=5&to=5", "to", "greater than from"),
        (f"?from=1&to={2**63}", "to", "must be in"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/events", "/v1/reports"])
async def test_bad_parameters_are_a_clear_400(client: Any, path: str, query: str, field: str, words: str) -> None:
    r = await client.get(path + query, headers=auth(READER))
    assert r.status == 400
    body = await r.json()
    assert body["field"] == field and words in body["error"], body


@pytest.mark.parametrize(("token", "status"), [(None, 401), (PLATFORM, 403), (PROBE_ANY, 403), (READER, 200),
                                               (ANALYSIS, 200)])  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/events", "/v1/reports"])
async def test_export_roles(client: Any, path: str, token: str | None, status: int) -> None:
    r = await client.get(f"{path}?from=0&to=1", headers=auth(token) if token else {})
    assert r.status == status


async def test_client_leaving_mid_export_releases_the_cursor(client: Any) -> None:
    import asyncio

    from collector.export import FETCH_ROWS
    from collector.state import STORE

    n = FETCH_ROWS * 4
    await _post_events(client, [event(i, t_ms=T0_MS + i) for i in range(n)])
    store = client.server.app[STORE]
    cursors_before = len(store._cursors)
    with structlog.testing.capture_logs() as logs:
        await _leave_mid_export(client)
        for _ in range(200):
            if len(store._cursors) == cursors_before:
                break
            await asyncio.sleep(0.01)
    assert len(store._cursors) == cursors_before
    # the handler was cancelled mid-fetch: closing the cursor waited for the fetch instead of failing
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    r = await client.get(f"/v1/events?from={T0_MS}&to={T0_MS + 10}", headers=auth(READER))
    assert r.status == 200 and len((await r.text()).splitlines()) == 10


async def _leave_mid_export(client: Any) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"GET /v1/events?from=0&to={2**62} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\n\r\n"
                 .encode())  # fmt: skip
    await writer.drain()
    assert (await reader.readexactly(12)) == b"HTTP/1.1 200"
    await reader.read(4096)
    writer.transport.abort()  # gone, with megabytes still to come
