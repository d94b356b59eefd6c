"""The collector through the real app (aiohttp_client): auth, validation, ingest, idempotency, reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from collector.app import create_app
from tests.collector_helpers import (
    ANALYSIS,
    PLATFORM,
    PROBE_ANY,
    PROBE_EU,
    READER,
    T0_MS,
    auth,
    config,
    event,
    report,
)

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    app = create_app(
        config(
            str(tmp_path / "c.duckdb"),
            max_body_bytes=256 * 1024,
            max_decompressed_bytes=1024 * 1024,
            max_batch_items=2000,
        ),
        wall_ms=lambda: T0_MS + 3_600_000,
    )
    return await aiohttp_client(app)


async def count(client: Any, table: str) -> int:
    from collector.state import STORE

    return client.server.app[STORE].count(table)


# -- auth ------------------------------------------------------------------------------------------------

AUTH_CASES = [
    # (method, path, token, body, expected status)
    ("POST", "/v1/events", None, "events", 401),
    ("POST", "/v1/events", "not-a-known-token-at-all", "events", 401),
    ("POST", "/v1/events", PROBE_ANY, "events", 403),
    ("POST", "/v1/events", READER, "events", 403),
    ("POST", "/v1/events", PLATFORM, "events", 200),
    ("POST", "/v1/reports", None, "report_eu", 401),
    ("POST", "/v1/reports", "Bearer-less", "report_eu", 401),
    ("POST", "/v1/reports", PLATFORM, "report_eu", 403),
    ("POST", "/v1/reports", READER, "report_eu", 403),
    ("POST", "/v1/reports", PROBE_EU, "report_us", 403),  # wrong region
    ("POST", "/v1/reports", PROBE_EU, "report_none", 403),  # region-bound token, report without a region
    ("POST", "/v1/reports", PROBE_EU, "report_eu", 200),
    ("POST", "/v1/reports", PROBE_ANY, "report_us", 200),
    ("GET", "/v1/qoe", None, None, 401),
    ("GET", "/v1/qoe", PLATFORM, None, 403),
    ("GET", "/v1/qoe", PROBE_ANY, None, 403),
    ("GET", "/v1/qoe", READER, None, 200),
    ("GET", "/v1/audience", PLATFORM, None, 403),
    ("GET", "/v1/audience", READER, None, 200),
    ("GET", "/metrics", None, None, 401),
    ("GET", "/metrics", PROBE_EU, None, 403),
    ("GET", "/metrics", READER, None, 200),
    ("POST", "/v1/incidents", READER, "incident", 403),
    ("POST", "/v1/incidents", ANALYSIS, "incident", 200),
    ("GET", "/healthz", None, None, 200),
    ("GET", "/dashboard", None, None, 200),
]


@pytest.mark.parametrize(("method", "path", "token", "body", "expected"), AUTH_CASES)
async def test_auth_matrix(
    client: Any, method: str, path: str, token: str | None, body: str | None, expected: int
) -> None:
    bodies: dict[str, Any] = {
        "events": [event(1)],
        "report_eu": report("eu-west"),
        "report_us": report("us-east"),
        "report_none": report(None),
        "incident": {"incident_id": "inc-1", "start_ms": T0_MS, "end_ms": T0_MS + 1, "segment": {}, "summary": "x"},
    }
    headers = {}
    if token == "Bearer-less":
        headers["Authorization"] = PROBE_EU  # no scheme
    elif token:
        headers = auth(token)
    kw: dict[str, Any] = {"headers": headers}
    if body:
        kw["json"] = bodies[body]
    resp = await client.request(method, path, **kw)
    assert resp.status == expected, await resp.text()
    if expected >= 400:
        assert "error" in await resp.json()
    if expected == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_token_never_logged(client: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.post("/v1/events", json=[event(1)], headers=auth(PLATFORM))
        await client.post("/v1/events", json=[event(1)], headers=auth("wrong-token-but-long-enough"))
    text = json.dumps(logs)
    assert PLATFORM not in text and "wrong-token-but-long-enough" not in text
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 2
    ok = lines[0]
    assert ok["method"] == "POST" and ok["path"] == "/v1/events" and ok["status"] == 200
    assert ok["items"] == 1 and ok["role"] == "platform" and ok["token_name"] == "platform"
    assert isinstance(ok["ms"], float)
    assert lines[1]["status"] == 401 and lines[1]["role"] is None


async def test_request_id_honoured_and_returned(client: Any) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith junk"})
    assert resp.headers["X-Request-Id"] != "bad id\twith junk" and len(resp.headers["X-Request-Id"]) == 32
    with structlog.testing.capture_logs() as logs:
        await client.post("/v1/events", json=[event(1)], headers={**auth(PLATFORM), "X-Request-Id": "rid-9"})
    assert [e for e in logs if e["event"] == "request"]
    # the id is bound in contextvars (merged by the configured processor chain, not by capture_logs)


# -- events ingest -----------------------------------------------------------------------------------------


async def test_events_json_array_then_retry_is_idempotent(client: Any) -> None:
    batch = [event(i) for i in range(100)]
    r = await client.post("/v1/events", json=batch, headers=auth(PLATFORM))
    assert r.status == 200
    assert await r.json() == {"accepted": 100, "new": 100, "duplicate": 0}
    r = await client.post("/v1/events", json=batch, headers=auth(PLATFORM))
    assert await r.json() == {"accepted": 100, "new": 0, "duplicate": 100}
    more = batch[:10] + [event(i) for i in range(100, 105)]
    r = await client.post("/v1/events", json=more, headers=auth(PLATFORM))
    assert await r.json() == {"accepted": 15, "new": 5, "duplicate": 10}
    assert await count(client, "viewer_events") == 105


async def test_events_duplicate_inside_one_batch_stored_once(client: Any) -> None:
    e = event(1)
    r = await client.post("/v1/events", json=[e, e], headers=auth(PLATFORM))
    assert await r.json() == {"accepted": 2, "new": 1, "duplicate": 1}
    assert await count(client, "viewer_events") == 1


async def test_events_single_object(client: Any) -> None:
    r = await client.post("/v1/events", json=event(1), headers=auth(PLATFORM))
    assert (await r.json())["new"] == 1


async def test_events_ndjson(client: Any) -> None:
    lines = "\n".join(json.dumps(event(i)) for i in range(20)) + "\n\n"
    r = await client.post("/v1/events", data=lines, headers={**auth(PLATFORM), "Content-Type": "application/x-ndjson"})
    assert (await r.json())["new"] == 20
    bad = json.dumps(event(1)) + "\n{not json\n"
    r = await client.post("/v1/events", data=bad, headers={**auth(PLATFORM), "Content-Type": "application/x-ndjson"})
    assert r.status == 400
    body = await r.json()
    assert "line 2" in body["error"] and body["item"] == 1


async def test_events_gzip(client: Any) -> None:
    body = gzip.compress(json.dumps([event(i) for i in range(50)]).encode())
    r = await client.post(
        "/v1/events",
        data=body,
        headers={**auth(PLATFORM), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["new"] == 50
    nd = gzip.compress("\n".join(json.dumps(event(i)) for i in range(5)).encode())
    r = await client.post(
        "/v1/events",
        data=nd,
        headers={**auth(PLATFORM), "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
    )
    assert (await r.json())["new"] == 5


async def test_corrupt_gzip_is_400(client: Any) -> None:
    r = await client.post(
        "/v1/events",
        data=b"\x1f\x8b\x08\x00garbage-garbage",
        headers={**auth(PLATFORM), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status == 400


async def test_oversize_body_is_413(client: Any) -> None:
    big = [event(i) for i in range(1500)]  # ~400 kB > 256 kB
    r = await client.post("/v1/events", json=big, headers=auth(PLATFORM))
    assert r.status == 413
    assert "limit" in (await r.json())["error"]
    assert await count(client, "viewer_events") == 0


async def test_gzip_bomb_is_413(client: Any) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")  # 50 MB of spaces, ~50 kB compressed
    assert len(bomb) < 256 * 1024
    r = await client.post(
        "/v1/events",
        data=bomb,
        headers={**auth(PLATFORM), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status == 413
    assert "decompressed" in (await r.json())["error"]


async def test_too_many_items_is_413(client: Any) -> None:
    items = [{"x": 1}] * 2001
    r = await client.post("/v1/events", json=items, headers=auth(PLATFORM))
    assert r.status == 413


@pytest.mark.parametrize(
    ("ctype", "encoding", "status"),
    # br: aiohttp's parser refuses it (400) before the handler runs, as brotli is not installed
    [("text/plain", None, {415}), ("application/json", "br", {400, 415}), ("application/json", "compress", {415})],
)
async def test_unsupported_media(client: Any, ctype: str, encoding: str | None, status: set[int]) -> None:
    headers = {**auth(PLATFORM), "Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    r = await client.post("/v1/events", data=json.dumps([event(1)]), headers=headers)
    assert r.status in status


async def test_batch_is_all_or_nothing(client: Any) -> None:
    batch = [event(i) for i in range(5)]
    batch[3]["stall_ms"] = "lots"
    r = await client.post("/v1/events", json=batch, headers=auth(PLATFORM))
    assert r.status == 400
    body = await r.json()
    assert body["item"] == 3 and body["field"] == "stall_ms"
    assert "item 3" in body["error"] and "nothing of this batch was stored" in body["error"]
    assert await count(client, "viewer_events") == 0


def _mut(**changes: Any) -> dict[str, Any]:
    e = event(1)
    for k, v in changes.items():
        if v is _DEL:
            e.pop(k)
        else:
            e[k] = v
    return e


_DEL = object()

EVENT_RULES = [
    ("event_id", _mut(event_id=_DEL)),
    ("event_id", _mut(event_id="")),
    ("event_id", _mut(event_id="has space")),
    ("event_id", _mut(event_id="x" * 200)),
    ("event_id", _mut(event_id=12)),
    ("viewer_id", _mut(viewer_id=None)),
    ("session_id", _mut(session_id=["a"])),
    ("room", _mut(room=_DEL)),
    ("room", _mut(room="a\nb")),
    ("event_id", _mut(event_id="abc\n")),  # a trailing newline ("$" in a regex would let it through)
    ("region", _mut(region="eu-west\n")),
    ("type", _mut(type="dance")),
    ("type", _mut(type=None)),
    ("t", _mut(t="yesterday")),
    ("t", _mut(t="2026-11-21T12:00:00")),  # no offset
    ("t", _mut(t="1999-01-01T00:00:00Z")),
    ("t", _mut(t=12345)),
    ("t", _mut(t=_DEL)),
    ("t_ms", {**_mut(t=_DEL), "t_ms": "now"}),
    ("t", {**_mut(t=_DEL), "t_ms": 5}),
    ("region", _mut(region=7)),
    ("region", _mut(region="")),
    ("isp", _mut(isp="x" * 65)),
    ("cdn", _mut(cdn={"a": 1})),
    ("device", _mut(device=True)),
    ("app_version", _mut(app_version="\x00")),
    ("startup_ms", _mut(startup_ms=-1)),
    ("startup_ms", _mut(startup_ms=1e12)),
    ("stall_count", _mut(stall_count=1.5)),
    ("stall_count", _mut(stall_count=True)),
    ("stall_ms", _mut(stall_ms=10**400)),
    ("watch_ms", _mut(watch_ms="5")),
    ("height", _mut(height=0)),
    ("height", _mut(height=720.0)),
    ("bitrate_kbps", _mut(bitrate_kbps=float("inf"))),
    ("surprise", _mut(surprise=1)),
]


@pytest.mark.parametrize(("field", "item"), EVENT_RULES)
async def test_event_validation_names_item_and_field(client: Any, field: str, item: dict[str, Any]) -> None:
    body = json.dumps([event(0), item], allow_nan=True)
    r = await client.post("/v1/events", data=body, headers={**auth(PLATFORM), "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    got = await r.json()
    assert got["item"] == 1
    assert got["field"] == field, got
    assert await count(client, "viewer_events") == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"[]", "empty batch"),
        (b"{", "invalid JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"1" * 5000, "JSON"),
    ],
)
async def test_malformed_bodies(client: Any, body: bytes, fragment: str) -> None:
    r = await client.post("/v1/events", data=body, headers={**auth(PLATFORM), "Content-Type": "application/json"})
    assert r.status == 400
    assert fragment in (await r.json())["error"]


# -- reports ingest ----------------------------------------------------------------------------------------


async def test_report_single_batch_and_retry(client: Any) -> None:
    one = report("eu-west")
    r = await client.post("/v1/reports", json=one, headers=auth(PROBE_EU))
    assert await r.json() == {"accepted": 1, "new": 1, "duplicate": 0}
    batch = [one, report("eu-west"), report("eu-west", failure="ice_timeout", ttff_ms=None, stall_ratio=None)]
    r = await client.post("/v1/reports", json=batch, headers=auth(PROBE_EU))
    assert await r.json() == {"accepted": 3, "new": 2, "duplicate": 1}
    assert await count(client, "probe_reports") == 3


async def test_report_columns_stored(client: Any) -> None:
    from collector.state import STORE

    rep = report("eu-west", ttff_ms=777.0, stall_ratio=0.05)
    await client.post("/v1/reports", json=rep, headers=auth(PROBE_EU))
    rows = client.server.app[STORE].query("SELECT * FROM probe_reports")
    assert len(rows) == 1
    row = rows[0]
    assert row["report_id"] == rep["report_id"] and row["region"] == "eu-west"
    assert row["ttff_ms"] == 777.0 and row["stall_ratio"] == 0.05 and row["started_ms"] == T0_MS
    assert json.loads(row["labels"]) == rep["labels"]
    assert json.loads(row["body"])["report_id"] == rep["report_id"]
    assert row["received_ms"] == T0_MS + 3_600_000


async def test_report_unknown_schema_version(client: Any) -> None:
    rep = report("eu-west")
    rep["schema_version"] = 99
    r = await client.post("/v1/reports", json=[report("eu-west"), rep], headers=auth(PROBE_EU))
    assert r.status == 400
    body = await r.json()
    assert body["field"] == "schema_version" and body["item"] == 1
    assert "99" in body["error"] and "reads version 1" in body["error"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("report_id",), "not-a-uuid", "report_id"),
        (("duration_s",), -1, "duration_s"),
        (("started_at",), "2026-01-01T00:00:00+02:00", "started_at"),
        (("failure",), "made_up", "failure"),
        (("summary", "join", "ttff_ms"), "fast", "summary.join.ttff_ms"),
        (("summary", "video", "stall_ratio"), 2.0, "summary.video.stall_ratio"),
        (("target", "signaling"), "carrier-pigeon", "target.signaling"),
        (("labels",), {"Bad Key": "x"}, "labels.Bad Key"),
        (("extra_field",), 1, "extra_field"),
    ],
)
async def test_report_validation(client: Any, path: tuple[str, ...], value: Any, field: str) -> None:
    rep = report("eu-west")
    d = rep
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    r = await client.post("/v1/reports", json=[report("eu-west"), rep], headers=auth(PROBE_ANY))
    assert r.status == 400
    body = await r.json()
    assert body["item"] == 1 and body["field"] == field, body
    assert await count(client, "probe_reports") == 0


# -- reads, metrics, incidents -----------------------------------------------------------------------------


async def _seed(client: Any) -> None:
    reps = [report("eu-west", started_ms=T0_MS + i * 60_000, ttff_ms=800.0 + i) for i in range(3)]
    reps.append(report("us-east", started_ms=T0_MS, ttff_ms=1500.0, stall_ratio=0.2))
    reps.append(report("us-east", started_ms=T0_MS + 60_000, failure="ice_timeout", ttff_ms=None, stall_ratio=None))
    r = await client.post("/v1/reports", json=reps, headers=auth(PROBE_ANY))
    assert r.status == 200
    evs = []
    for v in range(10):
        s = f"s{v}"
        evs.append(event(v, type="join", t_ms=T0_MS + v * 1000, session=s, viewer=f"v{v}", startup_ms=900.0))
        evs.append(
            event(
                v,
                type="qoe",
                t_ms=T0_MS + 30_000 + v,
                session=s,
                viewer=f"v{v}",
                stall_count=1,
                stall_ms=500.0,
                watch_ms=9500.0,
                height=720 if v < 5 else 480,
            )
        )
        if v < 4:
            evs.append(event(v, type="leave", t_ms=T0_MS + 90_000, session=s, viewer=f"v{v}"))
    r = await client.post("/v1/events", json=evs, headers=auth(PLATFORM))
    assert r.status == 200


async def test_qoe_series_from_probes(client: Any) -> None:
    await _seed(client)
    q = f"/v1/qoe?source=probes&by=region&bucket_s=60&from_ms={T0_MS}&to_ms={T0_MS + 600_000}"
    r = await client.get(q, headers=auth(READER))
    assert r.status == 200
    body = await r.json()
    series = {s["segment"]["region"]: s["points"] for s in body["series"]}
    assert [p["ttff_p50_ms"] for p in series["eu-west"]] == [800.0, 801.0, 802.0]
    assert series["us-east"][1]["failures"] == 1 and series["us-east"][0]["stall_ratio"] == 0.2
    r = await client.get(q.replace("by=region", "by=region,isp"), headers=auth(READER))
    assert {s["segment"]["isp"] for s in (await r.json())["series"]} == {"isp-a"}


async def test_qoe_series_from_viewers(client: Any) -> None:
    await _seed(client)
    q = f"/v1/qoe?source=viewers&by=region&bucket_s=60&from_ms={T0_MS}&to_ms={T0_MS + 600_000}"
    body = await (await client.get(q, headers=auth(READER))).json()
    [s] = body["series"]
    [p] = s["points"]
    assert p["beacons"] == 10 and p["sessions"] == 10
    assert p["stall_ratio"] == pytest.approx(0.05)
    assert p["hd_share"] == pytest.approx(0.5)
    assert p["startup_p50_ms"] == 900.0


async def test_audience_series(client: Any) -> None:
    await _seed(client)
    q = f"/v1/audience?by=region&bucket_s=60&from_ms={T0_MS}&to_ms={T0_MS + 240_000}"
    body = await (await client.get(q, headers=auth(READER))).json()
    [s] = body["series"]
    pts = {p["t_ms"] - T0_MS: p for p in s["points"]}
    assert pts[0]["joins"] == 10 and pts[0]["concurrent_viewers"] == 10
    assert pts[60_000]["leaves"] == 4 and pts[60_000]["concurrent_viewers"] == 10
    # no leave for 6 sessions: active until last event (30 s) + 60 s timeout = 90 s → bucket 60–120 s
    assert 120_000 not in pts  # buckets with no activity are omitted


@pytest.mark.parametrize(
    "query",
    ["source=nope", "by=region;drop", "bucket_s=0", "from_ms=abc", "from_ms=10&to_ms=5", "bucket_s=1&from_ms=0"],
)
async def test_read_api_bad_params(client: Any, query: str) -> None:
    r = await client.get(f"/v1/qoe?{query}", headers=auth(READER))
    assert r.status == 400
    assert "error" in await r.json()


async def test_incidents_roundtrip(client: Any) -> None:
    inc = {
        "incident_id": "inc-1",
        "start_ms": T0_MS,
        "end_ms": T0_MS + 60_000,
        "segment": {"region": "eu-west"},
        "summary": "stalls in eu-west",
    }
    r = await client.post("/v1/incidents", json=inc, headers=auth(ANALYSIS))
    assert r.status == 200
    r = await client.post("/v1/incidents", json={**inc, "summary": "updated"}, headers=auth(ANALYSIS))
    r = await client.get(f"/v1/incidents?from_ms={T0_MS}&to_ms={T0_MS + 1}", headers=auth(READER))
    assert (await r.json())["incidents"] == [{**inc, "summary": "updated"}]
    r = await client.post("/v1/incidents", json={**inc, "end_ms": 1}, headers=auth(ANALYSIS))
    assert r.status == 400 and (await r.json())["field"] == "end_ms"


async def test_metrics_exposition(client: Any) -> None:
    await _seed(client)
    await client.post("/v1/events", json=[{"bad": 1}], headers=auth(PLATFORM))
    r = await client.get("/metrics", headers=auth(READER))
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await r.text()
    target = "http://room/whep/main"
    assert f'streamqoe_probe_ttff_seconds{{region="eu-west",target="{target}"}} 0.802' in text
    assert f'streamqoe_probe_join_success{{region="us-east",target="{target}"}} 0' in text
    assert f'streamqoe_probe_join_failures_total{{region="us-east",target="{target}",failure="ice_timeout"}} 1' in text
    # the us-east newest report failed: no TTFF sample (not measured), not a made-up 0
    assert 'streamqoe_probe_ttff_seconds{region="us-east"' not in text
    assert 'streamqoe_ingest_items_total{endpoint="events",result="accepted"} 24' in text
    assert 'streamqoe_ingest_items_total{endpoint="events",result="rejected"} 1' in text
    assert 'streamqoe_http_request_duration_seconds_bucket{route="/v1/events",le="+Inf"}' in text


async def test_metrics_survive_restart(aiohttp_client: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "m.duckdb")
    c1 = await aiohttp_client(create_app(config(db)))
    body = report("eu-west", ttff_ms=1234.0)
    body["duration_s"] = 4.0
    body["summary"]["rtt_ms"] = 42.0
    body["summary"]["unavailable"] = [u for u in body["summary"]["unavailable"] if u != "rtt_ms"]
    body["summary"]["host_stalls"] = {"count": 2, "stalled_s": 1.0, "max_ms": 900.0,
                                      "freezes_during": 1, "frozen_s_during": 0.5}
    await c1.post("/v1/reports", json=body, headers=auth(PROBE_EU))
    before = await (await c1.get("/metrics", headers=auth(READER))).text()
    await c1.close()
    c2 = await aiohttp_client(create_app(config(db)))
    text = await (await c2.get("/metrics", headers=auth(READER))).text()
    for t in (before, text):
        assert 'streamqoe_probe_ttff_seconds{region="eu-west",target="http://room/whep/main"} 1.234' in t
        # the probe could not run a quarter of its session: from the report at ingest, from the store after
        assert 'streamqoe_probe_host_stalled_ratio{region="eu-west",target="http://room/whep/main"} 0.25' in t
        assert 'streamqoe_probe_rtt_seconds{region="eu-west",target="http://room/whep/main"} 0.042' in t


async def test_not_found_and_method_are_json(client: Any) -> None:
    r = await client.get("/nope")
    assert r.status == 404 and "error" in await r.json()
    r = await client.delete("/v1/events")  # GET is the export, POST the ingest
    assert r.status == 405


@pytest.mark.parametrize("linger_ms", [0, 300])
async def test_group_commit_linger_merges_a_lone_request_with_the_next(aiohttp_client: Any, tmp_path: Path,
                                                                       linger_ms: int) -> None:
    import asyncio

    c = await aiohttp_client(create_app(config(str(tmp_path / "g.duckdb"), group_commit_linger_ms=linger_ms)))

    async def post(first: int, delay_s: float) -> dict[str, Any]:
        await asyncio.sleep(delay_s)
        r = await c.post("/v1/events", json=[event(first + i) for i in range(10)], headers=auth(PLATFORM))
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]

    # the second request comes 100 ms after the first, while the first is alone in the writer's queue
    replies = await asyncio.gather(post(0, 0.0), post(10, 0.1))
    assert [r["new"] for r in replies] == [10, 10]
    text = await (await c.get("/metrics", headers=auth(READER))).text()
    commits = next(float(ln.split()[-1]) for ln in text.splitlines()
                   if ln.startswith("streamqoe_store_commit_rows_count"))
    # without linger each request is its own transaction; with it, one transaction holds both
    assert commits == (1 if linger_ms else 2)
