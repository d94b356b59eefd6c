"""Fuzzing the ingest endpoints: whatever the body, a 4xx with a message or a 2xx — never a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.app import create_app
from collector.events import event_from_dict, event_row
from tests.collector_helpers import PLATFORM, PROBE_ANY, T0_MS, auth, config, event, free_port, report, utc

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=20), c, max_size=5),
    max_leaves=30,
)
EVENT_KEYS = [*event(0), "t_ms", "startup_ms", "stall_count", "stall_ms", "watch_ms", "height", "bitrate_kbps"]


@st.composite
def mutated_events(draw: Any) -> Any:
    e = event(draw(st.integers(0, 100)))
    for _ in range(draw(st.integers(1, 3))):
        e[draw(st.sampled_from(EVENT_KEYS))] = draw(json_values)
    if draw(st.booleans()):
        e.pop(draw(st.sampled_from(list(e))), None)
    return e


@st.composite
def mutated_reports(draw: Any) -> Any:
    r = report("eu-west")
    target: Any = r
    path = draw(st.lists(st.sampled_from(["summary", "video", "join", "target", "streams", "labels"]), max_size=2))
    for k in path:
        if isinstance(target, dict) and isinstance(target.get(k), dict):
            target = target[k]
    if isinstance(target, dict) and target:
        target[draw(st.sampled_from([*target.keys(), "zz_unknown"]))] = draw(json_values)
    return r


bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class ThreadedCollector:
    """The real app served over loopback TCP from a background thread, so hypothesis tests stay sync."""

    def __init__(self, db: str) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(create_app(config(db)), access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {"raw": data[:200]}
        return r.status, parsed

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCollector]:
    s = ThreadedCollector(str(tmp_path_factory.mktemp("fuzz") / "f.duckdb"))
    yield s
    s.close()


@pytest.mark.parametrize("path", ["/v1/events", "/v1/reports"])
@pytest.mark.parametrize("ctype", ["application/json", "application/x-ndjson"])
@FUZZ
@given(body=bodies)
def test_random_bodies_never_5xx(server: ThreadedCollector, path: str, ctype: str, body: bytes) -> None:
    token = PLATFORM if path == "/v1/events" else PROBE_ANY
    status, reply = server.post(path, body, {**auth(token), "Content-Type": ctype})
    assert status < 500, reply
    if status >= 400:
        assert reply["error"]


@FUZZ
@given(items=st.lists(mutated_events(), min_size=1, max_size=4))
def test_mutated_events_never_5xx(server: ThreadedCollector, items: list[Any]) -> None:
    status, reply = server.post(
        "/v1/events", json.dumps(items, allow_nan=True).encode(), {**auth(PLATFORM), "Content-Type": "application/json"}
    )
    assert status in (200, 400), reply
    if status == 400:
        assert reply["error"] and isinstance(reply["item"], int)


@FUZZ
@given(items=st.lists(mutated_reports(), min_size=1, max_size=3))
def test_mutated_reports_never_5xx(server: ThreadedCollector, items: list[Any]) -> None:
    status, reply = server.post(
        "/v1/reports",
        json.dumps(items, allow_nan=True).encode(),
        {**auth(PROBE_ANY), "Content-Type": "application/json"},
    )
    assert status in (200, 400), reply
    if status == 400:
        assert reply["error"]


@settings(max_examples=500, deadline=None)
@given(e=mutated_events())
def test_event_row_matches_event_from_dict(e: Any) -> None:
    """The collector's fast path accepts and refuses exactly what the wire format does."""
    try:
        expected: Any = event_from_dict(e)
    except ValueError as err:
        expected = ("error", str(err))
    try:
        got: Any = event_row(e)
    except ValueError as err:
        got = ("error", str(err))
    if isinstance(expected, tuple):
        assert got == expected
    else:
        assert got == tuple(getattr(expected, f) for f in expected.__dataclass_fields__)


