"""Acknowledge viewer events once they are in a journal (``ack_on = "journal"``); DuckDB loads them after.

With ``ack_on = "commit"`` (the default) a batch of events is acknowledged after DuckDB committed it, so
every acknowledgement waits for an insert: ~6 ms of CPU per 1,000 events (the primary-key index and the
string columns), and more while a checkpoint or the move of staged rows runs beside it. Near 50,000
events/s on 2 cores the writer is then busy 70 % of the time or more, and the ack latency's tail is the
queue in front of it (docs/performance.md, Collector).

With ``ack_on = "journal"`` a group of event batches is appended to a journal file as one record and
``fdatasync``ed (~0.6 ms for 200 kB on this machine), and the batches are acknowledged. A loader thread
then inserts whatever has been journaled into the store, many batches per transaction, through the same
``write_group`` as before (staging during checkpoints, idempotent on ``event_id``):

* **Durable.** An acknowledged batch is in a record whose bytes and length are on disk. At start-up, records
  left by an earlier run (a crash, a kill, a full disk) are loaded into the store before the collector
  accepts anything (``replayed_rows``). Loading is idempotent, so a record loaded just before a crash is
  stored once.
* **All or nothing.** A record carries its length and a CRC-32 of its payload; a record torn by a crash
  (written in part, so never acknowledged) is cut off the end of the journal at start-up. The loader
  inserts whole records in one transaction, so no batch is ever stored in part.
* **Larger loads.** The loader waits until ``min_load_rows`` events are queued or the oldest has waited
  ``max_delay_s`` (0.25 s): DuckDB's insert costs ~6 ms of CPU per 1,000 events in groups of 1,000,
  ~4.4 ms in groups of 4,000 (~2 ms in groups of 16,000, measured without the primary key). While a
  checkpoint runs, it waits for it (``Store.stage`` is False: no staging, no move afterwards). Together
  16–26 % less CPU per event than ``ack_on = "commit"`` (docs/performance.md, session 9).
* **Reads see every acknowledged event.** Each read (``query``, ``stream``, ``count``, …) first waits until
  the loader has loaded everything journaled before it started: tens of milliseconds while ingest keeps
  up, up to a checkpoint (~0.5 s) otherwise; beyond ``read_wait_s`` it fails with ``JournalUnavailable``
  (a 503).
* **Counts.** The response's ``duplicate`` for events counts only ids repeated within the batch: whether
  an id was stored by an earlier request is known only when the loader inserts it (the row is still
  stored once). Probe reports and incidents are not journaled: they queue behind the loader and are
  acknowledged after their commit, with exact counts, as before.
* **Back-pressure.** Beyond ``max_backlog_rows`` events acknowledged and not loaded (a database that
  fails or cannot keep up), event batches get a 503 (``JournalUnavailable``: nothing acknowledged) instead
  of growing the journal without bound.
* **Failures.** A load that fails (the store process died, a disk error) is retried every second, and
  reads wait. A record that fails ``_MAX_LOAD_ATTEMPTS`` times on its own is written to
  ``rejected-<seq>.pickle`` beside the journal and logged as an error, never dropped silently.

Journal files are ``<first record>.journal`` in ``<db_path>.journal/``, ``segment_bytes`` each at most (one
record can exceed it); a file is deleted once every record in it is loaded and committed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pickle
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from collector.store import InsertResult, RowStream, StoreAPI, WriteJob, job_from_wire, job_to_wire
from collector.store_process import StoreProcessError
from probe.spool import fsync_dir

log = structlog.get_logger()

MAGIC = b"SQJ1"
_HEADER = struct.Struct("<4sIIQ")
"""magic, payload length, CRC-32 of the payload, record sequence number."""
_MAX_LOAD_ATTEMPTS = 5
_RETRY_S = 1.0


class JournalUnavailable(StoreProcessError):
    """The journal could not take a write, or the loader did not catch up in time for a read; nothing of
    the failed call was acknowledged (a 503, like a store process that died)."""


class Journal:
    """Append-only journal files of length-prefixed, checksummed records. ``append`` is called from one
    thread, ``release`` from one other."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._current: Path | None = None
        self._current_last = 0
        self._closed: list[tuple[Path, int]] = []
        """Files no longer appended to, with the sequence number of their last record."""
        self._next_seq = 1
        self._recovered: list[Path] = []

    def recover(self) -> list[tuple[int, bytes]]:
        """The records left by an earlier run, oldest first (call once, before ``append``).

        A torn record at the end of the last file (a write cut off by a crash: never acknowledged) is cut
        off that file. A damaged record anywhere else renames its file to ``*.damaged`` (its good records
        before the damage are returned) and is logged as an error.
        """
        files = sorted(self.dir.glob("*.journal"))
        out: list[tuple[int, bytes]] = []
        for k, path in enumerate(files):
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                end = pos + _HEADER.size
                if end > len(data):
                    break
                magic, length, crc, seq = _HEADER.unpack_from(data, pos)
                payload = data[end : end + length]
                if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                    break
                out.append((seq, payload))
                pos = end + length
            if pos < len(data):
                if k == len(files) - 1:
                    log.warning("journal_torn_record", file=path.name, kept_bytes=pos, cut_bytes=len(data) - pos)
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                        os.fsync(f.fileno())
                else:
                    damaged = path.with_suffix(".damaged")
                    log.error("journal_damaged", file=path.name, good_bytes=pos, bad_bytes=len(data) - pos,
                              moved_to=damaged.name)  # fmt: skip
                    path.rename(damaged)
                    continue
            self._recovered.append(path)
        if out:
            self._next_seq = max(seq for seq, _ in out) + 1
        return out

    def discard_recovered(self) -> None:
        """Delete the files ``recover`` read (their records are loaded)."""
        for path in self._recovered:
            path.unlink(missing_ok=True)
        self._recovered.clear()
        fsync_dir(self.dir)

    def append(self, payload: bytes) -> int:
        """Write one record and wait until it is on disk; its sequence number."""
        with self._lock:
            if self._fd is None or self._size >= self._segment_bytes:
                self._rotate()
            assert self._fd is not None
            seq = self._next_seq
            record = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), seq) + payload
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
            self._next_seq += 1
            self._size += len(record)
            self._current_last = seq
            return seq

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            assert self._current is not None
            self._closed.append((self._current, self._current_last))
        self._current = self.dir / f"{self._next_seq:016d}.journal"
        self._fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._size = 0
        fsync_dir(self.dir)  # the new file's name is durable before a record in it is acknowledged

    def release(self, loaded_seq: int) -> None:
        """Delete the closed files whose every record is loaded (sequence numbers ≤ ``loaded_seq``)."""
        with self._lock:
            done = [(p, last) for p, last in self._closed if last <= loaded_seq]
            self._closed = [(p, last) for p, last in self._closed if last > loaded_seq]
        for path, _ in done:
            path.unlink(missing_ok=True)

    def close(self, *, delete: bool) -> None:
        """Close the open file; ``delete``: remove every file (all records are loaded)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if delete:
                for path in [p for p, _ in self._closed] + ([self._current] if self._current else []):
                    path.unlink(missing_ok=True)
                self._closed.clear()
                self._current = None


@dataclasses.dataclass(eq=False)  # identity: the queue holds each item once
class _Item:
    seq: int | None
    """Journal record (events), or None for jobs acknowledged after their commit (``waiter``)."""
    jobs: list[WriteJob]
    rows: int
    waiter: concurrent.futures.Future[list[InsertResult | BaseException]] | None = None
    attempts: int = 0
    queued_at: float = 0.0


class JournaledStore:
    """A ``StoreAPI`` that acknowledges events on a journal append and loads them into ``inner`` behind.

    ``write_group`` runs on the collector's writer thread; the loader is a thread of its own; reads may
    come from any thread.
    """

    def __init__(self, inner: StoreAPI, directory: str | Path, *, wall_ms: Callable[[], int] | None = None,
                 max_load_rows: int = 200_000, min_load_rows: int = 20_000, max_delay_s: float = 0.25,
                 read_wait_s: float = 60.0, segment_bytes: int = 64 << 20, max_backlog_rows: int = 2_000_000,
                 clock: Callable[[], float] = time.monotonic, retry_s: float = _RETRY_S) -> None:  # fmt: skip
        self.inner = inner
        self._retry_s = retry_s
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._clock = clock
        self._max_load_rows = max_load_rows
        self._min_load_rows = min_load_rows
        self._max_delay_s = max_delay_s
        self._readers_waiting = 0
        self._max_backlog_rows = max_backlog_rows
        self._read_wait_s = read_wait_s
        self.journal = Journal(directory, segment_bytes=segment_bytes)
        self.replayed_rows = self._replay(self.journal.recover())
        """Events found in the journal at start-up and loaded before anything new."""
        self.journal.discard_recovered()
        self.recovered_rows = inner.recovered_rows
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued = 0
        self._done = 0
        self.backlog_rows = 0
        """Events acknowledged and not loaded yet."""
        self.loads = 0
        self.loaded_rows = 0
        self.rejected_records = 0
        self._closing = False
        self._thread = threading.Thread(target=self._load_loop, name="journal-loader", daemon=True)
        self._thread.start()

    # -- writes ---------------------------------------------------------------------------------------

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]:
        results: list[InsertResult | BaseException | None] = [None] * len(jobs)
        now = self._wall_ms()
        events = [(i, dataclasses.replace(j, received_ms=now if j.received_ms is None else j.received_ms))
                  for i, j in enumerate(jobs) if j.kind == "events"]  # fmt: skip
        if events and self.backlog_rows >= self._max_backlog_rows:
            raise JournalUnavailable(
                f"{self.backlog_rows} acknowledged events are waiting to be loaded into the database (limit "
                f"{self._max_backlog_rows}); the database is not keeping up or is failing, see the log")  # fmt: skip
        if events:
            payload = pickle.dumps([job_to_wire(j) for _, j in events], protocol=pickle.HIGHEST_PROTOCOL)
            try:
                seq = self.journal.append(payload)
            except OSError as e:
                raise JournalUnavailable(f"the journal could not be written: {e}") from e
            self._enqueue(_Item(seq, [j for _, j in events], sum(j.size for _, j in events)))
            for i, j in events:
                assert j.events is not None
                distinct = j.events.distinct_ids()
                results[i] = InsertResult(new=distinct, duplicate=j.size - distinct)
        others = [(i, j) for i, j in enumerate(jobs) if j.kind != "events"]
        if others:
            waiter: concurrent.futures.Future[list[InsertResult | BaseException]] = concurrent.futures.Future()
            self._enqueue(_Item(None, [j for _, j in others], 0, waiter))
            for (i, _), r in zip(others, waiter.result(), strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _enqueue(self, item: _Item) -> None:
        with self._cond:
            if self._closing:
                raise JournalUnavailable("the collector is shutting down")
            item.queued_at = self._clock()
            self._queue.append(item)
            self._queued += 1
            self.backlog_rows += item.rows
            self._cond.notify_all()

    # -- the loader -----------------------------------------------------------------------------------

    def _replay(self, records: list[tuple[int, bytes]]) -> int:
        rows = 0
        group: list[WriteJob] = []
        for i, (_seq, payload) in enumerate(records):
            group.extend(job_from_wire(w) for w in pickle.loads(payload))
            if sum(j.size for j in group) >= self._max_load_rows or i == len(records) - 1:
                for r in self.inner.write_group(group):
                    if isinstance(r, BaseException):
                        raise RuntimeError(
                            f"loading the journal in {self.journal.dir} failed ({r!r}); it is kept: fix the cause "
                            "and start the collector again") from r  # fmt: skip
                rows += sum(j.size for j in group)
                group = []
        if records:
            log.info("journal_replayed", records=len(records), rows=rows)
        return rows

    def _due(self) -> float:
        """0 when the queue should be loaded now, else how long to wait at most (called holding the lock).

        Events wait to be loaded until ``min_load_rows`` are queued or the oldest has waited ``max_delay_s``:
        DuckDB's insert costs ~6 ms of CPU per 1,000 events in groups of 1,000 and ~4.4 ms in groups of
        4,000 (docs/performance.md). A read, a probe report (waiting for its commit) or closing loads at once.
        """
        if self._closing or self._readers_waiting or self.backlog_rows >= self._min_load_rows:
            return 0.0
        if any(it.waiter is not None for it in self._queue):
            return 0.0
        return max(0.0, self._queue[0].queued_at + self._max_delay_s - self._clock())

    def _take(self) -> list[_Item] | None:
        """The next items to load (whole items, ≤ ``max_load_rows`` rows unless one is larger)."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                wait = self._due()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            items: list[_Item] = []
            rows = 0
            for item in self._queue:
                if items and rows + item.rows > self._max_load_rows:
                    break
                items.append(item)
                rows += item.rows
            return items

    def _load_loop(self) -> None:
        while (items := self._take()) is not None:
            try:
                if not self._load(items):
                    return
            except Exception as e:  # a bug or a full disk here must not stop the loader for good
                log.exception("journal_loader_error", error=repr(e), retry_s=self._retry_s)
                if self._closing:
                    return  # what is not loaded stays in the journal, for the next start
                time.sleep(self._retry_s)

    def _load(self, items: list[_Item]) -> bool:
        """Load ``items`` (one transaction); False when the loader must stop (closing, store down)."""
        jobs = [j for it in items for j in it.jobs]
        try:
            results = self.inner.write_group(jobs)
        except Exception as e:  # the store is down (its process died, the disk): keep it all, retry
            self._fail_waiters(items, e)
            if self._closing:  # the records stay in the journal and are loaded at the next start
                log.error("journal_load_failed", error=repr(e), items=len(items), kept_for_next_start=True)
                return False
            log.error("journal_load_failed", error=repr(e), items=len(items), retry_s=self._retry_s)
            time.sleep(self._retry_s)
            return True
        pos = 0
        failed: list[_Item] = []
        for it in items:
            mine = results[pos : pos + len(it.jobs)]
            pos += len(it.jobs)
            if it.waiter is not None:
                it.waiter.set_result(mine)
            elif any(isinstance(r, BaseException) for r in mine):
                failed.append(it)
        self._finish(items, failed)
        return True

    def _fail_waiters(self, items: list[_Item], error: Exception) -> None:
        with self._cond:
            for it in items:
                if it.waiter is not None:
                    it.waiter.set_exception(error)
                    self._queue.remove(it)
                    self._done += 1
            self._cond.notify_all()

    def _finish(self, items: list[_Item], failed: list[_Item]) -> None:
        """Items loaded (or answered) leave the queue; a failed record stays first, up to its last attempt."""
        retry: list[_Item] = []
        for it in failed:
            it.attempts += 1
            if it.attempts < _MAX_LOAD_ATTEMPTS:
                retry.append(it)
                continue
            assert it.seq is not None
            path = self.journal.dir / f"rejected-{it.seq:016d}.pickle"
            path.write_bytes(pickle.dumps([job_to_wire(j) for j in it.jobs], protocol=pickle.HIGHEST_PROTOCOL))
            log.error("journal_record_rejected", seq=it.seq, rows=it.rows, attempts=it.attempts, saved_to=str(path))
            self.rejected_records += 1
        loaded = [it for it in items if it not in retry]
        with self._cond:
            for it in loaded:
                self._queue.popleft() if self._queue[0] is it else self._queue.remove(it)
                self._done += 1
                self.backlog_rows -= it.rows
            self.loads += 1
            self.loaded_rows += sum(it.rows for it in loaded if it.seq is not None)
            # every record up to the first one still queued is in the store
            waiting = [it.seq for it in self._queue if it.seq is not None]
            loaded_seq = (waiting[0] - 1) if waiting else max((it.seq or 0 for it in items), default=0)
            self._cond.notify_all()
        if loaded_seq:
            self.journal.release(loaded_seq)
        if retry:
            time.sleep(self._retry_s)

    # -- reads ----------------------------------------------------------------------------------------

    def wait_loaded(self) -> None:
        """Return once everything acknowledged before this call is in the store."""
        with self._cond:
            target = self._queued
            if self._done >= target:
                return
            self._readers_waiting += 1
            self._cond.notify_all()
            try:
                caught_up = self._cond.wait_for(lambda: self._done >= target, timeout=self._read_wait_s)
            finally:
                self._readers_waiting -= 1
            if not caught_up:
                raise JournalUnavailable(
                    f"{self.backlog_rows} acknowledged events are not loaded into the database yet "
                    f"(waited {self._read_wait_s:g} s); retry the read")  # fmt: skip

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.wait_loaded()
        return self.inner.query(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> RowStream:
        self.wait_loaded()
        return self.inner.stream(sql, params)

    def count(self, table: str) -> int:
        self.wait_loaded()
        return self.inner.count(table)

    def latest_probe_qoe(self) -> list[dict[str, Any]]:
        self.wait_loaded()
        return self.inner.latest_probe_qoe()

    def incidents(self, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
        self.wait_loaded()
        return self.inner.incidents(from_ms, to_ms)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        """Load everything journaled, stop the loader, close the store; the journal files go once loaded."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            drained = not self._queue
        self.journal.close(delete=drained)
        self.inner.close()
