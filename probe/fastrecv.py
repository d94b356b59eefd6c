"""The probe's direct receive path: SRTP media packets handled in the socket callback, no task hops.

In stock aiortc every received datagram travels: aioice ``StunProtocol.datagram_received`` (which
first tries to parse it as STUN and fails) → an ``asyncio.Queue`` → the ICE ``Connection.recv`` →
the DTLS transport's receive task, woken once per packet (``RTCDtlsTransport._recv_next``) →
``Session.unprotect`` → ``RtpPacket.parse`` → the receiver's ``_handle_rtp_packet`` coroutine. With
dozens of probes in one process the queue, the task wake-ups and the failed STUN parse cost about as
much as the receiver's own work, and the packet's arrival time is read only when the task gets to it,
so a busy event loop shows up as network delay in aiortc's bandwidth estimator.

Once the DTLS transport is connected, ``install`` wraps the ``datagram_received`` of the nominated
pair's UDP protocol (that instance only). An SRTP (not SRTCP) packet is then, synchronously:
arrival time read → ``srtp_unprotect`` (``probe.srtp``) → an ``RtpPacket`` (``probe.rtpparse``) with the transport's
header-extension map → routed as aiortc routes it → for a receiver the probe tapped, ``probe.rtphandler``'s
one function (the tap's counting and aiortc's receiver steps, no coroutine); otherwise, or with
``fused=False``, the receiver's ``_handle_rtp_packet`` driven to completion in place (it never waits on
anything in aiortc 1.16; if it ever does, the rest of it runs as a task). Everything else (STUN, DTLS,
SRTCP) takes aiortc's path unchanged, and the receiver's work (RTCP statistics, NACKs, jitter buffer,
REMB, our tap) is aiortc's, so what the probe measures is the same on every path;
``tests/test_probe_vs_room.py`` runs all three.

This reads private names of aiortc (``_rx_srtp``, ``_rtp_router``, ``_rtp_header_extensions_map``)
and aioice (``_connection._nominated``). If one is missing, ``install`` returns None, logs
``fast_receive_fallback`` once, and packets keep aiortc's path. ``ProbeOptions.fast_receive=False``
(``--no-fast-receive``) forces aiortc's path.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pylibsrtp
import structlog

from probe import rtpparse, srtp

log = structlog.get_logger()

NTP_EPOCH_MS = 2_208_988_800_000
"""aiortc's ``clock.current_ms()`` counts from 1900-01-01; arrival times must use the same origin."""


@functools.cache
def _log_fallback(reason: str) -> None:
    log.warning("fast_receive_fallback", reason=reason, detail="packets take aiortc's coroutine path")


_resumed: set[asyncio.Future[None]] = set()


def drive(coro: Coroutine[Any, Any, None]) -> bool:
    """Run ``coro`` now, to completion if it never suspends (True); otherwise finish it as a task (False)."""
    try:
        first = coro.send(None)
    except StopIteration:
        return True
    task = asyncio.ensure_future(_Resume(coro, first))
    _resumed.add(task)  # the loop keeps only a weak reference to a task
    task.add_done_callback(_resumed.discard)
    return False


class _Resume:
    """An awaitable continuing a coroutine that already ran up to its first suspension."""

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, None]:
        pending = self._pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # cancellation and errors go into the coroutine
                try:
                    pending = self._coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = self._coro.send(sent)
                except StopIteration:
                    return


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's receive-timestamp socket option (Python's socket module does not name it)."""
_TIMESPEC = struct.Struct("@qq")
RECV_MAX = 65536
"""asyncio's ``max_size`` for a datagram read."""
READS_PER_WAKEUP = 16
"""Datagrams read per readiness event at most (asyncio reads one). A frame's packets arrive as a burst, so
a busy probe host finds several waiting; reading them in one go saves an event-loop iteration each."""


class DirectReceive:
    """Counts of the packets the direct path handled (tests check which path ran)."""

    def __init__(self) -> None:
        self.kernel_timestamps = False
        self.packets = 0
        self.fused = 0
        """Packets handled by the fused handler (``probe.rtphandler``) rather than the receiver's coroutines."""
        self.suspended = 0
        self.rejected = 0