@st.composite
def plausible_events(draw: Any) -> Any:
    """Valid-looking events with the variations the column fast path must treat exactly like event_row."""
    e = event(draw(st.integers(0, 100)))
    ms = draw(st.integers(1_500_000_000_000, 4_200_000_000_000))
    form = draw(st.sampled_from(["ms", "s", "us", "offset", "t_ms", "both"]))
    iso = utc(ms)
    if form == "s":
        e["t"] = iso[:19] + "Z"
    elif form == "us":
        e["t"] = iso[:23] + "123Z"
    elif form == "offset":
        e["t"] = iso[:23] + "+00:00"
    elif form in ("t_ms", "both"):
        e["t_ms"] = ms
        if form == "t_ms":
            del e["t"]
    else:
        e["t"] = iso
    for name in ("region", "isp", "cdn", "device", "app_version"):
        if draw(st.booleans()):
            e[name] = draw(st.none() | st.text(min_size=0, max_size=66))
    for name in ("startup_ms", "stall_count", "stall_ms", "watch_ms", "height", "bitrate_kbps"):
        if draw(st.booleans()):
            e[name] = draw(
                st.none()
                | st.integers(-5, 2_000_000)
                | st.floats(allow_nan=True, allow_infinity=True)
                | st.sampled_from([0, 1, 720, 16_384, 16_385, 100_000, 86_400_000, 1e6, True, 2**70])
            )
    return e


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(plausible_events() | mutated_events(), min_size=1, max_size=6))
def test_event_columns_matches_event_row(batch: list[Any]) -> None:
    """The column fast path accepts a batch iff event_row accepts every item, with the same values."""
    import numpy as np

    from collector.event_columns import BatchError, event_columns, rows_to_columns

    try:
        expected: Any = rows_to_columns([event_row(e) for e in batch]).columns
    except ValueError:
        expected = None
    try:
        got: Any = event_columns(batch).columns
    except BatchError as err:
        got = None
        first_bad = next(i for i, e in enumerate(batch) if _refused(e))
        assert err.index == first_bad
        with pytest.raises(ValueError) as info:
            event_row(batch[first_bad])
        assert str(err) == str(info.value)
    assert (got is None) == (expected is None)
    if got is not None:
        assert got.keys() == expected.keys()
        for k in got:
            assert got[k].dtype == expected[k].dtype, k
            if got[k].dtype == object:
                assert list(got[k]) == list(expected[k]), k
            else:
                assert np.array_equal(got[k], expected[k], equal_nan=got[k].dtype.kind == "f"), k


def _refused(e: Any) -> bool:
    try:
        event_row(e)
    except ValueError:
        return True
    return False


def test_event_columns_fast_path_taken_for_typical_batches() -> None:
    """The fast path (not the per-item fallback) handles ordinary batches: RFC 3339 ``t`` and ``t_ms``."""
    from collector.event_columns import _fast

    assert _fast([event(i, type="qoe", stall_ms=1.5, height=720) for i in range(50)]) is not None
    with_t_ms = [{**{k: v for k, v in event(i).items() if k != "t"}, "t_ms": T0_MS + i} for i in range(50)]
    assert _fast(with_t_ms) is not None


def _outcome(fn: Any) -> Any:
    import numpy as np

    from collector.errors import ApiError
    from collector.event_columns import BatchError

    try:
        n, cols = fn()
    except ApiError as e:
        return ("api", e.status, e.message, e.item, e.field)
    except BatchError as e:
        return ("batch", e.index, str(e))
    return ("ok", n, {k: [None if isinstance(x, float) and np.isnan(x) else x for x in v.tolist()]
                      for k, v in cols.columns.items()})  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    body=bodies
    | st.lists(plausible_events() | mutated_events(), min_size=1, max_size=5).map(
        lambda b: json.dumps(b, allow_nan=True).encode()
    ),
    ndjson=st.booleans(),
)
def test_worker_packing_matches_inline(body: bytes, ndjson: bool) -> None:
    """What an ingest worker sends back unpacks to exactly the inline result or error."""
    from collector.body import parse_items
    from collector.event_columns import event_columns
    from collector.parse_pool import parse_events, unpack

    ctype = "application/x-ndjson" if ndjson else "application/json"

    def inline() -> Any:
        items, _ = parse_items(body, ctype, max_items=4)
        return len(items), event_columns(items)

    assert _outcome(lambda: unpack(parse_events(body, ctype, 4))) == _outcome(inline)


