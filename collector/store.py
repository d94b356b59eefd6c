"""The DuckDB store: one writer connection (used from one thread), read cursors for queries.

Durability: every write is a DuckDB transaction; ``commit()`` returns after DuckDB has written and
fsync'ed its write-ahead log, so a committed row survives ``kill -9`` (and a power cut, as far as the
file system honours fsync). Recovery replays the WAL at the next open.

Checkpoints off the ack path: DuckDB's own automatic checkpoint runs inside the commit that crosses the
threshold, and while a checkpoint runs no other commit to the same database completes, whichever
connection runs it (measured with DuckDB 2.0, docs/collector.md). So a file-backed store turns the
automatic checkpoint off and ``maintain()`` (called by ``collector.maintenance`` on its own thread)
checkpoints. While it does, the writer commits each group to a staging database attached beside the
main file (``<db>.staging``, the same tables with a ``seq`` column): a checkpoint of one database does
not hold up commits to another. Once the checkpoint is done the writer commits to the main tables again,
and ``maintain()`` moves the staged rows into them meanwhile (an idempotent insert, then a ``DELETE``
from staging). Reads wait until every row staged before they started has been moved, so they see every
acknowledged item.

Idempotency: ``event_id``/``report_id``/``incident_id`` are primary keys. Events are first inserted
with a plain ``INSERT`` (a resent event is rare, and ``ON CONFLICT … RETURNING`` costs about a third
of the insert); if the primary key refuses one, the group is rolled back and redone with
``ON CONFLICT DO NOTHING RETURNING``, which stores a retried item once and reports it as a duplicate.
A group committed to staging is checked against staging only: an item already in the main tables is
reported as new there, and the move skips it (stored once all the same).

The methods are synchronous (DuckDB blocks); ``collector.writer`` runs the write methods on a single
thread and ``collector.app`` runs the queries on a small pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import duckdb
import numpy as np

from collector.event_columns import EventColumns
from collector.events import ROW_FIELDS
from collector.reports import REPORT_COLUMNS
from collector.schema import DDL, SCHEMA_VERSION, STAGED_TABLES, VIEWER_EVENT_COLUMNS, staging_ddl

# whole-number event fields travel as float64 (NaN = NULL) and are cast on insert
_EVENT_INTEGER = frozenset({"stall_count", "height"})
_REPORT_INT64 = frozenset({"started_ms"})
_REPORT_FLOAT = frozenset(
    {"duration_s", "ttff_ms", "stall_ratio", "total_freezes_s", "loss_pct", "hd_share", "fps_mean",
     "latency_p50_ms", "rtt_ms"}
)  # fmt: skip


_STAGE = "stage"  # catalog name of the attached staging database
_DISABLED_CHECKPOINT = "1000TiB"  # DuckDB's automatic checkpoint threshold when maintain() checkpoints
_MOVE_ATTEMPTS = 5  # a move refused for a key conflict is redone (with ON CONFLICT) this often at most
# a primary key refusing a row: when the statement runs, or at COMMIT when a concurrent transaction
# committed the same key first (DuckDB raises TransactionException then)
_KEY_CONFLICT = (duckdb.ConstraintException, duckdb.TransactionException)
_MOVE_SQL = {
    "viewer_events": "INSERT INTO viewer_events ({cols}) SELECT {cols} FROM {stage}.viewer_events WHERE seq <= ?",
    "probe_reports": "INSERT INTO probe_reports ({cols}) SELECT {cols} FROM {stage}.probe_reports WHERE seq <= ? "
                     "ON CONFLICT DO NOTHING",
    # staging holds one row per incident (its last upsert): replace in the main table
    "incidents": "INSERT OR REPLACE INTO incidents ({cols}) SELECT {cols} FROM {stage}.incidents WHERE seq <= ?",
}  # fmt: skip


@dataclass(frozen=True)
class MaintenanceRun:
    """What one ``Store.maintain()`` did. Times in seconds."""

    checkpoint_s: float | None
    """Duration of the main database's checkpoint; None when it did not checkpoint."""
    moved_rows: int
    """Rows moved from staging into the main tables (committed to staging while the main tables were busy)."""
    diverted_s: float
    """How long the writer committed to staging instead of the main tables (the checkpoint)."""
    move_s: float = 0.0
    """Duration of the move (the writer commits to the main tables meanwhile)."""


