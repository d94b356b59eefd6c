#!/usr/bin/env python3
"""Collector ingest benchmark: viewer events in 1,000-event batches over loopback, for a fixed time.

Starts ``streamqoe collector`` as a subprocess (fresh DuckDB file), runs the load generator in a
separate process (N concurrent connections, each posting its next batch as soon as the previous one is
acknowledged), then prints events/s acknowledged, ack latency p50/p99 and a row-count check.

    .venv/bin/python scripts/bench_collector.py --seconds 20 --connections 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe.hoststalls import cpu_steal_ticks, steal_share  # noqa: E402

SLOW_S = 0.050  # the ack-latency goal: batches slower than this are listed by when they started
TOKEN = "bench-platform-token-0123456789"
READER = "bench-reader-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _template(batch: int) -> tuple[bytes, bytes]:
    """A batch body split around the event-id prefix, so a new unique batch costs one join."""
    base = 1_794_999_600_000
    parts = []
    for i in range(batch):
        typ = ("join", "heartbeat", "heartbeat", "qoe", "leave")[i % 5]
        ev = {
            "event_id": f"@@-{i}",
            "viewer_id": f"v{i % 700}",
            "session_id": f"s{i % 700}",
            "room": "main",
            "t_ms": base + i * 10,
            "type": typ,
            "region": ("eu-west", "us-east", "ap-south")[i % 3],
            "isp": f"isp-{i % 7}",
            "cdn": f"edge-{i % 4}",
            "device": ("android", "ios", "web")[i % 3],
            "app_version": "5.1.0",
        }
        if typ == "qoe":
            ev |= {"stall_count": 1, "stall_ms": 350.0, "watch_ms": 9650.0, "height": 720, "bitrate_kbps": 2500.0}
        parts.append(json.dumps(ev, separators=(",", ":")))
    body = "[" + ",".join(parts) + "]"
    return tuple(x.encode() for x in body.split("@@", 1))  # type: ignore[return-value]


def _load(port: int, seconds: float, connections: int, batch: int, rate: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Closed loop (``rate`` 0): each connection posts its next batch when the previous one is acked.
    Open loop (``rate`` events/s): batches start on a fixed schedule whatever the replies, and latency is
    measured from the scheduled start (no coordinated omission)."""
    import aiohttp

    async def main() -> None:
        pieces = _template(batch)
        # "@@-{i}" occurs once per event: replace all with a per-batch prefix
        text = b"@@".join(pieces)
        latencies: list[float] = []
        starts: list[float] = []  # wall clock (shared with the checkpoint watcher) of each acked batch's start
        acked = 0
        errors = 0
        url = f"http://127.0.0.1:{port}/v1/events"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn = aiohttp.TCPConnector(limit=0 if rate else connections)
        cpu0 = time.process_time()
        async with aiohttp.ClientSession(connector=conn) as s:

            async def post(body: bytes, t0: float) -> None:
                nonlocal acked, errors
                async with s.post(url, data=body, headers=headers) as r:
                    reply = await r.json()
                if r.status == 200:
                    acked += reply["new"]
                    latency = time.perf_counter() - t0
                    latencies.append(latency)
                    starts.append(time.time() - latency)
                else:
                    errors += 1

            async def worker(w: int) -> None:
                n = 0
                while time.monotonic() < deadline:
                    body = text.replace(b"@@", f"w{w}b{n}".encode())
                    n += 1
                    await post(body, time.perf_counter())

            async def scheduled() -> None:
                interval = batch / rate
                tasks = []
                n = 0
                start = time.perf_counter()
                while time.monotonic() < deadline:
                    due = start + n * interval
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    body = text.replace(b"@@", f"r{n}".encode())
                    tasks.append(asyncio.ensure_future(post(body, due)))
                    n += 1
                await asyncio.gather(*tasks)

            t_start = time.monotonic()
            deadline = t_start + seconds
            if rate:
                await scheduled()
            else:
                await asyncio.gather(*(worker(w) for w in range(connections)))
            elapsed = time.monotonic() - t_start
        out.put({"acked": acked, "errors": errors, "elapsed": elapsed, "latencies": latencies, "starts": starts,
                 "client_cpu": time.process_time() - cpu0})  # fmt: skip

    asyncio.run(main())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _export(port: int, pid: int) -> dict[str, float]:
    """Stream ``GET /v1/events`` over the whole table; lines, seconds, collector RSS before and at peak."""
    import threading

    rss0 = _rss_mb(pid)
    peak = [rss0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mb(pid))

    th = threading.Thread(target=sample)
    th.start()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events?from=0&to={2**62}", headers={"Authorization": f"Bearer {READER}"}
    )
    t0 = time.perf_counter()
    lines = 0
    with urllib.request.urlopen(req) as r:
        while chunk := r.read(1 << 20):
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - t0
    done.set()
    th.join()
    return {"lines": lines, "seconds": elapsed, "rss0": rss0, "peak": peak[0]}


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its live children (the
    ingest workers), from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class WalWatcher:
    """Counts checkpoints from outside the collector: DuckDB truncates the WAL file when it folds it into the
    database, so a drop in the file's size (sampled every ``interval_s``) is one checkpoint."""

    def __init__(self, wal: Path, interval_s: float = 0.01) -> None:
        import threading

        self._wal = wal
        self._interval_s = interval_s
        self._done = threading.Event()
        self.checkpoints = 0
        self.times: list[float] = []  # wall clock of each checkpoint's end (the WAL truncated)
        self.largest_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:  # no WAL file (yet, or removed by the checkpoint)
            return 0

    def _run(self) -> None:
        last = self._size()
        while not self._done.wait(self._interval_s):
            size = self._size()
            if size < last:
                self.checkpoints += 1
                self.times.append(time.time())
            self.largest_bytes = max(self.largest_bytes, size)
            last = size

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


