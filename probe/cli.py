"""``streamqoe probe URL``: join as a headless viewer, measure, report.

Exit status: 0 the session joined and received video; 1 the session failed (the report says why in
``failure``); 2 bad command line; 3 the report could not be delivered to the collector (it stays in the
spool and is sent on the next run). With ``--every`` the command runs until SIGINT/SIGTERM and exits 0
after finishing the session under way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from pathlib import Path

import structlog

from probe.humanize import summary_text
from probe.report import Report
from probe.session import ProbeOptions, run_session

log = structlog.get_logger()

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNDELIVERED = 0, 1, 2, 3


def parse_every(text: str) -> float:
    """``60``, ``60s``, ``5m``, ``1h`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 60s, 5m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", key) or not value:
        raise argparse.ArgumentTypeError(f"label must be key=value with a lower-case key, got {text!r}")
    return key, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="WHEP URL (http://host:port/whep/ROOM) or janus+http://host:port/janus?mountpoint=ID")
    p.add_argument("--duration", type=float, default=10.0, help="session length from the join, seconds (default 10)")
    p.add_argument("--no-decode", action="store_true",
                   help="count frames and read resolution from the bitstream without decoding (dense load tests)")
    p.add_argument("--no-loop-filter", dest="skip_loop_filter", action="store_true",
                   help="decode without the in-loop deblocking filter: ~40 %% less decode CPU, every frame still "
                        "decoded and its marker read (report mode decode-no-loop-filter)")
    p.add_argument("--no-fast-receive", dest="fast_receive", action="store_false",
                   help="take aiortc's own receive path instead of handling media in the socket callback")
    p.add_argument("--json", metavar="FILE", help="write the report here ('-' for stdout; default stdout unless a TTY)")
    p.add_argument("--region", help="region this probe runs in (report envelope; checked by the collector)")
    p.add_argument("--label", action="append", type=parse_label, default=[], metavar="KEY=VALUE",
                   help="extra dimension for the report (isp=..., cdn=...); repeatable")
    p.add_argument("--probe-id", help="this probe's id (default: host name)")
    p.add_argument("--codec", choices=["vp8", "h264"], help="offer only this video codec")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="bound to ICE+DTLS connected, seconds")
    p.add_argument("--media-timeout", type=float, default=5.0, help="bound to first RTP / first frame, seconds")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL",
                   help="STUN/TURN server (none by default: the probe contacts nothing it was not given)")
    p.add_argument("--ice-addr", action="append", metavar="IP",
                   help="local address for host candidates (default: loopback for a loopback target, else all)")
    p.add_argument("--collector", metavar="URL", help="collector base URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--token", help="bearer token for the collector")
    p.add_argument("--spool", default="spool", metavar="DIR",
                   help="reports wait here until the collector acknowledges them (default ./spool)")
    p.add_argument("--every", type=parse_every, metavar="INTERVAL",
                   help="run a session every INTERVAL (e.g. 60s) until SIGINT/SIGTERM")


def _options(args: argparse.Namespace) -> ProbeOptions:
    opts = ProbeOptions(
        url=args.url, duration_s=args.duration, decode=not args.no_decode, region=args.region,
        labels=dict(args.label), codec=args.codec, connect_timeout_s=args.connect_timeout,
        media_timeout_s=args.media_timeout, ice_servers=list(args.ice_server), ice_addresses=args.ice_addr,
        fast_receive=args.fast_receive, skip_loop_filter=args.skip_loop_filter,
    )
    if args.probe_id:
        opts.probe_id = args.probe_id
    return opts


def _emit(report: Report, args: argparse.Namespace) -> None:
    text = json.dumps(report.to_dict(), indent=2)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    elif args.json == "-" or not sys.stdout.isatty():
        print(text, flush=True)
    if sys.stdout.isatty():
        print(summary_text(report), flush=True)


async def _deliver(report: Report, args: argparse.Namespace) -> bool:
    """Spool, then send with retries; True once the collector acknowledged it."""
    from probe.upload import deliver, flush_spool

    await flush_spool(spool_dir=Path(args.spool), collector_url=args.collector, token=args.token)
    result = await deliver(report.to_dict(), spool_dir=Path(args.spool), collector_url=args.collector,
                           token=args.token)
    if result.status == "delivered":
        return True
    where = "kept in rejected/ of the spool" if result.status == "rejected" else \
        f"it stays in {args.spool} and is sent on the next run"
    print(f"streamqoe probe: report {report.report_id} not delivered ({result.status}, HTTP "
          f"{result.http_status}): {result.message}; {where}", file=sys.stderr)
    return False


async def _one(args: argparse.Namespace) -> int:
    report = await run_session(_options(args))
    _emit(report, args)
    code = EXIT_FAILED if report.failure else EXIT_OK
    if args.collector and not await _deliver(report, args):
        code = EXIT_UNDELIVERED
    return code


async def _every(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    n = 0
    while not stop.is_set():
        started = loop.time()
        code = await _one(args)
        n += 1
        log.info("probe_session_done", session=n, exit_code=code)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, started + args.every - loop.time()))
    log.info("probe_schedule_stopped", sessions=n)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.collector and not args.token:
        print("streamqoe probe: --collector needs --token (the collector authenticates every source)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.no_decode and args.skip_loop_filter:
        print("streamqoe probe: --no-loop-filter is a decoding mode; it cannot go with --no-decode", file=sys.stderr)
        return EXIT_USAGE
    if args.duration <= 0 or args.duration > 86_400:
        print("streamqoe probe: --duration must be in (0, 86400] seconds", file=sys.stderr)
        return EXIT_USAGE
    if args.every is not None and args.every < args.duration:
        print("streamqoe probe: --every must be at least --duration", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_every(args) if args.every else _one(args))


