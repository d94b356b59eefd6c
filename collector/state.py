"""Typed app state (``web.AppKey``): the collector keeps no module-level state."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from aiohttp import web

from collector.auth import TokenTable
from collector.config import CollectorConfig, Token
from collector.instruments import CollectorMetrics
from collector.parse_pool import ParsePool
from collector.store import StoreAPI
from collector.writer import GroupCommitWriter

CONFIG = web.AppKey("config", CollectorConfig)
TOKENS = web.AppKey("tokens", TokenTable)
METRICS = web.AppKey("metrics", CollectorMetrics)
STORE: web.AppKey[StoreAPI] = web.AppKey("store")
WRITER = web.AppKey("writer", GroupCommitWriter)
READ_POOL = web.AppKey("read_pool", concurrent.futures.ThreadPoolExecutor)
PARSE_POOL = web.AppKey("parse_pool", ParsePool)
"""Present only when ``ingest_workers`` > 0."""
WallClock = Callable[[], int]
WALL_MS: web.AppKey[WallClock] = web.AppKey("wall_ms")

# per request: the authenticated token and the item count, for the canonical log line
REQ_TOKEN = web.RequestKey("token", Token)
REQ_ITEMS = web.RequestKey("items", int)
REQ_ID = web.RequestKey("request_id", str)


def request_token(request: web.Request) -> Token | None:
    """The token the request authenticated with, if any."""
    return request.get(REQ_TOKEN)
