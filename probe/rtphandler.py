"""The direct receive path's per-packet work: the tap's counting and aiortc's receiver, in one call.

On aiortc's own path every RTP packet runs two coroutines: the tap's ``tapped_rtp`` (``ReceiverTap.on_rtp``,
then an ``await``) and aiortc's ``RTCRtpReceiver._handle_rtp_packet``, which ends by putting a complete frame
into the decoder queue, where the tap's ``_TapQueue.put`` picks it up. ``probe.fastrecv`` used to drive that
pair to completion for every packet. ``fused_handler`` returns one plain function doing the same steps in the
same order on the receiver's own state objects:

1. the tap counts the packet (``ReceiverTap.count``: first-RTP time, original vs RTX, ``StreamCounter``);
2. aiortc's receive-side bandwidth estimator, and a REMB when it has one (through the tap's throttle);
3. the source's last-seen time (``getSynchronizationSources``), at most every ``SOURCE_SEEN_MS``;
4. the codec by payload type (unknown: dropped);
5. aiortc's RTCP receiver statistics (its receiver reports);
6. RTX unwrapped to the original packet;
7. aiortc's NACK generator, and a NACK for a new gap;
8. the payload depacketized;
9. the jitter buffer, and a PLI when it or a decode error asks for one;
10. a complete frame: its timestamp mapped, then ``ReceiverTap.on_encoded_frame`` with the arrival time of
    the packet that completed it (docs/metrics.md, "Assembled frame").

RTCP it sends (REMB, NACK, PLI) goes through the receiver's own coroutines, driven to completion in place
as before (``fastrecv.drive``). What changes is only the glue: two coroutine objects, a queue ``put`` and
a dozen name-mangled attribute lookups per packet. ``tests/test_probe_receive_equivalence.py`` feeds the
same packets to both and compares everything they produce; ``tests/test_probe_vs_room.py`` runs the
probe both ways against the room.

aiortc 1.16's private names are read once, at install; if one is missing ``fused_handler`` returns None
and packets keep the coroutine pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc.clock import current_datetime
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci, unwrap_rtx

from probe.fastrecv import drive

if TYPE_CHECKING:
    from probe.tap import ReceiverTap

Handler = Callable[[RtpPacket, float], None]
"""(packet, arrival time in ms since 1900 on aiortc's clock, a float from the kernel's receive time)."""

_P = "_RTCRtpReceiver__"
DEPAYLOAD: dict[str, Callable[[bytes], bytes]] = {"VP8": vp8_depayload, "H264": h264_depayload}
"""aiortc's ``depayload`` dispatch (any other codec's payload is its data)."""
SOURCE_SEEN_MS = 100.0
"""How often a source's last-seen time (aiortc's ``getSynchronizationSources``) is refreshed."""


def fused_handler(tap: ReceiverTap) -> Handler | None:
    """One synchronous function for ``tap.receiver``'s RTP packets; None if aiortc's internals differ.

    Call after the receiver started (``receive()``: its codecs and decoder thread exist).
    """
    r = tap.receiver
    try:
        codecs: dict[int, Any] = getattr(r, _P + "codecs")
        rtx_ssrcs: dict[int, int] = getattr(r, _P + "rtx_ssrc")
        active: dict[int, Any] = getattr(r, _P + "active_ssrc")
        streams: dict[int, StreamStatistics] = getattr(r, _P + "remote_streams")
        nack_generator = getattr(r, _P + "nack_generator")
        jitter_buffer = getattr(r, _P + "jitter_buffer")
        decoder_error = getattr(r, _P + "decoder_error")
        estimator = getattr(r, _P + "remote_bitrate_estimator")
        mapper = getattr(r, _P + "timestamp_mapper")
        started = getattr(r, _P + "decoder_thread") is not None
        getattr(r, _P + "rtcp_ssrc")
        send_rtcp, send_nack, send_pli = r._send_rtcp, r._send_rtcp_nack, r._send_rtcp_pli
    except AttributeError:
        return None
    if not started:
        return None
    video = tap.kind == "video"
    by_pt: dict[int, tuple[Any, str, bool, Callable[[bytes], bytes] | None]] = {}
    seen = [float("-inf")]
    count, on_frame, arrived = tap.count, tap.on_encoded_frame, tap.arrived

    def handle(packet: RtpPacket, arrival_ms: float) -> None:
        # 1. the tap (ReceiverTap.on_rtp with a kernel arrival time), on the session clock
        t = arrived(arrival_ms)
        count(packet, t)
        if not r._enabled:
            return
        # 2. bandwidth estimate; aiortc's estimator indexes by whole ms
        if estimator is not None:
            abs_send_time = packet.extensions.abs_send_time
            if abs_send_time is not None:
                remb = estimator.add(int(arrival_ms), abs_send_time, len(packet.payload) + packet.padding_size,
                                     packet.ssrc)
                if remb is not None:
                    rtcp_ssrc = getattr(r, _P + "rtcp_ssrc")
                    if rtcp_ssrc is not None:
                        drive(send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                       fci=pack_remb_fci(*remb))))
        # 3. aiortc stamps every packet with a datetime; nothing reads it finer than this
        ssrc = packet.ssrc
        if arrival_ms - seen[0] >= SOURCE_SEEN_MS:
            seen[0] = arrival_ms
            active[ssrc] = current_datetime()
        # 4. (the codec's name is a property parsing its MIME type: read once per payload type)
        pt = packet.payload_type
        known = by_pt.get(pt)
        if known is None:
            codec = codecs.get(pt)
            if codec is None:
                return
            known = by_pt[pt] = (codec, codec.name, codec.name.lower() == "rtx", DEPAYLOAD.get(codec.name))
        codec, name, rtx, depay = known
        # 5.
        stats = streams.get(ssrc)
        if stats is None:
            stats = streams[ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        # 6. RTX
        if rtx:
            original_ssrc = rtx_ssrcs.get(ssrc)
            if original_ssrc is None:
                return
            apt = codec.parameters.get("apt")
            if len(packet.payload) < 2 or not isinstance(apt, int) or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
            name = codec.name
            depay = DEPAYLOAD.get(name)
        # 7. NACK
        if nack_generator is not None and nack_generator.add(packet):
            drive(send_nack(packet.ssrc, sorted(nack_generator.missing)))
        # 8. depacketize (aiortc's ``depayload``, with the codec's function looked up once)
        payload = packet.payload
        try:
            packet._data = (depay(payload) if depay is not None else payload) if payload else b""  # type: ignore[attr-defined]
        except ValueError:
            return
        # 9. jitter buffer
        pli, frame = jitter_buffer.add(packet)
        if decoder_error.is_set():
            decoder_error.clear()
            if video:
                pli = True
        if pli:
            drive(send_pli(packet.ssrc))
        # 10. a complete frame
        if frame is not None:
            frame.timestamp = mapper.map(frame.timestamp)
            on_frame(name, frame.data, frame.timestamp, t)  # complete at this packet's arrival

    return handle
