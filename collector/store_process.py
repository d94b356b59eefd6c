"""The store in a process of its own (``store_process = true``), so DuckDB never waits for the event loop.

In one process, DuckDB's Python client takes the GIL back after every task of a query and waits each time
for the thread holding it; with the event loop parsing the next requests, a 1,000-row insert that takes
~8 ms alone takes ~100 ms (docs/performance.md). Here the ``Store``, its maintenance thread and its read
cursors live in a child process (spawned), and the collector talks to it over a pipe:

* ``StoreClient`` has the ``Store`` methods the collector uses (``write_group``, ``query``, ``stream``,
  ``ping``, ``count``, ``latest_probe_qoe``, ``incidents``, ``close``); each call sends a request and
  blocks its (collector) thread until the reply, so the group-commit writer and the read pool work as
  with an in-process store. An acknowledgement still means committed: the reply to ``write_group`` is
  sent after DuckDB's commit returned.
* In the child, writes run on one thread (in arrival order), reads on two others, and the maintenance
  thread checkpoints as in-process, but at idle priority (``StoreMaintainer(low_priority=True)``: the
  checkpoint's CPU, not its locks, is what delays acknowledgements here); each checkpoint's
  ``MaintenanceRun`` is sent back for ``/metrics``.
* Event columns cross the pipe packed (``EventColumns.packed``: one string per string column, numpy
  arrays for the numbers), ~0.3 ms per 1,000 events each way against ~3 ms to pickle object arrays;
  columns that came packed from a parse worker (``ingest_workers``) are passed on without unpacking.
* The collector dies (even SIGKILL): the child reads end-of-file on the pipe, finishes the writes it
  already received (nobody will acknowledge them; a client resends, and ingest is idempotent), closes
  the store and exits. A collector started meanwhile waits for DuckDB's file lock (``_OPEN_WAIT_S``).
* The child dies: every pending call fails with ``StoreProcessError`` (nothing is acknowledged), and the
  next call starts a new child, which recovers the file as after a crash.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import logging
import multiprocessing
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import duckdb
import structlog

from collector.maintenance import StoreMaintainer
from collector.store import InsertResult, MaintenanceRun, ResultStream, Store, WriteJob, job_from_wire, job_to_wire

log = structlog.get_logger()

_OPEN_WAIT_S = 60.0
"""How long a new child retries DuckDB's file lock (held by a previous child still closing)."""
_READ_THREADS = 2


class StoreProcessError(RuntimeError):
    """The store process is gone (crashed or killed); nothing of the failed call was acknowledged."""


# -- wire forms --------------------------------------------------------------------------------------


def _picklable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a ``RuntimeError`` carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


# -- the child ---------------------------------------------------------------------------------------


