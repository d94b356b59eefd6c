"""``streamqoe collector``: run the collector service.

Without ``--config`` it listens on 127.0.0.1:8600 with ``./streamqoe.duckdb`` and, since no token is
configured, generates one random token per role and prints them once on stdout (never in the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys

import structlog
from aiohttp import web

from collector.app import create_app
from collector.config import CollectorConfig, load_config, with_dev_tokens

log = structlog.get_logger()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML (or .json) configuration file; see docs/collector.md")
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config; 0 = any free port)")
    parser.add_argument("--db", help="DuckDB file (overrides the config)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        overrides = {k: v for k, v in (("listen_host", args.host), ("listen_port", args.port),
                                       ("db_path", args.db)) if v is not None}  # fmt: skip
        if overrides:
            from dataclasses import replace

            cfg = replace(cfg, **overrides)
        cfg = with_dev_tokens(cfg)
    except (OSError, ValueError) as e:
        print(f"streamqoe collector: configuration error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg))


async def serve(cfg: CollectorConfig) -> int:
    """Serve until SIGINT/SIGTERM; the store is checkpointed and closed on the way out."""
    app = create_app(cfg)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, backlog=512)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else cfg.listen_port
    if cfg.dev_tokens:
        print("development tokens (generated because the configuration has none; valid until exit):")
        for t in cfg.tokens:
            print(f"  {t.role:9s} {t.secret}")
        reader = next(t for t in cfg.tokens if t.role == "reader")
        print(f"dashboard: http://{cfg.listen_host}:{port}/dashboard#token={reader.secret}")
    print(f"listening on http://{cfg.listen_host}:{port}", flush=True)
    log.info("collector_started", host=cfg.listen_host, port=port, db=cfg.db_path,
             tokens=[t.name for t in cfg.tokens])  # fmt: skip
    # everything allocated so far (modules, the app, the store's client) lives until exit: keep it out of
    # the collector's full garbage collections, which otherwise scan it every few seconds under ingest
    # (~30 ms each at 50,000 events/s, an ack-latency spike for every request in flight; docs/performance.md)
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    gc.unfreeze()  # at exit, collect what was frozen (DuckDB's nanobind reports uncollected objects as leaks)
    log.info("collector_stopping")
    await runner.cleanup()
    return 0
