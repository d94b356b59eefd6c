"""Checkpoints off the ack path: while ``maintain()`` holds the main tables the writer commits to staging,
and the staged rows are moved into the main tables without losing or duplicating any (real DuckDB files)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from collector.event_columns import event_columns
from collector.maintenance import StoreMaintainer
from collector.store import InsertResult, MaintenanceRun, Store, WriteJob
from tests.collector_helpers import ROOT, event


def _job(items: list[dict[str, Any]]) -> WriteJob:
    return WriteJob("events", events=event_columns(items))


def _batch(b: int, n: int = 100) -> list[dict[str, Any]]:
    return [{**event(i), "event_id": f"b{b}-{i}"} for i in range(n)]


def _incident(summary: str) -> WriteJob:
    return WriteJob("incidents", [("inc-1", 1000, None, '{"region": "eu-west"}', summary)])


def test_groups_committed_while_the_main_tables_are_held_are_staged_then_moved(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    a, b = _batch(0), _batch(1)
    assert store.write_group([_job(a)]) == [InsertResult(new=100, duplicate=0)]
    with store.hold_main():
        # staged: checked against staging only, so a resent stored event counts as new here ...
        assert store.write_group([_job([*b, a[0]])]) == [InsertResult(new=101, duplicate=0)]
        # ... while one resent from staging is a duplicate, as is one repeated in the group
        assert store.write_group([_job([b[0], b[0], event(7)])]) == [InsertResult(new=1, duplicate=2)]
        assert store.staged_pending()
    # a read sees every acknowledged item: it moves the staged rows itself (nobody else is running)
    assert store.count("viewer_events") == 201
    assert not store.staged_pending()
    ids = [r["event_id"] for r in store.query("SELECT event_id FROM viewer_events")]
    assert len(ids) == len(set(ids)) == 201  # a[0] stored once although staged again
    store.close()
    assert not Path(f"{tmp_path / 's.duckdb'}.staging").exists()


def test_a_staged_item_resent_to_the_main_tables_before_the_move_is_stored_once(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    a = _batch(0)
    with store.hold_main():
        store.write_group([_job(a)])
    # the main tables are the writer's again, the move has not run: the retry goes to the main table
    assert store.write_group([_job(a[:10])]) == [InsertResult(new=10, duplicate=0)]
    assert store.staged_pending()
    assert store.maintain(checkpoint=False).moved_rows == 100  # 10 of them refused by the key: redone
    assert store.query("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM viewer_events") == [
        {"n": 100, "d": 100}
    ]
    store.close()


def test_an_upsert_waits_for_the_staged_versions_so_upserts_keep_their_order(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    with store.hold_main():
        store.write_group([_incident("first")])
    store.write_group([_incident("second")])  # direct: moves the staged upsert first
    assert not store.staged_pending()
    assert [r["summary"] for r in store.query("SELECT summary FROM incidents")] == ["second"]
    store.close()


def test_a_read_waits_for_rows_staged_while_another_thread_holds_the_main_tables(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    staged = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.hold_main():
            store.write_group([_job(_batch(0))])
            staged.set()
            release.wait(5)

    th = threading.Thread(target=holder)
    th.start()
    assert staged.wait(5)
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    assert store.count("viewer_events") == 100  # waited for the holder, then moved the rows
    assert time.monotonic() - t0 >= 0.15
    th.join()
    store.close()


def test_checkpoints_while_groups_are_acknowledged_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """The writer commits groups without pause (some resending earlier batches) while ``maintain()``
    checkpoints and moves again and again: every acknowledged event is stored, once."""
    store = Store(str(tmp_path / "s.duckdb"), checkpoint_wal_bytes=1 << 20)
    acked: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        b = 0
        try:
            while not stop.is_set():
                jobs = [_job(_batch(b)), _job(_batch(b + 1))]
                if b >= 10 and b % 10 == 0:
                    jobs.append(_job(_batch(b - 7)))  # a client's retry of an acknowledged batch
                res = store.write_group(jobs)
                assert all(isinstance(r, InsertResult) for r in res), res
                acked.extend((b, b + 1))
                b += 2
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=writer)
    th.start()
    runs: list[MaintenanceRun] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (sum(r.moved_rows for r in runs) < 2000 or len(runs) < 5):
        runs.append(store.maintain(checkpoint=True))
        time.sleep(0.01)
    stop.set()
    th.join()
    assert not errors, errors
    assert sum(r.moved_rows for r in runs) >= 2000, "the writer never committed to staging"
    assert all(r.checkpoint_s is not None for r in runs)
    stored = store.query(
        "SELECT split_part(event_id, '-', 1) AS b, count(*) AS n, count(DISTINCT event_id) AS d "
        "FROM viewer_events GROUP BY b"
    )
    by_batch = {int(r["b"][1:]): (r["n"], r["d"]) for r in stored}
    assert set(by_batch) == set(acked)
    assert set(by_batch.values()) == {(100, 100)}
    store.close()
    assert not Path(f"{tmp_path / 's.duckdb'}.wal").exists()
    assert not Path(f"{tmp_path / 's.duckdb'}.staging").exists()


def test_maintainer_checkpoints_when_the_wal_reaches_the_threshold(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"), checkpoint_wal_bytes=1 << 20)
    runs: list[MaintenanceRun] = []
    maintainer = StoreMaintainer(store, poll_s=0.01, on_run=runs.append)
    assert maintainer.run_once() is None  # nothing due
    for b in range(100):  # 10,000 events in small transactions: ~1.5 MiB of WAL
        store.write_group([_job(_batch(b))])
    assert store.checkpoint_due()
    run = maintainer.run_once()
    assert run is not None and run.checkpoint_s is not None and runs == [run]
    assert store.wal_bytes() < 1 << 20
    maintainer.start()
    maintainer.stop()
    store.close()


_CRASH = """
import os, sys
sys.path.insert(0, {root!r})
from collector.event_columns import event_columns
from collector.store import Store, WriteJob
from tests.collector_helpers import event
def job(b):
    return WriteJob("events", events=event_columns([{{**event(i), "event_id": f"b{{b}}-{{i}}"}} for i in range(100)]))
