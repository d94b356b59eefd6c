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
  transport and sends every packet **synchronously** from the encoder's fan-out (the track's ``direct``
  hook): one Python loop per frame over all viewers, no task switch and no coroutine per packet. An
  unimpaired viewer's packets are written into libsrtp's buffer and protected in place
  (``DirectSocket.send_rtp``); an impaired viewer's are built and go through its ``SendPath``
  (``SendPath.send_direct``), which applies the impairments and keeps the truth.

RTCP (sender reports) and NACK → RTX stay on aiortc's own path (rare packets), through the same
``SendPath``. The sender's own bookkeeping (RTCP sender-report counters, started/exited events) is
kept in its private attributes, so ``RTCRtpSender.stop()``, RTCP SR and NACK → RTX keep working.
That couples this module to private names of aiortc and aioice; if one is missing, the direct send
is not used (logged once, ``fast_send_fallback``) and packets take aiortc's coroutine path; the tests
(``tests/test_room_media.py``) run the room with and without this module and check which path ran.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
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

    def plain(self) -> bool:
        """True when packets go out unimpaired, now: the sender may send a frame itself (``sent_plain``)."""
        ...

    def sent_plain(self, packets: int, size: int, video: bool) -> None:
        """The sender sent a frame of ``packets`` RTP packets, ``size`` bytes, itself."""
        ...

    def send_direct(self, out: Out, packets: list[bytes], video: bool) -> None: ...


@functools.cache
def _log_fallback(reason: str) -> None:
    log.warning("fast_send_fallback", reason=reason, detail="packets take aiortc's coroutine path")


UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
"""Linux's UDP GSO option (Python 3.11's socket module does not name it)."""
_SEGMENT = struct.Struct("=H")
GSO = sys.platform == "linux"
"""Whether UDP generic segmentation offload can be asked for here (``ServerConfig.udp_gso``, off by default):
one ``sendmsg`` per run of equal-sized packets instead of one ``sendto`` per packet (~1.5 µs less per packet
on loopback). Turned off per socket when the kernel refuses it."""
GSO_MAX_SEGMENTS = 64
"""The kernel's ``UDP_MAX_SEGMENTS``."""
GSO_MAX_BYTES = 65_000
"""What one GSO send may carry (an IPv4/IPv6 UDP datagram's payload limit, with room to spare)."""


class _SegmentBatch:
    """A frame's protected packets, copied end to end into one buffer and split into GSO runs."""

    def __init__(self) -> None:
        self._buffer = bytearray(2 * GSO_MAX_BYTES)
        self._view = memoryview(self._buffer)
        self._runs: list[tuple[int, int, int]] = []  # (start offset, segment size, packets)
        self._end = 0

    def add(self, packet: memoryview) -> bool:
        """Copy ``packet`` in; False (nothing added) when the buffer is full: flush, then add again."""
        n = len(packet)
        start = self._end
        if start + n > len(self._buffer):
            return False
        if self._runs:
            run_start, segment, count = self._runs[-1]
            closed = count > 1 and start - run_start < count * segment  # ended by a shorter packet
            if (not closed and n <= segment and count < GSO_MAX_SEGMENTS
                    and start + n - run_start <= GSO_MAX_BYTES):
                self._runs[-1] = (run_start, segment, count + 1)
                self._view[start : start + n] = packet
                self._end = start + n
                return True
        self._runs.append((start, n, 1))
        self._view[start : start + n] = packet
        self._end = start + n
        return True

    def runs(self) -> list[tuple[memoryview, int, int]]:
        """(data, segment size, packets) per run, in order."""
        out = []
        for k, (start, segment, count) in enumerate(self._runs):
            end = self._runs[k + 1][0] if k + 1 < len(self._runs) else self._end
            out.append((self._view[start:end], segment, count))
        return out

    def clear(self) -> None:
        self._runs.clear()
        self._end = 0


