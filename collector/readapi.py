"""Read API for dashboards and analysis (role ``reader`` or ``analysis``), ``/healthz`` and ``/metrics``.

Queries run on a small thread pool with their own DuckDB cursors, so they never wait for, nor block,
the writer (DuckDB's MVCC gives each query a committed snapshot).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from collector import queries
from collector.auth import require_role
from collector.errors import ApiError, field_of
from collector.journal import JournaledStore
from collector.metrics import CONTENT_TYPE
from collector.state import CONFIG, METRICS, READ_POOL, REQ_ITEMS, REQ_TOKEN, STORE, TOKENS, WALL_MS, WRITER
from collector.store import WriteJob

T = TypeVar("T")
READ_ROLES = ("reader", "analysis")
_INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _auth(request: web.Request, *roles: str) -> None:
    token = request.app[TOKENS].authenticate(request)
    request[REQ_TOKEN] = token
    require_role(token, *roles)


async def _in_pool(request: web.Request, fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(request.app[READ_POOL], fn)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: must be an integer", field=name) from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{name}: must be in [{lo}, {hi}]", field=name)
    return v


def _window(request: web.Request) -> tuple[queries.Window, list[str]]:
    now = request.app[WALL_MS]()
    to_ms = _int_param(request, "to_ms", now, 0, 2**62)
    from_ms = _int_param(request, "from_ms", to_ms - 3_600_000, 0, 2**62)
    bucket_s = _int_param(request, "bucket_s", 60, 1, 86_400 * 31)
    by = [d for d in request.query.get("by", "region").split(",") if d]
    if len(by) > 6:
        raise ApiError(400, "by: at most 6 dimensions", field="by")
    try:
        return queries.make_window(from_ms, to_ms, bucket_s * 1000), by
    except ValueError as e:
        raise ApiError(400, str(e), field=field_of(str(e))) from None


async def get_qoe(request: web.Request) -> web.Response:
    """``GET /v1/qoe?source=probes|viewers&by=region,isp&bucket_s=60&from_ms=&to_ms=``."""
    _auth(request, *READ_ROLES)
    w, by = _window(request)
    source = request.query.get("source", "probes")
    try:
        if source == "probes":
            sql, params = queries.probe_qoe_sql(by, w)
        elif source == "viewers":
            sql, params = queries.viewer_qoe_sql(by, w)
        else:
            raise ValueError("source: must be probes or viewers")
    except ValueError as e:
        raise ApiError(400, str(e), field=field_of(str(e))) from None
    store = request.app[STORE]
    rows = await _in_pool(request, lambda: store.query(sql, params))
    series = queries.to_series(rows, by)
    request[REQ_ITEMS] = len(rows)
    return web.json_response({"source": source, "by": by, "from_ms": w.from_ms, "to_ms": w.to_ms,
                              "bucket_ms": w.bucket_ms, "series": series})  # fmt: skip


async def get_audience(request: web.Request) -> web.Response:
    """``GET /v1/audience?by=region&bucket_s=60&from_ms=&to_ms=``: concurrent viewers, joins, leaves."""
    _auth(request, *READ_ROLES)
    w, by = _window(request)
    timeout_ms = int(request.app[CONFIG].heartbeat_timeout_s * 1000)
    try:
        conc_sql, conc_p = queries.audience_concurrency_sql(by, w, timeout_ms)
        flow_sql, flow_p = queries.audience_flow_sql(by, w)
    except ValueError as e:
        raise ApiError(400, str(e), field=field_of(str(e))) from None
    store = request.app[STORE]

    def run() -> list[dict[str, Any]]:
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in store.query(conc_sql, conc_p) + store.query(flow_sql, flow_p):
            key = (*(r[f"d{i}"] for i in range(len(by))), r["t_ms"])
            m = merged.setdefault(key, {**{f"d{i}": key[i] for i in range(len(by))}, "t_ms": key[-1],
                                        "concurrent_viewers": 0, "joins": 0, "leaves": 0})  # fmt: skip
            for k in ("concurrent_viewers", "joins", "leaves"):
                if k in r:
                    m[k] = r[k]
        return sorted(
            merged.values(), key=lambda r: (tuple(str(r[f"d{i}"]) for i in range(len(by))), r["t_ms"])
        )

    rows = await _in_pool(request, run)
    request[REQ_ITEMS] = len(rows)
    body = {"by": by, "from_ms": w.from_ms, "to_ms": w.to_ms, "bucket_ms": w.bucket_ms}
    body |= {"heartbeat_timeout_ms": timeout_ms, "series": queries.to_series(rows, by)}
    return web.json_response(body)


async def get_incidents(request: web.Request) -> web.Response:
    """``GET /v1/incidents?from_ms=&to_ms=``: incidents overlapping the window."""
    _auth(request, *READ_ROLES)
    now = request.app[WALL_MS]()
    to_ms = _int_param(request, "to_ms", now, 0, 2**62)
    from_ms = _int_param(request, "from_ms", to_ms - 3_600_000, 0, 2**62)
    store = request.app[STORE]
    rows = await _in_pool(request, lambda: store.incidents(from_ms, to_ms))
    request[REQ_ITEMS] = len(rows)
    return web.json_response({"incidents": rows})


def incident_row(d: Any) -> tuple[Any, ...]:
    """Validate one incident (``incident_id, start_ms, end_ms?, segment{}, summary``).

    ``ValueError`` names the field."""
    if not isinstance(d, dict):
        raise ValueError("incident: must be a JSON object")
    extra = sorted(d.keys() - {"incident_id", "start_ms", "end_ms", "segment", "summary"})
    if extra:
        raise ValueError(f"{extra[0]}: unknown field")
    iid = d.get("incident_id")
    if not isinstance(iid, str) or not _INCIDENT_ID.match(iid):
        raise ValueError("incident_id: required, 1-128 of letters, digits, . _ : -")
    for name in ("start_ms", "end_ms"):
        v = d.get(name)
        if v is None and name == "end_ms":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**62:
            raise ValueError(f"{name}: must be ms since the Unix epoch")
    if d.get("end_ms") is not None and d["end_ms"] < d["start_ms"]:
        raise ValueError("end_ms: before start_ms")
    seg = d.get("segment")
    if (
        not isinstance(seg, dict)
        or len(seg) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 256
            for k, v in seg.items()
        )
    ):
        raise ValueError("segment: must be an object of at most 16 string dimensions")
    summary = d.get("summary")
    if not isinstance(summary, str) or not 0 < len(summary) <= 4096:
        raise ValueError("summary: required string of at most 4096 characters")
    return (iid, d["start_ms"], d.get("end_ms"), json.dumps(seg, sort_keys=True), summary)


async def post_incidents(request: web.Request) -> web.Response:
    """``POST /v1/incidents`` (role ``analysis``): upsert incidents by ``incident_id``."""
    _auth(request, "analysis")
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid JSON") from None
    items = body if isinstance(body, list) else [body]
    if len(items) > 10_000:
        raise ApiError(413, "more than 10000 incidents in one request")
    rows = []
    for i, item in enumerate(items):
        try:
            rows.append(incident_row(item))
        except ValueError as e:
            raise ApiError(400, f"item {i}: {e}", item=i, field=field_of(str(e))) from None
    request[REQ_ITEMS] = len(rows)
    await request.app[WRITER].submit(WriteJob("incidents", rows))
    return web.json_response({"stored": len(rows)})


async def healthz(request: web.Request) -> web.Response:
    """Liveness and store check; no token needed, no data disclosed."""
    store = request.app[STORE]
    try:
        await _in_pool(request, store.ping)
    except Exception as e:  # the store is gone: unhealthy, say why
        return web.json_response({"status": "error", "store": type(e).__name__}, status=503)
    return web.json_response({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text format; needs a reader token (Prometheus: ``authorization`` in the scrape config)."""
    _auth(request, *READ_ROLES)
    store = request.app[STORE]
    if isinstance(store, JournaledStore):
        request.app[METRICS].observe_journal(store.backlog_rows, store.loaded_rows, store.loads,
                                                    store.rejected_records)
    return web.Response(
        body=request.app[METRICS].registry.render().encode(), headers={"Content-Type": CONTENT_TYPE}
    )
