"""A lean RTP sender for RTCRtpSenders fed by the shared encoders (opt-out: ``ServerConfig.fast_send``).

aiortc's ``RTCRtpSender._run_rtp`` packetizes every frame again for each viewer, builds an
``RtpPacket`` object per packet, reads the NTP clock twice per packet, serializes the header
extensions per packet, and sends each packet down a chain of coroutines (``RTCDtlsTransport._send_rtp``
→ SRTP → ``RTCIceTransport._send`` → aioice ``Connection.send`` → ``StunProtocol.send_data`` →
``sendto``). With one encoder shared by every viewer, all of that is the same for every viewer except
SSRC, sequence number and timestamp offset. This module:

- takes the payloads packetized once per frame (``EncodedFrame.payloads``, made in the encoder thread),
  builds the header-extension block once per frame by patching abs-send-time into a template, and
  writes each packet's 12-byte header with one ``struct.pack``;
- once the viewer's DTLS is connected, resolves its SRTP session and the selected ICE pair's UDP
  transport and sends every packet **synchronously**, ``sendto(srtp.protect(rtp), addr)``, from the
  encoder's fan-out (the track's ``direct`` hook): one Python loop per frame over all viewers, no
  task switch and no coroutine per packet. Impairments and truth still go through the viewer's
  ``SendPath`` (``SendPath.send_direct``).

RTCP (sender reports) and NACK → RTX stay on aiortc's own path (rare packets), through the same
``SendPath``. The sender's own bookkeeping (RTCP sender-report counters, started/exited events) is
kept in its private attributes, so ``RTCRtpSender.stop()``, RTCP SR and NACK → RTX keep working.
That couples this module to private names of aiortc and aioice; if one is missing, the direct send
is not used (logged once, ``fast_send_fallback``) and packets take aiortc's coroutine path; the tests
(``tests/test_room_media.py``) run the room with and without this module and check which path ran.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions
from aiortc.utils import random32

from probe import srtp
from room.encoder import EncodedFrame

log = structlog.get_logger()

_HEADER = struct.Struct("!BBHLL")
_P = "_RTCRtpSender__"  # aiortc's name-mangling prefix for RTCRtpSender's private attributes
_NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 → 1970-01-01
_SR_NTP, _SR_RTP, _SR_OCTETS, _SR_PACKETS = (
    _P + n for n in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")
)

Out = Callable[[bytes], None]
"""Sends one RTP packet now: SRTP-protects it and hands it to the UDP socket."""


class FrameTrack(Protocol):
    kind: str
    direct: Callable[[EncodedFrame], None] | None

    async def recv_frame(self) -> EncodedFrame: ...

    def stop(self) -> None: ...


class DirectSink(Protocol):
    """Where a direct sender hands a frame's packets (the viewer's ``SendPath``)."""

    def send_direct(self, out: Out, packets: list[bytes], video: bool) -> None: ...


@functools.cache
def _log_fallback(reason: str) -> None:
    log.warning("fast_send_fallback", reason=reason, detail="packets take aiortc's coroutine path")


def direct_out(dtls: Any) -> Out | None:
    """A synchronous ``protect + sendto`` for a connected aiortc RTCDtlsTransport, or None.

    The packet goes straight to the UDP socket while the asyncio transport has nothing queued (its own
    first step); otherwise, or if the socket refuses it, through the transport's ``sendto``, which keeps
    order, queues on a full buffer and reports errors as it always does. Once the transport is closing,
    packets are dropped (``tests/test_room_fastsend.py``).
    None when the transport is not connected, or when a private attribute this relies on
    (``_tx_srtp``, the ICE connection's nominated pair and its asyncio transport) is missing.
    """
    try:
        if dtls.state != "connected":
            return None
        protect = _protector(dtls._tx_srtp)
        pair = dtls.transport._connection._nominated[1]
        transport = pair.protocol.transport
        sendto, sock, pending = transport.sendto, transport._sock, transport._buffer
        addr = pair.remote_addr
    except (AttributeError, KeyError, TypeError) as exc:
        _log_fallback(f"{type(exc).__name__}: {exc}")
        return None

    def out(data: bytes) -> None:
        packet = protect(data)
        if not pending:  # what asyncio's sendto does first, minus its Python checks (~2 µs a packet)
            try:
                sock.sendto(packet, addr)
                return
            except OSError:
                pass  # a full socket buffer (asyncio's sendto queues the packet) or a closed socket
        if transport.is_closing():
            return  # the ICE connection closed under a viewer still in the fan-out (e.g. consent expired):
            # asyncio 3.11's sendto would raise AttributeError on an unconnected transport it has closed
        sendto(packet, addr)

    return out


def _protector(session: Any) -> Callable[[bytes], bytes]:
    """``session.protect`` minus its per-call ``ffi.new`` (about half the cost), see ``probe.srtp``."""
    protect, fast = srtp.fast_op(session, "protect")
    if not fast:
        _log_fallback("pylibsrtp internals changed: using Session.protect")
    return protect


def install(sender: Any, track: FrameTrack, sink: DirectSink | None = None) -> FastSender:
    """Make ``sender`` (an aiortc RTCRtpSender, not started yet) send ``track``'s shared payloads.

    With a ``sink``, packets are sent synchronously from the fan-out once DTLS is connected.
    """
    fast = FastSender(sender, track, sink)
    sender._run_rtp = fast.run
    sender._retransmit = fast.retransmit
    return fast


class _ExtensionBlock:
    """The RTP header-extension block of one sender: a template with abs-send-time patched in per frame."""

    def __init__(self, ext_map: Any, mid: str | None) -> None:
        a = self._build(ext_map, mid, 0)
        b = self._build(ext_map, mid, 0xFFFFFF)
        diff = [i for i in range(len(a)) if a[i] != b[i]] if len(a) == len(b) else []
        self.static = a if not diff else None
        self._patch = len(diff) == 3 and diff == list(range(diff[0], diff[0] + 3))
        # with an unexpected layout the block is built the slow way every frame
        self.prefix, self.suffix = (a[: diff[0]], a[diff[0] + 3 :]) if self._patch else (b"", b"")
        self._ext_map, self._mid = ext_map, mid

    @staticmethod
    def _build(ext_map: Any, mid: str | None, abs_send_time: int) -> bytes:
        profile, value = ext_map.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
        return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""

    def at(self, ntp: int) -> bytes:
        """The block for a frame sent at NTP time ``ntp`` (64-bit fixed point)."""
        if self.static is not None:
            return self.static
        abs_send_time = (ntp >> 14) & 0x00FFFFFF
        if self._patch:
            return self.prefix + abs_send_time.to_bytes(3, "big") + self.suffix
        return self._build(self._ext_map, self._mid, abs_send_time)


class FastSender:
    """Replaces one RTCRtpSender's ``_run_rtp`` / ``_retransmit``. ``direct`` tells whether the sync path runs."""

    def __init__(self, sender: Any, track: FrameTrack, sink: DirectSink | None) -> None:
        self.sender = sender
        self.track = track
        self.sink = sink
        self.video = track.kind == "video"
        self.direct = False
        """True once packets are sent synchronously (``direct_out`` resolved)."""
        self.frames_direct = 0
        """Frames sent on the synchronous path."""
        self._out: Out | None = None
        self._history: dict[int, tuple[int, int, int, bytes, bytes]] = {}
        self._sequence_number = random_sequence_number()
        self._timestamp_origin = random32()
        self._octets = 0
        self._packets = 0
        self._payload_type = 0
        self._ssrc = 0
        self._ext: _ExtensionBlock | None = None

    async def run(self, codec: Any) -> None:
        """The sender's RTP task (``RTCRtpSender._run_rtp``)."""
        sender, track = self.sender, self.track
        getattr(sender, _P + "rtp_started").set()
        self._ext = _ExtensionBlock(getattr(sender, _P + "rtp_header_extensions_map"), getattr(sender, _P + "mid"))
        self._payload_type = codec.payloadType
        self._ssrc = sender._ssrc
        if self.sink is not None:
            self._out = direct_out(sender.transport)
            if self._out is not None:
                self.direct = True
                track.direct = self.send_frame
        try:
            while True:
                # on the direct path only frames that were queued before it took over arrive here
                frame = await track.recv_frame()
                if not frame.payloads:
                    continue
                if self.direct:
                    self.send_frame(frame)
                    continue
                transport = sender.transport
                for data in self._build(frame):
                    await transport._send_rtp(data)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        finally:
            track.direct = None
            track.stop()
            getattr(sender, _P + "rtp_exited").set()

    def send_frame(self, frame: EncodedFrame) -> None:
        """Send ``frame`` now, synchronously (called from the encoder's fan-out)."""
        if not frame.payloads:
            return
        out, sink = self._out, self.sink
        if out is None or sink is None or self.sender.transport.state != "connected":
            # the loop's coroutine path takes the next frames (and ends on the ConnectionError)
            self.direct = False
            self.track.direct = None
            return
        self.frames_direct += 1
        sink.send_direct(out, self._build(frame), self.video)

    def _build(self, frame: EncodedFrame) -> list[bytes]:
        """The frame's RTP packets (history and sender-report counters updated)."""
        ntp = int((time.time() + _NTP_EPOCH_OFFSET_S) * 4294967296.0)
        assert self._ext is not None
        ext = self._ext.at(ntp)
        first = 0x90 if ext else 0x80
        payload_type, ssrc, pack, history = self._payload_type, self._ssrc, _HEADER.pack, self._history
        timestamp = (self._timestamp_origin + (frame.packet.pts or 0)) & 0xFFFFFFFF
        seq = self._sequence_number
        last = len(frame.payloads) - 1
        packets = []
        octets = 0
        for i, payload in enumerate(frame.payloads):
            marker_pt = (0x80 if i == last else 0) | payload_type
            history[seq % RTP_HISTORY_SIZE] = (seq, timestamp, marker_pt, payload, ext)
            packets.append(pack(first, marker_pt, seq, timestamp, ssrc) + ext + payload)
            octets += len(payload)
            seq = (seq + 1) & 0xFFFF
        self._sequence_number = seq
        self._octets += octets
        self._packets += len(packets)
        # RTCP sender-report fields, as aiortc's own loop keeps them
        sender = self.sender
        setattr(sender, _SR_NTP, ntp)
        setattr(sender, _SR_RTP, timestamp)
        setattr(sender, _SR_OCTETS, self._octets)
        setattr(sender, _SR_PACKETS, self._packets)
        return packets

    async def retransmit(self, seq: int) -> None:
        """Answer a NACK for ``seq``: RTX (RFC 4588) if negotiated, else the original packet again."""
        entry = self._history.get(seq % RTP_HISTORY_SIZE)
        if entry is None or entry[0] != seq:
            return
        sender = self.sender
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