class DirectSocket:
    """One connected viewer's SRTP session and UDP socket: packets protected and sent synchronously.

    A packet goes straight to the UDP socket while the asyncio transport has nothing queued (its own
    first step); otherwise, or if the socket refuses it, through the transport's ``sendto``, which keeps
    order, queues on a full buffer and reports errors as it always does. Once the transport is closing,
    packets are dropped (``tests/test_room_fastsend.py``).

    ``__call__`` sends one RTP packet given as bytes (the impaired path). ``send_rtp`` writes each packet
    of a frame into libsrtp's buffer (header with ``pack_into``, then extension block and payload),
    protects it there and hands the socket a view of the result: no packet is built as ``bytes`` on the
    way (``probe.srtp.InPlace``).
    """

    def __init__(self, dtls: Any, *, gso: bool = False) -> None:
        """Raises AttributeError, KeyError or TypeError when a private attribute this relies on is missing.
        ``gso``: send a frame's equal-sized packets with one UDP GSO call (``ServerConfig.udp_gso``)."""
        session = dtls._tx_srtp
        self._protect = _protector(session)
        pair = dtls.transport._connection._nominated[1]
        self._transport = transport = pair.protocol.transport
        self._sendto, self._sock, self._pending = transport.sendto, transport._sock, transport._buffer
        self._addr = pair.remote_addr
        self._in_place = srtp.in_place(session, "protect")
        self.in_place = self._in_place is not None
        """Whether ``send_rtp`` can be used (pylibsrtp's internals as expected); otherwise send built packets."""
        self._gso = gso and GSO and getattr(self._sock, "family", None) in (socket.AF_INET, socket.AF_INET6)
        self._batch: _SegmentBatch | None = None  # made on first use: ~130 kB per viewer, only with GSO

    def __call__(self, data: bytes) -> None:
        packet = self._protect(data)
        if not self._pending:  # what asyncio's sendto does first, minus its Python checks (~2 µs a packet)
            try:
                self._sock.sendto(packet, self._addr)
                return
            except OSError:
                pass  # a full socket buffer (asyncio's sendto queues the packet) or a closed socket
        self._queue(packet)

    def _queue(self, packet: bytes) -> None:
        if self._transport.is_closing():
            return  # the ICE connection closed under a viewer still in the fan-out (e.g. consent expired):
            # asyncio 3.11's sendto would raise AttributeError on an unconnected transport it has closed
        self._sendto(packet, self._addr)

    def send_rtp(self, first: int, payload_type: int, seq: int, timestamp: int, ssrc: int, ext: bytes,
                 payloads: tuple[bytes, ...]) -> int:
        """Send one frame's packets (consecutive ``seq``, marker on the last); the RTP bytes sent."""
        ip = self._in_place
        assert ip is not None, "send_rtp needs in-place SRTP (``in_place``)"
        view, run, max_len, pack_into = ip.view, ip.run, ip.max_len, _HEADER.pack_into
        batch = None
        if len(payloads) > 1 and self._gso:
            batch = self._batch = self._batch or _SegmentBatch()
        body = 12 + len(ext)
        last = len(payloads) - 1
        total = 0
        for i, payload in enumerate(payloads):
            n = body + len(payload)
            if n > max_len:
                raise ValueError("packet is too long")
            pack_into(view, 0, first, (0x80 if i == last else 0) | payload_type, seq, timestamp, ssrc)
            view[12:body] = ext
            view[body:n] = payload
            protected = view[: run(n)]
            if batch is not None:
                if not batch.add(protected):  # a frame larger than the batch buffer: send what is in it
                    self._flush(batch)
                    batch.add(protected)
            elif self._pending:
                self._queue(bytes(protected))
            else:
                try:
                    self._sock.sendto(protected, self._addr)
                except OSError:
                    self._queue(bytes(protected))
            total += n
            seq = (seq + 1) & 0xFFFF
        if batch is not None:
            self._flush(batch)
        return total

    def _flush(self, batch: _SegmentBatch) -> None:
        """Send a frame's protected packets: each run of equal-sized packets (the last of a run may be
        shorter) in one ``sendmsg`` with UDP GSO; the kernel splits it into the same datagrams."""
        for data, segment, count in batch.runs():
            if self._pending:
                for k in range(0, len(data), segment):
                    self._queue(bytes(data[k : k + segment]))
                continue
            try:
                if count == 1:
                    self._sock.sendto(data, self._addr)
                else:
                    self._sock.sendmsg([data], [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment))], 0, self._addr)
                continue
            except BlockingIOError:
                pass  # a full socket buffer: asyncio's transport queues them
            except OSError as exc:
                if count > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self._gso = False  # no UDP GSO here: one datagram per call from now on
                    _log_fallback(f"UDP GSO refused: {exc}")
            for k in range(0, len(data), segment):
                self._queue(bytes(data[k : k + segment]))
        batch.clear()


def direct_out(dtls: Any, *, gso: bool = False) -> DirectSocket | None:
    """The ``DirectSocket`` of a connected aiortc RTCDtlsTransport, or None.

    None when the transport is not connected, or when a private attribute this relies on
    (``_tx_srtp``, the ICE connection's nominated pair and its asyncio transport) is missing.
    """
    try:
        if dtls.state != "connected":
            return None
        return DirectSocket(dtls, gso=gso)
    except (AttributeError, KeyError, TypeError) as exc:
        _log_fallback(f"{type(exc).__name__}: {exc}")
        return None


def _protector(session: Any) -> Callable[[bytes], bytes]:
    """``session.protect`` minus its per-call ``ffi.new`` (about half the cost), see ``probe.srtp``."""
    protect, fast = srtp.fast_op(session, "protect")
    if not fast:
        _log_fallback("pylibsrtp internals changed: using Session.protect")
    return protect


