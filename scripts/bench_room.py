#!/usr/bin/env python3
"""Room capacity benchmark: one room, N light viewers, the room process's CPU per RTP packet sent.

Starts ``streamqoe room --room bench:...`` as a subprocess (loopback only), attaches viewers from
worker processes (aiortc for ICE + DTLS, then ``WireTap(swallow=True)``: the viewers count every RTP
packet on their sockets and neither decrypt nor decode it), and for each N measures over a fixed
window: the room's CPU (``/proc/PID/stat``), the encoder threads' CPU (the truth's
``encode_cpu_ms_avg × frames_encoded``), the packets it sent (the truth's per-viewer counts) and
what the viewers received.

    .venv/bin/python scripts/bench_room.py --viewers 1,50,100,200 --seconds 10 [--pin] [--reference-viewers 2]
    .venv/bin/python scripts/bench_room.py --pin --viewers 150,200 --seconds 20 --settle 5 --spec 1280x720@30:h264:1500

The reference, measured in the same run on the same CPU (``--reference-viewers K``, default 2: 3
already fill a core; 0 to skip): a WHEP server written as aiortc's examples write one
(``scripts/stock_aiortc_server.py``: a track and an encoder per viewer), serving K light viewers; it
prints its CPU per viewer beside the room's.

CPU per packet is the robust figure on a shared machine (other processes take cores, not
instructions); the CPU % and the fps delivered depend on what else runs, so the load average is
printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe.hoststalls import cpu_model  # noqa: E402

ROOM = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cpu_ticks(cpu: int | None) -> tuple[int, int]:
    """(steal, total) jiffies of one CPU (or of all, ``None``) from /proc/stat: CPU steal in a window is the
    share of the CPU the hypervisor gave to other guests, which no figure of this benchmark can see otherwise."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
            return ticks[7], sum(ticks)
    return 0, 0


def _wait_http(url: str, tries: int = 100) -> bool:
    """True once ``url`` answers (tries every 0.1 s)."""
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop_worker(proc: Any, pipe: Connection) -> None:
    """Ask a viewer worker to leave its sessions and end; kill it if it does not."""
    try:
        pipe.send(("stop", None))
        if pipe.poll(20):
            pipe.recv()
    except (OSError, EOFError):
        pass
    proc.join(5)
    if proc.is_alive():
        proc.kill()


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


