"""Deliver probe reports to the collector: spool first, POST with retries, delete only after a 2xx.

Retries (exponential backoff with full jitter, ``Retry-After`` honoured up to the cap) on connection
errors, timeouts, 429 and 5xx. Any other 4xx is final: the report moves to ``<spool>/rejected/`` with
the collector's message, so nothing is lost and nothing is resent blindly. ``flush_spool`` sends what
an earlier run left behind. The collector is idempotent on ``report_id``, so a report resent after a
lost acknowledgement is stored once.

Standard library + aiohttp only: the probe never imports the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from probe.spool import Spool

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one report."""

    report_id: str
    status: str
    """``delivered`` (2xx), ``rejected`` (4xx other than 429: moved to rejected/), ``spooled`` (gave up
    for now after ``attempts``; the file stays in the spool for ``flush_spool``)."""
    attempts: int
    """POSTs made."""
    http_status: int | None = None
    """Last HTTP status received (None if the collector was never reached)."""
    message: str | None = None
    """The collector's error message, or the last connection error."""
    duplicate: bool = False
    """The collector already had this report (a resend after a lost acknowledgement)."""
    path: Path | None = None
    """Where the report is now (spool or rejected/); None once delivered."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 30.0
    """Per-request total timeout."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, base · 2^(attempt-1))], attempt ≥ 1."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1))))


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def _post_once(session: aiohttp.ClientSession, url: str, token: str, body: bytes,
                     timeout_s: float) -> tuple[int, dict[str, Any], str | None]:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(
        url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as r:
        text = await r.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"error": text[:500]}
        return r.status, parsed if isinstance(parsed, dict) else {}, r.headers.get("Retry-After")


async def _send_path(
    spool: Spool,
    path: Path,
    *,
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    policy: RetryPolicy,
    sleep: Sleep,
    rng: random.Random,
) -> DeliveryResult:
    report = spool.read(path)
    report_id = str(report.get("report_id"))
    body = json.dumps(report, separators=(",", ":")).encode()
    status: int | None = None
    message: str | None = None
    for attempt in range(1, policy.attempts + 1):
        retry_after: str | None = None
        try:
            status, reply, retry_after = await _post_once(session, url, token, body, policy.timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            status, message = None, f"{type(e).__name__}: {e}"
        else:
            if 200 <= status < 300:
                spool.delete(path)
                return DeliveryResult(report_id, "delivered", attempt, status, None,
                                      duplicate=bool(reply.get("duplicate")))  # fmt: skip
            message = str(reply.get("error", ""))[:2000] or f"HTTP {status}"
            if not _retryable(status):
                dest = spool.reject(path, f"HTTP {status}: {message}")
                return DeliveryResult(report_id, "rejected", attempt, status, message, path=dest)
        if attempt < policy.attempts:
            delay = policy.delay(attempt, rng)
            if retry_after is not None:
                with contextlib.suppress(ValueError):  # an HTTP-date: keep our own backoff
                    delay = max(delay, min(float(retry_after), policy.max_delay_s))
            await sleep(delay)
    return DeliveryResult(report_id, "spooled", policy.attempts, status, message, path=path)


def _endpoint(collector_url: str) -> str:
    return collector_url.rstrip("/") + "/v1/reports"


async def deliver(
    report: dict[str, Any],
    *,
    spool_dir: str | Path,
    collector_url: str,
    token: str,
    attempts: int = 5,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    timeout_s: float = 30.0,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    session: aiohttp.ClientSession | None = None,
) -> DeliveryResult:
    """Spool ``report`` (a ``Report.to_dict()``), then POST it to ``collector_url`` until acknowledged.

    ``collector_url``: the collector's base URL (``http://host:8600``). ``sleep`` and ``rng`` are
    injected for deterministic tests. Never raises for network or HTTP failures: they are in the result.
    """
    spool = Spool(spool_dir)
    path = spool.write(report)
    policy = RetryPolicy(attempts, base_delay_s, max_delay_s, timeout_s)
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        return await _send_path(spool, path, session=s, url=_endpoint(collector_url), token=token,
                                policy=policy, sleep=sleep, rng=rng or random.Random())  # fmt: skip
    finally:
        if own:
            await s.close()


async def flush_spool(
    *,
    spool_dir: str | Path,
    collector_url: str,
    token: str,
    attempts: int = 3,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    timeout_s: float = 30.0,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    session: aiohttp.ClientSession | None = None,
) -> list[DeliveryResult]:
    """Send every report left in the spool (oldest first); stop early if the collector is unreachable.

    A file that is not valid JSON moves to ``rejected/`` (it could never be delivered).
    """
    spool = Spool(spool_dir)
    policy = RetryPolicy(attempts, base_delay_s, max_delay_s, timeout_s)
    r = rng or random.Random()
    own = session is None
    s = session or aiohttp.ClientSession()
    out: list[DeliveryResult] = []
    try:
        for path in spool.pending():
            try:
                res = await _send_path(spool, path, session=s, url=_endpoint(collector_url), token=token,
                                       policy=policy, sleep=sleep, rng=r)  # fmt: skip
            except (ValueError, OSError) as e:
                if not path.exists():
                    continue  # delivered meanwhile by a concurrent flush
                dest = spool.reject(path, f"unreadable spool file: {e}")
                out.append(DeliveryResult(path.stem, "rejected", 0, None, str(e), path=dest))
                continue
            out.append(res)
            if res.status == "spooled":
                break  # the collector is down: keep the rest for the next run
    finally:
        if own:
            await s.close()
    return out
