"""The collector as a real subprocess over TCP: ingest, kill -9 in the middle of a stream, outage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from probe.spool import Spool
from probe.upload import deliver, flush_spool
from tests.collector_helpers import (
    PLATFORM,
    PROBE_EU,
    READER,
    ROOT,
    auth,
    collector_process,
    event,
    free_port,
    report,
    start_collector,
    write_config,
)

MODES = {
    "in-process": {},
    "store-process": {"store_process": True},
    "journal": {"ack_on": "journal"},
    "journal-store-process": {"ack_on": "journal", "store_process": True},
}


def _journal_files(directory: Path) -> list[Path]:
    return list(directory.glob("db.duckdb.journal/*.journal"))


@pytest.mark.parametrize("mode", MODES)
async def test_ingest_over_tcp(tmp_path: Path, mode: str) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.duckdb", port, **MODES[mode])
    with collector_process(cfg, port, tmp_path / "log"):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/v1/events", json=[event(i) for i in range(10)], headers=auth(PLATFORM)) as r:
                assert r.status == 200 and (await r.json())["new"] == 10
            async with s.post(f"{base}/v1/reports", json=report("eu-west"), headers=auth(PROBE_EU)) as r:
                assert r.status == 200
            async with s.get(f"{base}/metrics", headers=auth(READER)) as r:
                text = await r.text()
                assert "streamqoe_probe_ttff_seconds" in text
                # ack_on = journal: the 10 events were acknowledged, then loaded (the report waited behind them)
                assert ("streamqoe_journal_loaded_events_total 10" in text) == (MODES[mode].get("ack_on") == "journal")
    # a clean stop (SIGTERM) checkpoints: the file alone holds everything, no WAL or staging file left behind
    # (with a store process too: the collector waits for it to close the store)
    assert not (tmp_path / "db.duckdb.wal").exists()
    assert not (tmp_path / "db.duckdb.staging").exists()
    assert not _journal_files(tmp_path)  # ack_on = journal: all loaded, files gone
    con = duckdb.connect(str(tmp_path / "db.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM viewer_events").fetchone() == (10,)
    log_text = (tmp_path / "log").read_text()
    assert '"event": "request"' in log_text and PLATFORM not in log_text


def test_default_run_prints_dev_tokens(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamqoe", "collector", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode() for _ in range(7)]
    finally:
        proc.terminate()
        proc.wait(10)
    text = "".join(lines)
    assert "development tokens" in text and "reader" in text and "dashboard: http://127.0.0.1" in text
    assert (tmp_path / "streamqoe.duckdb").exists()


def test_refuses_public_listener_without_tokens(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "streamqoe", "collector", "--host", "0.0.0.0", "--port", "1"],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 2 and b"refusing" in p.stderr


BATCH = 200


async def _stream(base: str, worker: int, acked: list[int], stop: asyncio.Event) -> None:
    n = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            b = worker * 1_000_000 + n
            n += 1
            batch = [{**event(i), "event_id": f"b-{b}-{i}"} for i in range(BATCH)]
            try:
                async with s.post(f"{base}/v1/events", json=batch, headers=auth(PLATFORM)) as r:
                    if r.status == 200:
                        acked.append(b)
            except (aiohttp.ClientError, OSError):
                return  # the collector died under us


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
async def test_kill_9_loses_no_acknowledged_item_and_no_partial_batch(tmp_path: Path, mode: str) -> None:
    """With ``store_process``, the killed collector's store process finishes what it received and exits;
    the restarted collector's store process waits for the file and recovers it. With ``ack_on = journal``
    the restarted collector loads what the journal holds beyond the database first."""
    port = free_port()
    db = tmp_path / "db.duckdb"
    cfg = write_config(tmp_path / "c.toml", db, port, **MODES[mode])
    proc = start_collector(cfg, port, tmp_path / "log")
    acked: list[int] = []
    stop = asyncio.Event()
    base = f"http://127.0.0.1:{port}"
    tasks = [asyncio.create_task(_stream(base, w, acked, stop)) for w in range(4)]
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a plain list)
        await asyncio.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # requests are in flight on four connections
    proc.wait()
    stop.set()
    await asyncio.gather(*tasks)
    assert len(acked) >= 40
    # restart: DuckDB replays its WAL
    with collector_process(cfg, port, tmp_path / "log"):
        pass
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT split_part(event_id, '-', 2)::BIGINT AS b, count(*) FROM viewer_events GROUP BY b"
    ).fetchall()
    stored = dict(rows)
    assert set(acked) <= set(stored), "an acknowledged batch is missing"
    assert all(c == BATCH for c in stored.values()), "a partial batch was stored"


async def test_outage_then_flush_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    base = f"http://127.0.0.1:{port}"
    reports = [report("eu-west") for _ in range(3)]

    async def no_sleep(_: float) -> None:
        return None

    for r in reports:
        res = await deliver(r, spool_dir=spool, collector_url=base, token=PROBE_EU, attempts=2, sleep=no_sleep)
        assert res.status == "spooled"
    assert len(Spool(spool).pending()) == 3
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.duckdb", port)
    with collector_process(cfg, port, tmp_path / "log"):
        results = await flush_spool(spool_dir=spool, collector_url=base, token=PROBE_EU, sleep=no_sleep)
        assert [x.status for x in results] == ["delivered"] * 3
        # a second flush (e.g. the next run) has nothing left to send
        assert await flush_spool(spool_dir=spool, collector_url=base, token=PROBE_EU, sleep=no_sleep) == []
        # resending the same reports (a lost acknowledgement) stores nothing twice
        res = await deliver(reports[0], spool_dir=spool, collector_url=base, token=PROBE_EU, sleep=no_sleep)
        assert res.duplicate
    con = duckdb.connect(str(tmp_path / "db.duckdb"), read_only=True)
    ids = sorted(r[0] for r in con.execute("SELECT report_id FROM probe_reports").fetchall())
    assert ids == sorted(r["report_id"] for r in reports)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _log_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in a log that killed processes also wrote to: a process killed with SIGKILL can
    leave its last line without its newline (a CI run saw the restarted collector's first line glued to
    it), so objects are read one after another, skipping any cut short."""
    dec = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    for ln in text.splitlines():
        i = ln.find("{")
        while i >= 0:
            try:
                obj, end = dec.raw_decode(ln, i)
            except ValueError:
                i = ln.find("{", i + 1)
                continue
            if isinstance(obj, dict):
                out.append(obj)
            i = ln.find("{", end)
    return out


