"""The room's direct send (``room.fastsend.direct_out``) on real sockets and real SRTP sessions.

The end-to-end direct path runs in tests/test_room_media.py; these cases cover what a room only meets
under load or at a leave: the packet goes straight to the socket, but through asyncio's transport when
the transport has queued data (order kept) and silently not at all once the transport is closed.
The aiortc object graph around the socket (DTLS transport → ICE connection → nominated pair) is built
from plain namespaces: only its shape is fake; socket, transport and libsrtp are real.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest

from room.fastsend import direct_out

KEY = os.urandom(30)


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(policy=pylibsrtp.Policy(key=KEY, ssrc_type=direction))


def _rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHLL", 0x80, 96, seq, seq * 3000, 0x1234) + payload


async def _sender(receiver_addr: tuple[str, int]) -> tuple[Any, Any]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=receiver_addr)
    dtls = SimpleNamespace(state="connected", _tx_srtp=_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
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
