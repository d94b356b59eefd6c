"""The room's HTTP surface: WHEP status codes and bodies, CORS, listing. Real app, real aiortc offers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver

from probe import ice
from room.config import Rendition, RoomConfig, ServerConfig
from room.schedule import Refusal
from room.server import create_app

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]

SMALL = (Rendition("180p", 320, 180, 15, 200),)


async def make_offer(video_codec: str | None = None, audio: bool = True, video: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if video:
            tr = pc.addTransceiver("video", direction="recvonly")
            if video_codec:
                tr.setCodecPreferences(
                    [c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType.lower() == video_codec]
                )
        if audio:
            pc.addTransceiver("audio", direction="recvonly")
        with ice.host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    config = ServerConfig(
        rooms=(
            RoomConfig("test", renditions=SMALL),
            RoomConfig("closed", renditions=SMALL, refusals=(Refusal(room_to_ms=3_600_000),)),
            RoomConfig("apac", renditions=SMALL, refusals=(Refusal(match={"region": ("ap",)}),)),
        )
    )
    return await aiohttp_client(create_app(config))


async def test_unknown_room_404_says_how_to_create_rooms(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/whep/nope", data=await make_offer(), headers={"Content-Type": "application/sdp"})
    assert resp.status == 404
    body = await resp.text()
    assert "'nope'" in body and "apac, closed, test" in body and "--room" in body and "scenario" in body
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_wrong_content_type_415(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/whep/test", data="v=0\r\n", headers={"Content-Type": "application/json"})
    assert resp.status == 415
    assert "application/sdp" in await resp.text()


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        ("", "empty"),
        ("hello\r\n", "v=0"),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n",
            "no video m-line",
        ),
    ],
)
async def test_malformed_offer_400_names_the_problem(client: TestClient[Any, Any], sdp: str, words: str) -> None:
    resp = await client.post("/whep/test", data=sdp, headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    assert words in await resp.text()


async def test_audio_only_offer_400(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/whep/test", data=await make_offer(video=False), headers={"Content-Type": "application/sdp"}
    )
    assert resp.status == 400
    assert "no video m-line" in await resp.text()


async def test_offer_without_the_room_codec_400(client: TestClient[Any, Any]) -> None:
    offer = await make_offer(video_codec="video/h264")
    resp = await client.post("/whep/test", data=offer, headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    assert "VP8" in await resp.text()


async def test_refused_joins_503_and_recorded(client: TestClient[Any, Any]) -> None:
    offer = await make_offer()
    resp = await client.post("/whep/closed", data=offer, headers={"Content-Type": "application/sdp"})
    assert resp.status == 503
    assert "refuses" in await resp.text()
    assert int(resp.headers["Retry-After"]) > 3000
    resp = await client.post(
        "/whep/apac", params={"region": "ap"}, data=offer, headers={"Content-Type": "application/sdp"}
    )
    assert resp.status == 503
    assert "Retry-After" not in resp.headers
    truth = await (await client.get("/rooms/apac/truth")).json()
    assert truth["joins_refused"][0]["labels"] == {"region": "ap"}
    assert truth["viewers"] == []


async def test_join_201_headers_and_leave(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/whep/apac",
        params={"region": "eu"},
        data=await make_offer(),
        headers={"Content-Type": "application/sdp"},
    )
    assert resp.status == 201
    assert resp.content_type == "application/sdp"
    location = resp.headers["Location"]
    assert location.startswith("/whep/apac/")
    answer = await resp.text()
    assert answer.startswith("v=0") and "a=candidate:" in answer and "127.0.0.1" in answer
    assert "a=end-of-candidates" in answer
    assert "VP8/90000" in answer
    assert "stun" not in answer.lower()
    assert resp.headers["Access-Control-Expose-Headers"].startswith("Location")
    rooms = await (await client.get("/rooms")).json()
    assert {r["name"]: r["viewers"] for r in rooms["rooms"]} == {"test": 0, "closed": 0, "apac": 1}
    assert (await client.patch(location, data="x")).status == 405
    assert (await client.delete(location)).status == 200
    assert (await client.delete(location)).status == 404
    truth = await (await client.get("/rooms/apac/truth")).json()
    (viewer,) = truth["viewers"]
    assert viewer["labels"] == {"region": "eu"}
    assert viewer["left_ms"] >= viewer["joined_ms"]
    assert viewer["leave_reason"] == "delete"


async def test_cors_preflight(client: TestClient[Any, Any]) -> None:
    resp = await client.options(
        "/whep/test", headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
    assert resp.headers["Accept-Post"] == "application/sdp"


async def test_truth_of_unknown_room_404(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/rooms/nope/truth")).status == 404
