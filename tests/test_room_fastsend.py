"""The room's direct send (``room.fastsend.direct_out``) on real sockets and real SRTP sessions.

The end-to-end direct path runs in tests/test_room_media.py; these cases cover what a room only meets
under load or at a leave: the packet goes straight to the socket, but through asyncio's transport when
the transport has queued data (order kept) and silently not at all once the transport is closed.
The aiortc object graph around the socket (DTLS transport → ICE connection → nominated pair) is built
from plain namespaces: only its shape is fake; socket, transport and libsrtp are real.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest

from probe import srtp
from room.fastsend import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, FastSender, _SegmentBatch, direct_out

KEY = os.urandom(30)


def _session(direction: int, key: bytes = KEY) -> pylibsrtp.Session:
    return pylibsrtp.Session(policy=pylibsrtp.Policy(key=key, ssrc_type=direction))


def _rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHLL", 0x80, 96, seq, seq * 3000, 0x1234) + payload


async def _sender(receiver_addr: tuple[str, int], key: bytes = KEY) -> tuple[Any, Any]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=receiver_addr)
    dtls = SimpleNamespace(state="connected", _tx_srtp=_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND, key),
                           transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair})))
    return dtls, transport


@pytest.fixture
def receiver() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


async def test_packets_reach_the_socket_protected_and_in_order(receiver: socket.socket) -> None:
    dtls, transport = await _sender(receiver.getsockname())
    out = direct_out(dtls)
    assert out is not None
    rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    sent = [_rtp(seq, os.urandom(200 + seq)) for seq in range(1, 6)]
    out(sent[0])
    # with data queued in asyncio's transport, the next packets queue behind it instead of overtaking it
    transport._buffer.append((b"queued first", receiver.getsockname()))
    transport._buffer_size += len(b"queued first")
    for packet in sent[1:]:
        out(packet)
    assert len(transport._buffer) == 5  # nothing overtook the queued datagram
    transport._loop._add_writer(transport._sock_fd, transport._sendto_ready)  # let asyncio flush its queue
    await asyncio.sleep(0.05)
    got = [receiver.recv(2048) for _ in range(6)]
    assert got[1] == b"queued first"
    assert [rx.unprotect(d) for d in got[:1] + got[2:]] == sent
    transport.close()


async def test_a_closed_transport_sends_nothing_and_does_not_raise(receiver: socket.socket) -> None:
    dtls, transport = await _sender(receiver.getsockname())
    out = direct_out(dtls)
    assert out is not None
    transport.close()
    await asyncio.sleep(0)  # the close completes: the socket is closed
    out(_rtp(1, b"x" * 100))  # a viewer that left while a frame was being fanned out
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(2048)


async def test_a_frame_sent_in_place_is_the_same_packets_as_built_ones(receiver: socket.socket) -> None:
    """``send_rtp`` writes header, extension block and payload into libsrtp's buffer; the receiver must get
    exactly the packets ``struct.pack`` + concatenation would have made, marker on the last, in order, also
    when asyncio's transport has data queued."""
    dtls, transport = await _sender(receiver.getsockname())
    out = direct_out(dtls)
    assert out is not None
    rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    ext = bytes.fromhex("bede0001" "32abcdef")  # one-byte extension: id 3, 3 bytes (abs-send-time)
    payloads = tuple(os.urandom(300 + 97 * i) for i in range(4))
    size = out.send_rtp(0x90, 96, 65534, 123456, 0x1234, ext, payloads)
    expected = [struct.pack("!BBHLL", 0x90, (0x80 if i == 3 else 0) | 96, (65534 + i) & 0xFFFF, 123456, 0x1234)
                + ext + p for i, p in enumerate(payloads)]
    assert size == sum(map(len, expected))
    assert [rx.unprotect(receiver.recv(2048)) for _ in payloads] == expected
    transport._buffer.append((b"queued first", receiver.getsockname()))  # the transport has data queued
    transport._buffer_size += len(b"queued first")
    out.send_rtp(0x90, 96, 2, 123456, 0x1234, ext, payloads[:2])
    assert len(transport._buffer) == 3
    transport._loop._add_writer(transport._sock_fd, transport._sendto_ready)
    await asyncio.sleep(0.05)
    assert receiver.recv(2048) == b"queued first"
    assert [rx.unprotect(receiver.recv(2048)) for _ in range(2)] == [
        struct.pack("!BBHLL", 0x90, marker | 96, seq, 123456, 0x1234) + ext + p
        for seq, marker, p in ((2, 0, payloads[0]), (3, 0x80, payloads[1]))]
    with pytest.raises(ValueError, match="too long"):
        out.send_rtp(0x90, 96, 4, 0, 0x1234, ext, (b"x" * 1500,))
    transport.close()


