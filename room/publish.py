"""``streamqoe publish``: the marker pattern as plain RTP into an SFU (e.g. a Janus mountpoint).

Not built yet. It will reuse ``room.encoder.SharedVideoEncoder`` / ``SharedAudioEncoder`` (subscribe
to their ``EncodedFrame``s and packetize with aiortc's codec ``pack()``) so the pattern and encoder
are the same as the embedded room's.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help-status", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    print("streamqoe publish: not implemented yet (see room/publish.py)", file=sys.stderr)
    return 2