def _recovered_rows(log: Path) -> int:
    """``recovered_staged_rows`` of the last ``store_open`` line."""
    opened = [o for o in _log_objects(log.read_text()) if o.get("event") == "store_open"]
    return int(opened[-1]["recovered_staged_rows"])


def _stored_batches(db: Path) -> dict[int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT split_part(event_id, '-', 2)::BIGINT AS b, count(*) FROM viewer_events GROUP BY b"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


@pytest.mark.timeout(180)
async def test_kill_9_while_a_background_checkpoint_has_rows_staged(tmp_path: Path) -> None:
    """Checkpoints every ~4 MiB of WAL; the collector is killed just after a group was committed to
    staging (the staging WAL grew), i.e. during a checkpoint or a move. Restarting moves the staged rows:
    every acknowledged batch is stored, none partially, none twice."""
    port = free_port()
    db = tmp_path / "db.duckdb"
    cfg = write_config(tmp_path / "c.toml", db, port, checkpoint_wal_bytes=4 << 20)
    staging_wal = Path(f"{db}.staging.wal")
    log = tmp_path / "log"
    recovered: list[int] = []
    acked: list[int] = []
    for attempt in range(5):
        proc = start_collector(cfg, port, log)
        stop = asyncio.Event()
        base = f"http://127.0.0.1:{port}"
        tasks = [asyncio.create_task(_stream(base, attempt * 10 + w, acked, stop)) for w in range(4)]
        size = _size(staging_wal)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _size(staging_wal)
            if now > size and len(acked) >= 20:
                break
            size = now
            await asyncio.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        await asyncio.gather(*tasks)
        with collector_process(cfg, port, log):  # restart: WAL replay, then the staged rows are moved
            pass
        recovered.append(_recovered_rows(log))
        stored = _stored_batches(db)
        assert set(acked) <= set(stored), "an acknowledged batch is missing"
        assert all(c == BATCH for c in stored.values()), "a partial (or doubled) batch was stored"
        if recovered[-1] > 0:
            break
    assert max(recovered) > 0, f"never killed with rows staged: {recovered}"
