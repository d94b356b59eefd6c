"""The DuckDB store: one writer connection (used from one thread), read cursors for queries.

Durability: every write is a DuckDB transaction; ``commit()`` returns after DuckDB has written and
fsync'ed its write-ahead log, so a committed row survives ``kill -9`` (and a power cut, as far as the
file system honours fsync). DuckDB folds the WAL into the database file (a checkpoint) when the WAL
exceeds ``checkpoint_wal_bytes`` and at a clean shutdown; recovery replays the WAL at the next open.

Idempotency: ``event_id``/``report_id``/``incident_id`` are primary keys. Events are first inserted
with a plain ``INSERT`` (a resent event is rare, and ``ON CONFLICT … RETURNING`` costs about a third
of the insert); if the primary key refuses one, the group is rolled back and redone with
``ON CONFLICT DO NOTHING RETURNING``, which stores a retried item once and reports it as a duplicate.

The methods are synchronous (DuckDB blocks); ``collector.writer`` runs the write methods on a single
thread and ``collector.app`` runs the queries on a small pool.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from collector.event_columns import EventColumns
from collector.events import ROW_FIELDS
from collector.reports import REPORT_COLUMNS
from collector.schema import DDL, SCHEMA_VERSION

# whole-number event fields travel as float64 (NaN = NULL) and are cast on insert
_EVENT_INTEGER = frozenset({"stall_count", "height"})
_REPORT_INT64 = frozenset({"started_ms"})
_REPORT_FLOAT = frozenset(
    {"duration_s", "ttff_ms", "stall_ratio", "total_freezes_s", "loss_pct", "hd_share", "fps_mean",
     "latency_p50_ms", "rtt_ms"}
)  # fmt: skip


@dataclass(frozen=True)
class InsertResult:
    """Outcome of one ingest request's items: ``new + duplicate == len(items)``."""

    new: int
    duplicate: int
    new_ids: frozenset[str] = frozenset()
    """The ids stored by this request (filled for reports only: the events hot path skips it)."""


@dataclass
class WriteJob:
    """One request's items for one table (``kind``: ``events``, ``reports`` or ``incidents``).

    Events come as validated columns (``events``), the other kinds as row tuples (``rows``).
    """

    kind: str
    rows: Sequence[tuple[Any, ...]] = ()
    events: EventColumns | None = None

    @property
    def size(self) -> int:
        """Items in the job."""
        return self.events.n if self.events is not None else len(self.rows)


def _columns(
    names: Sequence[str], rows: Sequence[tuple[Any, ...]], int64: frozenset[str], floats: frozenset[str]
) -> dict[str, Any]:
    """Rows → a dict of numpy arrays DuckDB scans without a per-row Python call (None → NULL)."""
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    out: dict[str, Any] = {}
    for name, col in zip(names, cols, strict=True):
        if name in int64:
            out[name] = np.fromiter(col, dtype=np.int64, count=len(col))
        elif name in floats:
            # NaN is how a numpy float column says NULL to DuckDB; validated values are never NaN
            out[name] = np.array([np.nan if x is None else x for x in col], dtype=np.float64)
        else:
            out[name] = np.array(col, dtype=object)
    return out