def install(sender: Any, track: FrameTrack, sink: DirectSink | None = None, *, gso: bool = False) -> FastSender:
    """Make ``sender`` (an aiortc RTCRtpSender, not started yet) send ``track``'s shared payloads.

    With a ``sink``, packets are sent synchronously from the fan-out once DTLS is connected.
    """
    fast = FastSender(sender, track, sink, gso=gso)
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

    def __init__(self, sender: Any, track: FrameTrack, sink: DirectSink | None, *, gso: bool = False) -> None:
        self.sender = sender
        self.gso = gso
        self.track = track
        self.sink = sink
        self.video = track.kind == "video"
        self.direct = False
        """True once packets are sent synchronously (``direct_out`` resolved)."""
        self.frames_direct = 0
        """Frames sent on the synchronous path."""
        self._out: DirectSocket | None = None
        self._sender_fields: dict[str, Any] = vars(sender)
        self._connected: Callable[[], bool] = lambda: False
        # the frames sent, for NACK -> RTX: (first sequence number, RTP timestamp, payloads, extension block);
        # a packet can be resent while it is among the last RTP_HISTORY_SIZE sent, as in aiortc's sender
        self._sent: deque[tuple[int, int, tuple[bytes, ...], bytes]] = deque(maxlen=RTP_HISTORY_SIZE)
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
            dtls = sender.transport
            self._out = direct_out(dtls, gso=self.gso)
            if self._out is not None:
                self._connected = _connected_check(dtls)
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
        payloads = frame.payloads
        if not payloads:
            return
        out, sink = self._out, self.sink
        if out is None or sink is None or not self._connected():
            # the loop's coroutine path takes the next frames (and ends on the ConnectionError)
            self.direct = False
            self.track.direct = None
            return
        self.frames_direct += 1
        if not (out.in_place and sink.plain()):  # impairments: packet by packet through the viewer's send path
            sink.send_direct(out, self._build(frame), self.video)
            return
        ntp, ext, first, timestamp = self._frame_fields(frame)
        seq = self._sequence_number
        self._sent_frame(seq, timestamp, payloads, frame.payload_bytes, ext, ntp)  # first: an error mid-frame
        # must not reuse sequence numbers
        size = out.send_rtp(first, self._payload_type, seq, timestamp, self._ssrc, ext, payloads)
        sink.sent_plain(len(payloads), size, self.video)

    def _frame_fields(self, frame: EncodedFrame) -> tuple[int, bytes, int, int]:
        """(NTP time now, extension block, first header byte, RTP timestamp) for sending ``frame`` now."""
        ntp = int((time.time() + _NTP_EPOCH_OFFSET_S) * 4294967296.0)
        assert self._ext is not None
        ext = self._ext.at(ntp)
        timestamp = (self._timestamp_origin + (frame.packet.pts or 0)) & 0xFFFFFFFF
        return ntp, ext, 0x90 if ext else 0x80, timestamp

    def _sent_frame(self, seq: int, timestamp: int, payloads: tuple[bytes, ...], frame_bytes: int, ext: bytes,
                    ntp: int) -> None:
        """Bookkeeping for a frame whose packets got sequence numbers from ``seq`` on."""
        self._sent.append((seq, timestamp, payloads, ext))
        self._sequence_number = (seq + len(payloads)) & 0xFFFF
        self._octets += frame_bytes
        self._packets += len(payloads)
        # RTCP sender-report fields, as aiortc's own loop keeps them (plain instance attributes)
        fields = self._sender_fields
        fields[_SR_NTP] = ntp
        fields[_SR_RTP] = timestamp
        fields[_SR_OCTETS] = self._octets
        fields[_SR_PACKETS] = self._packets

    def _build(self, frame: EncodedFrame) -> list[bytes]:
        """The frame's RTP packets (history and sender-report counters updated)."""
        ntp, ext, first, timestamp = self._frame_fields(frame)
        payload_type, ssrc, pack = self._payload_type, self._ssrc, _HEADER.pack
        seq = first_seq = self._sequence_number
        last = len(frame.payloads) - 1
        packets = []
        for i, payload in enumerate(frame.payloads):
            packets.append(pack(first, (0x80 if i == last else 0) | payload_type, seq, timestamp, ssrc) + ext + payload)
            seq = (seq + 1) & 0xFFFF
        self._sent_frame(first_seq, timestamp, frame.payloads, frame.payload_bytes, ext, ntp)
        return packets

    def _lookup(self, seq: int) -> tuple[int, int, bytes, bytes] | None:
        """(RTP timestamp, marker | payload type, payload, extension block) of sent packet ``seq``, if kept."""
        if not 1 <= (self._sequence_number - seq) & 0xFFFF <= RTP_HISTORY_SIZE:
            return None
        for first_seq, timestamp, payloads, ext in reversed(self._sent):
            i = (seq - first_seq) & 0xFFFF
            if i < len(payloads):
                marker = 0x80 if i == len(payloads) - 1 else 0
                return timestamp, marker | self._payload_type, payloads[i], ext
        return None

    async def retransmit(self, seq: int) -> None:
        """Answer a NACK for ``seq``: RTX (RFC 4588) if negotiated, else the original packet again."""
        entry = self._lookup(seq)
        if entry is None:
            return
        sender = self.sender
        timestamp, marker_pt, payload, ext = entry
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


def _connected_check(dtls: Any) -> Callable[[], bool]:
    """A cheap "is ``dtls`` still connected?" (its ``state`` property formats an enum on every read)."""
    connected = DtlsState.CONNECTED
    if isinstance(getattr(dtls, "_state", None), DtlsState):
        return lambda: dtls._state is connected
    return lambda: bool(dtls.state == "connected")
