"""Parse and validate event batches in worker processes, so ingest can use more than one core.

``json.loads`` and validation hold the GIL for ~5 ms per 1,000 events; together with DuckDB's insert
(which also holds it for much of its work) that caps the collector process at about one core. With
``ingest_workers = N`` (configuration) the body goes to one of N worker processes, which run
``parse_event_body`` (``parse_items`` + ``event_columns``) and send back the columns packed
(``EventColumns.packed``). The collector unpacks them only if it reads them (~1 ms per 1,000 events): with
``store_process`` it passes them on to the store process as they came.

Errors cross the process boundary as data and are raised again as the same ``ApiError`` / ``BatchError``,
so responses are identical with and without workers. A worker that dies (OOM, kill) breaks the pool: the
pool is replaced and that request is parsed in the collector process itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import structlog

from collector.body import parse_event_body
from collector.errors import ApiError
from collector.event_columns import BatchError, EventColumns

log = structlog.get_logger()

Packed = tuple[Any, ...]


def parse_events(body: bytes, content_type: str, max_items: int) -> Packed:
    """Parse and validate one events body; runs in a worker. Returns a tagged tuple (see ``unpack``).

    ``("ok", n, strings, numbers)``, ``("api", status, message, item, field, n)`` for a body-level error,
    or ``("batch", index, message, n)`` for the first invalid item of ``n``.
    """
    try:
        cols = parse_event_body(body, content_type, max_items=max_items)
    except ApiError as e:
        return ("api", e.status, e.message, e.item, e.field, 0)
    except BatchError as e:
        return ("batch", e.index, str(e), e.items)
    return ("ok", cols.n, cols.packed())


def unpack(packed: Packed) -> tuple[int, EventColumns]:
    """(item count, columns) from ``parse_events``'s result; raises its ``ApiError`` / ``BatchError``.
    The columns stay packed until read (``EventColumns.from_packed``)."""
    tag = packed[0]
    if tag == "api":
        _, status, message, item, field, _n = packed
        raise ApiError(status, message, item=item, field=field)
    if tag == "batch":
        _, index, message, n = packed
        raise BatchError(index, message, items=n)
    _, n, cols = packed
    return n, EventColumns.from_packed(n, cols)


class ParsePool:
    """``workers`` processes (spawned: no DuckDB or event-loop state is forked) parsing event bodies."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool = self._new()

    def _new(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    async def warm_up(self) -> None:
        """Start every worker now (each imports numpy), not on the first requests."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ping) for _ in range(self._workers)))

    async def events(self, body: bytes, content_type: str, max_items: int) -> tuple[int, EventColumns]:
        """Parse and validate ``body`` in a worker; the same results and errors as doing it inline."""
        loop = asyncio.get_running_loop()
        try:
            packed = await loop.run_in_executor(self._pool, parse_events, body, content_type, max_items)
        except BrokenProcessPool:
            log.error("parse_pool_broken", workers=self._workers)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new()
            packed = parse_events(body, content_type, max_items)
        return unpack(packed)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ping() -> int:
    return 0


def _init_worker(parent: int) -> None:
    """Worker initializer: exit with the collector; keep what is loaded now out of full garbage collections
    (each parse allocates tens of thousands of objects, so they come every few seconds)."""
    _exit_with_parent(parent)
    gc.freeze()


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: exit when the collector is gone. A collector killed with SIGKILL cannot shut
    its pool down, and its workers would otherwise wait on the task queue forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