async def _interleaved_frames_reach_each_viewer_intact(n_viewers: int) -> list[Any]:
    """Frames sent to ``n_viewers`` direct sockets (each its own SRTP key and receiver) in turn, as the fan-out
    does; each receiver must get exactly its own packets, built the ``struct.pack`` + concatenation way.
    Returns the ``DirectSocket`` objects."""
    receivers, outs, transports, keys = [], [], [], []
    for _ in range(n_viewers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        key = os.urandom(30)
        dtls, transport = await _sender(sock.getsockname(), key)
        out = direct_out(dtls)
        assert out is not None
        receivers.append(sock)
        outs.append(out)
        transports.append(transport)
        keys.append(key)
    ext = bytes.fromhex("bede0001" "32abcdef")
    expected: list[list[bytes]] = [[] for _ in range(n_viewers)]
    for frame in range(6):
        for i, out in enumerate(outs):
            payloads = tuple(os.urandom(150 + 311 * j + i) for j in range(1 + (frame + i) % 4))
            seq, ts, ssrc = (100 * i + 7 * frame) & 0xFFFF, 3000 * frame, 0x1000 + i
            assert out.send_rtp(0x90, 96, seq, ts, ssrc, ext, payloads) == sum(20 + len(p) for p in payloads)
            expected[i] += [struct.pack("!BBHLL", 0x90, (0x80 if j == len(payloads) - 1 else 0) | 96, seq + j, ts, ssrc)
                            + ext + p for j, p in enumerate(payloads)]
    for sock, key, packets in zip(receivers, keys, expected, strict=True):
        rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND, key)
        assert [rx.unprotect(sock.recv(2048)) for _ in packets] == packets
        sock.close()
    for transport in transports:
        transport.close()
    return outs


async def test_interleaved_viewers_each_get_their_own_packets() -> None:
    """Three viewers, each with its own SRTP key, sent frames in turn as the fan-out sends them: every
    receiver decrypts exactly its own packets, byte for byte."""
    await _interleaved_frames_reach_each_viewer_intact(3)


def test_retransmission_lookup_keeps_the_last_128_packets_across_frames() -> None:
    """NACK -> RTX: a packet is found while it is among the last 128 sent (aiortc's history), with its own
    timestamp, marker, payload and extension block, across sequence-number wrap."""
    sender = FastSender(SimpleNamespace(), SimpleNamespace(kind="video"), None)
    sender._payload_type = 96
    seq = 65500
    frames = []
    for n in range(40):  # frames of 1-7 packets
        payloads = tuple(bytes([n, i]) for i in range(1 + n % 7))
        ext = bytes([n]) * 4
        sender._sent.append((seq, 1000 * n, payloads, ext))
        frames.append((seq, 1000 * n, payloads, ext))
        seq = (seq + len(payloads)) & 0xFFFF
    sender._sequence_number = seq
    sent = [((first + i) & 0xFFFF, ts, (0x80 if i == len(p) - 1 else 0) | 96, p[i], ext)
            for first, ts, p, ext in frames for i in range(len(p))]
    assert len(sent) > 128
    for age, (s, ts, marker_pt, payload, ext) in enumerate(reversed(sent), start=1):
        found = sender._lookup(s)
        assert found == ((ts, marker_pt, payload, ext) if age <= 128 else None), age
    assert sender._lookup(seq) is None  # not sent yet


