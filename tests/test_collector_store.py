"""The store's event path directly: optimistic insert, fallback on a resent event, NULLs, mixed groups."""

from __future__ import annotations

from pathlib import Path

from collector.event_columns import event_columns
from collector.reports import REPORT_COLUMNS
from collector.store import InsertResult, Store, WriteJob
from tests.collector_helpers import event, report


def _job(items: list[dict[str, object]]) -> WriteJob:
    return WriteJob("events", events=event_columns(items))


def test_group_with_resent_and_repeated_events(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"), wall_ms=lambda: 42)
    a = [event(i) for i in range(5)]
    assert store.write_group([_job(a)]) == [InsertResult(new=5, duplicate=0)]
    b = [event(10 + i) for i in range(3)]
    # job 1 resends two stored events; job 2 repeats one of job 1's new events and one of its own
    res = store.write_group([_job([a[0], *b, a[1]]), _job([b[0], event(20), b[2]]), _job([event(30)])])
    assert res == [InsertResult(new=3, duplicate=2), InsertResult(new=1, duplicate=2), InsertResult(new=1, duplicate=0)]
    assert store.count("viewer_events") == 10
    store.close()


def test_absent_fields_are_null_and_integers_exact(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"), wall_ms=lambda: 42)
    items = [event(0), event(1, type="qoe", stall_count=3, height=720, stall_ms=12.5, watch_ms=0)]
    store.write_group([_job(items)])
    rows = store.query("SELECT * FROM viewer_events ORDER BY type")
    hb, qoe = rows
    assert hb["type"] == "heartbeat" and hb["stall_count"] is None and hb["stall_ms"] is None
    assert hb["height"] is None and hb["received_ms"] == 42
    assert (qoe["stall_count"], qoe["height"], qoe["stall_ms"], qoe["watch_ms"]) == (3, 720, 12.5, 0.0)
    store.close()


def test_events_and_reports_in_one_group_with_a_resent_event(tmp_path: Path) -> None:
    """The optimistic insert fails on the resent event; the redo still stores the group's report once."""
    store = Store(str(tmp_path / "s.duckdb"))
    e = event(0)
    store.write_group([_job([e])])
    from collector.reports import report_row
    from probe.report import Report

    r = report_row(Report.from_json_obj(report("eu-west")))
    res = store.write_group([WriteJob("reports", [r]), _job([e, event(1)])])
    assert res[0].new == 1 and res[1] == InsertResult(new=1, duplicate=1)
    assert store.count("probe_reports") == 1 and store.count("viewer_events") == 2
    store.close()


def test_parse_pool_packing_round_trips() -> None:
    """What a worker sends back unpacks to the columns (and errors) of inline parsing."""
    import json

    import numpy as np
    import pytest

    from collector.errors import ApiError
    from collector.event_columns import BatchError
    from collector.parse_pool import parse_events, unpack

    items = [event(0), {**event(1, type="qoe", stall_count=2, height=720), "region": None}, event(2)]
    del items[2]["cdn"]
    n, got = unpack(parse_events(json.dumps(items).encode(), "application/json", 100))
    want = event_columns(items).columns
    assert n == 3 and got.columns.keys() == want.keys()
    for k, v in want.items():
        if v.dtype == object:
            assert list(got.columns[k]) == list(v), k
        else:
            assert np.array_equal(got.columns[k], v, equal_nan=v.dtype.kind == "f"), k
    bad = [event(0), {**event(1), "height": 0}]
    with pytest.raises(BatchError) as info:
        unpack(parse_events(json.dumps(bad).encode(), "application/json", 100))
    assert (info.value.index, str(info.value), info.value.items) == (1, "height: must be in [1, 16384]", 2)
    with pytest.raises(ApiError) as api:
        unpack(parse_events(b"[1, 2, 3]", "application/json", 2))
    assert api.value.status == 413


def test_nulls_before_values_in_a_column_are_stored_exactly(tmp_path: Path) -> None:
    """DuckDB infers an object column's type from a sample of one value (``pandas_analyze_sample``): a
    column whose first values are NULL still stores the strings and integers after them."""
    store = Store(str(tmp_path / "s.duckdb"))
    items = [{k: v for k, v in event(i).items() if k not in ("region", "isp")} for i in range(3000)]
    items += [event(3000, region="eu-late", isp="isp-late")]
    store.write_group([_job(items)])
    rows = store.query("SELECT count(region) AS n, max(region) AS r, max(isp) AS i FROM viewer_events")
    assert rows == [{"n": 1, "r": "eu-late", "i": "isp-late"}]
    from collector.reports import report_row
    from probe.report import Report

    # freeze_count travels as Python ints or None in an object column
    reps = [report("eu-west", failure="ice_timeout", ttff_ms=None, stall_ratio=None), report("eu-west")]
    fc = list(REPORT_COLUMNS).index("freeze_count")
    rows_in = [report_row(Report.from_json_obj(r)) for r in reps]
    rows_in = [(*r[:fc], v, *r[fc + 1 :]) for r, v in zip(rows_in, (None, 3), strict=True)]
    store.write_group([WriteJob("reports", rows_in)])
    got = store.query("SELECT report_id, freeze_count FROM probe_reports")
    assert {r["report_id"]: r["freeze_count"] for r in got} == {rows_in[0][0]: None, rows_in[1][0]: 3}
    store.close()


def test_store_threads(tmp_path: Path) -> None:
    from collector.config import parse_config

    assert parse_config({}).store_threads == 1
    assert parse_config({"store_threads": 2}).store_threads == 2
    import pytest

    with pytest.raises(ValueError, match="store_threads"):
        parse_config({"store_threads": 0})
    for n in (1, 2):
        store = Store(str(tmp_path / f"t{n}.duckdb"), threads=n)
        assert store.query("SELECT current_setting('threads') AS t") == [{"t": n}]
        store.close()
