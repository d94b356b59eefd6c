"""Reading an ingest body: size limits (413), gzip, JSON array / object / NDJSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

from collector.errors import ApiError
from collector.event_columns import BatchError, EventColumns, event_columns

_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})


async def read_limited(request: web.Request, *, max_body: int, max_decompressed: int) -> bytes:
    """The request body, decompressed; ``ApiError(413)`` above the limits, 415 for other encodings.

    aiohttp decompresses ``Content-Encoding: gzip``/``deflate`` bodies in bounded steps as they are
    read, so a gzip bomb is cut off at ``max_decompressed`` bytes without being inflated further.
    ``max_body`` bounds the bytes on the wire (from Content-Length; an uncompressed chunked body is
    bounded while reading).
    """
    enc = request.headers.get("Content-Encoding", "").strip().lower()
    if enc not in _ENCODINGS:
        raise ApiError(415, f"Content-Encoding {enc!r} not supported (use gzip or none)")
    compressed = enc not in ("", "identity")
    cl = request.content_length
    if cl is not None and cl > max_body:
        raise ApiError(413, f"body of {cl} bytes exceeds the limit of {max_body} bytes")
    limit = max_decompressed if compressed else max_body
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await request.content.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                what = "decompressed body" if compressed else "body"
                raise ApiError(413, f"{what} exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ApiError:
        raise
    except Exception as e:  # aiohttp's ContentEncodingError and friends: a corrupt gzip stream
        raise ApiError(400, f"could not read the body ({enc or 'identity'}): {type(e).__name__}") from None
    return b"".join(chunks)


def parse_items(body: bytes, content_type: str, *, max_items: int, fast: bool = False) -> tuple[list[Any], bool]:
    """Decode the items of an ingest body. Returns (items, was_a_batch).

    ``application/x-ndjson``: one JSON value per line (blank lines ignored). Otherwise JSON: an array
    (a batch) or a single object. ``ApiError(400)`` names the line for NDJSON errors.

    ``fast``: decode with orjson (about half the CPU of ``json.loads``), and with the standard library
    whatever orjson refuses, so the errors, and the values of what only ``json`` accepts (``NaN``,
    ``Infinity``, lone surrogates), are the standard library's. On input both accept the values are the
    same except integers beyond 64 bits, which orjson returns as floats: a caller using ``fast`` must
    refuse any such value and then decode again without ``fast`` to word the error (``parse_event_body``).
    """
    if not body.strip():
        raise ApiError(400, "empty body")
    if fast and content_type in ("application/json", ""):
        try:
            obj: Any = orjson.loads(body)  # valid UTF-8 is part of what it checks
        except orjson.JSONDecodeError:
            pass  # the standard library words the error (or accepts NaN and the like)
        else:
            return _batch(obj, max_items)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body is not UTF-8 (byte {e.start})") from None
    if content_type == "application/x-ndjson":
        items: list[Any] = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                items.append(_loads_fast(line) if fast else json.loads(line))
            except (ValueError, RecursionError) as e:
                raise ApiError(400, f"line {n}: invalid JSON: {_msg(e)}", item=len(items)) from None
            if len(items) > max_items:
                raise ApiError(413, f"more than {max_items} items in one request")
        if not items:
            raise ApiError(400, "no items in the body")
        return items, True
    if content_type not in ("application/json", ""):
        raise ApiError(
            415, f"Content-Type {content_type!r} not supported (application/json or application/x-ndjson)"
        )
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"invalid JSON: {_msg(e)}") from None
    return _batch(obj, max_items)


def parse_event_body(body: bytes, content_type: str, *, max_items: int) -> EventColumns:
    """An events body, decoded (``parse_items`` with ``fast``) and validated (``event_columns``).

    Raises ``ApiError`` for the body, ``BatchError`` (with ``items``, the batch's size) for the first
    invalid item: the same errors, and the same columns, as ``parse_items`` without ``fast``.
    """
    items, _ = parse_items(body, content_type, max_items=max_items, fast=True)
    try:
        return event_columns(items)
    except BatchError:
        pass
    # orjson returns integers beyond 64 bits as floats, which no event field accepts: decode again with
    # the standard library, so that the error shows the value as sent (rejected batches only)
    items, _ = parse_items(body, content_type, max_items=max_items)
    try:
        return event_columns(items)
    except BatchError as e:
        raise BatchError(e.index, str(e), items=len(items)) from None


def _loads_fast(text: str) -> Any:
    """orjson, else the standard library (its error, or its value for what only it accepts)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _batch(obj: Any, max_items: int) -> tuple[list[Any], bool]:
    if isinstance(obj, list):
        if not obj:
            raise ApiError(400, "empty batch")
        if len(obj) > max_items:
            raise ApiError(413, f"more than {max_items} items in one request")
        return obj, True
    return [obj], False


def _msg(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)[:200]
