"""``streamqoe room``: serve the embedded WHEP test room until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import ipaddress
import signal
import sys

import structlog
from aiohttp import web

from room import scenario as scenario_mod
from room.config import ServerConfig, parse_room_spec
from room.server import create_app

log = structlog.get_logger()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="HTTP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: loopback only)")
    parser.add_argument("--scenario", metavar="FILE", help="scenario JSON: rooms and impairments (docs/scenario.md)")
    parser.add_argument(
        "--room",
        action="append",
        default=[],
        metavar="NAME[:WxH@FPS:CODEC:KBPS]",
        help="add a room, e.g. lobby:640x360@25:h264:800 (repeatable; default: room 'test', 720p30 VP8)",
    )
    parser.add_argument(
        "--ice-host",
        default="127.0.0.1",
        help="the only address ICE candidates are gathered on (default 127.0.0.1; never STUN/TURN)",
    )
    parser.add_argument("--seed", type=int, default=None, help="impairment RNG seed (overrides the scenario's)")
    parser.add_argument("--encoder-threads", type=int, default=1, help="threads per video encoder")
    parser.add_argument(
        "--no-fast-send",
        dest="fast_send",
        action="store_false",
        help="send with aiortc's own per-viewer RTP loop (for comparison; docs/room.md, Cost)",
    )
    parser.add_argument(
        "--udp-gso",
        action="store_true",
        help="send each frame's packets with one UDP GSO call per viewer (loopback capacity tests only: "
        "nftables/netem on the path would see whole frames as one packet; docs/room.md, Cost)",
    )


def build_config(args: argparse.Namespace) -> ServerConfig:
    """ServerConfig from the command line; ValueError names the bad option or scenario field."""
    extra = tuple(parse_room_spec(spec) for spec in args.room)
    scen = scenario_mod.load(args.scenario) if args.scenario else scenario_mod.Scenario(rooms=())
    names = [r.name for r in scen.rooms]
    for room in extra:
        if room.name in names:
            raise ValueError(f"--room: room {room.name!r} is also defined in the scenario file")
    config = scen.server_config(
        extra, ice_host=args.ice_host, encoder_threads=args.encoder_threads, fast_send=args.fast_send
    )
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.udp_gso:
        config = dataclasses.replace(config, udp_gso=True)
    return config


def tune_gc() -> None:
    """Move what exists once the server is up (modules, the app) out of the garbage collector's reach
    (``gc.freeze``: it lives as long as the process), so the full collections, during which the encoder loops
    stand still, walk only the viewers' objects (docs/performance.md, Room capacity, session 10)."""
    gc.freeze()


async def serve(config: ServerConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    for room in config.rooms:
        log.info("room_ready", room=room.name, whep=f"http://{host}:{port}/whep/{room.name}", codec=room.codec)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        ipaddress.ip_address(args.ice_host)
    except (ValueError, OSError) as exc:
        print(f"streamqoe room: {exc}", file=sys.stderr)
        return 2
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            log.warning(
                "http_not_loopback",
                host=args.host,
                note="the room is a test tool; keep it off public networks",
            )
    except ValueError:
        pass
    asyncio.run(serve(config, args.host, args.port))
    return 0
