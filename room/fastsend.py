"""A leaner RTP loop for RTCRtpSenders fed by the shared encoders (opt-out: ``ServerConfig.fast_send``).

aiortc's ``RTCRtpSender._run_rtp`` packetizes every frame again for each viewer, builds an
``RtpPacket`` object per packet, reads the NTP clock twice per packet and serializes the header
extensions per packet. With one encoder shared by every viewer, all of that is the same for every
viewer except SSRC, sequence number and timestamp offset. This loop takes the payloads packetized
once per frame (``EncodedFrame.payloads``, made in the encoder thread), builds the header extension
block once per frame, and writes each packet's 12-byte header with one ``struct.pack``.

It replaces ``_run_rtp`` and ``_retransmit`` on one sender *instance* and keeps the sender's own
bookkeeping (RTCP sender-report counters, started/exited events) in the sender's private
attributes, so ``RTCRtpSender.stop()``, RTCP SR and NACK → RTX keep working. That couples this
module to aiortc's private names (checked by ``tests/test_room_media.py``, which runs the room with
and without it); if aiortc renames them, set ``fast_send=False``.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from typing import Any, Protocol

from aiortc import clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions
from aiortc.utils import random32

from room.encoder import EncodedFrame

_HEADER = struct.Struct("!BBHLL")
_P = "_RTCRtpSender__"  # aiortc's name-mangling prefix for RTCRtpSender's private attributes


class FrameTrack(Protocol):
    kind: str

    async def recv_frame(self) -> EncodedFrame: ...

    def stop(self) -> None: ...


def install(sender: Any, track: FrameTrack) -> None:
    """Make ``sender`` (an aiortc RTCRtpSender, not started yet) send ``track``'s shared payloads."""
    history: dict[int, tuple[int, int, int, bytes, bytes]] = {}
    sender._run_rtp = functools.partial(_run_rtp, sender, track, history)
    sender._retransmit = functools.partial(_retransmit, sender, history)


def _extension_block(ext_map: Any, mid: str | None, abs_send_time: int) -> bytes:
    profile, value = ext_map.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
    return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""


async def _run_rtp(
    sender: Any, track: FrameTrack, history: dict[int, tuple[int, int, int, bytes, bytes]], codec: Any
) -> None:
    getattr(sender, _P + "rtp_started").set()
    ext_map = getattr(sender, _P + "rtp_header_extensions_map")
    mid = getattr(sender, _P + "mid")
    payload_type = codec.payloadType
    ssrc = sender._ssrc
    sequence_number = random_sequence_number()
    timestamp_origin = random32()
    pack = _HEADER.pack
    octets = packets = 0
    try:
        while True:
            frame = await track.recv_frame()
            if not frame.payloads:
                continue
            ntp = clock.current_ntp_time()
            ext = _extension_block(ext_map, mid, (ntp >> 14) & 0x00FFFFFF)
            first = 0x90 if ext else 0x80
            timestamp = (timestamp_origin + (frame.packet.pts or 0)) & 0xFFFFFFFF
            last = len(frame.payloads) - 1
            transport = sender.transport
            for i, payload in enumerate(frame.payloads):
                marker = 0x80 if i == last else 0
                history[sequence_number % RTP_HISTORY_SIZE] = (
                    sequence_number,
                    timestamp,
                    marker | payload_type,
                    payload,
                    ext,
                )
                await transport._send_rtp(
                    pack(first, marker | payload_type, sequence_number, timestamp, ssrc) + ext + payload
                )
                octets += len(payload)
                packets += 1
                sequence_number = (sequence_number + 1) & 0xFFFF
            # RTCP sender-report fields, as aiortc's own loop keeps them
            setattr(sender, _P + "ntp_timestamp", ntp)
            setattr(sender, _P + "rtp_timestamp", timestamp)
            setattr(sender, _P + "octet_count", octets)
            setattr(sender, _P + "packet_count", packets)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    finally:
        track.stop()
        getattr(sender, _P + "rtp_exited").set()


async def _retransmit(sender: Any, history: dict[int, tuple[int, int, int, bytes, bytes]], seq: int) -> None:
    """Answer a NACK for ``seq``: RTX (RFC 4588) if negotiated, else the original packet again."""
    entry = history.get(seq % RTP_HISTORY_SIZE)
    if entry is None or entry[0] != seq:
        return
    _, timestamp, marker_pt, payload, ext = entry
    first = 0x90 if ext else 0x80
    rtx_pt = getattr(sender, _P + "rtx_payload_type")
    if rtx_pt is not None:
        rtx_seq = getattr(sender, _P + "rtx_sequence_number")
        setattr(sender, _P + "rtx_sequence_number", (rtx_seq + 1) & 0xFFFF)
        data = _HEADER.pack(first, (marker_pt & 0x80) | rtx_pt, rtx_seq, timestamp, sender._rtx_ssrc)
        data += ext + struct.pack("!H", seq) + payload
    else:
        data = _HEADER.pack(first, marker_pt, seq, timestamp, sender._ssrc) + ext + payload
    await sender.transport._send_rtp(data)
