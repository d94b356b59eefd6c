"""``GET /v1/events`` and ``GET /v1/reports``: stream stored items as NDJSON for offline analysis.

Roles ``reader`` and ``analysis``. ``from`` and ``to`` (ms since the Unix epoch, required) select
``[from, to)``: events by ``t_ms``, reports by ``started_ms``. Lines come in storage order (about
arrival order), not sorted: a global ``ORDER BY`` would make DuckDB hold the whole window in memory.

Events are rendered in the wire format (``ViewerEvent.to_dict()``: ``t`` as RFC 3339 UTC with ms, None
fields omitted) by DuckDB itself, so the handler only moves strings: rows are fetched from one query's
streaming result ``FETCH_ROWS`` at a time and written as chunks, with backpressure from the socket, so
memory stays constant whatever the window. Reports are the stored ``body`` (the validated report).
All lines of one response come from one snapshot (the query's transaction).

A failure after the first chunk cannot change the status any more: the connection is closed without
the chunked encoding's terminator, which clients see as an incomplete body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web

from collector.auth import require_role
from collector.errors import ApiError
from collector.events import ROW_FIELDS
from collector.state import READ_POOL, REQ_ID, REQ_ITEMS, REQ_TOKEN, STORE, TOKENS

log = structlog.get_logger()
T = TypeVar("T")

FETCH_ROWS = 5_000
"""Rows per fetch from DuckDB (and per chunk written): ~1.5 MB of NDJSON for events."""
MAX_MS = 2**62
_NDJSON = "application/x-ndjson"


def _json_member(name: str) -> str:
    """SQL for ``"name":<value>`` or NULL when the column is NULL (``concat_ws`` then skips it)."""
    if name == "t_ms":
        return "'\"t\":\"' || strftime(make_timestamp(t_ms * 1000), '%Y-%m-%dT%H:%M:%S.%gZ') || '\"'"
    return f"'\"{name}\":' || to_json({name})"


# one JSON object per row, keys in ViewerEvent field order, NULL fields left out like to_dict()
EVENTS_SQL = (
    "SELECT '{' || concat_ws(',', " + ", ".join(_json_member(n) for n in ROW_FIELDS) + ") || '}' "
    "FROM viewer_events WHERE t_ms >= ? AND t_ms < ?"
)
REPORTS_SQL = (
    "SELECT CAST(body AS VARCHAR) FROM probe_reports WHERE started_ms >= ? AND started_ms < ?"
)


def _window(request: web.Request) -> tuple[int, int]:
    """``from``/``to`` from the query string; ``ApiError(400)`` naming the parameter."""
    out: list[int] = []
    for name in ("from", "to"):
        raw = request.query.get(name)
        if raw is None or raw == "":
            raise ApiError(400, f"{name}: required, ms since the Unix epoch (e.g. ?from=…&to=…)", field=name)
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(400, f"{name}: must be an integer, ms since the Unix epoch (got {raw[:40]!r})",
                           field=name) from None  # fmt: skip
        if not 0 <= v <= MAX_MS:
            raise ApiError(400, f"{name}: must be in [0, {MAX_MS}] ms since the Unix epoch", field=name)
        out.append(v)
    if out[1] <= out[0]:
        raise ApiError(400, "to: must be greater than from (the window is [from, to))", field="to")
    return out[0], out[1]


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events?from=MS&to=MS``: viewer events with ``from ≤ t_ms < to`` as wire-format NDJSON."""
    return await _stream(request, EVENTS_SQL)


async def get_reports(request: web.Request) -> web.StreamResponse:
    """``GET /v1/reports?from=MS&to=MS``: probe reports with ``from ≤ started_ms < to`` as NDJSON."""
    return await _stream(request, REPORTS_SQL)


async def _stream(request: web.Request, sql: str) -> web.StreamResponse:
    app = request.app
    token = app[TOKENS].authenticate(request)
    request[REQ_TOKEN] = token
    require_role(token, "reader", "analysis")
    from_ms, to_ms = _window(request)
    store = app[STORE]
    loop = asyncio.get_running_loop()

    def in_pool(fn: Callable[[], T]) -> Any:
        return loop.run_in_executor(app[READ_POOL], fn)

    result = await in_pool(lambda: store.stream(sql, [from_ms, to_ms]))
    resp = web.StreamResponse(headers={"Content-Type": _NDJSON, "X-Request-Id": request.get(REQ_ID, "")})
    resp.enable_chunked_encoding()
    lines = 0
    closed = False
    try:
        await resp.prepare(request)
        while True:
            rows = await in_pool(lambda: result.fetchmany(FETCH_ROWS))
            if not rows:
                break
            lines += len(rows)
            await resp.write(("\n".join([r[0] for r in rows]) + "\n").encode())
        closed = True
        await in_pool(result.close)
        await resp.write_eof()
    except ConnectionError:
        log.info("export_client_gone", path=request.path, lines=lines)  # nobody left to tell
    except Exception:
        # the status line is gone: say it in the log and cut the body short (no chunked terminator)
        log.exception("export_failed", path=request.path, lines=lines)
        if request.transport is not None:
            request.transport.close()
    finally:
        request[REQ_ITEMS] = lines
        if not closed:
            # not awaited: on cancellation (the client left) a fetch may still run on the pool;
            # close() waits for it on the stream's lock
            in_pool(result.close)
    return resp