async def test_equal_sized_packets_go_out_in_one_gso_send_as_separate_datagrams(receiver: socket.socket) -> None:
    """A frame of 40 full packets and a short last one leaves in one ``sendmsg`` with UDP_SEGMENT; the
    kernel must deliver exactly the 41 datagrams, in order, each a valid SRTP packet."""
    dtls, transport = await _sender(receiver.getsockname())
    assert direct_out(dtls) is not None and not direct_out(dtls)._gso  # type: ignore[union-attr]  # off by default
    out = direct_out(dtls, gso=True)
    assert out is not None and out._gso
    calls = []
    real_sock = out._sock

    class CountingSocket:  # records which call carried the packets (the real socket sends them)
        def sendto(self, *args: Any) -> int:
            calls.append("sendto")
            return int(real_sock.sendto(*args))

        def sendmsg(self, *args: Any) -> int:
            calls.append("sendmsg")
            return int(real_sock.sendmsg(*args))

    out._sock = CountingSocket()
    rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    payloads = (*(os.urandom(1100) for _ in range(40)), os.urandom(321))
    out.send_rtp(0x80, 96, 100, 9000, 0x1234, b"", payloads)
    got = [rx.unprotect(receiver.recv(2048)) for _ in payloads]
    assert got == [_rtp_at(100 + i, 9000, p, last=i == 40) for i, p in enumerate(payloads)]
    assert calls == ["sendmsg"]
    transport.close()


def _rtp_at(seq: int, ts: int, payload: bytes, *, last: bool) -> bytes:
    return struct.pack("!BBHLL", 0x80, (0x80 if last else 0) | 96, seq, ts, 0x1234) + payload


def test_segment_batch_splits_runs_where_gso_needs_them() -> None:
    batch = _SegmentBatch()
    sizes = [1000] * 70 + [400] + [1200, 1200, 800, 900]
    for n in sizes:
        assert batch.add(memoryview(bytes([n % 251]) * n))
    runs = [(len(data), segment, count) for data, segment, count in batch.runs()]
    # at most 64 segments per send; a shorter packet ends its run; a larger one starts a new run
    assert runs == [(64 * 1000, 1000, 64), (6 * 1000 + 400, 1000, 7), (1200 + 1200 + 800, 1200, 3), (900, 900, 1)]
    assert sum(count for _, _, count in runs) == len(sizes)
    batch.clear()
    n_fit = GSO_MAX_BYTES // 1400
    for _ in range(n_fit + 1):
        assert batch.add(memoryview(b"x" * 1400))
    assert [count for _, _, count in batch.runs()] == [min(n_fit, GSO_MAX_SEGMENTS), 1]
    while batch.add(memoryview(b"y" * 1400)):
        pass  # until the buffer is full: add refuses and keeps what it has
    assert sum(len(data) for data, _, _ in batch.runs()) <= len(batch._buffer)


async def test_a_frame_larger_than_the_gso_batch_is_sent_whole_and_in_order() -> None:
    """A 150-packet frame (~170 kB, more than one batch buffer) is flushed mid-frame and still arrives complete."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 4 << 20:
        sock.close()
        pytest.skip("cannot raise the receive buffer to hold a 150-packet frame (needs root or a larger rmem_max)")
    dtls, transport = await _sender(sock.getsockname())
    out = direct_out(dtls, gso=True)
    assert out is not None
    rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    payloads = (*(os.urandom(1100) for _ in range(149)), os.urandom(50))
    assert sum(map(len, payloads)) > len(_SegmentBatch()._buffer)
    out.send_rtp(0x80, 96, 65500, 7, 0x1234, b"", payloads)
    got = [rx.unprotect(sock.recv(2048)) for _ in payloads]
    assert got == [_rtp_at((65500 + i) & 0xFFFF, 7, p, last=i == 149) for i, p in enumerate(payloads)]
    transport.close()
    sock.close()


def test_fast_srtp_ops_keep_their_session_alive() -> None:
    """``fast_op`` and ``in_place`` call libsrtp on the session's context: dropping the session must not free
    it under them (it did crash the process before they held a reference)."""
    protect, fast = srtp.fast_op(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), "protect")
    unprotect, _ = srtp.fast_op(_session(pylibsrtp.Policy.SSRC_ANY_INBOUND), "unprotect")
    gc.collect()
    assert fast
    packet = _rtp(7, b"x" * 300)
    assert unprotect(protect(packet)) == packet
    with pytest.raises(pylibsrtp.Error):
        unprotect(protect(packet))  # a replayed index is refused, through the error path
