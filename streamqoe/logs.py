"""Logging setup for entry points only: JSON lines when stderr is not a TTY, a console renderer when it is."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info") -> None:
    """Configure structlog (and stdlib logging) once, writing to stderr."""
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    # aioice/aiortc are chatty at INFO; keep them at WARNING unless debugging
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(lvl if lvl == logging.DEBUG else logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
