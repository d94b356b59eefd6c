"""Every join failure code reached by a real failing case, through a real room.

A small WHEP proxy sits between the probe and the embedded room and breaks one thing in the room's real
answer: the SDP itself, the ICE candidates, the DTLS fingerprint, or (with a UDP relay that passes STUN
but drops DTLS) the handshake. The probe must turn each into a report with the right ``failure``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from probe.session import ProbeOptions, run_session
from room.config import RoomConfig, ServerConfig
from room.server import RoomServer

pytestmark = [pytest.mark.slow, pytest.mark.realtime]

Rewrite = Callable[[str], str]
CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d) (\S+) (\d+) (\S+) (\d+) typ host.*$", re.MULTILINE)


def _same(sdp: str) -> str:
    return sdp


async def whep_proxy(upstream: str, rewrite: Rewrite, rewrite_offer: Rewrite = _same) -> tuple[web.AppRunner, str]:
    """A WHEP endpoint that forwards to ``upstream``, passing offer and answer through the rewrites."""

    async def post(request: web.Request) -> web.Response:
        offer = rewrite_offer(await request.text())
        async with aiohttp.ClientSession() as s, s.post(upstream, data=offer,
                                                        headers={"Content-Type": "application/sdp"}) as r:
            body = await r.text()
            return web.Response(status=r.status, text=rewrite(body), content_type="application/sdp",
                                headers={"Location": upstream + "/gone"})

    async def delete(_: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whep/x", post)
    app.router.add_delete("/whep/x/gone", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/whep/x"


async def run_through(rewrite: Rewrite, rewrite_offer: Rewrite = _same, **opts: Any) -> Any:
    async with RoomServer(ServerConfig(rooms=(RoomConfig("r"),))) as room:
        runner, url = await whep_proxy(room.whep_url("r"), rewrite, rewrite_offer)
        try:
            return await run_session(ProbeOptions(url=url, duration_s=3, **opts))
        finally:
            await runner.cleanup()


def point_candidates_at(port: int) -> Rewrite:
    def rewrite(sdp: str) -> str:
        return CANDIDATE.sub(lambda m: f"a=candidate:{m[1]} {m[2]} {m[3]} {m[4]} 127.0.0.1 {port} typ host", sdp)
    return rewrite


@pytest.fixture
def silent_udp() -> AsyncIterator[int] | Any:
    """A bound UDP socket that never answers (STUN checks to it go unanswered)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


async def test_garbage_answer_is_bad_sdp() -> None:
    report = await run_through(lambda _: "this is not SDP\r\n")
    assert report.failure == "bad_sdp", report.failure_message
    assert report.summary.join.signaling_ms is not None and report.summary.join.ice_connected_ms is None


async def test_unanswered_candidates_are_ice_timeout(silent_udp: int) -> None:
    # both directions: the room must not reach the probe either (it would find a peer-reflexive pair)
    report = await run_through(point_candidates_at(silent_udp), point_candidates_at(silent_udp), connect_timeout_s=3)
    assert report.failure in ("ice_timeout", "ice_failed"), report.failure_message
    assert report.summary.join.ice_connected_ms is None
    assert "ICE" in (report.failure_message or "")


async def test_wrong_fingerprint_is_dtls_failed() -> None:
    def rewrite(sdp: str) -> str:
        return re.sub(r"(a=fingerprint:sha-256 )([0-9A-F:]+)", lambda m: m[1] + ":".join(["AB"] * 32), sdp)

    report = await run_through(rewrite, connect_timeout_s=5)
    assert report.failure == "dtls_failed", report.failure_message
    assert report.summary.join.ice_connected_ms is not None and report.summary.join.dtls_connected_ms is None


class _StunOnlyRelay(asyncio.DatagramProtocol):
    """Relays UDP between the probe and the room's candidate, passing STUN and dropping everything else
    (DTLS records start with a byte in 20..63, STUN with 0 or 1: RFC 7983)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if data and data[0] > 3:
            self.dropped += 1
            return
        if addr == self.upstream:
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.transport.sendto(data, self.upstream)


async def test_dtls_that_never_completes_is_dtls_timeout() -> None:
    loop = asyncio.get_running_loop()
    relay: _StunOnlyRelay | None = None
    transport: asyncio.DatagramTransport | None = None

    def rewrite(sdp: str) -> str:
        nonlocal relay, transport
        m = CANDIDATE.search(sdp)
        assert m is not None, sdp
        relay = _StunOnlyRelay(("127.0.0.1", int(m[6])))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        transport_coro = loop.create_datagram_endpoint(lambda: relay, sock=sock)  # type: ignore[arg-type,return-value]
        pending.append(asyncio.ensure_future(transport_coro))
        return point_candidates_at(port)(sdp)

    pending: list[asyncio.Future[Any]] = []
    try:
        report = await run_through(rewrite, connect_timeout_s=4)
    finally:
        for f in pending:
            if f.done():
                transport = f.result()[0]
                transport.close()
    assert report.failure == "dtls_timeout", report.failure_message
    assert report.summary.join.ice_connected_ms is not None and report.summary.join.dtls_connected_ms is None
    assert relay is not None and relay.dropped > 0