def _has_big_int(v: Any) -> bool:
    """An integer orjson cannot hold in 64 bits (it returns a float for it)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return not -(2**63) <= v < 2**64
    if isinstance(v, list):
        return any(_has_big_int(x) for x in v)
    if isinstance(v, dict):
        return any(_has_big_int(x) for x in v.values())
    return False


def _parsed(body: bytes, ctype: str, fast: bool) -> Any:
    from collector.body import parse_items
    from collector.errors import ApiError

    try:
        items, batch = parse_items(body, ctype, max_items=50, fast=fast)
    except ApiError as e:
        return ("api", e.status, e.message, e.item)
    return ("ok", repr(items), batch)  # repr: 1 vs 1.0, -0.0 and NaN compare as written


@settings(max_examples=400, deadline=None)
@given(value=json_values | st.lists(json_values, min_size=1, max_size=4), ndjson=st.booleans(),
       raw=st.binary(max_size=60))  # fmt: skip
def test_fast_parse_matches_standard_library(value: Any, ndjson: bool, raw: bytes) -> None:
    """orjson (with the standard library for what it refuses) decodes exactly like json.loads, errors
    included, except integers beyond 64 bits (orjson: floats), which parse_event_body re-decodes."""
    ctype = "application/x-ndjson" if ndjson else "application/json"
    if ndjson and isinstance(value, list):
        text = "\n".join(json.dumps(v, allow_nan=True) for v in value)
    else:
        text = json.dumps(value, allow_nan=True, ensure_ascii=False)
    for body in (text.encode("utf-8", "surrogatepass"), raw, text.encode("utf-8", "surrogatepass")[:-1] + raw):
        if not _has_big_int(value) or body == raw:
            assert _parsed(body, ctype, True) == _parsed(body, ctype, False), body


@pytest.mark.parametrize(
    "body",
    [
        json.dumps([event(0), {**event(1), "stall_count": 2**70}]),  # orjson: a float
        json.dumps([event(0), {**{k: v for k, v in event(1).items() if k != "t"}, "t_ms": 10**20}]),
        json.dumps([{**event(0), "event_id": 10**25}]),
        json.dumps([event(0), {**event(1), "bitrate_kbps": float("nan")}], allow_nan=True),  # orjson refuses NaN
        json.dumps([{**event(0), "room": "\ud800"}]),  # a lone surrogate: orjson refuses it, json accepts it
        '[{"a": 1}, ' + "1" * 5000 + "]",
        "[" * 5000 + "]" * 5000,
        '[{"event_id": "\xff"}]',
    ],
)
def test_parse_event_body_errors_match_standard_library(body: str) -> None:
    from collector.body import parse_event_body, parse_items
    from collector.event_columns import event_columns

    data = body.encode("utf-8", "surrogatepass") if "\xff" not in body else body.encode("latin-1")

    def std() -> Any:
        items, _ = parse_items(data, "application/json", max_items=50)
        return len(items), event_columns(items)

    def fast() -> Any:
        cols = parse_event_body(data, "application/json", max_items=50)
        return cols.n, cols

    assert _outcome(fast) == _outcome(std)


def test_fast_parse_does_not_use_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typical bodies (JSON array, NDJSON) are decoded by orjson alone."""
    from collector import body as body_mod

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("json.loads called")

    monkeypatch.setattr(body_mod.json, "loads", refuse)
    batch = [event(i, type="qoe", stall_ms=1.5, height=720) for i in range(20)]
    cols = body_mod.parse_event_body(json.dumps(batch).encode(), "application/json", max_items=50)
    assert cols.n == 20
    ndjson = "\n".join(json.dumps(e) for e in batch).encode()
    assert body_mod.parse_event_body(ndjson, "application/x-ndjson", max_items=50).n == 20
    with pytest.raises(AssertionError, match=r"json\.loads called"):
        body_mod.parse_items(json.dumps(batch).encode(), "application/json", max_items=50)
