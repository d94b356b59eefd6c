"""The room's HTTP side: WHEP (draft-ietf-wish-whep) endpoints, room listing and ground truth.

Routes (docs/room.md):
    POST    /whep/{room}?label=value...   application/sdp offer → 201 + answer + Location
    DELETE  /whep/{room}/{viewer}         leave → 200
    PATCH   /whep/{room}/{viewer}         405 (no trickle ICE: the answer carries every candidate)
    OPTIONS /whep/...                     CORS preflight → 204
    GET     /rooms                        rooms and viewer counts
    GET     /rooms/{room}/truth           ground truth per viewer (?viewer=ID for one)
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from room.config import ServerConfig
from room.room import BadOffer, JoinRefused, Room

log = structlog.get_logger()

CONFIG = web.AppKey("config", ServerConfig)
ROOMS = web.AppKey("rooms", dict[str, Room])

MAX_OFFER_BYTES = 64 * 1024
MAX_LABELS = 16
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Post, Retry-After",
    "Access-Control-Max-Age": "600",
}

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS headers on every answer (errors too) and one canonical log line per request."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(CORS_HEADERS)
        _log_request(request, exc.status, started)
        raise
    response.headers.update(CORS_HEADERS)
    _log_request(request, response.status, started)
    return response


def _log_request(request: web.Request, status: int, started: float) -> None:
    log.info(
        "http_request",
        method=request.method,
        path=request.path,
        status=status,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _room_or_404(request: web.Request) -> Room:
    rooms = request.app[ROOMS]
    name = request.match_info["room"]
    room = rooms.get(name)
    if room is None:
        raise web.HTTPNotFound(
            text=(
                f"no room named {name!r}. Rooms here: {', '.join(sorted(rooms)) or '(none)'}.\n"
                "Rooms are created when the server starts: `streamqoe room --room NAME[:WxH@FPS:CODEC:KBPS]` "
                '(e.g. --room lobby:640x360@25:h264:800), or under "rooms" in the --scenario file '
                "(docs/scenario.md). Join one with POST /whep/<room>.\n"
            )
        )
    return room


@routes.post("/whep/{room}")
async def whep_post(request: web.Request) -> web.Response:
    """Join: SDP offer in, 201 + SDP answer out. Query parameters become the viewer's labels."""
    room = _room_or_404(request)
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type must be application/sdp (got {request.content_type or 'none'!r})\n",
            headers={"Accept-Post": "application/sdp"},
        )
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_OFFER_BYTES, actual_size=request.content_length)
    offer = await request.text()
    if len(request.query) > MAX_LABELS:
        raise web.HTTPBadRequest(text=f"too many labels (query parameters): at most {MAX_LABELS}\n")
    labels = {k: v[:128] for k, v in request.query.items()}
    try:
        viewer, answer = await room.join(offer, labels)
    except JoinRefused as exc:
        headers = {} if exc.retry_after_s is None else {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers=headers) from exc
    except BadOffer as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from exc
    location = f"/whep/{room.name}/{viewer.id}"
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={"Location": location, "ETag": f'"{viewer.id}"'},
    )


@routes.delete("/whep/{room}/{viewer}")
async def whep_delete(request: web.Request) -> web.Response:
    """Leave."""
    room = _room_or_404(request)
    if not await room.leave(request.match_info["viewer"], "delete"):
        raise web.HTTPNotFound(text=f"no active viewer {request.match_info['viewer']!r} in room {room.name!r}\n")
    return web.Response(status=200, text="left\n")


@routes.patch("/whep/{room}/{viewer}")
async def whep_patch(request: web.Request) -> web.Response:
    """Trickle ICE / ICE restart are not supported: the answer already holds every candidate."""
    raise web.HTTPMethodNotAllowed(
        "PATCH",
        ["DELETE", "OPTIONS"],
        text="trickle ICE and ICE restarts are not supported; rejoin instead\n",
    )


@routes.route("OPTIONS", "/whep/{room}")
@routes.route("OPTIONS", "/whep/{room}/{viewer}")
async def whep_options(request: web.Request) -> web.Response:
    """CORS preflight (headers added by the middleware)."""
    return web.Response(status=204, headers={"Accept-Post": "application/sdp"})


@routes.get("/rooms")
async def rooms_list(request: web.Request) -> web.Response:
    return web.json_response({"rooms": [r.summary() for r in request.app[ROOMS].values()]})


@routes.get("/rooms/{room}/truth")
async def room_truth(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    return web.json_response(room.truth(request.query.get("viewer")))


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    rooms: dict[str, Room] = request.app[ROOMS]
    names = ", ".join(sorted(rooms))
    return web.Response(
        text=f"streamqoe test room. Rooms: {names}. WHEP: POST /whep/<room>. Listing: /rooms. "
        "Ground truth: /rooms/<room>/truth. See docs/room.md.\n"
    )


async def _rooms_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    rooms = {
        rc.name: Room(
            rc,
            seed=config.seed,
            ice_host=config.ice_host,
            clock=config.clock,
            wall_clock=config.wall_clock,
            encoder_threads=config.encoder_threads,
            fast_send=config.fast_send,
            udp_gso=config.udp_gso,
        )
        for rc in config.rooms
    }
    for room in rooms.values():
        room.start()
    app[ROOMS] = rooms
    log.info("rooms_started", rooms=list(rooms))
    yield
    for room in rooms.values():
        await room.close()


def create_app(config: ServerConfig | None = None) -> web.Application:
    """The room server as an aiohttp application (rooms start on app startup, stop on cleanup)."""
    app = web.Application(middlewares=[cors_and_access_log], client_max_size=MAX_OFFER_BYTES)
    app[CONFIG] = config or ServerConfig()
    app.add_routes(routes)
    app.cleanup_ctx.append(_rooms_ctx)
    return app


class RoomServer:
    """Run the room in-process on a free port (tests, the demo)::

    async with RoomServer(ServerConfig(rooms=(RoomConfig("test"),))) as server:
        url = server.whep_url("test")        # http://127.0.0.1:PORT/whep/test
        server.rooms["test"].truth()
    """

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or ServerConfig()
        self.host = host
        self.port = port
        self.app = create_app(self.config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Start serving; returns the base URL (``http://HOST:PORT``)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def whep_url(self, room: str = "test") -> str:
        return f"{self.base_url}/whep/{room}"

    @property
    def rooms(self) -> dict[str, Room]:
        return self.app[ROOMS]

    async def __aenter__(self) -> RoomServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