class ResultStream:
    """A running query's rows, fetched in batches (``Store.stream``)."""

    def __init__(self, cursor: Any, on_close: Callable[[Any], None]) -> None:
        self._cur = cursor
        self._on_close = on_close
        self._lock = threading.Lock()  # a cursor refuses a second call while one runs
        self._closed = False

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]:
        """Up to ``n`` more rows; an empty list at the end (or once closed)."""
        with self._lock:
            return [] if self._closed else list(self._cur.fetchmany(n))

    def close(self) -> None:
        """Release the cursor, after a fetch still running on another thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._cur.close()
            self._closed = True
            self._on_close(self._cur)  # only once closed: Store.close() closes whatever is left


class Store:
    """The collector's database. Write methods must be called from one thread at a time."""

    def __init__(self, path: str, *, checkpoint_wal_bytes: int = 64 << 20,
                 wall_ms: Callable[[], int] | None = None) -> None:  # fmt: skip
        self.path = path
        self._con = duckdb.connect(path)
        self._con.execute(f"SET checkpoint_threshold = '{int(checkpoint_wal_bytes)}B'")
        for stmt in DDL:
            self._con.execute(stmt)
        self._con.execute(
            "INSERT INTO collector_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            [str(SCHEMA_VERSION)],
        )
        self._local = threading.local()
        self._cursors: list[Any] = []
        self._cursors_lock = threading.Lock()
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))

    # -- writes (one thread) ------------------------------------------------------------------------

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]:
        """Write every job in one transaction (group commit); a failed group is retried job by job.

        Returns one result per job: its new/duplicate counts, or the exception that job raised.
        """
        try:
            return self._transaction(jobs, optimistic=True)
        except duckdb.ConstraintException:
            pass  # an event already stored (a client's retry): redo the group with conflict handling
        except Exception:
            if len(jobs) == 1:
                raise
        try:
            return self._transaction(jobs, optimistic=False)
        except Exception:
            if len(jobs) == 1:
                raise
        out: list[InsertResult | BaseException] = []
        for job in jobs:
            try:
                out.extend(self._transaction([job], optimistic=False))
            except Exception as e:
                out.append(e)
        return out

    def _transaction(self, jobs: Sequence[WriteJob], *, optimistic: bool) -> list[InsertResult | BaseException]:
        try:
            self._con.execute("BEGIN TRANSACTION")
            results: list[InsertResult | BaseException] = list(self._write_jobs(jobs, optimistic))
            self._con.execute("COMMIT")
            return results
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        with contextlib.suppress(duckdb.Error):  # no transaction open
            self._con.execute("ROLLBACK")

    def _write_events(self, jobs: Sequence[WriteJob], idx: list[int], now: int, optimistic: bool) -> list[int]:
        """Insert the events of ``jobs[i] for i in idx``; the number of new events per job, in ``idx`` order."""
        parts = [jobs[i].events for i in idx]
        cols: dict[str, Any] = {
            name: np.concatenate([p.columns[name] for p in parts if p is not None]) for name in ROW_FIELDS
        }
        ids = cols["event_id"]
        sizes = [jobs[i].size for i in idx]
        collist = ", ".join((*ROW_FIELDS, "received_ms"))
        select = ", ".join(
            f"CAST({c} AS INTEGER)" if c in _EVENT_INTEGER else c for c in (*ROW_FIELDS, "received_ms")
        )
        if optimistic and len(set(ids.tolist())) == len(ids):
            cols["received_ms"] = np.full(len(ids), now, dtype=np.int64)
            # DuckDB's replacement scan reads the local dict of numpy arrays by its name
            self._con.execute(f"INSERT INTO viewer_events ({collist}) SELECT {select} FROM cols")
            return sizes
        # first occurrence in the group wins; later copies (same request or another) are duplicates
        owner: dict[str, int] = {}
        keep: list[int] = []
        pos = 0
        for j, size in enumerate(sizes):
            for k in range(pos, pos + size):
                if ids[k] not in owner:
                    owner[ids[k]] = j
                    keep.append(k)
            pos += size
        sel = {name: col[keep] for name, col in cols.items()}
        sel["received_ms"] = np.full(len(keep), now, dtype=np.int64)
        inserted = self._con.execute(
            f"INSERT INTO viewer_events ({collist}) SELECT {select} FROM sel "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        ).fetchall()
        new = [0] * len(idx)
        for (k,) in inserted:
            new[owner[k]] += 1
        return new

    def _write_jobs(self, jobs: Sequence[WriteJob], optimistic: bool = False) -> list[InsertResult]:
        now = self._wall_ms()
        results: list[InsertResult | None] = [None] * len(jobs)
        idx = [i for i, j in enumerate(jobs) if j.kind == "events"]
        if idx:
            for i, n in zip(idx, self._write_events(jobs, idx, now, optimistic), strict=True):
                results[i] = InsertResult(new=n, duplicate=jobs[i].size - n)
        idx = [i for i, j in enumerate(jobs) if j.kind == "reports"]
        if idx:
            # first occurrence in the group wins; later copies (same request or another) are duplicates
            owner: dict[str, int] = {}
            unique: list[tuple[Any, ...]] = []
            for i in idx:
                for row in jobs[i].rows:
                    if row[0] not in owner:
                        owner[row[0]] = i
                        unique.append(row)
            cols = _columns(REPORT_COLUMNS, unique, _REPORT_INT64, _REPORT_FLOAT)
            cols["received_ms"] = np.full(len(unique), now, dtype=np.int64)
            collist = ", ".join((*REPORT_COLUMNS, "received_ms"))
            inserted = self._con.execute(
                f"INSERT INTO probe_reports ({collist}) SELECT {collist} FROM cols "
                "ON CONFLICT DO NOTHING RETURNING report_id"
            ).fetchall()
            ids: dict[int, set[str]] = {i: set() for i in idx}
            for (k,) in inserted:
                ids[owner[k]].add(k)
            for i in idx:
                n = len(ids[i])
                results[i] = InsertResult(new=n, duplicate=len(jobs[i].rows) - n, new_ids=frozenset(ids[i]))
        for i, job in enumerate(jobs):
            if job.kind == "incidents":
                for row in job.rows:
                    self._con.execute(
                        "INSERT OR REPLACE INTO incidents (incident_id, start_ms, end_ms, segment, summary) "
                        "VALUES (?, ?, ?, ?, ?)",
                        list(row),
                    )
                results[i] = InsertResult(new=len(job.rows), duplicate=0)
            elif results[i] is None:
                raise ValueError(f"unknown write job kind {job.kind!r}")
        return [r for r in results if r is not None]

    def checkpoint(self) -> None:
        """Fold the WAL into the database file."""
        self._con.execute("CHECKPOINT")

    def close(self) -> None:
        """Checkpoint and close every connection (a clean shutdown leaves no WAL behind)."""
        with self._cursors_lock:
            for c in self._cursors:
                c.close()
            self._cursors.clear()
        try:
            self._con.execute("CHECKPOINT")
        finally:
            self._con.close()

    # -- reads (any thread; one cursor per thread) -------------------------------------------------------

    def _cursor(self) -> Any:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query; rows as dicts keyed by column name."""
        cur = self._cursor()
        res = cur.execute(sql, list(params))
        names = [d[0] for d in res.description]
        return [dict(zip(names, r, strict=True)) for r in res.fetchall()]

    def stream(self, sql: str, params: Sequence[Any] = ()) -> ResultStream:
        """Start a read-only query on its own cursor; fetch its rows in batches, then ``close()`` it.

        DuckDB streams the result (rows are produced as they are fetched, from one snapshot), so a
        large export does not hold its whole result in memory. Any thread, one at a time per stream.
        """
        cur = self._con.cursor()
        with self._cursors_lock:
            self._cursors.append(cur)
        stream = ResultStream(cur, self._forget)
        try:
            cur.execute(sql, list(params))
        except BaseException:
            stream.close()
            raise
        return stream

    def _forget(self, cur: Any) -> None:
        with self._cursors_lock:
            if cur in self._cursors:
                self._cursors.remove(cur)

    def count(self, table: str) -> int:
        """Rows in ``table`` (one of the schema's tables)."""
        if table not in ("viewer_events", "probe_reports", "incidents"):
            raise ValueError(f"table: unknown {table!r}")
        return int(self._cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def latest_probe_qoe(self) -> list[dict[str, Any]]:
        """The newest report per (region, target_url): what /metrics shows after a restart."""
        return self.query(
            """
            SELECT region, target_url, started_ms, duration_s, failure,
                   ttff_ms, stall_ratio, loss_pct, hd_share
            FROM probe_reports
            QUALIFY row_number() OVER (PARTITION BY region, target_url ORDER BY started_ms DESC) = 1
            """
        )

    def incidents(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
        """Incidents overlapping [from_ms, to_ms); ``segment`` decoded to a dict."""
        rows = self.query(
            "SELECT incident_id, start_ms, end_ms, segment, summary FROM incidents "
            "WHERE start_ms < ? AND coalesce(end_ms, 9223372036854775807) >= ? ORDER BY start_ms",
            [to_ms, from_ms],
        )
        for r in rows:
            r["segment"] = json.loads(r["segment"])
        return rows
