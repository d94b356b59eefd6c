"""``analysis.remote.fetch_to_files`` against the real collector app served on a loopback port."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from analysis.load import LoadError, from_ndjson
from analysis.remote import fetch_to_files
from collector.app import create_app
from collector.events import event_from_dict
from probe.report import Report
from tests.collector_helpers import ANALYSIS, PLATFORM, PROBE_ANY, READER, T0_MS, auth, config, event, free_port, report


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
async def collector_url(aiohttp_server: Any, tmp_path: Path) -> str:
    server = await aiohttp_server(create_app(config(str(tmp_path / "c.duckdb")), wall_ms=lambda: T0_MS))
    return str(server.make_url("")).rstrip("/")


async def _seed(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events = [event(i, t_ms=T0_MS + i * 1000, type="qoe", stall_ms=10.0 * i, watch_ms=1000) for i in range(30)]
    reports = [report("eu-west", started_ms=T0_MS + k * 60_000) for k in range(3)]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/events", json=events, headers=auth(PLATFORM)) as r:
            assert r.status == 200
        for rep in reports:
            async with s.post(f"{url}/v1/reports", json=rep, headers=auth(PROBE_ANY)) as r:
                assert r.status == 200
    return events, reports


async def test_fetch_to_files_round_trip(collector_url: str, tmp_path: Path) -> None:
    events, reports = await _seed(collector_url)
    dest = tmp_path / "dl"
    ev_path, rep_path = await fetch_to_files(collector_url, READER, T0_MS, T0_MS + 20_000, dest)
    assert (ev_path, rep_path) == (dest / "events.ndjson", dest / "reports.ndjson")
    lines = sorted((json.loads(x) for x in ev_path.read_text().splitlines()), key=lambda e: e["t"])
    assert lines == [event_from_dict(e).to_dict() for e in events[:20]]
    assert sorted(from_ndjson(ev_path).t_ms.tolist()) == [T0_MS + i * 1000 for i in range(20)]  # analysis reads it
    assert [json.loads(x) for x in rep_path.read_text().splitlines()] == [Report.from_json_obj(reports[0]).to_dict()]
    assert _names(dest) == ["events.ndjson", "reports.ndjson"]  # no temporary files left


async def test_empty_window_gives_empty_files(collector_url: str, tmp_path: Path) -> None:
    ev, rep = await fetch_to_files(collector_url + "/", ANALYSIS, 0, 1, tmp_path)
    assert ev.read_bytes() == b"" and rep.read_bytes() == b""


async def test_unknown_token(collector_url: str, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"^collector at http://127\.0\.0\.1:\d+ refused the token \(HTTP 401\)"):
        await fetch_to_files(collector_url, "not-a-token-0123456789", 0, 1, tmp_path / "dl")
    assert _names(tmp_path / "dl") == []


async def test_token_without_read_role(collector_url: str, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"does not let this token read events \(HTTP 403.*reader or analysis"):
        await fetch_to_files(collector_url, PLATFORM, 0, 1, tmp_path)


async def test_not_reachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LoadError, match=rf"^collector at {url} is not reachable: "):
        await fetch_to_files(url, READER, 0, 1, tmp_path)


async def test_bad_window_and_url(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="must be greater than from"):
        await fetch_to_files("http://127.0.0.1:1", READER, 5, 5, tmp_path)
    with pytest.raises(LoadError, match="expected http"):
        await fetch_to_files("127.0.0.1:8600", READER, 0, 1, tmp_path)


async def _not_a_collector(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>hello</html>", content_type="text/html")


async def _cut_short(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b'{"event_id": "a"}\n' * 100)
    assert request.transport is not None
    request.transport.close()  # what the collector does when an export fails midway
    return resp


async def test_not_a_collector(aiohttp_server: Any, tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/v1/events", _not_a_collector)
    server = await aiohttp_server(app)
    with pytest.raises(LoadError, match="not NDJSON"):
        await fetch_to_files(str(server.make_url("")), READER, 0, 1, tmp_path)


async def test_export_cut_short(aiohttp_server: Any, tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/v1/events", _cut_short)
    server = await aiohttp_server(app)
    with pytest.raises(LoadError, match=r"the events export was cut off after \d+ bytes"):
        await fetch_to_files(str(server.make_url("")), READER, 0, 1, tmp_path)
    assert _names(tmp_path) == []  # no partial file under the final name, no leftover temporary
