"""Download a running collector's events and probe reports to NDJSON files for offline analysis.

``fetch_to_files`` streams ``GET /v1/events`` and ``GET /v1/reports`` (collector roles ``reader`` or
``analysis``; see docs/collector.md) into ``dest_dir``, chunk by chunk, so memory stays constant. The
events file is in the wire format that ``analysis.load.from_ndjson`` reads. Each file is written to a
temporary name and renamed when complete, so a file with the final name is never a partial export.
Every failure is a ``LoadError`` whose message names the collector and says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from analysis.load import LoadError

EVENTS_FILE = "events.ndjson"
REPORTS_FILE = "reports.ndjson"
_CHUNK = 1 << 16


async def fetch_to_files(
    collector_url: str,
    token: str,
    from_ms: int,
    to_ms: int,
    dest_dir: Path,
    *,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 10.0,
) -> tuple[Path, Path]:
    """Export the collector's viewer events (``from_ms ≤ t_ms < to_ms``) and probe reports
    (``from_ms ≤ started_ms < to_ms``) to ``dest_dir/events.ndjson`` and ``dest_dir/reports.ndjson``.

    Times are ms since the Unix epoch. ``timeout_s`` bounds each whole download, ``connect_timeout_s``
    the TCP connect. Returns ``(events_path, reports_path)``; raises ``LoadError`` when the collector
    is unreachable, refuses the token (401/403), rejects the window (400) or cuts an export short.
    """
    base = _base_url(collector_url)
    if not to_ms > from_ms:
        raise LoadError(f"window: to ({to_ms}) must be greater than from ({from_ms}), in ms since the Unix epoch")
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LoadError(f"{dest_dir}: cannot create the download directory ({e.strerror or e})") from None
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"}
    params = {"from": str(int(from_ms)), "to": str(int(to_ms))}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        events = await _download(session, base, "/v1/events", params, dest_dir / EVENTS_FILE)
        reports = await _download(session, base, "/v1/reports", params, dest_dir / REPORTS_FILE)
    return events, reports


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LoadError(f"collector URL {url!r}: expected http(s)://host:port")
    return url.rstrip("/")


async def _download(
    session: aiohttp.ClientSession, base: str, path: str, params: dict[str, str], dest: Path
) -> Path:
    what = "events" if path.endswith("events") else "reports"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    size = 0
    try:
        async with session.get(base + path, params=params) as r:
            if r.status != 200:
                raise LoadError(_http_error(base, what, r.status, await _error_text(r)))
            ctype = r.headers.get("Content-Type", "")
            if not ctype.startswith("application/x-ndjson"):
                raise LoadError(
                    f"collector at {base} answered {path} with {ctype or 'no content type'}, not NDJSON "
                    "(is this a streamqoe collector, at its root URL?)"
                )
            with tmp.open("wb") as f:
                async for chunk in r.content.iter_chunked(_CHUNK):
                    f.write(chunk)
                    size += len(chunk)
        tmp.replace(dest)
    except LoadError:
        _unlink(tmp)
        raise
    except aiohttp.ClientPayloadError as e:
        _unlink(tmp)
        raise LoadError(f"collector at {base}: the {what} export was cut off after {size} bytes ({e})") from None
    except (aiohttp.ClientConnectionError, OSError) as e:
        _unlink(tmp)
        if size:
            raise LoadError(
                f"collector at {base}: the connection broke after {size} bytes of {what} ({e})"
            ) from None
        raise LoadError(f"collector at {base} is not reachable: {e}") from None
    except TimeoutError:
        _unlink(tmp)
        raise LoadError(f"collector at {base}: the {what} export timed out after {size} bytes") from None
    except asyncio.CancelledError:
        _unlink(tmp)
        raise
    return dest


def _http_error(base: str, what: str, status: int, message: str) -> str:
    detail = f": {message}" if message else ""
    if status == 401:
        return f"collector at {base} refused the token (HTTP 401){detail}"
    if status == 403:
        return (
            f"collector at {base} does not let this token read {what} (HTTP 403{detail}); "
            "use a reader or analysis token"
        )
    if status == 404:
        return f"collector at {base} has no {what} export (HTTP 404): is it an older collector, or the wrong URL?"
    return f"collector at {base} answered HTTP {status} for the {what} export{detail}"


async def _error_text(r: aiohttp.ClientResponse) -> str:
    """The collector's ``{"error": …}`` message, or the start of the body."""
    try:
        body = await r.text()
    except (aiohttp.ClientError, UnicodeDecodeError):
        return ""
    try:
        msg = json.loads(body).get("error")
    except (ValueError, AttributeError):
        msg = None
    return str(msg if msg else body.strip())[:300]


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