@dataclass(frozen=True)
class _Dest:
    """Where a group goes: the main tables, or staging with the group's number."""

    seq: int | None = None

    def table(self, name: str) -> str:
        return name if self.seq is None else f"{_STAGE}.{name}"

    @property
    def cols(self) -> str:
        return "" if self.seq is None else ", seq"

    @property
    def value(self) -> str:
        return "" if self.seq is None else f", {int(self.seq)}"


_MAIN = _Dest()
_WAIT = _Dest(seq=-1)
"""Not a destination: the writer waits for the main tables (``Store.stage`` False)."""


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
    received_ms: int | None = None
    """The ``received_ms`` to store for these items; None = the commit's clock (``collector.journal`` sets
    it to the time the job was journaled and acknowledged)."""

    @property
    def size(self) -> int:
        """Items in the job."""
        return self.events.n if self.events is not None else len(self.rows)


def job_to_wire(job: WriteJob) -> tuple[Any, ...]:
    """``job`` in a compact, picklable form (events packed, ``EventColumns.packed``)."""
    if job.events is not None:
        return ("events", job.events.n, job.events.packed(), job.received_ms)
    return (job.kind, list(job.rows), job.received_ms)


def job_from_wire(wire: tuple[Any, ...]) -> WriteJob:
    """The ``WriteJob`` that ``job_to_wire`` gave ``wire`` for."""
    if wire[0] == "events":
        return WriteJob("events", events=EventColumns.from_packed(wire[1], wire[2]), received_ms=wire[3])
    kind, rows, received_ms = wire
    return WriteJob(kind, [tuple(r) for r in rows], received_ms=received_ms)


def _stamps(sizes: Sequence[int], stamps: Sequence[int | None], now: int) -> Any:
    """``received_ms`` per item: each job's own stamp, or ``now``."""
    if all(t is None for t in stamps):
        return np.full(sum(sizes), now, dtype=np.int64)
    return np.repeat(np.array([now if t is None else t for t in stamps], dtype=np.int64), sizes)


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


