"""RTP parsing for the probe's direct receive path: aiortc's ``RtpPacket``, built with less work.

``RtpPacket.parse`` splits every packet's header-extension block into a list of (id, bytes) and
decodes each with ``struct`` (~13 % of a no-decode probe's CPU with the room's stream). A sender sends
the same block for many packets (mid never changes; the room's abs-send-time is stamped per frame), so
``parser`` keeps the ``HeaderExtensions`` aiortc made of each recent block (audio and video, bundled on
one transport, alternate) and parses a block only when it is new. The fixed header is read with one
``unpack_from``. Packets with CSRCs, and every malformed packet, go to ``RtpPacket.parse`` itself, so
errors are aiortc's (differential test: ``tests/test_probe_receive_equivalence.py``).

The ``HeaderExtensions`` object is shared by the packets that carried the same block; aiortc's receive
path only reads it. The cache assumes the extension map is not reconfigured while the parser lives
(the probe negotiates once).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, RtpPacket

_FIXED = struct.Struct("!BBHLL")
_EXT = struct.Struct("!HH")
CACHE_BLOCKS = 16
"""Extension blocks remembered per transport (all forgotten when full: a block stamped per packet never hits)."""


def parser(ext_map: HeaderExtensionsMap) -> Callable[[bytes], RtpPacket]:
    """A parse function for packets received on a transport with ``ext_map``; ValueError as aiortc's."""
    slow = RtpPacket.parse
    cache: dict[bytes, HeaderExtensions] = {}
    unpack_fixed, unpack_ext = _FIXED.unpack_from, _EXT.unpack_from

    def parse(data: bytes) -> RtpPacket:
        n = len(data)
        if n < 16:
            return slow(data, ext_map)
        first, m_pt, seq, timestamp, ssrc = unpack_fixed(data)
        if first & 0xDF != 0x90:  # not (version 2, extension, no CSRC; padding either way)
            return slow(data, ext_map)
        profile, words = unpack_ext(data, 12)
        pos = 16 + 4 * words
        if n < pos:
            return slow(data, ext_map)
        block = data[12:pos]
        extensions = cache.get(block)
        if extensions is None:
            extensions = ext_map.get(profile, data[16:pos])  # raises ValueError for a truncated element
            if len(cache) >= CACHE_BLOCKS:
                cache.clear()
            cache[block] = extensions
        packet = RtpPacket(m_pt & 0x7F, m_pt >> 7, seq, timestamp, ssrc)
        packet.extensions = extensions
        if first & 0x20:
            padding = data[-1]
            if not padding or padding > n - pos:
                return slow(data, ext_map)
            packet.padding_size = padding
            packet.payload = data[pos:-padding]
        else:
            packet.payload = data[pos:]
        return packet

    return parse
