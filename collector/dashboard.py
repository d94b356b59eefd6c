"""The dashboard page: one self-contained HTML file (inline JS draws SVG; no CDN, no build step).

The page itself holds no data and needs no token; its script reads a reader token from the URL
fragment (``/dashboard#token=…``, never sent to the server or its logs), keeps it in
``sessionStorage`` and calls the read API with it.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _html() -> bytes:
    return resources.files("collector").joinpath("dashboard.html").read_bytes()


async def page(request: web.Request) -> web.Response:
    """``GET /dashboard``."""
    return web.Response(
        body=_html(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def index(request: web.Request) -> web.Response:
    """``GET /``: the dashboard."""
    return await page(request)
