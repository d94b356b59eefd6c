"""``create_app(config)``: the collector as an aiohttp application.

Routes are a table (``ROUTES``); state hangs off the app through ``web.AppKey``s (collector.state);
the store and its writer open and close in one ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from collector import dashboard, export, ingest, readapi
from collector.auth import TokenTable
from collector.config import CollectorConfig
from collector.errors import ApiError
from collector.instruments import CollectorMetrics
from collector.journal import JournaledStore
from collector.maintenance import StoreMaintainer
from collector.parse_pool import ParsePool
from collector.state import (
    CONFIG,
    METRICS,
    PARSE_POOL,
    READ_POOL,
    REQ_ID,
    REQ_ITEMS,
    STORE,
    TOKENS,
    WALL_MS,
    WRITER,
    request_token,
)
from collector.store import MaintenanceRun, Store, StoreAPI
from collector.store_process import StoreClient, StoreProcessError
from collector.writer import GroupCommitWriter

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/reports", ingest.post_reports),
    ("POST", "/v1/events", ingest.post_events),
    ("GET", "/v1/events", export.get_events),
    ("GET", "/v1/reports", export.get_reports),
    ("GET", "/v1/qoe", readapi.get_qoe),
    ("GET", "/v1/audience", readapi.get_audience),
    ("GET", "/v1/incidents", readapi.get_incidents),
    ("POST", "/v1/incidents", readapi.post_incidents),
    ("GET", "/healthz", readapi.healthz),
    ("GET", "/metrics", readapi.get_metrics),
    ("GET", "/", dashboard.index),
    ("GET", "/dashboard", dashboard.page),
)

_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(header: str | None) -> str:
    """Honour a client's X-Request-Id if it is short and plain, else make one."""
    if header and len(header) <= 128 and set(header) <= _REQUEST_ID_OK:
        return header
    return uuid.uuid4().hex


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (contextvars + X-Request-Id), JSON errors, metrics, one canonical log line."""
    rid = _request_id(request.headers.get("X-Request-Id"))
    structlog.contextvars.bind_contextvars(request_id=rid)
    request[REQ_ID] = rid
    t0 = time.perf_counter()
    status = 500
    error: str | None = None
    try:
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = e.response()
            error = e.message
        except web.HTTPException as e:  # aiohttp's own (404, 405, 413 from client_max_size)
            resp = web.json_response({"error": e.reason}, status=e.status, headers=_allow(e))
            error = e.reason
        except asyncio.CancelledError:
            status = 499  # client went away; nonstandard code, for the log line only
            raise
        except StoreProcessError as e:  # the store process died, or the journal failed (a subclass): retry
            error = str(e)
            resp = web.json_response(
                {"error": f"store unavailable ({e}); nothing of this request was acknowledged, retry it",
                 "request_id": rid}, status=503, headers={"Retry-After": "1"})  # fmt: skip
        except Exception:
            log.exception("unhandled_error", method=request.method, path=request.path)
            resp = web.json_response({"error": "internal error", "request_id": rid}, status=500)
        status = resp.status
        if not resp.prepared:  # a streamed response sent its headers already (with the id)
            resp.headers["X-Request-Id"] = rid
        return resp
    finally:
        elapsed = time.perf_counter() - t0
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        m = request.app[METRICS]
        m.requests.inc((route, request.method, str(status)))
        m.latency.observe((route,), elapsed)
        tok = request_token(request)
        fields: dict[str, object] = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "ms": round(elapsed * 1000, 2),
            "items": request.get(REQ_ITEMS),
            "role": tok.role if tok else None,
            "token_name": tok.name if tok else None,
        }
        if error:
            fields["error"] = error
        if status >= 500:
            log.error("request", **fields)
        elif request.path in ("/healthz", "/metrics") and status < 400:
            log.debug("request", **fields)  # scrapes and probes every few seconds: not at INFO
        else:
            log.info("request", **fields)
        structlog.contextvars.unbind_contextvars("request_id")


def _allow(e: web.HTTPException) -> dict[str, str]:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    metrics = app[METRICS]
    loop = asyncio.get_running_loop()

    def on_maintenance(run: MaintenanceRun) -> None:  # on the maintenance thread: hand over to the loop
        loop.call_soon_threadsafe(record_maintenance, run)

    def record_maintenance(run: MaintenanceRun) -> None:
        if run.checkpoint_s is not None:
            metrics.checkpoint.observe((), run.checkpoint_s)
        metrics.diverted.observe((), run.diverted_s)
        metrics.moved_rows.inc((), run.moved_rows)

    def on_store_start(_pid: int) -> None:  # on the opening thread, or the one that replaced a dead process
        loop.call_soon_threadsafe(metrics.store_starts.inc, ())

    def open_store() -> StoreAPI:
        inner = open_database()
        if cfg.ack_on != "journal":
            return inner
        try:
            return JournaledStore(inner, f"{cfg.db_path}.journal", wall_ms=app[WALL_MS])
        except BaseException:
            inner.close()
            raise

    def open_database() -> StoreAPI:
        # with a journal nobody waits for a commit: no staging during checkpoints (Store.stage)
        stage = cfg.ack_on != "journal"
        if cfg.store_process:
            return StoreClient(cfg.db_path, checkpoint_wal_bytes=cfg.checkpoint_wal_bytes, threads=cfg.store_threads,
                               stage=stage, wall_ms=app[WALL_MS], on_maintenance=on_maintenance,
                               on_start=on_store_start)  # fmt: skip
        return Store(cfg.db_path, checkpoint_wal_bytes=cfg.checkpoint_wal_bytes, wall_ms=app[WALL_MS],
                     threads=cfg.store_threads, stage=stage)  # fmt: skip

    opener = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        store = await loop.run_in_executor(opener, open_store)
    finally:
        opener.shutdown()
    app[STORE] = store

    def on_commit(rows: int, seconds: float) -> None:
        metrics.commit.observe((), seconds)
        metrics.group_rows.observe((), rows)

    writer = GroupCommitWriter(store, max_rows=cfg.group_commit_max_rows, linger_s=cfg.group_commit_linger_ms / 1000,
                               on_commit=on_commit)
    writer.start()
    app[WRITER] = writer
    # a store in its own process checkpoints there
    database = store.inner if isinstance(store, JournaledStore) else store
    maintainer = StoreMaintainer(database, on_run=on_maintenance) if isinstance(database, Store) else None
    if maintainer is not None:
        maintainer.start()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
    app[READ_POOL] = pool
    for row in await loop.run_in_executor(pool, store.latest_probe_qoe):
        metrics.observe_report(row, new=False)
    log.info(
        "store_open", path=cfg.db_path, events=await loop.run_in_executor(pool, store.count, "viewer_events"),
        recovered_staged_rows=store.recovered_rows,
        journal_replayed_rows=store.replayed_rows if isinstance(store, JournaledStore) else None,
    )  # fmt: skip
    try:
        yield
    finally:
        await writer.stop()
        if maintainer is not None:
            await loop.run_in_executor(None, maintainer.stop)
        pool.shutdown(wait=True)
        await loop.run_in_executor(None, store.close)
        log.info("store_closed", path=cfg.db_path)


async def _parse_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    workers = app[CONFIG].ingest_workers
    if not workers:
        yield
        return
    pool = ParsePool(workers)
    try:
        await pool.warm_up()
        app[PARSE_POOL] = pool
        log.info("parse_pool_started", workers=workers)
        yield
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)


def create_app(config: CollectorConfig, *, wall_ms: Callable[[], int] | None = None) -> web.Application:
    """The collector application. ``config.tokens`` must be set (see ``config.with_dev_tokens``).

    ``wall_ms``: the wall clock (ms since the Unix epoch) for ``received_ms`` and default read windows.
    """
    if not config.tokens:
        raise ValueError("tokens: the collector needs at least one token")
    # client_max_size guards handlers that use request.json(); ingest reads with its own limits
    app = web.Application(middlewares=[observe], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[TOKENS] = TokenTable(config.tokens)
    app[METRICS] = CollectorMetrics()
    app[WALL_MS] = wall_ms or (lambda: int(time.time() * 1000))
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_parse_pool_ctx)
    app.cleanup_ctx.append(_store_ctx)
    return app
