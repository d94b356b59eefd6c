"""The ``streamqoe`` command: a table of subcommands, each in the module that owns it.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).
Modules are imported only when their subcommand runs, so ``streamqoe collector`` never imports aiortc.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from streamqoe.logs import configure_logging

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "room": ("room.cli", "serve the embedded WHEP test room (synthetic marker pattern, impairments)"),
    "probe": ("probe.cli", "join a stream as a headless viewer and report what a viewer sees"),
    "publish": ("room.publish", "publish the marker test pattern as RTP (e.g. into a Janus mountpoint)"),
    "load": ("probe.load", "run a fleet of probes in several processes (pre-promotion load check)"),
    "collector": ("collector.cli", "run the collector service (ingest, store, /metrics, dashboard)"),
    "analyze": ("analysis.cli", "find QoE regressions, the segment at fault, the viewers lost"),
    "audience": ("analysis.audience_cli", "generate synthetic viewer events (the audience model)"),
    "demo": ("streamqoe.demo", "run the whole system on this machine with an injected incident"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser_for(argv)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        return 130


def build_parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """Parser with the arguments of the subcommand named in ``argv`` registered."""
    parser = argparse.ArgumentParser(prog="streamqoe", description="streamqoe: live-stream QoE probes and analysis")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _subcommand_name(argv)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def _subcommand_name(argv: list[str]) -> str | None:
    """The first argument that is neither an option nor the value of ``--log-level``."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-level":
            skip = True
        elif not a.startswith("-"):
            return a
    return None


if __name__ == "__main__":
    sys.exit(main())