def _scalar(con: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of ``sql``'s result."""
    row = con.execute(sql, list(params)).fetchone()
    assert row is not None, sql
    return row[0]


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


class RowStream(Protocol):
    """A running query's rows, fetched in batches, then closed."""

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class StoreAPI(Protocol):
    """What the collector uses of its store: ``Store`` in the collector's process, or
    ``collector.store_process.StoreClient`` in a process of its own."""

    recovered_rows: int

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> RowStream: ...

    def ping(self) -> None: ...

    def count(self, table: str) -> int: ...

    def latest_probe_qoe(self) -> list[dict[str, Any]]: ...

    def incidents(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class Store:
    """The collector's database. Write methods must be called from one thread at a time, ``maintain()``
    from one other thread: a file-backed store checkpoints only there (and at ``close()``), so someone must
    call it (``collector.maintenance.StoreMaintainer``)."""

    def __init__(self, path: str, *, checkpoint_wal_bytes: int = 16 << 20, wall_ms: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic, threads: int = 1,
                 stage: bool = True) -> None:  # fmt: skip
        self.path = path
        self.stage = stage
        """While ``maintain()`` holds the main tables: True, the writer commits to staging; False, it waits
        (``ack_on = "journal"``: nobody waits for the loader's commits, and one large group after the
        checkpoint costs less than staging and moving)."""
        self._clock = clock
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        """WAL size (bytes) from which ``checkpoint_due()`` is true."""
        self._con = duckdb.connect(path)
        # DuckDB's worker threads (every query of this database): with a second one, each small insert also
        # hands tasks to it, measured at 3-4 ms more CPU per 1,000 events ingested (docs/performance.md)
        self._con.execute(f"SET threads = {int(threads)}")
        # object (string) columns: DuckDB samples this many values to infer their type before an insert;
        # the writer's columns are validated strings or None, and one value is enough (None alone: VARCHAR,
        # a NULL-first column keeps its later values; tested)
        self._con.execute("SET pandas_analyze_sample = 1")
        self._file = path not in ("", ":memory:") and not path.startswith(":memory:")
        if self._file:
            self._con.execute(f"SET checkpoint_threshold = '{_DISABLED_CHECKPOINT}'")
        else:
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
        # routing between the writer and maintain(): the writer writes the main tables while it holds
        # _main; maintain() sets _diverting, then takes _main for the checkpoint and the moves
        self._main = threading.Lock()
        self._state = threading.Condition()
        self._diverting = False
        self._staged_seq = 0  # last group committed to staging
        self._moved_seq = 0  # every group up to this one is in the main tables
        self._maint: Any = None
        self._move_lock = threading.Lock()  # one move at a time (maintain(), a read, the writer before an upsert)
        self._staging_dirty = False  # staging has had rows since its last checkpoint
        self.recovered_rows = 0
        """Rows found in staging at open (a crash while the main tables were busy), moved since."""
        if self._file:
            self._open_staging()

    @property
    def staging_path(self) -> str | None:
        """The staging database's file (None for an in-memory store)."""
        return f"{self.path}.staging" if self._file else None

    def _open_staging(self) -> None:
        path = self.staging_path
        assert path is not None
        self._con.execute(f"ATTACH '{path.replace(chr(39), chr(39) * 2)}' AS {_STAGE}")
        self._maint = self._con.cursor()
        present = {r[0] for r in self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [_STAGE]).fetchall()}  # fmt: skip
        if present:  # left by a crash: move what it holds (idempotent), then start from empty tables
            self._staged_seq = max(
                int(_scalar(self._con, f"SELECT coalesce(max(seq), 0) FROM {_STAGE}.{t}")) for t in present
            )
            self.recovered_rows = self._move_staged(self._con, tuple(t for t in STAGED_TABLES if t in present))
            for t in present:
                self._con.execute(f"DROP TABLE {_STAGE}.{t}")
            self._con.execute(f"CHECKPOINT {_STAGE}")
        for stmt in staging_ddl(_STAGE):
            self._con.execute(stmt)
        self._moved_seq = self._staged_seq

    # -- writes (one thread) ------------------------------------------------------------------------

    def write_group(self, jobs: Sequence[WriteJob], now_ms: int | None = None) -> list[InsertResult | BaseException]:
        """Write every job in one transaction (group commit); a failed group is retried job by job.

        The transaction goes to the main tables, or to staging while ``maintain()`` checkpoints them.
        Returns one result per job: its new/duplicate counts, or the exception that job raised.
        ``now_ms``: the ``received_ms`` to stamp (default: the store's wall clock, now).
        """
        now = self._wall_ms() if now_ms is None else now_ms
        with self._state:
            if self._maint is None or (not self._diverting and self._main.acquire(blocking=False)):
                dest = _MAIN
            elif not self.stage:
                dest = _WAIT
            else:
                dest = _Dest(seq=self._staged_seq + 1)
        if dest is _WAIT:
            self._main.acquire()  # until the checkpoint ends
            dest = _MAIN
        if dest.seq is None:
            if self._maint is None:
                return self._write_group(jobs, dest, now)  # in memory: no checkpoints, no maintain()
            try:
                if any(j.kind == "incidents" for j in jobs):
                    self._drain(self._con)  # an upsert: staged (older) versions first, then this one
                return self._write_group(jobs, dest, now)
            finally:
                self._main.release()
        try:
            return self._write_group(jobs, dest, now)
        finally:
            with self._state:
                # a failed group stored nothing, and the number is still a valid upper bound
                self._staged_seq = dest.seq
                self._staging_dirty = True
                self._state.notify_all()

    def _write_group(self, jobs: Sequence[WriteJob], dest: _Dest, now: int) -> list[InsertResult | BaseException]:
        try:
            return self._transaction(jobs, dest, now, optimistic=True)
        except _KEY_CONFLICT:
            pass  # an event already stored (a client's retry): redo the group with conflict handling
        except Exception:
            if len(jobs) == 1:
                raise
        try:
            return self._transaction(jobs, dest, now, optimistic=False)
        except Exception:
            if len(jobs) == 1:
                raise
        out: list[InsertResult | BaseException] = []
        for job in jobs:
            try:
                out.extend(self._transaction([job], dest, now, optimistic=False))
            except Exception as e:
                out.append(e)
        return out

    def _transaction(self, jobs: Sequence[WriteJob], dest: _Dest, now: int, *,
                     optimistic: bool) -> list[InsertResult | BaseException]:  # fmt: skip
        # Optimistic events-only groups are one INSERT statement, a transaction of its own (DuckDB's
        # autocommit: committed, WAL synced, or rolled back entirely). Without BEGIN and COMMIT the writer
        # makes one DuckDB call instead of three, and DuckDB's Python client takes the GIL back after every
        # task of every call, waiting each time for the event loop's thread to let go of it: 101 against
        # 190 ms per 1,000-row insert beside a busy Python thread (6.2 vs 6.5 ms alone).
        explicit = not (optimistic and all(j.kind == "events" for j in jobs))
        try:
            if explicit:
                self._con.execute("BEGIN TRANSACTION")
            results: list[InsertResult | BaseException] = list(self._write_jobs(jobs, dest, now, optimistic))
            if explicit:
                self._con.execute("COMMIT")
            return results
        except BaseException:
            self._rollback(self._con)
            raise

    @staticmethod
    def _rollback(con: Any) -> None:
        with contextlib.suppress(duckdb.Error):  # no transaction open
            con.execute("ROLLBACK")

    def _write_events(self, jobs: Sequence[WriteJob], idx: list[int], now: int, dest: _Dest,
                      optimistic: bool) -> list[int]:  # fmt: skip
        """Insert the events of ``jobs[i] for i in idx``; the number of new events per job, in ``idx`` order."""
        parts = [jobs[i].events for i in idx]
        cols: dict[str, Any] = {
            name: np.concatenate([p.columns[name] for p in parts if p is not None]) for name in ROW_FIELDS
        }
        ids = cols["event_id"]
        sizes = [jobs[i].size for i in idx]
        received = _stamps(sizes, [jobs[i].received_ms for i in idx], now)
        table = dest.table("viewer_events")
        collist = ", ".join((*ROW_FIELDS, "received_ms")) + dest.cols
        select = ", ".join(
            f"CAST({c} AS INTEGER)" if c in _EVENT_INTEGER else c for c in (*ROW_FIELDS, "received_ms")
        ) + dest.value
        if optimistic and len(set(ids.tolist())) == len(ids):
            cols["received_ms"] = received
            # DuckDB's replacement scan reads the local dict of numpy arrays by its name
            self._con.execute(f"INSERT INTO {table} ({collist}) SELECT {select} FROM cols")
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
        sel["received_ms"] = received[keep]
        inserted = self._con.execute(
            f"INSERT INTO {table} ({collist}) SELECT {select} FROM sel "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        ).fetchall()
        new = [0] * len(idx)
        for (k,) in inserted:
            new[owner[k]] += 1
        return new

    def _write_jobs(self, jobs: Sequence[WriteJob], dest: _Dest, now: int,
                    optimistic: bool = False) -> list[InsertResult]:  # fmt: skip
        results: list[InsertResult | None] = [None] * len(jobs)
        idx = [i for i, j in enumerate(jobs) if j.kind == "events"]
        if idx:
            for i, n in zip(idx, self._write_events(jobs, idx, now, dest, optimistic), strict=True):
                results[i] = InsertResult(new=n, duplicate=jobs[i].size - n)
        idx = [i for i, j in enumerate(jobs) if j.kind == "reports"]
        if idx:
            # first occurrence in the group wins; later copies (same request or another) are duplicates
            owner: dict[str, int] = {}
            unique: list[tuple[Any, ...]] = []
            stamps: list[int] = []
            for i in idx:
                stamp = jobs[i].received_ms
                for row in jobs[i].rows:
                    if row[0] not in owner:
                        owner[row[0]] = i
                        unique.append(row)
                        stamps.append(now if stamp is None else stamp)
            cols = _columns(REPORT_COLUMNS, unique, _REPORT_INT64, _REPORT_FLOAT)
            cols["received_ms"] = np.array(stamps, dtype=np.int64)
            collist = ", ".join((*REPORT_COLUMNS, "received_ms"))
            inserted = self._con.execute(
                f"INSERT INTO {dest.table('probe_reports')} ({collist}{dest.cols}) "
                f"SELECT {collist}{dest.value} FROM cols ON CONFLICT DO NOTHING RETURNING report_id"
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
                        f"INSERT OR REPLACE INTO {dest.table('incidents')} (incident_id, start_ms, end_ms, "
                        f"segment, summary{dest.cols}) VALUES (?, ?, ?, ?, ?{dest.value})",
                        list(row),
                    )
                results[i] = InsertResult(new=len(job.rows), duplicate=0)
            elif results[i] is None:
                raise ValueError(f"unknown write job kind {job.kind!r}")
        return [r for r in results if r is not None]

    # -- maintenance (one other thread) ---------------------------------------------------------------

    def wal_bytes(self) -> int:
        """Size of the main database's write-ahead log, bytes (0 without one)."""
        try:
            return os.stat(f"{self.path}.wal").st_size if self._file else 0
        except FileNotFoundError:
            return 0

    def checkpoint_due(self) -> bool:
        """True when the main WAL has reached ``checkpoint_wal_bytes``."""
        return self.wal_bytes() >= self.checkpoint_wal_bytes

    def staged_pending(self) -> bool:
        """True when groups committed to staging are not all in the main tables yet."""
        with self._state:
            return self._moved_seq < self._staged_seq

    @contextlib.contextmanager
    def hold_main(self) -> Iterator[None]:
        """Hold the main tables: the writer commits its groups to staging until the block ends.

        Waits for the writer's group in flight, if any (one commit), never for more.
        """
        with self._state:
            self._diverting = True
        self._main.acquire()
        try:
            yield
        finally:
            with self._state:  # the same critical section as the writer's choice of destination
                self._diverting = False
                self._main.release()
                self._state.notify_all()

    def maintain(self, *, checkpoint: bool) -> MaintenanceRun:
        """Checkpoint the main database (if ``checkpoint``), holding the main tables meanwhile
        (``hold_main``), then move the staged rows into them while the writer writes them again.
        One thread at a time; an in-memory store has nothing to do.
        """
        if self._maint is None:
            return MaintenanceRun(checkpoint_s=None, moved_rows=0, diverted_s=0.0)
        checkpoint_s: float | None = None
        diverted_s = 0.0
        if checkpoint:
            if self._staging_dirty:  # truncate the staging WAL; milliseconds, as staging is empty by now
                self._staging_dirty = False
                self._maint.execute(f"CHECKPOINT {_STAGE}")
            t1 = self._clock()
            with self.hold_main():
                self._maint.execute("CHECKPOINT")
            checkpoint_s = diverted_s = self._clock() - t1
        t2 = self._clock()
        moved = self._drain(self._maint)
        return MaintenanceRun(checkpoint_s=checkpoint_s, moved_rows=moved, diverted_s=diverted_s,
                              move_s=self._clock() - t2)  # fmt: skip

    def _drain(self, cur: Any) -> int:
        """Move staged rows until none is left (none is staged unless ``hold_main`` is held); rows moved."""
        moved = 0
        with self._move_lock:
            while self.staged_pending():
                moved += self._move_staged(cur)
        return moved

    def _move_staged(self, cur: Any, tables: Sequence[str] = STAGED_TABLES) -> int:
        """Move every group committed to staging into the main tables; the number of staged rows moved.

        Two transactions (DuckDB writes one database per transaction): the insert into the main tables
        is idempotent, so a crash between the two moves the same rows again at the next open, harmlessly.
        The writer may commit to the main tables meanwhile: DuckDB lets transactions append different keys
        concurrently, and refuses the second commit of a key appended by both (a client's retry of a staged
        item), which is then redone with ``ON CONFLICT DO NOTHING``.
        """
        with self._state:
            hi = self._staged_seq
        if hi <= self._moved_seq:
            return 0
        cols = {
            "viewer_events": VIEWER_EVENT_COLUMNS,
            "probe_reports": (*REPORT_COLUMNS, "received_ms"),
            "incidents": ("incident_id", "start_ms", "end_ms", "segment", "summary"),
        }
        for attempt in range(_MOVE_ATTEMPTS):
            try:
                cur.execute("BEGIN TRANSACTION")
                for t in tables:
                    sql = _MOVE_SQL[t].format(cols=", ".join(cols[t]), stage=_STAGE)
                    if t == "viewer_events" and attempt:
                        sql += " ON CONFLICT DO NOTHING"
                    cur.execute(sql, [hi])
                cur.execute("COMMIT")
                break
            except _KEY_CONFLICT:
                self._rollback(cur)  # an event the writer staged was in the main table already
                if attempt == _MOVE_ATTEMPTS - 1:
                    raise
            except BaseException:
                self._rollback(cur)
                raise
        moved = 0
        try:  # the writer may be staging newer groups meanwhile: DuckDB lets a delete and inserts of other
            # keys run concurrently, and an insert of a key being deleted is refused (a duplicate: it is moved)
            cur.execute("BEGIN TRANSACTION")
            for t in tables:
                moved += int(_scalar(cur, f"DELETE FROM {_STAGE}.{t} WHERE seq <= ?", [hi]))
            cur.execute("COMMIT")
        except BaseException:
            self._rollback(cur)
            raise
        with self._state:
            self._moved_seq = max(self._moved_seq, hi)
            self._state.notify_all()
        return moved

    def close(self) -> None:
        """Move staged rows, checkpoint and close every connection: a clean shutdown leaves the main file
        alone, with no WAL and no staging file. Call it once the writer and ``maintain()`` have stopped."""
        with self._cursors_lock:
            for c in self._cursors:
                c.close()
            self._cursors.clear()
        try:
            if self._maint is not None:
                self._drain(self._con)
                left = sum(int(_scalar(self._con, f"SELECT count(*) FROM {_STAGE}.{t}")) for t in STAGED_TABLES)
                self._maint.close()
                self._con.execute(f"DETACH {_STAGE}")
                if left == 0:  # never remove rows that were not moved
                    for suffix in ("", ".wal"):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(f"{self.staging_path}{suffix}")
            self._con.execute("CHECKPOINT")
        finally:
            self._con.close()

    def _await_moved(self, timeout_s: float = 60.0) -> None:
        """Return once every group staged before the call is in the main tables, so that a read sees every
        acknowledged item: at once in the usual case (nothing staged); else after the checkpoint, if one is
        running (the main tables take no commit meanwhile), and the move (on this thread if nobody moves)."""
        deadline = self._clock() + timeout_s
        with self._state:
            target = self._staged_seq
        while True:
            with self._state:
                while self._diverting and self._moved_seq < target:
                    if self._clock() >= deadline:
                        raise TimeoutError(f"store: staged rows not in the main tables after {timeout_s:g} s")
                    self._state.wait(min(0.05, max(0.0, deadline - self._clock())))
                if self._moved_seq >= target:
                    return
            self._drain(self._cursor())

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
        """Run a read-only query; rows as dicts keyed by column name. Sees every acknowledged item."""
        self._await_moved()
        cur = self._cursor()
        res = cur.execute(sql, list(params))
        names = [d[0] for d in res.description]
        return [dict(zip(names, r, strict=True)) for r in res.fetchall()]

    def stream(self, sql: str, params: Sequence[Any] = ()) -> ResultStream:
        """Start a read-only query on its own cursor; fetch its rows in batches, then ``close()`` it.

        DuckDB streams the result (rows are produced as they are fetched, from one snapshot), so a
        large export does not hold its whole result in memory. Any thread, one at a time per stream.
        """
        self._await_moved()
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

    def ping(self) -> None:
        """A trivial query (health check); does not wait for staged rows."""
        self._cursor().execute("SELECT 1").fetchall()

    def _forget(self, cur: Any) -> None:
        with self._cursors_lock:
            if cur in self._cursors:
                self._cursors.remove(cur)

    def count(self, table: str) -> int:
        """Rows in ``table`` (one of the schema's tables)."""
        if table not in ("viewer_events", "probe_reports", "incidents"):
            raise ValueError(f"table: unknown {table!r}")
        self._await_moved()
        return int(self._cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def latest_probe_qoe(self) -> list[dict[str, Any]]:
        """The newest report per (region, target_url): what /metrics shows after a restart."""
        return self.query(
            """
            SELECT region, target_url, started_ms, duration_s, failure,
                   ttff_ms, stall_ratio, loss_pct, hd_share, rtt_ms,
                   TRY_CAST(json_extract(body, '$.summary.host_stalls.stalled_s') AS DOUBLE) AS host_stalled_s
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
