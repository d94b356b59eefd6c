"""Janus streaming plugin over the Janus REST API (``janus+http://host:port/janus?mountpoint=ID``).

The sequence (measured against Janus 1.1.2, /work/shared/recipes/feasibility.md):

    POST /janus            create                      -> session id SID
    GET  /janus/SID        long-poll, the whole time   -> events (and keeps the session alive)
    POST /janus/SID        attach janus.plugin.streaming -> handle id HID
    POST /janus/SID/HID    watch {id}                  -> ack; event "preparing" + JSEP offer
    (setRemoteDescription(offer), prepare(pc), setLocalDescription(answer): full gathering, no trickle)
    POST /janus/SID/HID    start + JSEP answer         -> ack; event "starting"
    leave: stop, detach, destroy

``signaling_ms`` is create sent → "starting" event received. Janus offers, the probe answers, so
``prepare`` runs after the remote description is set (the receivers exist only then).

A session the server forgets while the probe watches (Janus error 458 on the long-poll or a
keepalive, or Janus unreachable) sets ``failure`` and wakes ``wait_lost()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import structlog
from aiortc import RTCSessionDescription

from probe.signaling.base import Prepare, SignalingError

log = structlog.get_logger()

HTTP_TIMEOUT_S = 10.0
KEEPALIVE_S = 25.0
"""Keepalive period, s (Janus's default session_timeout is 60 s)."""
LONG_POLL_MAXEV = 5

JANUS_ERROR_SESSION_NOT_FOUND = 458
JANUS_ERROR_HANDLE_NOT_FOUND = 459
STREAMING_ERROR_NO_SUCH_MOUNTPOINT = 455


class JanusSignaling:
    kind = "janus"

    def __init__(self, url: str, **options: Any) -> None:
        """``options``: ``token`` (Janus token auth), ``http_timeout_s``, ``keepalive_s``; others
        (``codec``: Janus decides a mountpoint's codec) are accepted and ignored."""
        self.url = url
        parts = urlsplit(url)
        scheme = parts.scheme.removeprefix("janus+")
        self.base = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") or "/janus", "", ""))
        query = dict(parse_qsl(parts.query))
        self.labels = query
        mp = query.get("mountpoint") or query.get("id")
        self.room: str | None = mp
        self.mountpoint: int | str | None = int(mp) if mp is not None and mp.isdigit() else mp
        self.pin = query.get("pin")
        token = options.get("token")
        self.token: str | None = str(token) if token else None  # sent in every request when set
        self.http_timeout_s = float(options.get("http_timeout_s", HTTP_TIMEOUT_S))
        self.keepalive_s = float(options.get("keepalive_s", KEEPALIVE_S))
        self.resource: str | None = None
        self.signaling_ms: float | None = None
        self.failure: SignalingError | None = None
        self.session_id: int | None = None
        self.handle_id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._leaving = False

    # --- HTTP -------------------------------------------------------------------------------
    def _session_url(self) -> str:
        return f"{self.base}/{self.session_id}"

    def _handle_url(self) -> str:
        return f"{self.base}/{self.session_id}/{self.handle_id}"

    async def _request(
        self, url: str, body: dict[str, Any] | None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """POST ``body`` (or GET when None) and return the JSON reply; transport errors → SignalingError."""
        assert self._http is not None
        if body is not None:
            body = {**body, "transaction": secrets.token_hex(6)}
            if self.token:
                body["token"] = self.token
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.http_timeout_s)
        try:
            if body is None:
                ctx = self._http.get(url, timeout=timeout)
            else:
                ctx = self._http.post(url, json=body, timeout=timeout)
            async with ctx as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as e:
            raise SignalingError(
                "url_unreachable", f"cannot reach Janus at {self.base}: {e or type(e).__name__}"
            ) from None
        if status != 200:
            raise SignalingError(
                f"janus_http_{status}", f"Janus answered HTTP {status}: {' '.join(text.split())[:300]}"
            )
        try:
            reply = json.loads(text)
        except ValueError:
            raise SignalingError(
                "janus_error", f"Janus sent a reply that is not JSON: {text[:200]!r}"
            ) from None
        if isinstance(reply, dict):
            _raise_for_core_error(reply)
        return reply  # type: ignore[no-any-return]

    # --- join -------------------------------------------------------------------------------
    async def join(self, pc: Any, prepare: Prepare, now_ms: Callable[[], float]) -> None:
        if self.mountpoint is None:
            raise SignalingError("url_invalid", f"{self.url}: no ?mountpoint=ID")
        self._http = aiohttp.ClientSession()
        start = now_ms()
        created = await self._request(self.base, {"janus": "create"})
        self.session_id = int(created["data"]["id"])
        self.resource = self._session_url()
        self._tasks.append(asyncio.ensure_future(self._long_poll()))
        attached = await self._request(
            self._session_url(), {"janus": "attach", "plugin": "janus.plugin.streaming"}
        )
        self.handle_id = int(attached["data"]["id"])
        self.resource = self._handle_url()
        watch: dict[str, Any] = {"request": "watch", "id": self.mountpoint}
        if self.pin:
            watch["pin"] = self.pin
        await self._request(self._handle_url(), {"janus": "message", "body": watch})
        event = await self._plugin_event(lambda d, jsep: jsep is not None and jsep.get("type") == "offer")
        offer = event["jsep"]
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SignalingError("bad_sdp", f"the Janus offer is not usable SDP: {e}") from None
        prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())  # waits for ICE gathering (no trickle)
        answer = {"type": "answer", "sdp": pc.localDescription.sdp}
        await self._request(
            self._handle_url(), {"janus": "message", "body": {"request": "start"}, "jsep": answer}
        )
        await self._plugin_event(lambda d, jsep: d.get("result", {}).get("status") in ("starting", "started"))
        self.signaling_ms = now_ms() - start
        self._tasks.append(asyncio.ensure_future(self._keepalive()))

    async def _plugin_event(
        self, match: Callable[[dict[str, Any], dict[str, Any] | None], bool]
    ) -> dict[str, Any]:
        """Next streaming-plugin event of our handle with ``match(data, jsep)``; plugin errors raise."""
        while True:
            lost = asyncio.ensure_future(self._lost.wait())
            got = asyncio.ensure_future(self._events.get())
            try:
                await asyncio.wait({lost, got}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not got.done():
                    got.cancel()
            if not got.done() or got.cancelled():
                assert self.failure is not None
                raise self.failure
            event = got.result()
            if event.get("janus") == "hangup":
                raise SignalingError("janus_error", f"Janus hung up: {event.get('reason', '')}")
            if event.get("janus") != "event" or event.get("sender") not in (None, self.handle_id):
                continue
            data = event.get("plugindata", {}).get("data", {})
            if "error_code" in data or "error" in data:
                code = data.get("error_code")
                if code == STREAMING_ERROR_NO_SUCH_MOUNTPOINT:
                    raise SignalingError(
                        "janus_unknown_mountpoint",
                        f"Janus has no mountpoint {self.mountpoint!r}: {data.get('error', '')}",
                    )
                raise SignalingError("janus_error", f"Janus streaming error {code}: {data.get('error', '')}")
            if match(data, event.get("jsep")):
                return event

    # --- while watching ---------------------------------------------------------------------
    def _lose(self, err: SignalingError) -> None:
        if self.failure is None and not self._leaving:
            self.failure = err
            log.warning("janus_session_lost", code=err.code, message=err.message)
        self._lost.set()

    async def _long_poll(self) -> None:
        """Fetch events until leave (Janus holds a GET up to 30 s, then sends a keepalive)."""
        url = f"{self._session_url()}?maxev={LONG_POLL_MAXEV}"
        while True:
            try:
                reply = await self._request(url, None, timeout_s=45.0)
            except SignalingError as e:
                self._lose(e)
                return
            for event in reply if isinstance(reply, list) else [reply]:
                if isinstance(event, dict):
                    self._events.put_nowait(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self._request(self._session_url(), {"janus": "keepalive"})
            except SignalingError as e:
                self._lose(e)
                return

    async def wait_lost(self) -> SignalingError:
        """Return once the server forgot the session (or became unreachable) after the join."""
        await self._lost.wait()
        assert self.failure is not None
        return self.failure

    # --- leave ------------------------------------------------------------------------------
    async def leave(self) -> None:
        self._leaving = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._http is None:
            return
        try:
            if self.session_id is not None and self.failure is None:
                if self.handle_id is not None:
                    with contextlib.suppress(SignalingError):
                        await self._request(
                            self._handle_url(),
                            {"janus": "message", "body": {"request": "stop"}},
                            timeout_s=2.0,
                        )
                    with contextlib.suppress(SignalingError):
                        await self._request(self._handle_url(), {"janus": "detach"}, timeout_s=2.0)
                with contextlib.suppress(SignalingError):
                    await self._request(self._session_url(), {"janus": "destroy"}, timeout_s=2.0)
        finally:
            await self._http.close()
            self._http = None


def _raise_for_core_error(reply: dict[str, Any]) -> None:
    """Janus core errors (``{"janus": "error", "error": {code, reason}}``) as SignalingError."""
    if reply.get("janus") != "error":
        return
    err = reply.get("error") or {}
    code, reason = err.get("code"), err.get("reason", "")
    if code in (JANUS_ERROR_SESSION_NOT_FOUND, JANUS_ERROR_HANDLE_NOT_FOUND):
        raise SignalingError("janus_session_timeout", f"Janus forgot the session (error {code}: {reason})")
    raise SignalingError("janus_error", f"Janus error {code}: {reason}")