store = Store({db!r})
store.write_group([job(0)])
with store.hold_main():
    store.write_group([job(1)])
    store.write_group([job(2)])
    os._exit(0)  # a crash: no close, nothing moved, the staged groups only in the staging file's WAL
"""


def _crash_with_staged_rows(db: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASH.format(root=str(ROOT), db=str(db))], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_rows_staged_before_a_crash_are_moved_at_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _crash_with_staged_rows(db)
    store = Store(str(db))
    assert store.recovered_rows == 200
    assert store.count("viewer_events") == 300
    store.close()


def test_a_crash_between_the_two_halves_of_a_move_stores_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _crash_with_staged_rows(db)
    # the first half of a move: the staged rows copied into the main table, not yet deleted from staging
    con = duckdb.connect(str(db))
    con.execute(f"ATTACH '{db}.staging' AS stage")
    con.execute("INSERT INTO viewer_events SELECT * EXCLUDE (seq) FROM stage.viewer_events WHERE seq = 1")
    con.close()
    store = Store(str(db))
    assert store.recovered_rows == 200
    rows = store.query("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM viewer_events")
    assert rows == [{"n": 300, "d": 300}]
    store.close()


@pytest.mark.parametrize("path", [":memory:"])
def test_an_in_memory_store_has_no_staging(path: str) -> None:
    store = Store(path)
    assert store.staging_path is None and store.maintain(checkpoint=True).moved_rows == 0
    with store.hold_main():  # nothing to hold: in memory the writer never waits for a checkpoint
        pass
    assert store.write_group([_job(_batch(0))]) == [InsertResult(new=100, duplicate=0)]
    store.close()


class _TimedStore(Store):
    """A store whose one due checkpoint takes ``seconds`` and records its thread's scheduling policy."""

    def __init__(self, seconds: float) -> None:
        super().__init__(":memory:")
        self.seconds = seconds
        self.policies: list[int] = []
        self._due = True

    def checkpoint_due(self) -> bool:
        due, self._due = self._due, False
        return due

    def maintain(self, *, checkpoint: bool) -> MaintenanceRun:
        tid = threading.get_native_id()
        self.policies.append(os.sched_getscheduler(tid))
        time.sleep(self.seconds)
        self.policies.append(os.sched_getscheduler(tid))
        return MaintenanceRun(checkpoint_s=self.seconds, moved_rows=0, diverted_s=self.seconds)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
@pytest.mark.parametrize(("seconds", "escalated"), [(0.05, False), (0.8, True)])
def test_low_priority_maintenance_runs_idle_and_escalates_when_slow(seconds: float, escalated: bool) -> None:
    store = _TimedStore(seconds)
    maintainer = StoreMaintainer(store, low_priority=True, escalate_s=0.3)
    runs: list[Any] = []
    t = threading.Thread(target=lambda: runs.append((maintainer.run_once(), os.sched_getscheduler(0))))
    t.start()
    t.join()
    (run, after), = runs
    assert run is not None and run.checkpoint_s == seconds
    assert store.policies[0] == os.SCHED_IDLE  # the run starts at idle priority
    # a run that outlasts escalate_s is put back to the normal policy while it runs
    assert store.policies[1] == (os.SCHED_OTHER if escalated else os.SCHED_IDLE)
    assert maintainer.escalations == int(escalated)
    assert after == os.SCHED_OTHER  # and the thread is back to normal between runs
    store.close()


def test_maintenance_keeps_the_normal_policy_by_default() -> None:
    store = _TimedStore(0.01)
    maintainer = StoreMaintainer(store)
    assert maintainer.run_once() is not None
    assert store.policies == [os.SCHED_OTHER, os.SCHED_OTHER]
    store.close()


def test_without_staging_the_writer_waits_for_the_main_tables_and_stages_nothing(tmp_path: Path) -> None:
    """``Store(stage=False)`` (``ack_on = "journal"``): a group written while the main tables are held
    commits to them once they are released, and nothing goes through staging."""
    store = Store(str(tmp_path / "s.duckdb"), stage=False)
    done = threading.Event()
    result: list[Any] = []

    def write() -> None:
        result.extend(store.write_group([_job(_batch(0))]))
        done.set()

    with store.hold_main():
        t = threading.Thread(target=write)
        t.start()
        assert not done.wait(0.3), "the write did not wait for the main tables"
    assert done.wait(10)
    t.join()
    assert result == [InsertResult(new=100, duplicate=0)]
    assert not store.staged_pending() and store.count("viewer_events") == 100
    store.close()
