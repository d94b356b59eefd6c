"""``ack_on = "journal"``: the journal's files, and ``JournaledStore`` over a real DuckDB store."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import pytest

from collector.event_columns import event_columns
from collector.journal import _HEADER, Journal, JournaledStore, JournalUnavailable
from collector.reports import report_row
from collector.store import InsertResult, Store, WriteJob, job_to_wire
from probe.report import Report
from tests.collector_helpers import event, report


def _job(items: list[dict[str, object]]) -> WriteJob:
    return WriteJob("events", events=event_columns(items))


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    assert j.recover() == []
    assert [j.append(p) for p in (b"one", b"", b"three" * 1000)] == [1, 2, 3]
    j.close(delete=False)
    again = Journal(tmp_path / "j")
    assert again.recover() == [(1, b"one"), (2, b""), (3, b"three" * 1000)]
    assert again.append(b"four") == 4  # numbering goes on, in a new file
    assert len(list((tmp_path / "j").glob("*.journal"))) == 2


@pytest.mark.parametrize("cut", [3, _HEADER.size, _HEADER.size + 2])
def test_a_torn_last_record_is_cut_off(tmp_path: Path, cut: int) -> None:
    """A crash in the middle of a write leaves part of a record, never acknowledged: it goes, the rest stays."""
    j = Journal(tmp_path / "j")
    j.recover()
    j.append(b"kept-1")
    j.append(b"kept-2")
    j.close(delete=False)
    (path,) = (tmp_path / "j").glob("*.journal")
    good = path.stat().st_size
    whole = _HEADER.pack(b"SQJ1", 5, 0, 3) + b"torn!"
    path.write_bytes(path.read_bytes() + whole[:cut])
    again = Journal(tmp_path / "j")
    assert again.recover() == [(1, b"kept-1"), (2, b"kept-2")]
    assert path.stat().st_size == good


def test_a_damaged_record_before_the_last_file_sets_its_file_aside(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", segment_bytes=1)  # one record per file
    j.recover()
    for p in (b"a" * 10, b"b" * 10, b"c" * 10):
        j.append(p)
    j.close(delete=False)
    _first, second, _third = sorted((tmp_path / "j").glob("*.journal"))
    data = bytearray(second.read_bytes())
    data[-1] ^= 0xFF  # the payload no longer matches its CRC
    second.write_bytes(bytes(data))
    again = Journal(tmp_path / "j")
    assert again.recover() == [(1, b"a" * 10), (3, b"c" * 10)]
    assert second.with_suffix(".damaged").exists() and not second.exists()


def test_release_deletes_only_files_whose_records_are_all_loaded(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", segment_bytes=1)
    j.recover()
    for i in range(4):
        j.append(bytes([i]))
    j.release(2)
    names = sorted(p.name for p in (tmp_path / "j").glob("*.journal"))
    assert names == [f"{3:016d}.journal", f"{4:016d}.journal"]  # 4 is open: kept until close
    j.close(delete=True)
    assert not list((tmp_path / "j").glob("*.journal"))


def test_events_are_acknowledged_then_loaded_and_reads_see_them(tmp_path: Path) -> None:
    store = JournaledStore(Store(str(tmp_path / "s.duckdb")), tmp_path / "s.journal", wall_ms=lambda: 1234)
    a = [event(i) for i in range(300)]
    # a repeat inside the batch is counted at once; the stored copy is one
    res = store.write_group([_job([*a, a[0]]), _job([event(1000)])])
    assert res == [InsertResult(new=300, duplicate=1), InsertResult(new=1, duplicate=0)]
    assert store.count("viewer_events") == 301  # the read waited for the loader
    assert {r["received_ms"] for r in store.query("SELECT DISTINCT received_ms FROM viewer_events")} == {1234}
    # a resent batch is acknowledged again and stored once
    store.write_group([_job(a[:10])])
    assert store.count("viewer_events") == 301
    store.close()
    assert not list((tmp_path / "s.journal").glob("*.journal"))


def test_reports_wait_for_their_commit_and_keep_exact_counts(tmp_path: Path) -> None:
    store = JournaledStore(Store(str(tmp_path / "s.duckdb")), tmp_path / "s.journal")
    row = report_row(Report.from_json_obj(report("eu-west")))
    first = store.write_group([WriteJob("reports", [row]), _job([event(1)])])
    again = store.write_group([WriteJob("reports", [row])])
    assert isinstance(first[0], InsertResult) and first[0].new == 1
    assert again[0] == InsertResult(new=0, duplicate=1, new_ids=frozenset())
    assert store.count("probe_reports") == 1
    store.close()


def test_a_journal_left_by_a_crash_is_loaded_before_anything_else_and_once(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    batches = [[event(i, region=f"r{k}") for i in range(200)] for k in range(3)]
    # batch 0 reached the database before the crash; batches 0-2 are still in the journal
    s = Store(db)
    s.write_group([_job(batches[0])])
    s.close()
    j = Journal(tmp_path / "s.journal")
    j.recover()
    for b in batches:
        j.append(pickle.dumps([job_to_wire(WriteJob("events", events=event_columns(b), received_ms=77))]))
    j.close(delete=False)
    store = JournaledStore(Store(db), tmp_path / "s.journal")
    assert store.replayed_rows == 600
    assert not list((tmp_path / "s.journal").glob("*.journal"))
    rows = store.query("SELECT region, count(*) AS n FROM viewer_events GROUP BY region ORDER BY region")
    assert [(r["region"], r["n"]) for r in rows] == [("r0", 200), ("r1", 200), ("r2", 200)]
    store.close()


class _Wrapped:
    """The real store behind a ``write_group`` that a subclass changes; everything else is the store's."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.recovered_rows = store.recovered_rows

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


