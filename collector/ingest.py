"""``POST /v1/reports`` and ``POST /v1/events``: authenticate, validate every item, commit, acknowledge.

A batch is all-or-nothing: the first invalid item rejects the whole request (400 naming the item's
index and field) and nothing of it is stored, so a client can fix and resend the same batch. A 2xx
means every item is committed; ``new`` + ``duplicate`` = items (duplicates: ids already stored).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.auth import require_role
from collector.body import parse_event_body, parse_items, read_limited
from collector.config import Token
from collector.errors import ApiError, field_of
from collector.event_columns import BatchError
from collector.reports import REPORT_COLUMNS, report_row
from collector.state import CONFIG, METRICS, PARSE_POOL, REQ_ITEMS, REQ_TOKEN, TOKENS, WRITER
from collector.store import WriteJob
from probe.report import SCHEMA_VERSION, Report


async def _body(request: web.Request, role: str) -> tuple[bytes, Token]:
    app = request.app
    token = app[TOKENS].authenticate(request)
    request[REQ_TOKEN] = token
    require_role(token, role)
    cfg = app[CONFIG]
    body = await read_limited(
        request, max_body=cfg.max_body_bytes, max_decompressed=cfg.max_decompressed_bytes
    )
    return body, token


async def _items(request: web.Request, endpoint: str, role: str) -> tuple[list[Any], Token]:
    app = request.app
    cfg = app[CONFIG]
    body, token = await _body(request, role)
    try:
        items, _ = parse_items(body, request.content_type if request.body_exists else "",
                               max_items=cfg.max_batch_items)  # fmt: skip
    except ApiError:
        app[METRICS].items.inc((endpoint, "rejected"))
        raise
    request[REQ_ITEMS] = len(items)
    return items, token


def _reject(request: web.Request, endpoint: str, n: int, i: int, e: ValueError) -> ApiError:
    request.app[METRICS].items.inc((endpoint, "rejected"), n)
    msg = str(e)
    return ApiError(400, f"item {i}: {msg}; nothing of this batch was stored", item=i, field=field_of(msg))


async def post_events(request: web.Request) -> web.Response:
    """Store a batch of viewer events (JSON array, one object, or NDJSON)."""
    pool = request.app.get(PARSE_POOL)
    body, _ = await _body(request, "platform")
    cfg = request.app[CONFIG]
    ctype = request.content_type if request.body_exists else ""
    try:
        if pool is None:
            columns = parse_event_body(body, ctype, max_items=cfg.max_batch_items)
            n = columns.n
        else:
            n, columns = await pool.events(body, ctype, cfg.max_batch_items)
    except ApiError:
        request.app[METRICS].items.inc(("events", "rejected"))
        raise
    except BatchError as e:
        n = e.items or 0
        request[REQ_ITEMS] = n
        raise _reject(request, "events", n, e.index, e) from None
    request[REQ_ITEMS] = n
    return await _commit(request, "events", WriteJob("events", events=columns))


async def post_reports(request: web.Request) -> web.Response:
    """Store one probe report or a batch; a probe token may write only its own regions."""
    items, token = await _items(request, "reports", "probe")
    rows: list[tuple[Any, ...]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            request.app[METRICS].items.inc(("reports", "rejected"), len(items))
            raise ApiError(
                400,
                f"item {i}: schema_version: unsupported version {str(item.get('schema_version'))[:20]!r}; "
                f"this collector reads version {SCHEMA_VERSION} "
                "(upgrade the collector or downgrade the probe)",
                item=i, field="schema_version",
            )  # fmt: skip
        try:
            report = Report.from_json_obj(item)
        except ValueError as e:
            raise _reject(request, "reports", len(items), i, e) from None
        except RecursionError:
            raise _reject(
                request, "reports", len(items), i, ValueError("report: nested too deeply")
            ) from None
        if not token.may_write_region(report.region):
            request.app[METRICS].items.inc(("reports", "rejected"), len(items))
            raise ApiError(403, f"item {i}: token {token.name!r} may not write region {report.region!r}",
                           item=i, field="region")  # fmt: skip
        rows.append(report_row(report))
    return await _commit(request, "reports", WriteJob("reports", rows))


async def _commit(request: web.Request, endpoint: str, job: WriteJob) -> web.Response:
    app = request.app
    res = await app[WRITER].submit(job)
    m = app[METRICS]
    m.items.inc((endpoint, "accepted"), res.new)
    if res.duplicate:
        m.items.inc((endpoint, "duplicate"), res.duplicate)
    if endpoint == "reports":
        counted: set[str] = set()
        for row in job.rows:
            m.observe_report(dict(zip(REPORT_COLUMNS, row, strict=True)),
                             new=row[0] in res.new_ids and row[0] not in counted)  # fmt: skip
            counted.add(row[0])
    return web.json_response(
        {"accepted": job.size, "new": res.new, "duplicate": res.duplicate},
        status=200,
    )