MACHINE_STALL_MS = 50.0
"""A 1 ms sleeper process that wakes this late saw the machine unable to run it (CPU stolen by the
hypervisor, or both cores busy): no ack can be faster than such a stall when it falls in its flight."""


def _machine_watch(stop: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """In a process of its own: (start, end) wall-clock seconds of every ≥ MACHINE_STALL_MS wake-up gap."""
    gaps: list[tuple[float, float]] = []
    last = time.time()
    while not stop.is_set():
        time.sleep(0.001)
        now = time.time()
        if (now - last) * 1000.0 >= MACHINE_STALL_MS:
            gaps.append((last, now))
        last = now
    out.put(gaps)


def _split_by_overlap(starts: list[float], latencies: list[float],
                      intervals: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Latencies of batches whose flight [start, start + latency] overlaps one of ``intervals`` (wall-clock
    seconds), and of the others."""
    hit: list[float] = []
    clear: list[float] = []
    for t, lat in zip(starts, latencies, strict=True):
        (hit if any(t < e and t + lat > s for s, e in intervals) else clear).append(lat)
    return hit, clear


CKPT_BEFORE_S = 0.6
"""A checkpoint is seen when it ends (the WAL truncates); the longest take ~0.5 s."""
CKPT_AFTER_S = 0.3
"""The backlog a checkpoint leaves takes a while to drain."""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0, help="open loop: offered events/s (0 = closed loop)")
    ap.add_argument("--checkpoint-mib", type=int, default=0, help="checkpoint_wal_bytes in MiB (0 = default)")
    ap.add_argument("--ingest-workers", type=int, default=0, help="the collector's ingest_workers")
    ap.add_argument("--store-threads", type=int, default=0, help="the collector's store_threads (0 = its default)")
    ap.add_argument("--export", action="store_true", help="then time GET /v1/events over everything stored")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (DB and log)")
    ap.add_argument("--linger-ms", type=int, default=0, help="the collector's group_commit_linger_ms")
    ap.add_argument("--store-process", action="store_true", help="the collector's store_process = true")
    ap.add_argument("--ack-on", choices=("commit", "journal"), default="commit", help="the collector's ack_on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    port = _free_port()
    cfg = tmp / "collector.toml"
    cfg.write_text(
        f'listen_host = "127.0.0.1"\nlisten_port = {port}\ndb_path = "{tmp / "bench.duckdb"}"\n'
        + (f"checkpoint_wal_bytes = {args.checkpoint_mib << 20}\n" if args.checkpoint_mib else "")
        + f"ingest_workers = {args.ingest_workers}\n"
        + (f"store_threads = {args.store_threads}\n" if args.store_threads else "")
        + (f"group_commit_linger_ms = {args.linger_ms}\n" if args.linger_ms else "")
        + ("store_process = true\n" if args.store_process else "")
        + (f'ack_on = "{args.ack_on}"\n' if args.ack_on != "commit" else "")
        +
        f'[[tokens]]\nname = "bench"\nrole = "platform"\nsecret = "{TOKEN}"\n'
        f'[[tokens]]\nname = "reader"\nrole = "reader"\nsecret = "{READER}"\n'
    )
    log = open(tmp / "collector.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamqoe", "collector", "--config", str(cfg)],
        stdout=log,
        stderr=log,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        p = mp.Process(target=_load, args=(port, args.seconds, args.connections, args.batch, args.rate, q))
        load0 = os.getloadavg()[0]
        steal0 = cpu_steal_ticks()
        cpu0 = _proc_cpu_s(proc.pid)
        wal = WalWatcher(tmp / "bench.duckdb.wal")
        watch_stop, watch_q = mp.Event(), mp.Queue()  # type: ignore[var-annotated]
        watcher = mp.Process(target=_machine_watch, args=(watch_stop, watch_q), daemon=True)
        watcher.start()
        p.start()
        res = q.get()
        wal.stop()
        watch_stop.set()
        machine_stalls: list[tuple[float, float]] = watch_q.get(timeout=30)
        watcher.join()
        cpu1 = _proc_cpu_s(proc.pid)
        steal1 = cpu_steal_ticks()
        load1 = os.getloadavg()[0]
        p.join()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {READER}"})
        metrics = urllib.request.urlopen(req).read().decode()
        export = _export(port, proc.pid) if args.export else None
    finally:
        proc.terminate()
        proc.wait(60)
    import duckdb

    rows = (
        duckdb.connect(str(tmp / "bench.duckdb"), read_only=True)
        .execute("SELECT count(*) FROM viewer_events")
        .fetchone()[0]
    )
    commits = [ln for ln in metrics.splitlines() if ln.startswith("streamqoe_store_commit_rows_count")]
    rows_sum = [ln for ln in metrics.splitlines() if ln.startswith("streamqoe_store_commit_rows_sum")]
    n_commits = float(commits[0].split()[-1]) if commits else 0
    mean_group = float(rows_sum[0].split()[-1]) / n_commits if n_commits else 0
    lat = res["latencies"]
    cpu = cpu1 - cpu0
    # the slowest commit, to the histogram's resolution: the smallest bucket holding every commit
    buckets = [
        (float(ln.split('le="')[1].split('"')[0]), float(ln.split()[-1]))
        for ln in metrics.splitlines()
        if ln.startswith("streamqoe_store_commit_duration_seconds_bucket")
    ]
    slowest = min((le for le, c in buckets if c >= n_commits), default=float("nan"))
    k = res["acked"] / 1000 or float("nan")
    load = f"closed, {args.connections} conn" if not args.rate else f"open, {args.rate:,.0f} ev/s offered"
    if args.checkpoint_mib:
        load += f", checkpoint {args.checkpoint_mib} MiB"
    if args.ingest_workers:
        load += f", {args.ingest_workers} ingest workers"
    if args.store_threads:
        load += f", store_threads {args.store_threads}"
    if args.linger_ms:
        load += f", linger {args.linger_ms} ms"
    if args.ack_on != "commit":
        load += f", ack on {args.ack_on}"
    if args.store_process:
        load += ", store process"
    print(
        "| load | seconds | events/s acked | ack p50 ms | ack p99 ms | collector CPU ms / 1,000 ev (with workers) "
        "| collector cores busy (with workers) | client CPU ms / 1,000 ev | loadavg 1 min (start → end) | errors "
        "| rows == acked | mean rows/commit | slowest commit ≤ s | ack p99.9 / max ms | checkpoints in window "
        "| largest WAL MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {load} | {res['elapsed']:.1f} | {res['acked'] / res['elapsed']:,.0f} "
        f"| {_pct(lat, 0.5) * 1000:.1f} | {_pct(lat, 0.99) * 1000:.1f} | {cpu * 1000 / k:.1f} "
        f"| {cpu / res['elapsed']:.2f} | {res['client_cpu'] * 1000 / k:.1f} | {load0:.1f} → {load1:.1f} "
        f"| {res['errors']} | {rows == res['acked']} ({rows:,}) | {mean_group:,.0f} | {slowest:g} "
        f"| {_pct(lat, 0.999) * 1000:.0f} / {max(lat, default=float('nan')) * 1000:.0f} | {wal.checkpoints} "
        f"| {wal.largest_bytes / 2**20:.0f} |"
    )
    def series(name: str) -> float | None:
        vals = [float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(name + " ")]
        return vals[0] if vals else None

    n_commit = series("streamqoe_store_commit_duration_seconds_count")
    if n_commit:
        busy = series("streamqoe_store_commit_duration_seconds_sum") or 0.0
        print(f"\nwriter (whole run): {n_commit:,.0f} transactions, mean {busy / n_commit * 1000:.1f} ms, "
              f"busy {busy:.1f} s")
    loads = series("streamqoe_journal_loads_total")
    if loads:  # ack_on = journal: the "writer" above is the journal append; this is DuckDB's side
        loaded = series("streamqoe_journal_loaded_events_total") or 0.0
        print(f"\njournal loader (whole run): {loads:,.0f} loads, mean {loaded / loads:,.0f} events per load, "
              f"backlog at the end of the load {series('streamqoe_journal_backlog_events') or 0:,.0f} events")
    n_ckpt = series("streamqoe_store_checkpoint_duration_seconds_count")
    if n_ckpt is not None:  # a collector that checkpoints on its maintenance thread
        ckpt_buckets = [
            (float(ln.split('le="')[1].split('"')[0]), float(ln.split()[-1]))
            for ln in metrics.splitlines()
            if ln.startswith("streamqoe_store_checkpoint_duration_seconds_bucket")
        ]
        longest = min((le for le, c in ckpt_buckets if c >= n_ckpt), default=float("nan"))
        print(
            f"\nmaintenance (whole run): {n_ckpt:.0f} checkpoints, "
            f"{series('streamqoe_store_checkpoint_duration_seconds_sum') or 0:.2f} s in total, "
            f"longest ≤ {longest:g} s; "
            + ("main tables held (the journal loader waited) for "
               if args.ack_on == "journal" else "writer committed to staging for ")
            + f"{series('streamqoe_store_diverted_seconds_sum') or 0:.2f} s; "
            f"{series('streamqoe_store_moved_rows_total') or 0:,.0f} rows moved"
        )
    if wal.times:
        around = [(e - CKPT_BEFORE_S, e + CKPT_AFTER_S) for e in wal.times]
        near, away = _split_by_overlap(res["starts"], lat, around)
        print(
            f"\nack latency around checkpoints (a batch in flight from {CKPT_BEFORE_S} s before a checkpoint's end "
            f"to {CKPT_AFTER_S} s after): {len(near):,} batches ({100 * len(near) / max(1, len(lat)):.1f} %), "
            f"p50 {_pct(near, 0.5) * 1000:.1f} ms, p99 {_pct(near, 0.99) * 1000:.1f} ms; the other {len(away):,}: "
            f"p50 {_pct(away, 0.5) * 1000:.1f} ms, p99 {_pct(away, 0.99) * 1000:.1f} ms"
        )
    slow = [(t, x) for t, x in zip(res["starts"], lat, strict=True) if x > SLOW_S]
    if slow:
        t0 = min(res["starts"])
        by_second: dict[int, int] = {}
        for t, _ in slow:
            by_second[int(t - t0)] = by_second.get(int(t - t0), 0) + 1
        ckpt_s = sorted({int(e - t0) for e in wal.times if e >= t0}) if wal.times else []
        print(
            f"\nbatches over {SLOW_S * 1000:.0f} ms: {len(slow):,} ({100 * len(slow) / len(lat):.1f} %); started in "
            f"second (count): {', '.join(f'{k} ({v})' for k, v in sorted(by_second.items()))}; checkpoints ended "
            f"in second: {', '.join(map(str, ckpt_s)) or 'none'}"
        )
    steal = steal_share(steal0, steal1) or 0.0
    print(f"\nCPU steal (the hypervisor's share of this VM's CPU time during the run, /proc/stat): {100 * steal:.1f} %")
    hit, clear = _split_by_overlap(res["starts"], lat, machine_stalls)
    longest = max((e - s for s, e in machine_stalls), default=0.0)
    print(
        f"\nmachine stalls (a 1 ms sleeper process woke ≥ {MACHINE_STALL_MS:.0f} ms late): {len(machine_stalls)}, "
        f"longest {longest * 1000:.0f} ms, {sum(e - s for s, e in machine_stalls):.2f} s in all; batches in flight "
        f"during one: {len(hit):,} (p50 {_pct(hit, 0.5) * 1000:.1f} ms, p99 {_pct(hit, 0.99) * 1000:.1f} ms); "
        f"the other {len(clear):,}: p50 {_pct(clear, 0.5) * 1000:.1f} ms, p99 {_pct(clear, 0.99) * 1000:.1f} ms"
    )
    if export:
        print(
            f"\nexport: GET /v1/events over {export['lines']:,} events in {export['seconds']:.1f} s "
            f"({export['lines'] / export['seconds']:,.0f} lines/s); collector RSS {export['rss0']:.0f} MB before, "
            f"{export['peak']:.0f} MB at peak"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(tmp)
    else:
        print(f"kept {tmp}")
    return 0 if rows == res["acked"] and res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
