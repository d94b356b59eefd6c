"""Group commit: one writer task merges the requests waiting for the store into one transaction.

Each request's ``submit()`` returns only after the transaction holding its rows has committed, so an
acknowledgement still means "durable", but N concurrent requests cost one commit (one WAL fsync)
instead of N. While a commit runs, new requests queue up and form the next group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from collector.store import InsertResult, StoreAPI, WriteJob

log = structlog.get_logger()
T = TypeVar("T")


class GroupCommitWriter:
    """Serialises every write to ``store`` on one thread, grouping queued jobs (≤ ``max_rows`` rows)."""

    def __init__(self, store: StoreAPI, *, max_rows: int = 50_000, linger_s: float = 0.0,
                 on_commit: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._store = store
        self._max_rows = max_rows
        self._linger_s = linger_s
        self._on_commit = on_commit
        self._clock = clock
        self._queue: asyncio.Queue[tuple[WriteJob, asyncio.Future[InsertResult]]] = asyncio.Queue()
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Finish the queued jobs, then stop the task and the thread."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=True)

    async def run_in_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread (e.g. ``store.close``)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def submit(self, job: WriteJob) -> InsertResult:
        """Queue ``job``; return its counts once committed (or raise the store's error)."""
        fut: asyncio.Future[InsertResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, fut))
        return await asyncio.shield(fut)

    def _take_queued(self, group: list[tuple[WriteJob, asyncio.Future[InsertResult]]]) -> None:
        """Add already queued jobs to ``group`` while it holds fewer than ``max_rows`` rows."""
        rows = sum(job.size for job, _ in group)
        while rows < self._max_rows and not self._queue.empty():
            item = self._queue.get_nowait()
            group.append(item)
            rows += item[0].size

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            self._take_queued(group)
            if self._linger_s and len(group) == 1 and group[0][0].size < self._max_rows:
                # alone: wait a little for a second request, so one commit's fixed cost serves both
                with contextlib.suppress(TimeoutError):
                    group.append(await asyncio.wait_for(self._queue.get(), self._linger_s))
                self._take_queued(group)
            rows = sum(job.size for job, _ in group)
            jobs = [j for j, _ in group]
            t0 = self._clock()
            try:
                results = await loop.run_in_executor(self._thread, self._store.write_group, jobs)
            except Exception as e:  # the whole group failed: every waiter gets the error
                log.error("store_write_failed", error=repr(e), jobs=len(jobs))
                results = [e] * len(jobs)
            if self._on_commit is not None:
                self._on_commit(rows, self._clock() - t0)
            for (_, fut), res in zip(group, results, strict=True):
                if not fut.done():
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
                self._queue.task_done()