def _truth(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/rooms/{ROOM}/truth", timeout=30) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


# -- viewer worker process


def _worker(url: str, conn: Connection) -> None:
    asyncio.run(_worker_main(url, conn))


async def _worker_main(url: str, conn: Connection) -> None:
    import aiohttp

    from room.whepclient import WhepViewer

    viewers: list[WhepViewer] = []
    sem = asyncio.Semaphore(8)  # joins in flight per worker
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        while True:
            cmd, arg = await loop.run_in_executor(None, conn.recv)
            if cmd == "add":
                new = [WhepViewer(url, audio=True, decode=False, light=True) for _ in range(arg)]
                statuses = await asyncio.gather(*(_join(v, session, sem) for v in new), return_exceptions=True)
                viewers.extend(v for v, s in zip(new, statuses, strict=True) if s == 201)
                conn.send(sum(s == 201 for s in statuses))
            elif cmd == "count":
                packets = sum(c.packets for v in viewers if v.wire for c in v.wire.by_ssrc.values())
                # video frames: marker-bit packets of each viewer's largest stream (its video)
                frames = sum(max(v.wire.by_ssrc.values(), key=lambda c: c.bytes).marked
                             for v in viewers if v.wire and v.wire.by_ssrc)
                conn.send((packets, _cpu_s(os.getpid()), frames))
            elif cmd == "stop":
                await asyncio.gather(*(v.leave() for v in viewers), return_exceptions=True)
                conn.send(None)
                return


async def _join(viewer: Any, session: Any, sem: asyncio.Semaphore) -> int:
    async with sem:
        status: int = await viewer.join(session)
        return status


# -- the reference: stock aiortc, encoding per viewer (scripts/stock_aiortc_server.py)


def reference(args: argparse.Namespace, cpus: set[int] | None, env: dict[str, str]) -> dict[str, Any] | None:
    """Serve ``args.reference_viewers`` light viewers from a stock-aiortc WHEP server on the room's CPUs, and
    measure it as the room was measured (its process CPU over ``args.seconds``, packets and frames received)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "stock_aiortc_server.py"), "--port", str(port), "--spec", args.spec],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_worker, args=(f"http://127.0.0.1:{port}/whep/{ROOM}", child),
                                           daemon=True)
    try:
        if not _wait_http(f"http://127.0.0.1:{port}/sessions"):
            print("# reference: the stock aiortc server did not start", file=sys.stderr)
            return None
        proc.start()
        parent.send(("add", args.reference_viewers))
        joined = parent.recv()
        time.sleep(args.settle)
        t0, cpu0 = time.monotonic(), _cpu_s(server.pid)
        parent.send(("count", None))
        rx0 = parent.recv()
        time.sleep(args.seconds)
        t1, cpu1 = time.monotonic(), _cpu_s(server.pid)
        parent.send(("count", None))
        rx1 = parent.recv()
        wall = t1 - t0
        return {
            "viewers": joined,
            "server_cpu_pct": 100 * (cpu1 - cpu0) / wall,
            "cpu_pct_per_viewer": 100 * (cpu1 - cpu0) / wall / max(1, joined),
            "received_per_s": (rx1[0] - rx0[0]) / wall,
            "fps_delivered": (rx1[2] - rx0[2]) / wall / max(1, joined),
        }
    finally:
        if proc.is_alive():
            _stop_worker(proc, parent)
        _stop_server(server)


# -- measurement


def _totals(truth: dict[str, Any]) -> dict[str, float]:
    active = [v for v in truth["viewers"] if v["left_ms"] is None]
    enc = next(iter(truth["encoders"].values()))
    return {
        "packets": sum(v[k]["packets_sent"] for v in active for k in ("video", "audio", "rtx")),
        "frames": sum(v["frames_sent"] for v in active),
        "encode_cpu_s": (enc["encode_cpu_ms_avg"] or 0) * enc["frames_encoded"] / 1000,
        "frames_encoded": enc["frames_encoded"],
        "bytes_encoded": enc["bytes_encoded"],
        "keyframes": enc["keyframes"],
        "ticks_skipped": enc["ticks_skipped"],
        "direct": sum(v["send_path"] == "direct" for v in active),
        "active": len(active),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", default="1,50,100,200", help="viewer counts to measure, ascending")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per step, s")
    ap.add_argument("--settle", type=float, default=4.0, help="wait after joins before measuring, s")
    ap.add_argument("--workers", type=int, default=2, help="viewer processes")
    ap.add_argument("--spec", default="1280x720@30:vp8:1500", help="room spec after the name")
    ap.add_argument("--no-fast-send", action="store_true", help="run the room with aiortc's own send loop")
    ap.add_argument("--udp-gso", action="store_true", help="run the room with --udp-gso (one sendmsg per frame)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many s in total")
    ap.add_argument("--reference-viewers", type=int, default=2,
                    help="viewers for the reference row, stock aiortc encoding per viewer on the room's CPU (0: none)")
    ap.add_argument("--pin", action="store_true",
                    help="room on the first CPU, viewers on the others: does one core serve N viewers at full rate?")
    args = ap.parse_args()
    counts = [int(x) for x in args.viewers.split(",")]
    # a SIGTERM (e.g. from `timeout`) still stops the room and the viewer processes in `finally`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.timeout

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    room_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        room_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # this process and the viewer workers it spawns
    room = subprocess.Popen(
        [sys.executable, "-m", "streamqoe.cli", "--log-level", "warning", "room", "--port", str(port),
         "--room", f"{ROOM}:{args.spec}", *(["--no-fast-send"] if args.no_fast_send else []),
         *(["--udp-gso"] if args.udp_gso else [])],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, room_cpus)) if room_cpus else None,
    )  # fmt: skip
    ctx = mp.get_context("spawn")
    workers: list[tuple[Any, Connection]] = []
    rows = []
    try:
        if not _wait_http(f"{base}/rooms"):
            raise SystemExit("the room did not start")
        for _ in range(args.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(f"{base}/whep/{ROOM}", child), daemon=True)
            proc.start()
            workers.append((proc, parent))
        joined = 0
        for n in counts:
            if time.monotonic() > deadline:
                print(f"# stopped before {n} viewers: --timeout reached", file=sys.stderr)
                break
            need = n - joined
            for i, (_, pipe) in enumerate(workers):
                share = need // len(workers) + (1 if i < need % len(workers) else 0)
                pipe.send(("add", share))
            joined += sum(pipe.recv() for _, pipe in workers)
            time.sleep(args.settle)
            steal_cpu = min(room_cpus) if room_cpus else None
            t0, cpu0, truth0 = time.monotonic(), _cpu_s(room.pid), _totals(_truth(base))
            steal0 = _cpu_ticks(steal_cpu)
            rx0 = [pipe.send(("count", None)) or pipe.recv() for _, pipe in workers]
            time.sleep(args.seconds)
            steal1 = _cpu_ticks(steal_cpu)
            t1, cpu1, truth1 = time.monotonic(), _cpu_s(room.pid), _totals(_truth(base))
            rx1 = [pipe.send(("count", None)) or pipe.recv() for _, pipe in workers]
            wall = t1 - t0
            packets = truth1["packets"] - truth0["packets"]
            room_cpu = cpu1 - cpu0
            encode_cpu = truth1["encode_cpu_s"] - truth0["encode_cpu_s"]
            received = sum(b[0] - a[0] for a, b in zip(rx0, rx1, strict=True))
            viewers_cpu = sum(b[1] - a[1] for a, b in zip(rx0, rx1, strict=True))
            row = {
                "viewers": truth1["active"],
                "direct": truth1["direct"],
                "room_cpu_pct": 100 * room_cpu / wall,
                "encode_cpu_pct": 100 * encode_cpu / wall,
                "packets_per_s": packets / wall,
                "received_per_s": received / wall,
                "us_per_packet": 1e6 * (room_cpu - encode_cpu) / packets if packets else float("nan"),
                "fps_delivered": (truth1["frames"] - truth0["frames"]) / wall / max(1, truth1["active"]),
                "fps_encoded": (truth1["frames_encoded"] - truth0["frames_encoded"]) / wall,
                "kbps_encoded": 8 * (truth1["bytes_encoded"] - truth0["bytes_encoded"]) / wall / 1000,
                "keyframes": truth1["keyframes"] - truth0["keyframes"],
                "ticks_skipped": truth1["ticks_skipped"] - truth0["ticks_skipped"],
                "viewer_procs_cpu_pct": 100 * viewers_cpu / wall,
                "loadavg_1m": os.getloadavg()[0],
                # steal on the room's CPU (all CPUs without --pin) during the window
                "steal_pct": 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1]),
            }
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    finally:
        for proc, pipe in workers:
            _stop_worker(proc, pipe)
        _stop_server(room)

    ref = reference(args, room_cpus, env) if args.reference_viewers > 0 else None
    if ref is not None:
        print(json.dumps({"reference": {k: round(v, 2) if isinstance(v, float) else v for k, v in ref.items()}}),
              flush=True)
    load = os.getloadavg()
    print(f"\nroom {args.spec}, {args.seconds:.0f} s windows, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} CPUs ({cpu_model() or 'CPU model unknown'})"
          + (f"; room pinned to CPU {sorted(room_cpus)}, viewers on the others" if room_cpus else "") + "\n")
    print("| viewers | room CPU | encode CPU | packets/s sent | received/s | µs/packet (excl. encode) | fps delivered "
          "| ticks skipped | kbps encoded | keyframes | steal | load 1m |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['viewers']} | {r['room_cpu_pct']:.0f} % | {r['encode_cpu_pct']:.0f} % | {r['packets_per_s']:,.0f} "
            f"| {r['received_per_s']:,.0f} | {r['us_per_packet']:.1f} | {r['fps_delivered']:.1f} "
            f"| {r['ticks_skipped']} | {r['kbps_encoded']:,.0f} | {r['keyframes']} | {r['steal_pct']:.1f} % "
            f"| {r['loadavg_1m']:.1f} |"
        )
    if ref is not None:
        room_rows = [r for r in rows if r["viewers"]]
        top = room_rows[-1] if room_rows else None
        ratio = (f"; the room at {top['viewers']} viewers: {top['room_cpu_pct'] / top['viewers']:.2f} % per viewer, "
                 f"{ref['cpu_pct_per_viewer'] / (top['room_cpu_pct'] / top['viewers']):.0f}x less") if top else ""
        print("\nreference, same CPU, same run: stock aiortc (scripts/stock_aiortc_server.py, one encoder per "
              f"viewer), {ref['viewers']} viewers: {ref['server_cpu_pct']:.0f} % of a core, "
              f"{ref['cpu_pct_per_viewer']:.1f} % per viewer, {ref['fps_delivered']:.1f} fps delivered, "
              f"{ref['received_per_s']:,.0f} packets/s received{ratio}")
    elif args.reference_viewers > 0:
        print("\nreference: the stock aiortc server did not start (see stderr)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