class _FailingFirst(_Wrapped):
    """The real store, whose first ``fail`` write groups raise (a store process that died, say)."""

    def __init__(self, store: Store, fail: int) -> None:
        super().__init__(store)
        self.fail = fail

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]:
        if self.fail:
            self.fail -= 1
            raise OSError("store gone")
        return self.store.write_group(jobs)


def test_a_failed_load_is_retried_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    inner = _FailingFirst(Store(str(tmp_path / "s.duckdb")), fail=1)
    store = JournaledStore(inner, tmp_path / "s.journal")  # type: ignore[arg-type]
    store.write_group([_job([event(i) for i in range(50)])])
    assert store.count("viewer_events") == 50  # waited through the failed load and its retry
    assert inner.fail == 0
    store.close()


def test_a_read_that_cannot_be_served_in_time_is_a_clear_error(tmp_path: Path) -> None:
    inner = _FailingFirst(Store(str(tmp_path / "s.duckdb")), fail=3)
    store = JournaledStore(inner, tmp_path / "s.journal", read_wait_s=0.2)  # type: ignore[arg-type]
    store.write_group([_job([event(0)])])
    with pytest.raises(JournalUnavailable, match="1 acknowledged events are not loaded"):
        store.count("viewer_events")
    store.close()  # the store still fails: the record stays in the journal, for the next start
    assert list((tmp_path / "s.journal").glob("*.journal"))
    again = JournaledStore(Store(str(tmp_path / "s.duckdb")), tmp_path / "s.journal")
    assert again.replayed_rows == 1 and again.count("viewer_events") == 1
    again.close()


def test_a_backlog_beyond_its_limit_refuses_new_events_and_acknowledges_nothing(tmp_path: Path) -> None:
    inner = _FailingFirst(Store(str(tmp_path / "s.duckdb")), fail=2)
    store = JournaledStore(inner, tmp_path / "s.journal", max_backlog_rows=100)  # type: ignore[arg-type]
    store.write_group([_job([event(i) for i in range(100)])])  # acknowledged; its load fails for now
    with pytest.raises(JournalUnavailable, match="100 acknowledged events are waiting"):
        store.write_group([_job([event(1000)])])
    assert store.count("viewer_events") == 100  # loaded on a later attempt; the refused batch is not stored
    store.close()


class _RefusesRegion(_Wrapped):
    """The real store, answering every events job holding ``region`` with an error of that job alone."""

    def __init__(self, store: Store, region: str) -> None:
        super().__init__(store)
        self.region = region

    def write_group(self, jobs: Sequence[WriteJob]) -> list[InsertResult | BaseException]:
        bad = [j.events is not None and self.region in j.events.columns["region"].tolist() for j in jobs]
        good = self.store.write_group([j for j, b in zip(jobs, bad, strict=True) if not b])
        out: list[InsertResult | BaseException] = []
        for b in bad:
            out.append(ValueError("refused") if b else good.pop(0))
        return out


def test_a_record_the_database_always_refuses_is_saved_beside_the_journal_not_dropped(tmp_path: Path) -> None:
    inner = _RefusesRegion(Store(str(tmp_path / "s.duckdb")), "bad")
    store = JournaledStore(inner, tmp_path / "s.journal", retry_s=0.01)  # type: ignore[arg-type]
    store.write_group([_job([event(i, region="bad") for i in range(3)])])
    store.write_group([_job([event(10 + i) for i in range(5)])])
    assert store.count("viewer_events") == 5  # the other record is loaded; reads are not blocked
    assert store.rejected_records == 1
    (saved,) = (tmp_path / "s.journal").glob("rejected-*.pickle")
    (wire,) = pickle.loads(saved.read_bytes())
    assert wire[0] == "events" and wire[1] == 3
    store.close()