def install(dtls: Any, clock_ms: Callable[[], float] | None = None, fused: bool = True) -> DirectReceive | None:
    """Handle ``dtls``'s incoming SRTP media synchronously from now on; None (and aiortc's path) if unable.

    Call once the transport is connected (its SRTP session and nominated ICE pair exist).
    ``clock_ms`` gives arrival times on aiortc's clock (ms since 1900) when the kernel gives none; the
    default reads the wall clock. ``fused``: a receiver the probe tapped gets its packets through one
    synchronous function (``probe.rtphandler``) instead of its two coroutines.
    """
    from probe.rtphandler import Handler, fused_handler  # it imports this module

    try:
        if dtls.state != "connected":
            return None
        unprotect, fast = srtp.fast_op(dtls._rx_srtp, "unprotect")
        ext_map = dtls._rtp_header_extensions_map
        route = dtls._rtp_router.route_rtp
        protocol = dtls.transport._connection._nominated[1].protocol
        aiortc_path = protocol.datagram_received
    except (AttributeError, KeyError, TypeError) as exc:
        _log_fallback(f"{type(exc).__name__}: {exc}")
        return None
    if not fast:
        _log_fallback("pylibsrtp internals changed: using Session.unprotect")
    now_ms = clock_ms or (lambda: time.time() * 1000.0 + NTP_EPOCH_MS)
    stats = DirectReceive()
    parse = rtpparse.parser(ext_map)
    handlers: dict[Any, Handler | None] = {}

    def deliver(data: bytes, addr: tuple[Any, ...], arrival_wall_ms: float | None) -> None:
        # SRTP: first byte 128..191 (RTP version 2); SRTCP has a packet type 192..208 in the second byte
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 209:
            aiortc_path(data, addr)
            return
        arrival_ms = now_ms() if arrival_wall_ms is None else arrival_wall_ms + NTP_EPOCH_MS
        try:
            packet = parse(unprotect(data))
        except (pylibsrtp.Error, ValueError):
            stats.rejected += 1  # aiortc logs these at debug level and drops them; so do we
            return
        receiver = route(packet)
        if receiver is None:
            return
        stats.packets += 1
        try:
            handler = handlers[receiver]
        except KeyError:
            tap = getattr(receiver, "_probe_tap", None) if fused else None
            handler = handlers[receiver] = None if tap is None else fused_handler(tap)
            if tap is not None and handler is None:
                _log_fallback("aiortc's RTCRtpReceiver internals changed: no fused handler")
        if handler is not None:
            stats.fused += 1
            handler(packet, arrival_ms)
        elif not drive(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_ms)):
            stats.suspended += 1

    stats.kernel_timestamps = _read_with_kernel_timestamps(protocol, deliver)
    if not stats.kernel_timestamps:

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            deliver(data, addr, None)

        protocol.datagram_received = datagram_received
    return stats


Deliver = Callable[[bytes, tuple[Any, ...], float | None], None]
"""(datagram, address, kernel receive time in ms since 1970 or None)."""


def _read_with_kernel_timestamps(protocol: Any, deliver: Deliver) -> bool:
    """Replace asyncio's reader of the protocol's UDP socket with one that asks the kernel for each
    datagram's receive time (``SO_TIMESTAMPNS``); False (nothing changed) where that is unavailable.

    Mirrors ``_SelectorDatagramTransport._read_ready`` (errors to ``error_received``; the transport still
    owns the socket and removes this reader when it closes), but reads up to ``READS_PER_WAKEUP`` datagrams
    per readiness event.
    """
    try:
        transport = protocol.transport
        sock, loop, fd = transport._sock, transport._loop, transport._sock_fd
        add_reader = loop._add_reader
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except (AttributeError, OSError) as exc:
        _log_fallback(f"no kernel receive timestamps: {type(exc).__name__}: {exc}")
        return False
    anc_size = socket.CMSG_SPACE(_TIMESPEC.size)

    def read_ready() -> None:
        for _ in range(READS_PER_WAKEUP):
            if transport._conn_lost:
                return
            try:
                data, ancdata, _flags, addr = sock.recvmsg(RECV_MAX, anc_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            arrival: float | None = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    arrival = sec * 1000.0 + nsec / 1e6
            deliver(data, addr, arrival)

    add_reader(fd, read_ready)
    return True