def _open_store(path: str, checkpoint_wal_bytes: int, threads: int, stage: bool) -> Store:
    deadline = time.monotonic() + _OPEN_WAIT_S
    while True:
        try:
            return Store(path, checkpoint_wal_bytes=checkpoint_wal_bytes, threads=threads, stage=stage)
        except duckdb.IOException as e:  # "Could not set lock on file": the previous child is closing
            if "lock" not in str(e).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def serve(conn: Connection, path: str, checkpoint_wal_bytes: int, threads: int, stage: bool, log_level: str) -> None:
    """The child's main: open the store, answer requests until the pipe closes or ``close`` arrives."""
    from streamqoe.logs import configure_logging  # the child is an entry point: it configures its logging

    configure_logging(log_level)
    try:
        store = _open_store(path, checkpoint_wal_bytes, threads, stage)
    except Exception as e:
        conn.send((None, False, _picklable(e)))
        return
    send_lock = threading.Lock()

    def reply(msg: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(msg)

    reply((None, True, store.recovered_rows))
    gc.freeze()  # the modules and the open store live until exit: out of the full collections
    maintainer = StoreMaintainer(store, on_run=lambda run: reply((None, "maintenance", run)), low_priority=True)
    maintainer.start()
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
    readers = concurrent.futures.ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="store-reader")
    streams: dict[int, ResultStream] = {}
    handlers: dict[str, Callable[..., Any]] = {
        "write_group": lambda wires, now_ms: [
            r if isinstance(r, InsertResult) else _picklable(r)
            for r in store.write_group([job_from_wire(w) for w in wires], now_ms=now_ms)
        ],
        "query": store.query,
        "ping": store.ping,
        "count": store.count,
        "latest_probe_qoe": store.latest_probe_qoe,
        "incidents": store.incidents,
        "stream": lambda sid, sql, params: streams.__setitem__(sid, store.stream(sql, params)),
        "fetchmany": lambda sid, n: streams[sid].fetchmany(n),
        "close_stream": lambda sid: streams.pop(sid).close() if sid in streams else None,
    }

    def run(rid: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            value = handlers[method](*args)
        except BaseException as e:
            reply((rid, False, _picklable(e)))
        else:
            reply((rid, True, value))

    close_rid = None
    try:
        while True:
            try:
                rid, method, args = conn.recv()
            except (EOFError, OSError):
                log.info("store_process_parent_gone")
                break
            if method == "close":
                close_rid = rid
                break
            (writer if method == "write_group" else readers).submit(run, rid, method, args)
    finally:
        gc.unfreeze()  # let shutdown collect DuckDB's objects (frozen, nanobind reports them as leaked)
        writer.shutdown(wait=True)  # writes already received are committed (a resend is idempotent)
        readers.shutdown(wait=True)
        maintainer.stop()
        error: BaseException | None = None
        try:
            for s in streams.values():
                s.close()
            store.close()
        except BaseException as e:
            error = e
            log.error("store_close_failed", error=repr(e))
        if close_rid is not None:
            reply((close_rid, error is None, None if error is None else _picklable(error)))


# -- the collector's side ----------------------------------------------------------------------------


class RemoteStream:
    """A query's rows in the store process, fetched in batches (as ``ResultStream``)."""

    def __init__(self, client: StoreClient, sid: int) -> None:
        self._client = client
        self._sid = sid
        self._closed = False
        self._lock = threading.Lock()

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                return []
            rows: list[tuple[Any, ...]] = self._client.call("fetchmany", self._sid, n)
            return rows

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.call("close_stream", self._sid)


class _Channel:
    """One store process: its pipe and the calls waiting for its replies."""

    def __init__(self, conn: Connection, proc: Any) -> None:
        self.conn = conn
        self.proc = proc
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        self.lock = threading.Lock()  # sends, and pending's membership
        self.dead = False


class StoreClient:
    """The store, run by a child process; the same methods as ``Store`` for the collector's use.

    ``on_maintenance`` is called (on a background thread) with each checkpoint's ``MaintenanceRun``, and
    ``on_start`` with the pid of each store process started (the first, and each replacement).
    ``wall_ms`` stamps ``received_ms`` here, so an injected clock works as with an in-process store.
    """

    def __init__(self, path: str, *, checkpoint_wal_bytes: int = 16 << 20, threads: int = 1, stage: bool = True,
                 wall_ms: Callable[[], int] | None = None,
                 on_maintenance: Callable[[MaintenanceRun], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.path = path
        self._on_start = on_start
        self._args = (path, checkpoint_wal_bytes, threads, stage)
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._on_maintenance = on_maintenance
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._channel = self._start()
        self.recovered_rows = self._recovered
        """Rows the store process found staged at its first open (see ``Store.recovered_rows``)."""

    @property
    def pid(self) -> int:
        """The current store process's pid."""
        return int(self._channel.proc.pid)

    @property
    def alive(self) -> bool:
        """True while the current store process runs (a dead one is replaced at the next call)."""
        ch = self._channel
        return not ch.dead and bool(ch.proc.is_alive())

    def in_flight(self) -> int:
        """Calls sent to the store process and not yet answered."""
        return len(self._channel.pending)

    def _start(self) -> _Channel:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        proc = ctx.Process(target=serve, args=(child, *self._args, level), name="streamqoe-store", daemon=True)
        proc.start()
        child.close()
        try:
            _, ok, value = parent.recv()
        except EOFError:
            proc.join()
            raise StoreProcessError(
                f"store process exited while opening {self.path} (code {proc.exitcode})"
            ) from None
        if ok is not True:
            proc.join()
            raise value
        self._recovered = int(value)
        channel = _Channel(parent, proc)
        threading.Thread(target=self._receive, args=(channel,), name="store-client", daemon=True).start()
        log.info("store_process_started", pid=proc.pid, recovered_staged_rows=value)
        if self._on_start is not None:
            self._on_start(proc.pid or 0)
        return channel

    def _receive(self, ch: _Channel) -> None:
        while True:
            try:
                rid, ok, value = ch.conn.recv()
            except (EOFError, OSError):
                break
            if ok == "maintenance":
                if self._on_maintenance is not None:
                    self._on_maintenance(value)
                continue
            with ch.lock:
                fut = ch.pending.pop(rid, None)
            if fut is not None:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        ch.proc.join(timeout=5)
        with ch.lock:
            ch.dead = True
            pending = list(ch.pending.values())
            ch.pending.clear()
        if not self._closing:
            log.error("store_process_exited", pid=ch.proc.pid, exitcode=ch.proc.exitcode, pending_calls=len(pending))
        for fut in pending:
            fut.set_exception(StoreProcessError(f"the store process exited (code {ch.proc.exitcode})"))

    def _live_channel(self) -> _Channel:
        with self._start_lock:
            if self._closed:
                raise StoreProcessError("the store is closed")
            ch = self._channel
            if ch.dead or not ch.proc.is_alive():  # the child died: start another (it recovers the file)
                ch.conn.close()
                self._channel = ch = self._start()
            return ch

    def call(self, method: str, *args: Any) -> Any:
        """Run ``method`` in the store process and return its result (or raise its exception).

        A call that could not be sent (the child had just died) is sent once more to a new child; a call
        that was sent and lost its child raises ``StoreProcessError``.
        """
        for attempt in (1, 2):
            ch = self._live_channel()
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            rid = next(self._ids)
            with ch.lock:
                if not ch.dead:
                    ch.pending[rid] = fut
                    try:
                        ch.conn.send((rid, method, args))
                        break
                    except OSError:
                        ch.pending.pop(rid, None)
            if attempt == 2:
                raise StoreProcessError("the store process exited and could not be restarted")
        return fut.result()

    # -- the Store methods the collector uses --------------------------------------------------------

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]:
        result: list[InsertResult | BaseException] = self.call(
            "write_group", [job_to_wire(j) for j in jobs], self._wall_ms()
        )
        return result

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("query", sql, list(params))
        return rows

    def stream(self, sql: str, params: Sequence[Any] = ()) -> RemoteStream:
        sid = next(self._ids)
        self.call("stream", sid, sql, list(params))
        return RemoteStream(self, sid)

    def ping(self) -> None:
        self.call("ping")

    def count(self, table: str) -> int:
        return int(self.call("count", table))

    def latest_probe_qoe(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("latest_probe_qoe")
        return rows

    def incidents(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("incidents", from_ms, to_ms)
        return rows

    def close(self) -> None:
        """Finish every write, checkpoint and close the store, and wait for the process to exit."""
        if self._closed:
            return
        self._closing = True
        try:
            if not self._channel.dead:
                self.call("close")
        finally:
            self._closed = True
            self._channel.proc.join()
